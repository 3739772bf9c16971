"""--gradient: which shadow weights of an N:M layer learn (issue 23: ``active`` closed the
HalfCheetah gap to dense, docs/baselines.md)."""

import pytest
import torch

from nmrl.sparsity import NMLinear, NMPattern, sparsify
from nmrl.sparsity.semi_structured import SemiStructuredKernel
from nmrl.train.config import TrainConfig


def _grads(gradient: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    sparsify(model, "2:4", gradient=gradient)
    layer = model[0]
    model(torch.randn(5, 16)).square().sum().backward()
    grad = layer.weight.grad
    return float((grad * (1 - layer.mask)).abs().sum()), float((grad * layer.mask).abs().sum())


def test_active_gradient_reaches_only_kept_weights() -> None:
    pruned, kept = _grads("active")
    assert pruned == 0.0 and kept > 0
    pruned, kept = _grads("ste")  # the straight-through default moves the pruned shadows too
    assert pruned > 0 and kept > 0


def test_gradient_setting_reaches_every_network_and_is_validated() -> None:
    config = TrainConfig.from_settings(env="Hopper-v5", sparsity="2:4", gradient="active")
    assert TrainConfig.from_dict(config.to_dict()).nm.gradient == "active"
    # the default, of runs and of layers alike (docs/baselines.md says why)
    assert TrainConfig.from_settings(env="Hopper-v5").nm.gradient == "active"
    assert NMLinear(16, 8, NMPattern(2, 4)).gradient == "active"
    with pytest.raises(ValueError, match="gradient must be one of"):
        sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4", gradient="all")


def test_fast_path_kernel_trains_only_kept_weights_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2:4 kernel of --semi-structured honours gradient="active" (the CPU cannot compress: the
    stand-in hands the dense masked weight to the same autograd function)."""
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense)
    torch.manual_seed(0)
    layer = NMLinear(16, 8, NMPattern(2, 4), gradient="active")
    layer.kernel = SemiStructuredKernel()
    x = torch.randn(5, 16, dtype=torch.bfloat16)  # a fast dtype: the kernel's own backward runs
    layer(x).float().square().sum().backward()
    grad = layer.weight.grad
    assert grad is not None and grad[layer.mask == 1].abs().sum() > 0
    assert not grad[layer.mask == 0].any()


def test_a_config_saved_before_the_option_keeps_training_straight_through(tmp_path) -> None:
    """A run whose config.json predates --gradient trained every shadow weight: a resume or reload
    must not switch it to today's default."""
    saved = TrainConfig.from_settings(env="Hopper-v5", sparsity="2:4").to_dict()
    del saved["nm"]["gradient"]
    assert TrainConfig.from_dict(saved).nm.gradient == "ste"
    explicit = TrainConfig.from_settings(env="Hopper-v5", sparsity="2:4", gradient="active").to_dict()
    assert TrainConfig.from_dict(explicit).nm.gradient == "active"
