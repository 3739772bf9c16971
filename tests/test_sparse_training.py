"""The sparse-training rules every registered algorithm follows, kept by nmrl.train.sparse_training.

Each test runs over every algorithm in the registry, so an algorithm added later is held to the
same rules. The 2:4 fast path needs a GPU; here it runs on the CPU through stand-ins that would
fail if the real thing misbehaved: a capability probe that says "available", a compressor that
records the weight it was given (and returns it dense, so the CPU can multiply by it), and a
timer under which the 2:4 step measures faster.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity import MaskedLinear, NMPattern, check_nm, masked_layers, nm_mask
from nmrl.sparsity import semi_structured as ss
from nmrl.train.algorithm import get_algorithm
from nmrl.train.buffer import Batch
from nmrl.train.config import ALGORITHM_MODULES

ALGOS = sorted(ALGORITHM_MODULES)  # every algorithm --algo offers
OBS, ACT, BATCH = 11, 3, 32
STAND_IN = ss.SemiStructuredSupport(True, "stand-in", backend="cusparselt", dtypes=("float16", "bfloat16"))


def _batch(generator: torch.Generator, reward_scale: float = 1.0) -> Batch:
    return Batch(
        torch.randn(BATCH, OBS, generator=generator),
        torch.rand(BATCH, ACT, generator=generator) * 2 - 1,
        torch.randn(BATCH, generator=generator) * reward_scale,
        torch.randn(BATCH, OBS, generator=generator),
        torch.zeros(BATCH),
    )


def _agent(tmp_path, algo: str, **overrides):
    torch.manual_seed(0)
    settings = dict(algo=algo, hidden=(32, 32), batch_size=BATCH, mask_interval=4)
    config = tiny_config(tmp_path, **{**settings, **overrides})
    return get_algorithm(algo)(OBS, ACT, [-1.0] * ACT, [1.0] * ACT, config.algorithm_config(), torch.device("cpu"))


@pytest.fixture
def compressed(monkeypatch):
    """The CPU stand-ins for a GPU with 2:4 kernels; yields the list of weights compressed."""
    given: list[torch.Tensor] = []

    def compress(dense: torch.Tensor) -> torch.Tensor:
        given.append(dense.detach().clone())
        return dense.detach().clone()

    timings = iter([2.0, 1.0] * 100)  # dense step, then 2:4 step: 2:4 measures 2x faster
    monkeypatch.setattr(ss.probe, "device_support", lambda device: STAND_IN)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", compress)
    monkeypatch.setattr(ss.timing, "time_cuda", lambda fn, *args, **kwargs: (fn(), next(timings))[1])
    return given


def _sparse_layers(agent) -> list[tuple[str, MaskedLinear]]:
    return [
        (f"{net}.{name}", layer) for net, module in agent.networks().items() for name, layer in masked_layers(module)
    ]


@pytest.mark.parametrize("algo", ALGOS)
def test_every_network_is_nm_after_every_update(tmp_path, algo):
    agent = _agent(tmp_path, algo)
    pattern = NMPattern(2, 4)
    layers = _sparse_layers(agent)
    assert {name.split(".")[0] for name, _ in layers} == {n for n in agent.networks() if n != "temperature"}
    generator = torch.Generator().manual_seed(1)
    for _ in range(9):
        agent.update(_batch(generator))
        for name, layer in layers:
            assert check_nm(layer.effective_weight(), pattern) == [], name
            due = name.split(".")[0].endswith("_target") or int(layer.steps_since_refresh) == 0
            if due:  # targets re-mask after every soft update; online layers every 4th step
                assert torch.equal(layer.mask, nm_mask(layer.weight, pattern)), name


@pytest.mark.parametrize("algo", ALGOS)
def test_masks_follow_every_optimizer_step_not_the_update_body(tmp_path, algo):
    """The mask refresh belongs to the optimizer: stepping it by hand refreshes masks too."""
    agent = _agent(tmp_path, algo, mask_interval=1)
    optimizer = agent.optimizers["critic"]
    layer = masked_layers(agent.critic1)[1][1]
    for param in (p for group in optimizer.param_groups for p in group["params"]):
        param.grad = torch.randn_like(param)
    optimizer.step()
    assert torch.equal(layer.mask, nm_mask(layer.weight, NMPattern(2, 4)))


@pytest.mark.parametrize("algo", ALGOS)
def test_semi_structured_engages_the_fast_path_in_every_network(tmp_path, algo, compressed):
    agent = _agent(tmp_path, algo, semi_structured=True)
    assert agent.sparse.fast_path is not None and agent.sparse.fast_path.engaged
    for name, module in agent.networks().items():
        if masked_layers(module):  # the 32x32 hidden layer fits the kernels; 11- and 3-wide ones do not
            fast = [n for n, layer in masked_layers(module) if ss.on_fast_path(layer)]
            assert fast, f"{name} has no layer on the fast path"
    before = len(compressed)
    agent.update(_batch(torch.Generator().manual_seed(1)))
    assert len(compressed) > before  # the update's forward passes ran through the compressor


@pytest.mark.parametrize("algo", ALGOS)
def test_semi_structured_without_a_capable_gpu_is_one_line_refusal(tmp_path, algo):
    with pytest.raises(NmrlError) as refusal:
        _agent(tmp_path, algo, semi_structured=True)
    message = str(refusal.value)
    assert "needs a CUDA device" in message and "\n" not in message


@pytest.mark.parametrize("algo", ALGOS)
def test_compressed_weights_are_fresh_after_every_step_with_fused_adam(tmp_path, algo, compressed):
    """Fused Adam writes weights without moving their version counter, and with mask_interval 4
    the mask stays put for three steps: only the optimizer hook can tell the layer to recompress."""
    agent = _agent(tmp_path, algo, semi_structured=True, semi_structured_dtype="bfloat16")
    assert all(opt.defaults.get("fused") for name, opt in agent.optimizers.items() if name != "temperature")
    dtype = torch.bfloat16
    fast = [(name, layer) for name, layer in _sparse_layers(agent) if ss.on_fast_path(layer)]
    assert fast
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 32, generator=generator)
    for step in range(8):
        agent.update(_batch(generator))
        for name, layer in fast:
            current = (layer.weight * layer.mask).detach().to(dtype)
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                out = layer(x)
            used = layer.kernel.cache[1]  # what the forward multiplied by (the stand-in keeps it dense)
            assert torch.equal(used, current), f"step {step}: {name} multiplied a stale weight"
            expected = nn.functional.linear(x.to(dtype), current, layer.bias.detach().to(dtype))
            torch.testing.assert_close(out, expected, msg=f"step {step}: {name}")


@pytest.mark.parametrize("algo", ALGOS)
def test_fp16_updates_are_loss_scaled(tmp_path, algo, compressed):
    """Under fp16 autocast an overflowing gradient must skip the step (GradScaler), not write
    inf/NaN into the weights; bf16 needs no scaling."""
    agent = _agent(tmp_path, algo, semi_structured=True, semi_structured_dtype="float16")
    assert agent.sparse.scaler.is_enabled()
    assert not _agent(tmp_path, algo, semi_structured=True).sparse.scaler.is_enabled()  # bf16
    generator = torch.Generator().manual_seed(1)
    agent.update(_batch(generator))
    weights = [p.detach().clone() for p in agent.critic1.parameters()]
    agent.update(_batch(generator, reward_scale=1e30))  # the critic's loss overflows
    for before, after in zip(weights, agent.critic1.parameters(), strict=True):
        assert torch.isfinite(after).all()
        assert torch.equal(before, after)  # the overflowing step was skipped
    # The loss scale it settled on travels with the checkpoint.
    resumed = _agent(tmp_path, algo, semi_structured=True, semi_structured_dtype="float16")
    resumed.load_state_dict(agent.state_dict())
    assert resumed.sparse.scaler.get_scale() == agent.sparse.scaler.get_scale() < 2.0**16


@pytest.mark.parametrize("sparsity", ["2:4", "0.75"])
@pytest.mark.parametrize("algo", ALGOS)
def test_nmrls_own_updates_never_trip_the_unbound_optimizer_warning(tmp_path, algo, sparsity, monkeypatch, caplog):
    """Every layer nmrl.sparsify makes warns after a few training passes with no counted optimizer
    step (the user's trap); nmrl's own algorithms bind every optimizer, so they never warn, even
    with the TD3 actor updated every other step."""
    from nmrl.sparsity import layers as layers_module

    monkeypatch.setattr(layers_module, "UNSTEPPED_PASS_LIMIT", 4)
    monkeypatch.setattr(layers_module, "_warned_unstepped", False)
    agent = _agent(tmp_path, algo, sparsity=sparsity)
    assert all(layer.watch_steps for _, layer in _sparse_layers(agent) if layer.weight.requires_grad)
    generator = torch.Generator().manual_seed(1)
    with caplog.at_level("WARNING", logger="nmrl.sparsity.layers"):
        for _ in range(12):
            agent.update(_batch(generator))
    assert not [r for r in caplog.records if "without a counted optimizer step" in r.getMessage()]
