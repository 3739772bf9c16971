"""Unstructured sparse training: density allocation, SET / RigL topology updates, masked Adam,
target sparsity by magnitude, and the FLOP / parameter accounting."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity import NMLinear, NMPattern, refresh_masks, sparsify
from nmrl.sparsity.accounting import format_count, network_costs, total_cost
from nmrl.sparsity.dynamic import (
    MaskedAdam,
    UnstructuredLinear,
    allocate_densities,
    cosine_drop_fraction,
    drop_and_grow,
    sparsify_unstructured,
    top_k_mask,
    unstructured_layers,
)
from nmrl.train.networks import mlp

shapes_strategy = st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(shapes=shapes_strategy, sparsity=st.floats(0.0, 0.95), method=st.sampled_from(["erdos_renyi", "uniform"]))
def test_allocation_keeps_the_global_budget(shapes, sparsity, method):
    densities = allocate_densities(shapes, sparsity, method)
    sizes = [o * i for o, i in shapes]
    assert all(0.0 < d <= 1.0 + 1e-9 for d in densities)
    kept = sum(d * s for d, s in zip(densities, sizes, strict=True))
    assert kept == pytest.approx((1 - sparsity) * sum(sizes), rel=1e-6)


def test_erdos_renyi_keeps_small_layers_denser():
    # Hopper's actor: 11 -> 256 -> 256 (the output layer is left dense elsewhere).
    first, second = allocate_densities([(256, 11), (256, 256)], 0.9, "erdos_renyi")
    assert first > 0.5 > 0.1 > second
    assert allocate_densities([(256, 11), (256, 256)], 0.9, "uniform") == pytest.approx([0.1, 0.1])
    # A layer that ER would push over density 1 is made dense and the others pay for it.
    tiny_first = allocate_densities([(256, 2), (256, 256)], 0.5, "erdos_renyi")
    assert tiny_first[0] == 1.0 and tiny_first[1] < 0.5


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_allocation_refuses_impossible_sparsity(bad):
    with pytest.raises(NmrlError):
        allocate_densities([(4, 4)], bad)


def _layer(topology="set", density=0.3, interval=1, drop_fraction=0.2, end_step=0, shape=(24, 40)):
    layer = UnstructuredLinear(
        shape[1],
        shape[0],
        density,
        topology=topology,
        interval=interval,
        drop_fraction=drop_fraction,
        end_step=end_step,
    )
    return layer


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.05, 0.95), drop_fraction=st.floats(0.0, 0.6), seed=st.integers(0, 10_000))
def test_set_keeps_exact_sparsity_and_regrows_what_it_drops(density, drop_fraction, seed):
    torch.manual_seed(seed)
    layer = _layer(density=density, drop_fraction=drop_fraction)
    active = layer.active
    assert active == max(1, round(density * layer.weight.numel()))
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * layer.mask)  # distinct magnitudes
    before = layer.mask.clone()
    magnitudes = layer.weight.abs().flatten().clone()
    change = drop_and_grow(layer, drop_fraction)
    assert layer.active == active
    assert change.dropped.numel() == change.grown.numel() == min(round(drop_fraction * active), active)
    flat_before = before.flatten()
    assert bool((flat_before[change.dropped] == 1).all())
    # Dropped are the smallest active magnitudes.
    if change.dropped.numel():
        survivors = flat_before.clone()
        survivors[change.dropped] = 0
        kept_ids = torch.nonzero(survivors, as_tuple=True)[0]
        if kept_ids.numel():
            assert magnitudes[change.dropped].max() <= magnitudes[kept_ids].min()
    # Grown weights start at zero; inactive weights are zero.
    assert bool((layer.weight.flatten()[change.grown] == 0).all())
    assert bool((layer.weight[layer.mask == 0] == 0).all())


def test_set_regrows_at_new_positions_not_the_dropped_ones():
    torch.manual_seed(0)
    layer = _layer(density=0.3, drop_fraction=0.2)
    change = drop_and_grow(layer, 0.2)
    assert change.dropped.numel() > 0
    assert not set(change.dropped.tolist()) & set(change.grown.tolist())


def test_rigl_grows_where_the_dense_gradient_is_largest():
    torch.manual_seed(0)
    layer = _layer(topology="rigl", density=0.25, interval=1, drop_fraction=0.3, end_step=100)
    inactive = torch.nonzero(layer.mask.flatten() == 0, as_tuple=True)[0]
    scores = torch.zeros(layer.weight.numel())
    favourites = inactive[torch.randperm(inactive.numel())[:5]]
    scores[favourites] = 10.0
    change = drop_and_grow(layer, 0.3, grow_scores=scores.view_as(layer.weight))
    assert set(favourites.tolist()) <= set(change.grown.tolist())


def test_topology_updates_follow_the_schedule_and_stop_at_end_step():
    torch.manual_seed(0)
    layer = _layer(topology="set", interval=3, drop_fraction=0.2, end_step=6)
    masks = [layer.mask.clone()]
    for _ in range(9):
        layer.step_mask()
        masks.append(layer.mask.clone())
    changed = [not torch.equal(masks[i], masks[i - 1]) for i in range(1, 10)]
    assert changed == [False, False, True, False, False, True, False, False, False]


def test_static_topology_never_moves():
    layer = _layer(topology="static", interval=1)
    before = layer.mask.clone()
    for _ in range(5):
        layer.step_mask()
    assert torch.equal(before, layer.mask)


def test_cosine_drop_fraction():
    assert cosine_drop_fraction(0.3, 0, 100) == pytest.approx(0.3)
    assert cosine_drop_fraction(0.3, 50, 100) == pytest.approx(0.15)
    assert cosine_drop_fraction(0.3, 100, 100) == 0.0


def _train_steps(net, optimizer, steps, x, y):
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
        refresh_masks(net)


@pytest.mark.parametrize("topology", ["static", "set", "rigl"])
@pytest.mark.parametrize("masked", [False, True])
def test_training_keeps_inactive_weights_zero_and_sparsity_exact(topology, masked):
    torch.manual_seed(0)
    net = mlp(6, 3, (32, 32))
    sparsify_unstructured(
        net, 0.8, "erdos_renyi", skip=("4",), topology=topology, interval=4, drop_fraction=0.2, end_step=40
    )
    layers = [layer for _, layer in unstructured_layers(net)]
    assert len(layers) == 2 and isinstance(net[4], nn.Linear) and not isinstance(net[4], UnstructuredLinear)
    counts = [layer.active for layer in layers]
    first_masks = [layer.mask.clone() for layer in layers]
    optimizer = MaskedAdam(net.parameters(), layers, lr=1e-2) if masked else torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    _train_steps(net, optimizer, 12, x, y)  # ends with a topology update (interval 4)
    # One more optimizer step: masked Adam must have cleared the moments of the weights that
    # update dropped before using them.
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()
    refresh_masks(net)  # step 13: no topology update
    for layer, count, first in zip(layers, counts, first_masks, strict=True):
        assert layer.active == count
        assert bool((layer.weight[layer.mask == 0] == 0).all())
        assert torch.equal(first, layer.mask) == (topology == "static")
        if masked:
            state = optimizer.state[layer.weight]
            assert bool((state["exp_avg"][layer.mask == 0] == 0).all())
            assert bool((state["exp_avg_sq"][layer.mask == 0] == 0).all())
    total = sum(counts)
    assert total == pytest.approx(0.2 * (32 * 6 + 32 * 32), abs=2)


def test_masked_adam_gives_regrown_weights_fresh_moments_plain_adam_does_not():
    def run(masked):
        torch.manual_seed(1)
        layer = UnstructuredLinear(8, 8, 0.5, topology="set", interval=5, drop_fraction=0.5)
        optimizer = (
            MaskedAdam(layer.parameters(), [layer], lr=1e-2)
            if masked
            else torch.optim.Adam(layer.parameters(), lr=1e-2)
        )
        x = torch.randn(32, 8)
        grown_state = None
        for step in range(1, 6):
            optimizer.zero_grad()
            layer(x).pow(2).sum().backward()
            optimizer.step()
            before = layer.mask.clone()
            layer.step_mask()
            if step == 5:
                grown = (layer.mask == 1) & (before == 0)
                dropped = (layer.mask == 0) & (before == 1)
                grown_state = optimizer.state[layer.weight]["exp_avg_sq"][grown]
                dropped_state = optimizer.state[layer.weight]["exp_avg_sq"][dropped]
        return grown_state, dropped_state

    grown, _ = run(masked=True)
    assert bool((grown == 0).all())
    # Plain Adam: dropped weights keep their moments, which a later regrowth would inherit.
    _, dropped_plain = run(masked=False)
    assert bool((dropped_plain != 0).any())


def test_rigl_layer_captures_the_dense_gradient_only_when_due():
    torch.manual_seed(0)
    layer = _layer(topology="rigl", interval=2, drop_fraction=0.3, end_step=10)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(16, 40)
    masks = []
    for _ in range(4):
        optimizer.zero_grad()
        layer(x).pow(2).sum().backward()
        optimizer.step()
        masks.append(layer.mask.clone())
        had_grad = layer.dense_grad is not None
        layer.step_mask()
        assert layer.dense_grad is None  # consumed by the update, never left behind
        masks[-1] = (masks[-1], had_grad, layer.mask.clone())
    assert [had for _, had, _ in masks] == [False, True, False, True]
    assert not torch.equal(masks[1][0], masks[1][2])


def test_target_keeps_the_online_sparsity_by_magnitude():
    torch.manual_seed(0)
    online = mlp(5, 2, (16,))
    sparsify_unstructured(online, 0.7, topology="set", interval=1, drop_fraction=0.3)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), 1e-2)
    x, y = torch.randn(32, 5), torch.randn(32, 2)
    for _ in range(5):
        _train_steps(online, optimizer, 1, x, y)  # topology moves every step
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 0.5)
        refresh_masks(target, now=True)
        pairs = zip(unstructured_layers(target), unstructured_layers(online), strict=True)
        for (_, t_layer), (_, o_layer) in pairs:
            assert t_layer.active == o_layer.active
            assert bool((t_layer.weight[t_layer.mask == 0] == 0).all())
            assert (
                torch.equal(t_layer.mask, top_k_mask(t_layer.weight.abs(), t_layer.active))
                or int((t_layer.weight != 0).sum()) <= t_layer.active
            )


def test_layer_state_round_trips_through_state_dict():
    torch.manual_seed(0)
    net = mlp(4, 2, (8,))
    sparsify_unstructured(net, 0.5, topology="set", interval=2)
    net[0].step_mask()
    clone = mlp(4, 2, (8,))
    sparsify_unstructured(clone, 0.5, topology="set", interval=2)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone[0].mask, net[0].mask) and int(clone[0].topology_steps) == 1


def test_accounting_counts_unstructured_nm_and_dense_layers():
    torch.manual_seed(0)
    dense = mlp(16, 4, (64, 64))
    costs = total_cost(network_costs(dense))
    assert costs.params == 16 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4
    assert costs.params_ratio == costs.training_ratio == costs.inference_ratio == 1.0

    nm = mlp(16, 4, (64, 64))
    sparsify(nm, NMPattern(1, 4))
    nm_costs = network_costs(nm)
    assert all(c.sparsity_label == "1:4" for c in nm_costs)
    assert nm_costs[1].weights == 64 * 64 // 4
    # N:M trains with dense weight gradients: 2 sparse passes + 1 dense pass.
    f_s, f_d = 2 * 64 * 16 + 64, 2 * 64 * 64 + 64
    assert nm_costs[1].training_flops == 2 * f_s + f_d
    assert isinstance(nm[0], NMLinear)

    sparse = mlp(16, 4, (64, 64))
    sparsify_unstructured(sparse, 0.9, "uniform", skip=("4",))
    summary = total_cost(network_costs(sparse))
    weights = summary.params - summary.biases
    assert weights == round(0.1 * 16 * 64) + round(0.1 * 64 * 64) + 64 * 4
    assert summary.training_ratio == pytest.approx(summary.inference_ratio)
    assert 0.1 < summary.inference_ratio < 0.2
    assert format_count(35_123) == "35.1K" and format_count(2_500_000) == "2.50M" and format_count(12) == "12"
