"""``nmrl compare --engine ray`` on a real Ray instance started by the test.

Ray listens on every interface and probes an outside address unless it runs in a network
namespace of its own, so the Ray part runs as ``unshare -n`` (root, or a user namespace) with only
loopback up; where that is not permitted the test is skipped, saying so."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmrl.cli import main

pytestmark = pytest.mark.xdist_group("train")

GRID = [
    "--env", "InvertedPendulum-v5", "--methods", "dense,2:4", "--seeds", "2", "--workers", "2",
    "--total-steps", "300", "--learning-starts", "150", "--batch-size", "32", "--hidden", "16", "16",
    "--eval-every", "150", "--eval-episodes", "1",
]  # fmt: skip


def _isolated_network_reason() -> str | None:
    """Why Ray cannot run isolated here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) to give Ray a loopback-only network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        why = probe.stderr.decode().strip()[:80]
        return f"unshare -n is not permitted here ({why}): Ray must not run on the real network"
    return None


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as file:
        return list(csv.DictReader(file))


def test_ray_engine_matches_local_skips_finished_cells_and_resumes_a_killed_cell(tmp_path, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'nmrl[ray]')")
    reason = _isolated_network_reason()
    if reason:
        pytest.skip(reason)
    local_out, ray_out, kill_out = tmp_path / "local", tmp_path / "ray", tmp_path / "kill"
    assert main(["compare", *GRID, "--out", str(local_out)]) == 0
    capsys.readouterr()

    driver = Path(__file__).with_name("ray_driver.py")
    command = f"ip link set lo up && exec {sys.executable} {driver} {ray_out} {kill_out} -- {' '.join(GRID)}"
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # 1. The same cells and seeds give the same table on both engines.
    env_dir = "InvertedPendulum-v5"
    assert _rows(ray_out / env_dir / "results.csv") == _rows(local_out / env_dir / "results.csv")
    assert _rows(ray_out / env_dir / "curves.csv") == _rows(local_out / env_dir / "curves.csv")
    assert "training 4 on Ray" in done.stderr
    # 2. Rerunning trained nothing.
    assert "4 of 4 cells already finished; training 0" in done.stderr
    # 3. The killed cell ran twice, the second time from its checkpoint, and finished.
    killed_pid = json.loads(done.stdout.strip().splitlines()[-1])["killed_pid"]
    assert killed_pid is not None, "the cell finished before the test could kill its worker"
    runs = kill_out / env_dir / "runs"
    attempts = [json.loads(line) for line in (runs / "2of4__s1.attempts.jsonl").read_text().splitlines()]
    starts = [a for a in attempts if a["event"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] == killed_pid
    assert starts[0]["start_step"] == 0 and starts[1]["start_step"] >= 100  # resumed, not restarted
    evals = [json.loads(line) for line in (runs / "2of4__s1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [1500]
