import torch
from torch import nn

from nmrl.sparsity import DENSE, NMLinear, NMPattern, check_nm, nm_layers, refresh_masks, sparsify


def test_forward_uses_masked_weight_and_straight_through_gradients():
    torch.manual_seed(0)
    layer = NMLinear(12, 5, NMPattern(2, 4), srste_decay=0.0, gradient="ste")
    x = torch.randn(7, 12)
    expected = x @ (layer.weight * layer.mask).T + layer.bias
    assert torch.allclose(layer(x), expected)
    assert check_nm(layer.effective_weight(), NMPattern(2, 4)) == []
    layer(x).sum().backward()
    # STE: the gradient wrt the effective weight reaches every shadow weight, pruned ones too.
    assert torch.allclose(layer.weight.grad, torch.ones(7, 5).T @ x)
    assert (layer.weight.grad[layer.mask == 0] != 0).all()


def test_srste_decay_pulls_pruned_weights_only():
    torch.manual_seed(0)
    decay = 0.1
    plain = NMLinear(8, 3, NMPattern(1, 4), srste_decay=0.0, gradient="ste")
    refined = NMLinear(8, 3, NMPattern(1, 4), srste_decay=decay, gradient="ste")
    refined.load_state_dict(plain.state_dict())
    x = torch.randn(4, 8)
    plain(x).sum().backward()
    refined(x).sum().backward()
    difference = refined.weight.grad - plain.weight.grad
    expected = decay * plain.weight.detach() * (1 - plain.mask)
    assert torch.allclose(difference, expected, atol=1e-6)
    assert (difference[plain.mask == 1] == 0).all()


def test_mask_interval_counts_optimizer_steps():
    layer = NMLinear(8, 4, NMPattern(2, 4), mask_interval=3)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(32, dtype=torch.float32).reshape(4, 8))
    layer.update_mask()
    before = layer.mask.clone()
    with torch.no_grad():
        layer.weight.mul_(-1).add_(100)  # reverses the magnitude order in every group
    refresh_masks(layer)
    refresh_masks(layer)
    assert torch.equal(layer.mask, before)  # not due yet
    refresh_masks(layer)
    assert not torch.equal(layer.mask, before)
    assert check_nm(layer.effective_weight(), NMPattern(2, 4)) == []


def test_sparsify_replaces_linears_and_reports():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(2, 10)
    reports = sparsify(net, NMPattern(2, 4))
    assert [type(m) for m in net] == [NMLinear, nn.ReLU, NMLinear]
    assert [(r.name, r.shape, r.pattern) for r in reports] == [("0", (16, 10), "2:4"), ("2", (3, 16), "2:4")]
    # 10 inputs = groups of 4, 4, 2: keeps 2+2+2 of 10
    assert abs(reports[0].density - 0.6) < 1e-6 and abs(reports[1].density - 0.5) < 1e-6
    assert len(nm_layers(net)) == 2
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_sparsify_dense_is_a_no_op():
    net = nn.Sequential(nn.Linear(4, 4))
    reports = sparsify(net, DENSE)
    assert type(net[0]) is nn.Linear and reports[0].density == 1.0
