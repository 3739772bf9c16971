"""The local engine's worker processes get OpenMP pools of their cell's size."""

from __future__ import annotations

import multiprocessing
import os
import sys

from nmrl.train import engines


def test_a_local_worker_sizes_openmp_to_its_threads_before_torch_loads(monkeypatch):
    # The worker's own entry point, with run_cell replaced by a probe of what the cell would see.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_probe_worker, args=({"threads": 3}, queue))
    process.start()
    seen = queue.get(timeout=120)
    process.join(timeout=60)
    assert seen == ("3", False)


def _probe_worker(config_data, queue) -> None:
    engines.run_cell = lambda *_args: queue.put(  # type: ignore[assignment]
        (os.environ.get("OMP_NUM_THREADS"), "torch" in sys.modules)
    )
    engines._local_worker(config_data, "unused.log", "unused.json", os.getppid())
