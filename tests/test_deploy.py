"""nmrl.deploy: the Policy interface, backend registry, ORT/torch backends and closed-loop eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_support import HOPPER_OBS, TINY_RUN_GROUP, exported_run, small_actor

from nmrl.cli import main
from nmrl.deploy.policy import BACKENDS, accepted_options, load_policy, register_backend, unavailable_reason
from nmrl.errors import NmrlError
from nmrl.export.onnx_export import export_policy
from nmrl.sparsity.pattern import NMPattern


@pytest.fixture(scope="module")
def actor_file(tmp_path_factory):
    actor = small_actor("2:4", hidden=(32, 32))
    path = tmp_path_factory.mktemp("deploy") / "actor.onnx"
    export_policy(path, actor, HOPPER_OBS, 3, NMPattern(2, 4), {"env_id": "Hopper-v5"})
    return actor, path


def test_ort_policy_acts_on_single_and_batched_observations(actor_file) -> None:
    actor, path = actor_file
    policy = load_policy(path, "ort", threads=1)
    assert (policy.obs_dim, policy.act_dim, policy.env_id, policy.backend) == (HOPPER_OBS, 3, "Hopper-v5", "ort")
    batch = np.random.default_rng(0).standard_normal((5, HOPPER_OBS)).astype(np.float32)
    with torch.no_grad():
        expected = actor(torch.from_numpy(batch)).numpy()
    actions = policy.act(batch)
    assert actions.shape == (5, 3) and actions.dtype == np.float32
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    single = policy.act(batch[2].astype(np.float64))  # other float dtypes are converted
    assert single.shape == (3,)
    np.testing.assert_allclose(single, expected[2], atol=1e-5)
    with pytest.raises(ValueError, match=r"\[batch, 11\]"):
        policy.act(np.zeros((2, 5), np.float32))
    assert "ONNX Runtime CPU" in policy.describe()


def test_ort_policy_with_fp16_io_returns_float32(actor_file, tmp_path) -> None:
    actor, _ = actor_file
    path = tmp_path / "actor.fp16.onnx"
    export_policy(path, actor, HOPPER_OBS, 3, NMPattern(2, 4), dtype="fp16")
    policy = load_policy(path, "ort")
    obs = np.random.default_rng(1).standard_normal((4, HOPPER_OBS)).astype(np.float32)
    actions = policy.act(obs)
    assert actions.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(actions, actor(torch.from_numpy(obs)).numpy(), atol=3e-2)


def test_registry_probes_loads_and_accepts_new_backends(actor_file, tmp_path) -> None:
    _, path = actor_file
    assert {"torch", "ort", "ort-cuda", "tensorrt", "tensorrt-rtx", "torch-2:4"} <= set(BACKENDS)
    for gpu_backend in ("tensorrt", "tensorrt-rtx", "torch-2:4"):
        reason = unavailable_reason(gpu_backend)  # probes import their modules: the entries are real
        if reason is not None:
            with pytest.raises(NmrlError, match="cannot run here"):
                load_policy(path, gpu_backend)
    assert unavailable_reason("nope") is not None
    with pytest.raises(NmrlError, match="unknown backend"):
        load_policy(path, "nope")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in unavailable_reason("ort-cuda")
        with pytest.raises(NmrlError, match="cannot run here"):
            load_policy(path, "ort-cuda")
    # Another backend (e.g. TensorRT) plugs in with one entry; here ORT under a new name.
    register_backend("ort-again", "nmrl.deploy.ort_backend:load_ort_policy", help="test")
    try:
        policy = load_policy(path, "ort-again", **accepted_options("ort-again", {"threads": 1, "other": 3}))
        assert policy.act(np.zeros(HOPPER_OBS, np.float32)).shape == (3,)
    finally:
        del BACKENDS["ort-again"]
    with pytest.raises(NmrlError, match="no such file"):
        load_policy(tmp_path / "missing.onnx", "ort")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(NmrlError, match="ONNX Runtime cannot load"):
        load_policy(tmp_path / "bad.onnx", "ort")


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_ort_and_torch_closed_loop_returns_match(tmp_path_factory) -> None:
    from nmrl.train.evaluate import evaluate

    run_dir = exported_run(tmp_path_factory)
    ort_policy = load_policy(run_dir / "actor.onnx", "ort")
    torch_policy = load_policy(run_dir, "torch")
    assert (torch_policy.obs_dim, torch_policy.act_dim) == (ort_policy.obs_dim, ort_policy.act_dim)
    ort_result = evaluate(ort_policy.act, "Hopper-v5", episodes=3, seed=5)
    torch_result = evaluate(torch_policy.act, "Hopper-v5", episodes=3, seed=5)
    # Actions agree to ~1e-7 (parity); over these short episodes (a 600-step policy falls within
    # ~100 steps) that cannot change a termination step, and returns agree to float precision.
    # A 1e-4 relative tolerance leaves room for summation-order noise, not for a different trajectory.
    assert ort_result.lengths == torch_result.lengths
    np.testing.assert_allclose(ort_result.returns, torch_result.returns, rtol=1e-4)


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_deploy_eval_verb(tmp_path_factory, capsys) -> None:
    run_dir = exported_run(tmp_path_factory)
    assert main(["deploy", "eval", str(run_dir / "actor.onnx"), "--episodes", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Hopper-v5" in out and "over 2 episodes" in out and "ONNX Runtime CPU" in out
    assert main(["deploy", "eval", str(run_dir / "actor.onnx"), "--env", "HalfCheetah-v5"]) == 1
    assert "has 17 and 6" in capsys.readouterr().err


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_deploy_eval_prints_a_random_policy_on_the_same_seeds(tmp_path_factory, capsys) -> None:
    from nmrl.train.evaluate import evaluate

    run_dir = exported_run(tmp_path_factory)
    args = ["deploy", "eval", str(run_dir / "actor.onnx"), "--episodes", "2", "--seed", "3"]
    assert main([*args, "--baseline", "random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == lines[:-1]  # the policy's lines unchanged
    rng = np.random.default_rng(3)  # uniform actions over Hopper's [-1, 1]^3, seeded by --seed
    expected = evaluate(lambda _: rng.uniform(-1, 1, 3).astype(np.float32), "Hopper-v5", episodes=2, seed=3)
    assert lines[-1] == f"random actions, same seeds: {expected.report(3)}"


def test_torch_policy_materializes_masks_and_runs_fp16() -> None:
    from nmrl.deploy.torch_backend import TorchPolicy

    actor = small_actor("2:4", hidden=(32, 32))
    obs = np.random.default_rng(2).standard_normal((6, HOPPER_OBS)).astype(np.float32)
    with torch.no_grad():
        expected = actor(torch.from_numpy(obs)).numpy()
    policy = TorchPolicy(actor, HOPPER_OBS, 3)
    assert not any(hasattr(m, "mask") for m in policy.module.modules())  # plain Linear layers
    np.testing.assert_allclose(policy.act(obs), expected, atol=1e-6)
    half = TorchPolicy(actor, HOPPER_OBS, 3, dtype="fp16")
    actions = half.act(obs)
    assert actions.dtype == np.float32 and "float16" in half.describe()
    np.testing.assert_allclose(actions, expected, atol=3e-2)
