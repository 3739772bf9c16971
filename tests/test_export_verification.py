"""The export verification every precision shares: on-policy parity relative to the action range,
wide random inputs reported, closed-loop returns with a confidence interval, refusal beyond a margin."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from deploy_support import file_and_torch
from onnx import numpy_helper

from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.export.parity import ClosedLoopResult, ParityResult, Verification, enforce

FIXTURE = Path(__file__).parent / "fixtures" / "cheetah_fp16_run"


@pytest.fixture
def cheetah_run(tmp_path) -> Path:
    run_dir = tmp_path / "cheetah"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and "settotalmass" not in line]


def test_a_trained_policy_the_old_random_input_check_refused_exports_in_fp16(cheetah_run, capsys) -> None:
    from nmrl.export.observations import random_observations
    from nmrl.export.parity import actions
    from nmrl.train.run import load_trained_actor

    assert main(["export", str(cheetah_run), "--dtype", "fp16", "--checkpoint", "best", "--check-episodes", "2"]) == 0
    out = capsys.readouterr().out
    written = cheetah_run / "actor.fp16.onnx"
    assert written.is_file()
    # The check this verification replaced: 256 Gaussian observations at 3x unit scale, max abs error
    # over the largest |action| of the batch, fp16 limit 1e-2. This policy's fp16 file fails it.
    loaded = load_trained_actor(cheetah_run, "best")
    wide = random_observations(loaded.obs_dim, 256, 0)
    torch_policy, file_policy = file_and_torch(loaded.policy, written, loaded.obs_dim, loaded.act_dim)
    reference = actions(torch_policy, wide)
    old_rel_error = np.abs(actions(file_policy, wide) - reference).max() / np.abs(reference).max()
    assert old_rel_error > 1e-2

    policy_line = next(line for line in out.splitlines() if line.strip().startswith("policy"))
    assert "2000 obs" in policy_line and "of the action range (fp16 tolerance 0.02: ok)" in policy_line
    assert "reported only" in next(line for line in out.splitlines() if line.strip().startswith("random"))
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if "HalfCheetah-v5, 2 episodes (seeds 0..1)" in line)
    assert "torch fp32" in lines[index] and "file" in lines[index]
    assert "95% CI" in lines[index + 1] and lines[index + 1].endswith("beyond the CI: ok")


def test_a_broken_fp16_file_is_refused_with_one_line_and_nothing_written(cheetah_run, capsys, monkeypatch) -> None:
    import nmrl.export.onnx_export as onnx_export

    build = onnx_export.to_onnx_model

    def broken_build(*args, **kwargs) -> onnx.ModelProto:
        # A file whose output layer lost a tenth of its weight: an exporter bug a tolerance must catch.
        model = build(*args, **kwargs)
        for init in model.graph.initializer:
            if init.name == "net.4.weight":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float16(0.9), init.name))
        return model

    monkeypatch.setattr(onnx_export, "to_onnx_model", broken_build)
    code = main(["export", str(cheetah_run), "--dtype", "fp16", "--checkpoint", "best", "--check-episodes", "1"])
    captured = capsys.readouterr()
    assert code == 1 and not (cheetah_run / "actor.fp16.onnx").exists()
    (line,) = _lines(captured.err)
    assert "refusing to export: the file does not act as the torch policy" in line and "policy" in line
    assert "FAILED" in line


def _verification(file_returns: tuple[float, ...], reference_returns: tuple[float, ...]) -> Verification:
    parity = (ParityResult("policy", 100, 1e-3, 5e-4, "fp16", True),)
    loop = ClosedLoopResult("Hopper-v5", 0, reference_returns, file_returns, "fp16", 0.05)
    return Verification(parity, loop)


def test_closed_loop_refuses_a_shortfall_beyond_margin_and_noise_unless_allowed() -> None:
    worse = _verification((900.0, 910.0, 905.0), (1000.0, 1004.0, 998.0))
    assert not worse.closed_loop.passed
    with pytest.raises(NmrlError, match=r"closed-loop return 905\.0 vs torch 1000\.7 .*--allow-worse-return"):
        enforce(worse)
    (warning,) = enforce(worse, allow_worse_return=True)
    assert "95.7 below" in warning
    # Within the margin, or a larger drop that the episodes' spread cannot tell from noise: passes.
    assert enforce(_verification((980.0, 990.0, 985.0), (1000.0, 1004.0, 998.0))) == []
    noisy = _verification((600.0, 1400.0, 700.0), (1000.0, 1004.0, 998.0))
    assert -noisy.closed_loop.difference > noisy.closed_loop.allowed_shortfall
    assert noisy.closed_loop.interval > -noisy.closed_loop.difference and noisy.closed_loop.passed
    # Better than torch is never refused; one episode has no interval, so the margin alone decides.
    assert _verification((2000.0,), (1000.0,)).closed_loop.passed
    assert not _verification((900.0,), (1000.0,)).closed_loop.passed


def test_wide_random_inputs_never_block_but_on_policy_states_do() -> None:
    above = ParityResult("random", 256, 1.0, 0.5, "fp16", blocking=False)
    assert not above.passed and "reported only" in str(above)
    assert enforce(Verification((above,), None)) == []
    with pytest.raises(NmrlError, match="does not act as the torch policy: policy"):
        enforce(Verification((ParityResult("policy", 256, 1.0, 0.5, "fp16", True), above), None))


def test_int8_parity_blocks_on_the_mean_state_error_and_reports_the_worst_state() -> None:
    # A trained int8 actor: rare states near a decision boundary are far off, typical states close.
    trained = ParityResult("policy", 3000, 0.9, 0.46, "int8", True, mean_range_error=0.027)
    assert trained.passed and trained.judged_error == 0.027
    assert "4.60e-01 of the action range, mean 2.70e-02 (int8 tolerance on the mean 0.1: ok)" in str(trained)
    # A broken calibration is off everywhere: refused, whatever its worst state.
    broken = ParityResult("policy", 3000, 0.9, 0.46, "int8", True, mean_range_error=0.2)
    with pytest.raises(
        NmrlError, match=r"policy  3000 obs: .* mean 2\.00e-01 \(int8 tolerance on the mean 0\.1: FAILED\)"
    ):
        enforce(Verification((broken,), None))
    # fp32 and fp16 files are deterministic roundings of the torch policy: their worst state decides.
    assert not ParityResult("policy", 3000, 1e-3, 3e-2, "fp16", True, mean_range_error=1e-4).passed
