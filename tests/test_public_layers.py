"""Layers in other people's models: nmrl.sparsify, bind_optimizer, bind_target, the two state-dict forms."""

import copy

import pytest
import torch
from torch import nn

import nmrl
from nmrl.errors import NmrlError
from nmrl.sparsity import NMLinear, NMPattern, check_nm, nm_mask
from nmrl.sparsity.dynamic import UnstructuredLinear
from nmrl.sparsity.spec import NMSparsity, UnstructuredSparsity

TWO_FOUR = NMPattern(2, 4)


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.mark.parametrize("setting", ["2:4", " 2:4 ", TWO_FOUR, NMSparsity(TWO_FOUR)])
def test_sparsify_takes_text_patterns_and_specs(setting):
    model = net()
    reports = nmrl.sparsify(model, setting)
    assert [type(m) for m in model[::2]] == [NMLinear] * 3
    assert [r.pattern for r in reports] == ["2:4"] * 3


def test_sparsify_dense_and_unstructured_settings():
    dense = net()
    nmrl.sparsify(dense, "dense")
    assert all(type(m) is nn.Linear for m in dense[::2])
    for setting in ("0.75", 0.75, UnstructuredSparsity(0.75)):
        model = net()
        nmrl.sparsify(model, setting)
        # the default keeps the output layer dense, as DS-TD3 does
        assert [type(m) for m in model[::2]] == [UnstructuredLinear, UnstructuredLinear, nn.Linear]
    model = net()
    nmrl.sparsify(model, UnstructuredSparsity(0.75, layers="all"))
    assert type(model[4]) is UnstructuredLinear


@pytest.mark.parametrize("bad", ["2:x", "two", True, None, 1.5])
def test_sparsify_refuses_bad_settings_with_one_line(bad):
    with pytest.raises(NmrlError) as error:
        nmrl.sparsify(net(), bad)
    assert "\n" not in str(error.value)


def test_an_optimizer_made_before_sparsify_is_refused():
    model = net()
    stale = torch.optim.Adam(model.parameters(), lr=1e-3)
    nmrl.sparsify(model, "2:4")
    with pytest.raises(NmrlError, match=r"created before nmrl\.sparsify"):
        nmrl.bind_optimizer(stale, model)
    # one that trains only part of the sparse layers is refused too, naming them
    partial = torch.optim.Adam(model[0].parameters(), lr=1e-3)
    with pytest.raises(NmrlError, match="sparse layers 2, 4"):
        nmrl.bind_optimizer(partial, model)
    with pytest.raises(NmrlError, match="no sparse layers"):
        nmrl.bind_optimizer(torch.optim.Adam(net().parameters()), net())
    good = torch.optim.Adam(model.parameters(), lr=1e-3)
    nmrl.bind_optimizer(good, model)
    with pytest.raises(NmrlError, match="already bound"):
        nmrl.bind_optimizer(good, model)


def test_a_plain_training_loop_keeps_masks_nm_after_every_step():
    model = net()
    nmrl.sparsify(model, "2:4")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    nmrl.bind_optimizer(optimizer, model)
    layers = [m for m in model if isinstance(m, NMLinear)]
    first_masks = [layer.mask.clone() for layer in layers]
    first_weights = [layer.weight.detach().clone() for layer in layers]
    x, y = torch.randn(64, 8), torch.randn(64, 2)
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for layer in layers:
            assert check_nm(layer.effective_weight(), TWO_FOUR) == []
            # the hook re-selected the mask from the weights the step just wrote
            assert torch.equal(layer.mask, nm_mask(layer.weight.detach(), TWO_FOUR))
    assert all(not torch.equal(layer.weight, w) for layer, w in zip(layers, first_weights, strict=True))
    assert any(not torch.equal(layer.mask, m) for layer, m in zip(layers, first_masks, strict=True))


def test_bind_target_remasks_after_any_polyak_update():
    online = net()
    nmrl.sparsify(online, "2:4")
    target = copy.deepcopy(online).requires_grad_(False)
    nmrl.bind_target(target)
    with torch.no_grad():  # CleanRL's / SB3's Polyak update writes through .data
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        for p, q in zip(target.parameters(), online.parameters(), strict=True):
            p.data.copy_(0.5 * q.data + 0.5 * p.data)
    target(torch.randn(3, 8))
    for layer in (m for m in target if isinstance(m, NMLinear)):
        assert torch.equal(layer.mask, nm_mask(layer.weight, TWO_FOUR))
    with pytest.raises(NmrlError, match="no sparse layers"):
        nmrl.bind_target(net())


def test_an_nm_model_and_its_dense_twin_load_each_others_state_dicts():
    sparse = net(0)
    nmrl.sparsify(sparse, "2:4")
    x = torch.randn(5, 8)
    # N:M -> dense: effective weights, no mask keys
    dense = net(1)
    dense.load_state_dict(nmrl.dense_state_dict(sparse))
    assert torch.equal(dense(x), sparse(x))
    assert set(nmrl.dense_state_dict(sparse)) == set(dense.state_dict())
    # dense -> N:M: masks recomputed from the loaded weights
    plain = net(2)
    again = net(3)
    nmrl.sparsify(again, "2:4")
    again.load_state_dict(plain.state_dict())
    for source, layer in zip(plain[::2], again[::2], strict=True):
        assert torch.equal(layer.weight, source.weight)
        assert torch.equal(layer.mask, nm_mask(source.weight, TWO_FOUR))
        assert check_nm(layer.effective_weight(), TWO_FOUR) == []
    # and the N:M model's dense form gives the same N:M model back
    back = net(4)
    nmrl.sparsify(back, "2:4")
    back.load_state_dict(nmrl.dense_state_dict(sparse))
    assert torch.equal(back(x), sparse(x))


def test_the_full_form_still_restores_shadow_weights_masks_and_counters():
    sparse = net(0)
    nmrl.sparsify(sparse, "2:4", mask_interval=5)
    sparse[0].steps_since_refresh.fill_(3)
    copy_ = net(1)
    nmrl.sparsify(copy_, "2:4", mask_interval=5)
    copy_.load_state_dict(sparse.state_dict())
    assert torch.equal(copy_[0].weight, sparse[0].weight)  # shadow, pruned entries included
    assert torch.equal(copy_[0].mask, sparse[0].mask)
    assert int(copy_[0].steps_since_refresh) == 3
    with pytest.raises(RuntimeError, match="Unexpected key"):
        net().load_state_dict(sparse.state_dict())  # the full form is not a dense model's


def test_an_unstructured_layer_loads_a_dense_state_dict_keeping_its_density():
    plain = net(0)
    model = net(1)
    nmrl.sparsify(model, "0.75")
    active = model[0].active
    model.load_state_dict(plain.state_dict())
    assert model[0].active == active
    kept = model[0].weight.detach().abs()[model[0].mask.bool()]
    dropped = plain[0].weight.detach().abs()[~model[0].mask.bool()]
    assert kept.min() >= dropped.max()  # the largest magnitudes are the ones kept
    assert torch.equal(model[0].weight.detach() == 0, model[0].mask == 0)


def test_import_nmrl_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, nmrl; assert 'torch' not in sys.modules; nmrl.sparsify; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_api_docs_layer_snippets_run():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    section = text.split("## Layers in your own models", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippets) >= 5
    for snippet in snippets:
        if "stable_baselines3" in snippet:
            continue  # run by tests/test_sb3.py's own, larger flow
        exec(compile(snippet, "docs/api.md", "exec"), {})


def test_bind_optimizer_keeps_a_fast_path_layers_compressed_weight_fresh(monkeypatch):
    """A GPU's 2:4 layer multiplies by a compressed copy of its weight. Fused Adam writes weights
    without moving their version counter and mask_interval 4 keeps the mask for three steps, so only
    the bound hook tells the layer to recompress (CPU stand-in: the "compressed" copy stays dense)."""
    import nmrl.sparsity.semi_structured as ss

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach().clone())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    nmrl.sparsify(model, "2:4", mask_interval=4)
    layer = model[0]
    layer.kernel = ss.SemiStructuredKernel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    nmrl.bind_optimizer(optimizer, model)
    x = torch.randn(8, 32)
    for step in range(6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        used = layer.kernel.cache[1]
        assert torch.equal(used, (layer.weight * layer.mask).detach().bfloat16()), f"stale weight after step {step}"


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_an_optimizer_nobody_bound_is_warned_about_once(monkeypatch, caplog):
    """The trap without bind_optimizer: an Adam made before sparsify steps the replaced layers'
    parameters; the sparse weights never change and their masks never refresh. nmrl says so."""
    from nmrl.sparsity import layers as layers_module

    monkeypatch.setattr(layers_module, "UNSTEPPED_PASS_LIMIT", 20)
    monkeypatch.setattr(layers_module, "_warned_unstepped", False)
    model = net()
    stale = torch.optim.Adam(model.parameters(), lr=1e-2)
    nmrl.sparsify(model, "2:4")
    weights = [m.weight.detach().clone() for m in model[::2]]
    with caplog.at_level("WARNING", logger="nmrl.sparsity.layers"):
        _train(model, stale, 30)
    assert all(torch.equal(m.weight, w) for m, w in zip(model[::2], weights, strict=True))  # the trap
    warnings = [r for r in caplog.records if "without a counted optimizer step" in r.getMessage()]
    assert len(warnings) == 1 and "nmrl.bind_optimizer" in warnings[0].getMessage()


@pytest.mark.parametrize("setting", ["2:4", "0.75"])
def test_a_bound_optimizer_or_a_hand_made_layer_is_not_warned_about(monkeypatch, caplog, setting):
    from nmrl.sparsity import layers as layers_module

    monkeypatch.setattr(layers_module, "UNSTEPPED_PASS_LIMIT", 20)
    monkeypatch.setattr(layers_module, "_warned_unstepped", False)
    model = net()
    nmrl.sparsify(model, setting)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    nmrl.bind_optimizer(optimizer, model)
    own = nn.Sequential(NMLinear(8, 2, TWO_FOUR))  # built by hand: its owner steps it as it likes
    with caplog.at_level("WARNING", logger="nmrl.sparsity.layers"):
        _train(model, optimizer, 30)
        _train(own, torch.optim.SGD(own.parameters(), lr=1e-2), 30)
        with torch.no_grad():  # acting and targets record no gradients
            for _ in range(30):
                model(torch.randn(4, 8))
    assert not [r for r in caplog.records if "without a counted optimizer step" in r.getMessage()]
