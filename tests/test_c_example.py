"""examples/c_policy: the control loop a robotics engineer starts from builds with its Makefile around
a generated actor.c and acts as ONNX Runtime does on the same observations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from deploy_support import small_actor

from nmrl.export.c_source import generate_c_file
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import build_policy_onnx, save_onnx
from nmrl.sparsity.pattern import NMPattern

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c_policy"


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="needs make and cc")
def test_example_builds_with_its_makefile_and_acts_as_onnx_runtime(tmp_path: Path) -> None:
    bounds = {"action_low": [-1.0] * 3, "action_high": [2.0] * 3, "env_id": "Hopper-v5"}
    model, _ = build_policy_onnx(small_actor("2:4", (64, 48)), 11, 3, NMPattern(2, 4), bounds)
    onnx_path = tmp_path / "actor.onnx"
    save_onnx(model, onnx_path)
    folder = tmp_path / "c_policy"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("actor.*", "*.o", "controller"))

    missing = subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True)
    assert missing.returncode != 0 and "nmrl export" in missing.stderr  # says how to get actor.c

    generate_c_file(onnx_path).write(folder / "actor.c")
    subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, check=True)
    controller = str(folder / "controller")

    obs = random_observations(11, 40, seed=4)
    (tmp_path / "obs.bin").write_bytes(obs.tobytes())
    subprocess.run([controller, "--replay", str(tmp_path / "obs.bin"), str(tmp_path / "act.bin")], check=True)
    actions = np.frombuffer((tmp_path / "act.bin").read_bytes(), np.float32).reshape(40, 3)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: obs})[0]
    np.testing.assert_allclose(actions, expected, rtol=0, atol=2e-6)

    loop = subprocess.run([controller, "--rate", "2000", "--steps", "50"], capture_output=True, text=True, check=True)
    assert "policy Hopper-v5 (2:4, fp32): 11 obs -> 3 actions" in loop.stdout
    assert "50 steps at 2000 Hz" in loop.stdout
    last = np.array(loop.stdout.split("last action:")[1].split(), np.float32)
    step = 49  # the synthetic sensor signal of main.c's read_sensors at the last step
    signal = (0.5 * np.sin(np.float32(0.01) * step + np.float32(0.3) * np.arange(11, dtype=np.float32))).astype(
        np.float32
    )
    np.testing.assert_allclose(last, session.run(None, {"obs": signal[None]})[0][0], atol=1e-5)
    bad = subprocess.run([controller, "--steps", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps" in bad.stderr
