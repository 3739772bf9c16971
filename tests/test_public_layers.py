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
