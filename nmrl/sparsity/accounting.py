"""Parameters and FLOPs of (sparse) networks, relative to their dense twins.

Counts are per sample (batch of one) for the Linear layers, the only layers with weights.
A Linear ``[out, in]`` with ``nnz`` active weights costs ``f = 2 * nnz + out`` FLOPs forward
(a multiply-add per weight, an add per bias); ``f_D`` is the same with every weight active.
Training (forward + backward) follows the convention of the sparse-training papers (RigL,
Evci et al. 2020, appendix H): the backward pass costs two forward passes (gradient of the
input, gradient of the weight), each at the density it actually runs at:

- dense Linear: ``3 f_D``
- unstructured static / SET: ``3 f_S`` (only active weights get gradients)
- unstructured RigL: ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)``: every ``dT`` steps one dense
  weight gradient for the regrowth scores
- N:M with a straight-through estimator: ``2 f_S + f_D``: the dense shadow weights need the
  dense weight gradient on every step

These are arithmetic counts: what sparse hardware could skip, not what a CPU or a dense GPU
kernel saves (zeros cost the same there: docs/deploy.md measures it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from nmrl.sparsity.dynamic import UnstructuredLinear
from nmrl.sparsity.layers import MaskedLinear, NMLinear


@dataclass(frozen=True)
class LayerCost:
    """Parameters and per-sample FLOPs of one Linear layer, and of its dense twin."""

    name: str
    shape: tuple[int, int]  # (out, in)
    sparsity_label: str  # "dense", "2:4", "unstructured"
    weights: int  # active (nonzero-able) weights
    bias: int
    inference_flops: float
    training_flops: float

    @property
    def dense_weights(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def params(self) -> int:
        return self.weights + self.bias

    @property
    def dense_params(self) -> int:
        return self.dense_weights + self.bias

    @property
    def dense_inference_flops(self) -> float:
        return 2.0 * self.dense_weights + self.bias

    @property
    def dense_training_flops(self) -> float:
        return 3.0 * self.dense_inference_flops

    @property
    def density(self) -> float:
        return self.weights / self.dense_weights


def layer_cost(name: str, layer: nn.Linear) -> LayerCost:
    """The cost of one Linear, dense or sparse (counted from its mask, not its zeros)."""
    out_features, in_features = layer.weight.shape
    bias = out_features if layer.bias is not None else 0
    dense_flops = 2.0 * out_features * in_features + bias
    if isinstance(layer, MaskedLinear):
        weights = int(layer.mask.sum().item())
        label = layer.sparsity_label
    else:
        weights, label = out_features * in_features, "dense"
    sparse_flops = 2.0 * weights + bias
    if isinstance(layer, NMLinear):
        training = 2 * sparse_flops + dense_flops
    elif isinstance(layer, UnstructuredLinear) and layer.topology == "rigl":
        interval = layer.interval
        training = (3 * sparse_flops * interval + 2 * sparse_flops + dense_flops) / (interval + 1)
    else:
        training = 3 * sparse_flops
    return LayerCost(name, (out_features, in_features), label, weights, bias, sparse_flops, training)


def network_costs(module: nn.Module) -> list[LayerCost]:
    """The cost of every Linear layer in ``module``, in registration order."""
    return [layer_cost(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]


@dataclass(frozen=True)
class CostSummary:
    """Totals over a set of layers, and the ratios to their dense twins."""

    params: int
    dense_params: int
    inference_flops: float
    dense_inference_flops: float
    training_flops: float
    dense_training_flops: float
    biases: int = 0  # bias parameters (never pruned), to tell weight sparsity from parameter counts

    @property
    def params_ratio(self) -> float:
        return self.params / self.dense_params

    @property
    def inference_ratio(self) -> float:
        return self.inference_flops / self.dense_inference_flops

    @property
    def training_ratio(self) -> float:
        return self.training_flops / self.dense_training_flops

    @property
    def sparsity(self) -> float:
        """Fraction of weights (not biases) pruned, over all the layers."""
        weights = self.params - self.biases
        return 1.0 - weights / (self.dense_params - self.biases)

    def to_dict(self) -> dict[str, float]:
        return {
            "params": self.params,
            "dense_params": self.dense_params,
            "params_ratio": self.params_ratio,
            "sparsity": self.sparsity,
            "inference_flops": self.inference_flops,
            "dense_inference_flops": self.dense_inference_flops,
            "inference_ratio": self.inference_ratio,
            "training_flops": self.training_flops,
            "dense_training_flops": self.dense_training_flops,
            "training_ratio": self.training_ratio,
        }


def total_cost(costs: Iterable[LayerCost]) -> CostSummary:
    """The summed cost of some layers (one network, or a whole agent)."""
    costs = list(costs)
    return CostSummary(
        params=sum(c.params for c in costs),
        dense_params=sum(c.dense_params for c in costs),
        inference_flops=sum(c.inference_flops for c in costs),
        dense_inference_flops=sum(c.dense_inference_flops for c in costs),
        training_flops=sum(c.training_flops for c in costs),
        dense_training_flops=sum(c.dense_training_flops for c in costs),
        biases=sum(c.bias for c in costs),
    )


def format_count(value: float) -> str:
    """``35123 -> '35.1K'``, ``2.5e6 -> '2.50M'``: how the papers' tables print sizes."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.2f}{suffix}" if scaled < 10 else f"{scaled:.1f}{suffix}"
    return f"{value:.0f}"
