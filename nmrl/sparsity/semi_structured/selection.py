"""Which layers run on 2:4 kernels, and why: the 2:4 verdict's structure and tile layers
(:mod:`nmrl.sparsity.two_four`), then measured speedup. Pure logic, testable without a GPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from nmrl.sparsity.layers import NMLinear
from nmrl.sparsity.nm_core import TWO_FOUR, weights_fit_2of4
from nmrl.sparsity.pattern import DENSE, NMPattern
from nmrl.sparsity.semi_structured.probe import SemiStructuredSupport
from nmrl.sparsity.two_four import FOR_TORCH_KERNELS, TwoFourVerdict, verdict_of_pattern, verdict_of_weights


@dataclass(frozen=True)
class LayerChoice:
    """Whether one layer runs on sparse tensor cores, and why."""

    name: str
    shape: tuple[int, int]  # (out, in)
    pattern: str
    sparse: bool
    reason: str

    def __str__(self) -> str:
        path = "2:4 kernels" if self.sparse else "masked dense"
        return f"{self.name:<30} {self.shape!s:<14} {self.pattern:<6} {path:<13} {self.reason}"


def _nonzeros(layer: nn.Linear):
    """Where ``layer``'s weights are nonzero, as a numpy array (any device and dtype)."""
    return (layer.weight.detach() != 0).cpu().numpy()


def layer_pattern(layer: nn.Linear) -> NMPattern:
    """An NMLinear's pattern; for a plain Linear, 2:4 when its weights happen to obey it (a
    materialized or imported network), else dense."""
    if isinstance(layer, NMLinear):
        return layer.pattern
    return TWO_FOUR if weights_fit_2of4(_nonzeros(layer), 1) else DENSE


def layer_verdict(layer: nn.Linear, backend: str, dtype: str = "float16") -> TwoFourVerdict:
    """The 2:4 verdict on ``layer``: from an NMLinear's pattern, from a plain Linear's values."""
    if isinstance(layer, NMLinear):
        return verdict_of_pattern(layer.pattern, (layer.out_features, layer.in_features), dtype, backend)
    return verdict_of_weights(_nonzeros(layer), 1, dtype, backend)


def linear_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear (NMLinear included) of ``module`` with its qualified name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]


def candidate(layer: nn.Linear, backend: str) -> bool:
    """Whether ``layer`` could run on ``backend``'s 2:4 kernels at all: the verdict's structure and
    tile layers (:data:`nmrl.sparsity.two_four.FOR_TORCH_KERNELS`)."""
    return layer_verdict(layer, backend).fits(FOR_TORCH_KERNELS)


def choose_layers(
    layers: Sequence[tuple[str, nn.Linear]],
    support: SemiStructuredSupport,
    speedups: Mapping[str, float] | None = None,
) -> list[LayerChoice]:
    """The per-layer decision. ``speedups`` maps layer names to measured dense/sparse time ratios
    (> 1: sparse is faster); a layer measured at <= 1 stays masked-dense."""
    choices = []
    backend = support.backend or "cusparselt"
    for name, layer in layers:
        measured = None if speedups is None else speedups.get(name)
        pattern = layer_pattern(layer)
        not_2of4 = layer_verdict(layer, backend).reasons(FOR_TORCH_KERNELS)
        if not support.available:
            sparse, reason = False, f"no 2:4 path here: {support.reason}"
        elif not_2of4:
            sparse, reason = False, "; ".join(not_2of4)
        elif measured is not None and measured <= 1.0:
            sparse, reason = False, f"measured {measured:.2f}x: sparse not faster"
        elif measured is not None:
            sparse, reason = True, f"measured {measured:.2f}x faster"
        else:
            sparse, reason = True, "fits 2:4 and the kernel shapes (not measured)"
        shape = (layer.out_features, layer.in_features)
        choices.append(LayerChoice(name, shape, str(pattern), sparse, reason))
    return choices


def format_choices(choices: list[LayerChoice]) -> str:
    return "\n".join(str(choice) for choice in choices)
