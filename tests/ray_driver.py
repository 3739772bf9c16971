"""Runs ``nmrl compare --engine ray`` on a private Ray instance; started by tests/test_ray_compare.py
inside a network namespace of its own (``unshare -n``), so that Ray talks to loopback only.

usage: python tests/ray_driver.py GRID_OUT KILL_OUT -- <compare options shared by the grids>

1. the grid on Ray into GRID_OUT; 2. the same command again (every cell must be skipped);
3. a one-cell grid into KILL_OUT whose Ray worker process is killed (SIGKILL) once the cell has
written a checkpoint: Ray must run the cell again, and it must resume from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray

from nmrl.cli import main


def kill_worker_after_first_checkpoint(cell_dir: Path, log_path: Path, killed: dict) -> None:
    """Wait for the cell's first checkpoint, then SIGKILL the process training it."""
    attempts = log_path.with_suffix(".attempts.jsonl")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if attempts.exists() and (cell_dir / "checkpoints" / "last.pt").exists():
            pid = json.loads(attempts.read_text().splitlines()[0])["pid"]
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
            return
        time.sleep(0.02)


def run() -> None:
    grid_out, kill_out = sys.argv[1], sys.argv[2]
    options = sys.argv[sys.argv.index("--") + 1 :]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    base = ["compare", "--engine", "ray", *options]
    assert main([*base, "--out", grid_out]) == 0
    assert main([*base, "--out", grid_out]) == 0  # a rerun: the test checks that it trained nothing

    kill_args = [
        "compare", "--engine", "ray", "--env", "InvertedPendulum-v5", "--methods", "2:4", "--seeds", "1",
        "--total-steps", "1500", "--learning-starts", "100", "--batch-size", "32", "--hidden", "16", "16",
        "--eval-every", "1500", "--eval-episodes", "1", "--checkpoint-every", "100", "--out", kill_out,
    ]  # fmt: skip
    runs = Path(kill_out) / "InvertedPendulum-v5" / "runs"
    killed: dict = {}
    watcher = threading.Thread(
        target=kill_worker_after_first_checkpoint, args=(runs / "2of4__s1", runs / "2of4__s1.log", killed)
    )
    watcher.start()
    assert main(kill_args) == 0
    watcher.join()
    print(json.dumps({"killed_pid": killed.get("pid")}))
    ray.shutdown()


if __name__ == "__main__":
    run()
