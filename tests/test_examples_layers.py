"""The examples run (briefly) as a user runs them: the API quickstart, nmrl's layers in others' loops."""

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


def test_api_quickstart_trains_saves_loads_and_exports(tmp_path):
    out = run(
        "api_quickstart.py",
        *("--steps", "600", "--learning-starts", "300", "--hidden", "16", "16", "--eval-episodes", "1"),
        *("--out", str(tmp_path / "run")),
    )
    assert "trained 600 steps" in out and "closed loop" in out
    check = inspect_model(onnx.load(tmp_path / "run" / "actor.onnx"))
    assert str(check.claimed) == "2:4" and check.violations(check.claimed) == {}
    difference = float(out.split("largest difference: ")[1].split()[0])
    assert difference < 1e-4  # the deployed file acts as the loaded torch agent
