"""The 2:4 semi-structured fast path: selection logic and exact backward on CPU; numerics on a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity import NMLinear, NMPattern, refresh_masks, sparsify
from nmrl.sparsity import semi_structured as ss
from nmrl.train.networks import Actor

NO_SUPPORT = ss.SemiStructuredSupport(False, "no CUDA device (PyTorch sees none)")
CUSPARSELT = ss.SemiStructuredSupport(True, "test", backend="cusparselt", dtypes=("float16", "bfloat16"))
CUTLASS = ss.SemiStructuredSupport(True, "test", backend="cutlass", dtypes=("float16", "bfloat16"))


def _layer(out_features: int, in_features: int, pattern: str = "2:4") -> NMLinear:
    torch.manual_seed(0)
    return NMLinear(in_features, out_features, NMPattern.parse(pattern))


def _choice(layer: NMLinear, support: ss.SemiStructuredSupport, speedups=None) -> ss.LayerChoice:
    return ss.choose_layers([("layer", layer)], support, speedups)[0]


def test_nothing_is_chosen_without_a_capable_gpu():
    choice = _choice(_layer(256, 256), NO_SUPPORT)
    assert not choice.sparse and "no CUDA" in choice.reason


def test_pattern_must_fit_2of4():
    assert _choice(_layer(256, 256, "1:4"), CUSPARSELT).sparse
    assert _choice(_layer(256, 256, "2:8"), CUSPARSELT).sparse
    choice = _choice(_layer(256, 256, "4:8"), CUSPARSELT)
    assert not choice.sparse and "not 2:4-compatible" in choice.reason


@pytest.mark.parametrize(
    ("shape", "cusparselt", "cutlass"),
    [
        ((256, 256), True, True),
        ((256, 27), False, False),  # an observation layer: in = 27
        ((8, 256), False, False),  # an action head: out = 8
        ((256, 48), True, False),  # cuSPARSELt tiles 16x16, CUTLASS 32x64
        ((16, 16), True, False),
    ],
)
def test_shape_rules_per_backend(shape, cusparselt, cutlass):
    layer = _layer(*shape)
    assert _choice(layer, CUSPARSELT).sparse is cusparselt
    assert _choice(layer, CUTLASS).sparse is cutlass


def test_a_layer_measured_to_lose_stays_dense():
    layer = _layer(256, 256)
    losing = _choice(layer, CUSPARSELT, {"layer": 0.8})
    winning = _choice(layer, CUSPARSELT, {"layer": 1.3})
    assert not losing.sparse and "0.80x" in losing.reason
    assert winning.sparse and "1.30x" in winning.reason


def test_actor_report_names_each_layer():
    actor = Actor(27, 8, [-1.0] * 8, [1.0] * 8, hidden=(256, 256))
    sparsify(actor.net, NMPattern(2, 4))
    choices = ss.enable_semi_structured(actor, CUSPARSELT)
    assert [(c.name, c.sparse) for c in choices] == [("net.0", False), ("net.2", True), ("net.4", False)]
    assert ss.on_fast_path(actor.net[2]) and type(actor.net[2]) is NMLinear  # a kernel it holds, no class swap
    assert not ss.on_fast_path(actor.net[0])
    assert "net.2" in ss.format_choices(choices)


def test_enabled_module_keeps_state_dict_and_cpu_results():
    torch.manual_seed(1)
    actor = Actor(27, 8, [-1.0] * 8, [1.0] * 8, hidden=(64, 64))
    sparsify(actor.net, NMPattern(2, 4))
    obs = torch.randn(5, 27)
    before_out, before_keys = actor(obs), list(actor.state_dict())
    ss.enable_semi_structured(actor, CUSPARSELT)
    assert list(actor.state_dict()) == before_keys
    # On CPU (no fp16/bf16 CUDA input) the masked-dense forward runs.
    torch.testing.assert_close(actor(obs), before_out, rtol=0, atol=0)
    ss.disable_semi_structured(actor)
    assert not any(ss.on_fast_path(layer) for layer in actor.net)


@pytest.mark.parametrize(("decay", "gradient"), [(0.0, "ste"), (2e-4, "ste"), (2e-4, "active")])
def test_custom_backward_matches_masked_dense(decay, gradient):
    """The fast path's autograd function, fed a dense stand-in for the packed weight (the CPU cannot
    compress), gives the NMLinear gradients exactly: STE + SR-STE, or the kept weights' only."""
    torch.manual_seed(2)
    reference = NMLinear(64, 32, NMPattern(2, 4), srste_decay=decay, gradient=gradient)
    with torch.no_grad():
        reference.weight.mul_(3.0)
        reference.update_mask()
    fast = NMLinear(64, 32, NMPattern(2, 4), srste_decay=decay)
    fast.load_state_dict(reference.state_dict())
    x_ref = torch.randn(7, 3, 64, requires_grad=True)
    x_fast = x_ref.detach().clone().requires_grad_(True)
    upstream = torch.randn(7, 3, 32)

    (reference(x_ref) * upstream).sum().backward()
    stand_in = (fast.weight * fast.mask).detach()
    out = ss.SemiStructuredLinearFn.apply(
        x_fast, fast.weight, fast.mask, fast.bias, decay, stand_in, torch.float32, gradient == "active"
    )
    (out * upstream).sum().backward()

    torch.testing.assert_close(out, reference(x_ref))
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad)
    straight_through = upstream.reshape(-1, 32).t() @ x_fast.detach().reshape(-1, 64)
    if gradient == "active":  # pruned shadow weights get exactly nothing
        torch.testing.assert_close(fast.weight.grad, straight_through * fast.mask, rtol=0, atol=0)
        assert not fast.weight.grad[fast.mask == 0].any()
    else:  # the plain straight-through gradient plus decay * shadow on pruned entries
        srste_term = decay * fast.weight.detach() * (1 - fast.mask)
        torch.testing.assert_close(fast.weight.grad, straight_through + srste_term)


def test_compressed_weight_is_rebuilt_only_when_weight_or_mask_change(monkeypatch):
    compressions = []

    def fake_compress(dense):  # CPU stand-in for to_sparse_semi_structured: counts calls
        compressions.append(dense.clone())
        return dense

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake_compress)
    layer = _layer(32, 32)
    layer.kernel = ss.SemiStructuredKernel()
    layer.kernel.packed_weight(layer, torch.float16)
    layer.kernel.packed_weight(layer, torch.float16)
    assert len(compressions) == 1
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 32)).sum().backward()
    optimizer.step()  # in-place update of the shadow weight
    packed = layer.kernel.packed_weight(layer, torch.float16)
    assert len(compressions) == 2
    torch.testing.assert_close(packed, (layer.weight * layer.mask).detach().half())
    refresh_masks(layer, now=True)  # mask recomputed
    layer.kernel.packed_weight(layer, torch.float16)
    assert len(compressions) == 3
    layer.kernel.packed_weight(layer, torch.bfloat16)  # another compute dtype
    assert len(compressions) == 4


def test_inference_conversion_needs_a_gpu():
    actor = Actor(27, 8, [-1.0] * 8, [1.0] * 8)
    sparsify(actor.net, NMPattern(2, 4))
    with pytest.raises(NmrlError, match="not available here"):
        ss.to_semi_structured(actor, support=NO_SUPPORT)


def test_probe_without_cuda_says_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    support = ss.probe_semi_structured()
    assert not support.available and "no CUDA" in support.reason


# ---- on a GPU with sparse tensor cores ------------------------------------------------------------

GPU = pytest.mark.skipif(
    not ss.probe_semi_structured().available,
    reason=f"needs a GPU where 2:4 semi-structured matmul works ({ss.probe_semi_structured().reason})",
)


@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_fast_path_matches_masked_dense(dtype):
    if str(dtype).removeprefix("torch.") not in ss.probe_semi_structured().dtypes:
        pytest.skip(f"{dtype} 2:4 not supported here")
    torch.manual_seed(3)
    reference = nn.Sequential(NMLinear(512, 1024, NMPattern(2, 4)), nn.ReLU(), NMLinear(1024, 512, NMPattern(2, 4)))
    reference.cuda()
    fast = nn.Sequential(NMLinear(512, 1024, NMPattern(2, 4)), nn.ReLU(), NMLinear(1024, 512, NMPattern(2, 4)))
    fast.load_state_dict(reference.state_dict())
    fast.cuda()
    assert all(c.sparse for c in ss.enable_semi_structured(fast))
    x = torch.randn(256, 512, device="cuda")
    upstream = torch.randn(256, 512, device="cuda")
    outputs, grads = [], []
    for net in (reference, fast):
        with torch.autocast("cuda", dtype=dtype):
            out = net(x)
        (out.float() * upstream).sum().backward()
        outputs.append(out.float())
        grads.append([p.grad.float() for p in net.parameters()])
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.float16 else {"rtol": 5e-2, "atol": 5e-2}
    torch.testing.assert_close(outputs[1], outputs[0], **tolerance)
    for fast_grad, ref_grad in zip(grads[1], grads[0], strict=True):
        scale = ref_grad.abs().max().clamp_min(1.0)
        torch.testing.assert_close(fast_grad / scale, ref_grad / scale, **tolerance)


@GPU
def test_gpu_inference_conversion_matches_actor():
    torch.manual_seed(4)
    actor = Actor(32, 8, [-1.0] * 8, [1.0] * 8, hidden=(1024, 1024))
    sparsify(actor.net, NMPattern(2, 4))
    obs = torch.randn(64, 32)
    expected = actor(obs)
    choices = ss.to_semi_structured(actor, torch.float16)
    assert [c.sparse for c in choices] == [True, True, False]
    assert isinstance(actor.net[2].weight, torch.sparse.SparseSemiStructuredTensor)
    got = actor(obs.cuda().half()).float().cpu()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


# ---- the --semi-structured training flag ----------------------------------------------------------


def test_train_flag_fails_clearly_without_a_capable_gpu(tmp_path):
    from helpers import tiny_config

    from nmrl.train.td3 import TD3

    config = tiny_config(tmp_path, semi_structured=True)
    with pytest.raises(NmrlError, match="needs a CUDA device"):
        TD3(4, 1, [-3.0], [3.0], config.algorithm_config(), torch.device("cpu"))
    with pytest.raises(NmrlError, match="fits 2:4"):
        tiny_config(tmp_path, semi_structured=True, sparsity="4:8").validate()
    with pytest.raises(NmrlError, match="fits 2:4"):
        tiny_config(tmp_path, semi_structured=True, sparsity="dense").validate()
    with pytest.raises(NmrlError, match="--device cuda"):
        tiny_config(tmp_path, semi_structured=True, device="cpu").validate()
    if not ss.probe_semi_structured().available:
        with pytest.raises(NmrlError, match="2:4 kernels do not work here"):
            config.validate()


def test_train_verb_fails_before_making_a_run_directory(tmp_path, capsys):
    from nmrl.cli import main

    if ss.probe_semi_structured().available:
        pytest.skip("this machine has working 2:4 kernels")
    runs = tmp_path / "runs"
    argv = ["train", "--env", "InvertedPendulum-v5", "--semi-structured", "--runs-dir", str(runs)]
    assert main(argv) == 1
    assert "2:4 kernels do not work here" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_train_flag_round_trips_through_config_json(tmp_path):
    from helpers import tiny_config

    from nmrl.train.config import TrainConfig

    config = tiny_config(tmp_path, semi_structured=True, semi_structured_dtype="float16")
    restored = TrainConfig.from_dict(config.to_dict())
    assert restored.fast_path.semi_structured and restored.fast_path.semi_structured_dtype == "float16"


@GPU
def test_gpu_td3_update_with_semi_structured_layers(tmp_path, monkeypatch):
    from helpers import tiny_config

    from nmrl.sparsity import check_nm, nm_layers
    from nmrl.train.buffer import Batch
    from nmrl.train.td3 import TD3

    # Whatever this GPU measures at batch 256, put every eligible layer on the fast path so that
    # the update below runs through it (no measurements: every eligible layer is chosen).
    monkeypatch.setattr(ss, "measure_layers", lambda *args, **kwargs: {})
    config = tiny_config(tmp_path, semi_structured=True, hidden=(256, 256), batch_size=256)
    device = torch.device("cuda")
    algo = TD3(17, 6, [-1.0] * 6, [1.0] * 6, config.algorithm_config(), device)
    assert ss.on_fast_path(algo.critic1.net[2])
    batch = Batch(
        obs=torch.randn(256, 17, device=device),
        action=torch.rand(256, 6, device=device) * 2 - 1,
        reward=torch.randn(256, device=device),
        next_obs=torch.randn(256, 17, device=device),
        terminated=torch.zeros(256, device=device),
    )
    for _ in range(4):
        metrics = algo.update(batch)
    assert torch.isfinite(metrics["critic_loss"]) and torch.isfinite(metrics["actor_loss"])
    for network in algo.modules.values():
        for _, layer in nm_layers(network):
            assert not check_nm(layer.effective_weight(), NMPattern(2, 4))


def test_a_semi_structured_run_loads_on_cpu_for_eval_and_export(tmp_path):
    """A run trained with --semi-structured (on a GPU) must still load on a CPU-only machine."""
    from helpers import tiny_config

    from nmrl.train.loop import train
    from nmrl.train.run import load_trained_actor

    run_dir = train(tiny_config(tmp_path, total_steps=250, learning_starts=200, eval_every=250, checkpoint_every=250))
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["semi_structured"] = True  # as if it had been trained on a GPU with the fast path
    config_path.write_text(json.dumps(config))
    loaded = load_trained_actor(run_dir)
    assert loaded.config.fast_path.semi_structured
    assert not any(ss.on_fast_path(m) for m in loaded.policy.modules())


# ---- the torch-2:4 deploy backend ----------------------------------------------------------------


def test_torch_2of4_backend_says_why_it_cannot_run(tmp_path):
    from nmrl.deploy.torch_semi_structured import (
        load_torch_semi_structured_policy,
        torch_semi_structured_unavailable_reason,
    )

    reason = torch_semi_structured_unavailable_reason()
    if reason is None:
        pytest.skip("this machine has working 2:4 kernels")
    assert reason == ss.probe_semi_structured().reason
    with pytest.raises(NmrlError, match="needs a GPU with 2:4 sparse tensor cores"):
        load_torch_semi_structured_policy(tmp_path)


@GPU
def test_gpu_torch_2of4_policy_matches_the_checkpoint_actor():
    from nmrl.deploy.torch_semi_structured import SemiStructuredTorchPolicy

    torch.manual_seed(5)
    actor = Actor(32, 8, [-1.0] * 8, [1.0] * 8, hidden=(1024, 1024))
    sparsify(actor.net, NMPattern(2, 4))
    obs = torch.randn(16, 32)
    expected = actor(obs).detach().numpy()
    policy = SemiStructuredTorchPolicy(actor, 32, 8)
    got = policy.act(obs.numpy())
    assert got.dtype == np.float32 and got.shape == (16, 8)
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(policy.act(obs[0].numpy()), expected[0], rtol=2e-2, atol=2e-2)


def test_plain_linear_layers_are_judged_by_their_weights():
    torch.manual_seed(6)
    pruned = nn.Linear(256, 256)
    with torch.no_grad():
        pruned.weight.mul_(NMLinear(256, 256, NMPattern(2, 4)).mask)  # a 2:4 mask from elsewhere
    full = nn.Linear(256, 256)
    choices = ss.choose_layers([("pruned", pruned), ("full", full)], CUSPARSELT)
    assert (choices[0].pattern, choices[0].sparse) == ("2:4", True)
    assert (choices[1].pattern, choices[1].sparse) == ("dense", False)
    assert choices[1].reason.startswith("not 2:4 along K")
    assert [name for name, _ in ss.linear_layers(nn.Sequential(pruned, nn.ReLU(), full))] == ["0", "2"]


def test_copies_drop_the_compressed_weight_cache(monkeypatch):
    import copy

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.clone())
    layer = _layer(32, 32)
    layer.kernel = ss.SemiStructuredKernel()
    layer.kernel.packed_weight(layer, torch.float16)
    clone = copy.deepcopy(layer)
    assert clone.kernel is not layer.kernel  # each layer its own cache
    assert layer.kernel.cache is not None and clone.kernel.cache is None
    from_clone = clone.kernel.packed_weight(clone, torch.float16)
    torch.testing.assert_close(from_clone, layer.kernel.packed_weight(layer, torch.float16))


# ---- which kernels torch will really run (defect: "cutlass" claimed whenever cuSPARSELt was missing) ----


def _fake_gpu(monkeypatch, capability, cusparselt: bool, force_cutlass: bool):
    """A stand-in CUDA device of ``capability`` whose tiny 2:4 matmul 'works'."""
    from torch.sparse import SparseSemiStructuredTensor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Stand-in GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: cusparselt)
    monkeypatch.setattr(torch.backends.cusparselt, "version", lambda: 800)
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", force_cutlass)
    monkeypatch.setattr(ss.probe, "_tiny_check", lambda dtype, device: None)
    ss.probe_semi_structured.cache_clear()


@pytest.mark.parametrize(
    ("capability", "cusparselt", "force_cutlass", "backend"),
    [
        ((9, 0), True, False, "cusparselt"),
        ((9, 0), False, False, None),  # Hopper without cuSPARSELt: torch never falls back to CUTLASS
        ((9, 0), True, True, None),  # CUTLASS forced on Hopper: its 2:4 kernels are SM 8.x only
        ((8, 0), False, False, None),  # not forced: torch does not take CUTLASS by itself
        ((8, 6), False, True, "cutlass"),
    ],
)
def test_probe_reports_the_backend_torch_will_use(monkeypatch, capability, cusparselt, force_cutlass, backend):
    _fake_gpu(monkeypatch, capability, cusparselt, force_cutlass)
    try:
        support = ss.probe_semi_structured()
    finally:
        ss.probe_semi_structured.cache_clear()
    assert support.backend == backend
    assert support.available is (backend is not None)
    if backend is None:
        assert "no 2:4 kernels will run" in support.reason and "\n" not in support.reason


# ---- per-layer selection on the cost of a whole training step (defect: forward GEMM only) -----------


def test_a_layer_training_step_recompresses_and_runs_backward(monkeypatch):
    compressed = []
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda d: compressed.append(d) or d.clone())
    step = ss.layer_training_step((32, 64), batch=8, dtype=torch.bfloat16, device="cpu", sparse=True)
    step()
    step()
    assert len(compressed) == 2  # recompressed every step: the optimizer moves the weights each step
    dense = ss.layer_training_step((32, 64), batch=8, dtype=torch.bfloat16, device="cpu", sparse=False)
    dense()
    assert len(compressed) == 2
    # Both steps run the backward: the closures' layers hold weight gradients afterwards.
    for fn in (step, dense):
        layer = next(c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, NMLinear))
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_training_selection_times_each_shape_once_for_all_networks(monkeypatch, tmp_path):
    from helpers import tiny_config

    from nmrl.train.td3 import TD3

    timed = []

    def timer(fn, *args, **kwargs):  # stand-in: runs the step once; 2:4 twice as fast
        fn()
        timed.append(fn)
        return 2.0 if len(timed) % 2 else 1.0

    monkeypatch.setattr(ss.probe, "device_support", lambda device: CUSPARSELT)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda d: d.clone())
    monkeypatch.setattr(ss.timing, "time_cuda", timer)
    config = tiny_config(tmp_path, semi_structured=True, hidden=(32, 48))
    TD3(11, 3, [-1.0] * 3, [1.0] * 3, config.algorithm_config(), torch.device("cpu"))
    # Six networks, but the only shapes the kernels take are 48x32 (actor and critics' hidden
    # layer): one dense and one 2:4 timing of a training step, for all six networks together.
    assert len(timed) == 2
