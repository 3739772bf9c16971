"""``nmrl compare`` never leaves a trainer behind it, and never puts two on one cell.

Promises, each checked from the outside (processes and files), not through a mechanism:
- SIGTERM of ``nmrl compare`` stops its workers (each checkpoints) and the command exits 143;
- SIGKILL of ``nmrl compare`` stops its workers too: no process of the grid outlives it;
- the same command run again at once continues every cell from its checkpoint, and each
  evaluation step is logged once (one trainer per cell);
- a worker killed while its parent lives is run again and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nmrl.cli import main

pytestmark = [
    pytest.mark.xdist_group("train"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc (Linux)"),
]

ARGS = [
    "compare", "--env", "InvertedPendulum-v5", "--methods", "2:4", "--seeds", "1", "--workers", "1",
    "--total-steps", "2000", "--learning-starts", "100", "--batch-size", "32", "--hidden", "16", "16",
    "--eval-every", "500", "--eval-episodes", "1", "--checkpoint-every", "100",
]  # fmt: skip


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc's parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":  # a zombie has stopped running
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":
            living.add(pid)
    return living


def checkpoint_step(run_dir: Path) -> int:
    from nmrl.train.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["step"])


def wait_for_checkpoint_past(run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if checkpoint_step(run_dir) > step:
                return
        except Exception:  # not written yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {step} in {timeout} s")


def start_compare(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nmrl", *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_all_gone(pids: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(pids)
    for pid in left:  # leave nothing running after a failed test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the grid outlived nmrl compare: {sorted(left)}"


def test_killed_compare_leaves_no_trainer_and_a_rerun_trains_each_cell_once(tmp_path, capsys):
    out = tmp_path / "grid"
    run_dir = out / "InvertedPendulum-v5" / "runs" / "2of4__s1"

    # SIGTERM: workers stop and the command says so with 143.
    parent = start_compare(out)
    wait_for_checkpoint_past(run_dir, 0)
    workers = descendants(parent.pid)
    assert workers, "nmrl compare trains in worker processes"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 143, parent.stderr.read()
    assert_all_gone(workers)
    stopped_at = checkpoint_step(run_dir)

    # SIGKILL: the parent cannot forward anything; its workers must still stop by themselves.
    parent = start_compare(out)
    wait_for_checkpoint_past(run_dir, stopped_at)
    workers = descendants(parent.pid)
    parent.kill()
    parent.wait()
    assert_all_gone(workers)
    killed_at = checkpoint_step(run_dir)
    assert killed_at > stopped_at

    # At once again, while a watcher kills the worker once more (its parent alive): it is retried.
    def kill_worker_once() -> None:
        wait_for_checkpoint_past(run_dir, killed_at)
        for pid in descendants(os.getpid()):
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=kill_worker_once)
    watcher.start()
    assert main([*ARGS, "--out", str(out)]) == 0
    watcher.join()
    assert "worker died (SIGKILL); retry 1 of 2" in capsys.readouterr().err

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in metrics if r["kind"] == "eval"]
    assert eval_steps == list(range(500, 2001, 500))  # each once: never two trainers on the cell
    attempts = (out / "InvertedPendulum-v5" / "runs" / "2of4__s1.attempts.jsonl").read_text().splitlines()
    starts = [json.loads(line)["start_step"] for line in attempts if json.loads(line)["event"] == "start"]
    assert len(starts) == 4 and starts[0] == 0 and starts[1:] == sorted(starts[1:]) and starts[1] >= stopped_at
    assert starts[3] > killed_at  # the retry resumed from the checkpoint written after the rerun began
