"""nmrl.export: effective N:M weights in a checked, self-describing ONNX graph; parity; refusal."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from deploy_support import HOPPER_OBS, TINY_RUN_GROUP, file_and_torch, small_actor, tiny_run
from onnx import numpy_helper

from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.export.onnx_export import build_policy_onnx, export_policy, materialize
from nmrl.export.parity import TOLERANCES, verify_export
from nmrl.export.verify import inspect_model
from nmrl.sparsity import nm_layers
from nmrl.sparsity.pattern import NMPattern


@pytest.fixture(scope="module")
def actor():
    return small_actor("2:4", hidden=(32, 32))


@pytest.fixture(scope="module")
def fp32_model(actor):
    model, _ = build_policy_onnx(actor, HOPPER_OBS, 3, NMPattern(2, 4), {"env_id": "Hopper-v5"})
    return model


def _run(model: onnx.ModelProto, obs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"obs": obs})[0]


def test_graph_is_gemm_with_effective_weights_as_initializers(actor, fp32_model) -> None:
    onnx.checker.check_model(fp32_model, full_check=True)
    assert fp32_model.opset_import[0].version >= 17
    gemms = [node for node in fp32_model.graph.node if node.op_type == "Gemm"]
    assert len(gemms) == 3
    assert all(next(a.i for a in g.attribute if a.name == "transB") == 1 for g in gemms)
    assert not fp32_model.graph.sparse_initializer  # TensorRT/ORT need dense initializers
    initializers = {init.name: numpy_helper.to_array(init) for init in fp32_model.graph.initializer}
    for name, layer in nm_layers(actor):
        exported = initializers[f"{name}.weight"]
        effective = layer.effective_weight().numpy()
        np.testing.assert_array_equal(exported, effective)  # exact zeros, exact values
        assert inspect_model(fp32_model).violations(NMPattern(2, 4)) == {}
        assert not np.signbit(exported[exported == 0]).any()  # +0.0, not -0.0, where pruned
    # Action scaling lives in the graph: Tanh then Mul/Add by the bounds' scale and bias.
    ops = [node.op_type for node in fp32_model.graph.node]
    assert ops[-3:] == ["Tanh", "Mul", "Add"]


def test_unit_bounds_need_no_scaling_nodes_and_the_actions_stay_exact() -> None:
    import onnxruntime as ort
    import torch

    from nmrl.train.networks import Actor

    torch.manual_seed(0)
    actor = Actor(HOPPER_OBS, 3, [-1.0] * 3, [1.0] * 3, hidden=(16, 16))
    model, _ = build_policy_onnx(actor, HOPPER_OBS, 3, None)
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node][-1] == "Tanh"
    assert model.graph.node[-1].output[0] == model.graph.output[0].name
    assert not {"action_scale", "action_bias"} & {init.name for init in model.graph.initializer}
    obs = np.random.default_rng(0).standard_normal((64, HOPPER_OBS)).astype(np.float32)
    expected = actor(torch.as_tensor(obs)).detach().numpy()
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"obs": obs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_batch_dimension_is_dynamic_and_matches_torch(actor, fp32_model) -> None:
    dim = fp32_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    for batch in (1, 7, 300):
        obs = np.random.default_rng(batch).standard_normal((batch, HOPPER_OBS)).astype(np.float32)
        with torch.no_grad():
            expected = actor(torch.from_numpy(obs)).numpy()
        actions = _run(fp32_model, obs)
        assert actions.shape == (batch, 3)
        assert np.abs(actions - expected).max() <= 1e-5
    assert actions.min() >= -1.0 and actions.max() <= 2.0  # the bounds of small_actor


def test_metadata_describes_the_file(fp32_model) -> None:
    meta = {prop.key: prop.value for prop in fp32_model.metadata_props}
    assert meta["nmrl.format"] == "nmrl-policy-onnx-v1"
    assert meta["nmrl.version"] and meta["nmrl.env_id"] == "Hopper-v5"
    assert (json.loads(meta["nmrl.obs_dim"]), json.loads(meta["nmrl.act_dim"])) == (HOPPER_OBS, 3)
    assert meta["nmrl.sparsity"] == "2:4" and meta["nmrl.dtype"] == "fp32"
    layers = json.loads(meta["nmrl.layers"])
    assert [layer["pattern"] for layer in layers] == ["2:4", "2:4", "2:4"]
    assert [layer["shape"] for layer in layers] == [[32, HOPPER_OBS], [32, 32], [3, 32]]


def test_verification_on_policy_env_and_random_observations_and_closed_loop(actor, fp32_model) -> None:
    verification = verify_export(
        *file_and_torch(actor, fp32_model), "fp32", "Hopper-v5", [-1.0] * 3, [2.0] * 3, episodes=2, random_count=64
    )
    assert [r.source for r in verification.parity] == ["policy", "env", "random"]
    assert [r.blocking for r in verification.parity] == [True, True, False]
    assert verification.parity[0].count == sum(verification.closed_loop.reference_lengths)  # every visited state
    for result in verification.parity:
        assert result.passed and result.max_range_error <= TOLERANCES["fp32"].range_fraction
        # the range of these actions is 3 (bounds [-1, 2]): the range error is the abs error / 3
        assert result.max_range_error == pytest.approx(result.max_abs_error / 3)
    loop = verification.closed_loop
    assert loop is not None and loop.episodes == 2 and loop.passed
    assert "closed loop" in "\n".join(verification.lines())


@pytest.mark.parametrize("io_dtype", ["fp16", "fp32"])
def test_fp16_graph_has_fp16_weights_and_math(actor, io_dtype) -> None:
    model, check = build_policy_onnx(actor, HOPPER_OBS, 3, NMPattern(2, 4), dtype="fp16", io_dtype=io_dtype)
    elem = onnx.TensorProto.FLOAT16 if io_dtype == "fp16" else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    floats = [init for init in model.graph.initializer if init.data_type in (1, 10)]
    assert floats and all(init.data_type == onnx.TensorProto.FLOAT16 for init in floats)
    assert [layer.weight_name for layer in check.layers] == ["net.0.weight", "net.2.weight", "net.4.weight"]
    assert all(layer.dtype == "float16" for layer in check.layers)
    # K=11 (Hopper's observation) cannot use 2:4 kernels; the hidden layers can.
    assert [layer.eligible_2of4 for layer in check.layers] == [False, True, True]
    verification = verify_export(*file_and_torch(actor, model), "fp16", "Hopper-v5", episodes=1, random_count=64)
    assert all(r.passed for r in verification.parity) and verification.closed_loop.passed
    errors = [r.max_abs_error for r in verification.parity]
    assert max(errors) > 1e-5  # it really computed in fp16 (fp32 files differ by ~1e-7)


def test_the_file_check_refuses_graphs_that_break_the_claim() -> None:
    from deploy_support import gemm_model, nm_along

    from nmrl.export.onnx_export import enforce_claim

    weight = nm_along((8, 16), axis=1, n=2, m=4)
    enforce_claim(inspect_model(gemm_model(weight, trans_b=1)).violations(NMPattern(2, 4)), NMPattern(2, 4))
    with pytest.raises(NmrlError, match=r"claimed 1:4 pattern along K \(W: 32 groups\)"):
        enforce_claim(inspect_model(gemm_model(weight, trans_b=1)).violations(NMPattern(1, 4)), NMPattern(1, 4))


def test_export_refuses_weights_that_break_the_claim(actor, tmp_path) -> None:
    path = tmp_path / "actor.onnx"
    with pytest.raises(NmrlError, match="break the claimed 1:4"):
        export_policy(path, actor, HOPPER_OBS, 3, NMPattern(1, 4))
    assert not path.exists()
    broken = small_actor("2:4", hidden=(32, 32))
    with torch.no_grad():
        broken.net[2].mask.fill_(1.0)  # a layer whose mask no longer enforces 2:4
    with pytest.raises(NmrlError, match=r"net\.2\.weight"):
        export_policy(path, broken, HOPPER_OBS, 3, NMPattern(2, 4))
    assert not path.exists()


def test_dense_and_unstructured_runs_make_no_claim_and_plain_linear_exports(tmp_path) -> None:
    from nmrl.export.verify import claimed_pattern

    assert claimed_pattern("dense") is None and claimed_pattern("0.9") is None
    assert claimed_pattern("1:8") == NMPattern(1, 8)
    dense = small_actor("dense", hidden=(16,))
    result = export_policy(tmp_path / "dense.onnx", dense, HOPPER_OBS, 3, None)
    assert inspect_model(result.path).metadata["nmrl.sparsity"] == "none"
    assert all(layer.finest is None for layer in result.check.layers)


def test_unsupported_policies_give_clear_errors() -> None:
    class NoLinear(torch.nn.Module):
        def forward(self, obs):
            return torch.tanh(obs)

    with pytest.raises(NmrlError, match="no Linear layers"):
        materialize(NoLinear())

    class MaskedConv(torch.nn.Conv1d):
        def effective_weight(self):
            return self.weight

    with pytest.raises(NmrlError, match="only Linear-like"):
        materialize(torch.nn.Sequential(MaskedConv(1, 1, 1)))


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_export_verb_on_a_trained_run(tmp_path_factory, capsys) -> None:
    run_dir = tiny_run(tmp_path_factory)
    assert main(["export", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "claim verified: 3 of 3 GEMM weights (net.0.weight, net.2.weight, net.4.weight) hold 2:4 along K" in out
    assert "parity" in out
    assert "policy" in out and "closed loop" in out and "torch fp32" in out
    check = inspect_model(run_dir / "actor.onnx")
    assert check.is_nmrl and check.claimed == NMPattern(2, 4) and not check.violations(NMPattern(2, 4))
    config = json.loads(check.metadata["nmrl.config"])
    assert config["sparsity"] == "2:4" and config["hidden"] == [64, 64]
    assert json.loads(check.metadata["nmrl.action_low"]) == [-1.0, -1.0, -1.0]
    assert main(["export", str(tmp_path_factory.mktemp("empty"))]) == 1
    assert "not an nmrl run directory" in capsys.readouterr().err


def test_sac_deterministic_actor_exports_with_parity(tmp_path) -> None:
    """Export takes any obs -> action module: SAC's deterministic actor (tanh of the mean head)."""
    from nmrl.train.algorithm import get_algorithm
    from nmrl.train.config import TrainConfig

    config = TrainConfig(env="Hopper-v5", algo="sac", sparsity="2:4", hidden=(32, 32))
    algo = get_algorithm("sac")(HOPPER_OBS, 3, [-1.0] * 3, [1.0] * 3, config.algorithm_config(), torch.device("cpu"))
    policy = algo.policy().eval()
    result = export_policy(tmp_path / "sac.onnx", policy, HOPPER_OBS, 3, NMPattern(2, 4), {"algo": "sac"})
    assert [layer.finest for layer in result.check.layers] == [NMPattern(2, 4)] * 3
    verification = verify_export(*file_and_torch(policy, result.path), "fp32", None, random_count=64)
    (parity,) = verification.parity  # without an env only wide random inputs exist, and they block
    assert parity.source == "random" and parity.blocking and parity.passed and verification.closed_loop is None


def test_unstructured_actor_exports_its_masked_weights_without_a_claim(tmp_path) -> None:
    from nmrl.export.verify import claimed_pattern
    from nmrl.sparsity import masked_layers
    from nmrl.train.algorithm import get_algorithm
    from nmrl.train.config import TrainConfig

    config = TrainConfig(env="Hopper-v5", sparsity="0.9", hidden=(32, 32))
    algo = get_algorithm("td3")(HOPPER_OBS, 3, [-1.0] * 3, [1.0] * 3, config.algorithm_config(), torch.device("cpu"))
    policy = algo.policy().eval()
    assert masked_layers(policy) and claimed_pattern(config.sparsity) is None
    result = export_policy(tmp_path / "u.onnx", policy, HOPPER_OBS, 3, claimed_pattern(config.sparsity))
    assert result.check.metadata["nmrl.sparsity"] == "none"
    weights = {init.name: numpy_helper.to_array(init) for init in result.model.graph.initializer}
    for name, layer in masked_layers(policy):
        np.testing.assert_array_equal(weights[f"{name}.weight"], layer.effective_weight().numpy())
    total_zeros = sum((weights[f"{name}.weight"] == 0).sum() for name, _ in masked_layers(policy))
    total = sum(weights[f"{name}.weight"].size for name, _ in masked_layers(policy))
    assert total_zeros / total == pytest.approx(0.9, abs=0.02)
