"""The examples of nmrl's layers in other people's training loops run (briefly) as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from nmrl.export.verify import inspect_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cleanrl_style_td3_trains_with_nm_layers():
    out = run(
        "cleanrl_style_td3.py",
        *("--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "32"),
        *("--hidden", "32", "--buffer-size", "1000"),
    )
    assert "actor layers breaking 2:4: none" in out


def test_sb3_td3_example_writes_a_verified_2of4_actor(tmp_path):
    pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")
    out = run("sb3_td3_2of4.py", "--steps", "120", "--learning-starts", "60", "--episodes", "1", "--out", str(tmp_path))
    assert "closed loop" in out
    check = inspect_model(onnx.load(tmp_path / "actor.onnx"))
    assert str(check.claimed) == "2:4" and check.violations(check.claimed) == {}
    assert (tmp_path / "td3.zip").is_file()
