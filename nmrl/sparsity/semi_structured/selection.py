"""Which layers run on 2:4 kernels, and why: pattern, kernel tile shapes, measured speedup.
Pure logic, testable without a GPU."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from nmrl.sparsity.layers import NMLinear
from nmrl.sparsity.mask import check_nm
from nmrl.sparsity.pattern import DENSE, NMPattern, fits_2of4
from nmrl.sparsity.semi_structured.probe import SemiStructuredSupport

# Smallest sparse-operand (weight) tile per backend: rows and cols must be multiples of these
# (torch/sparse/semi_structured.py, _DTYPE_SHAPE_CONSTRAINTS for fp16/bf16).
WEIGHT_TILE = {"cusparselt": (16, 16), "cutlass": (32, 64)}


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


def shape_supported(out_features: int, in_features: int, backend: str) -> bool:
    """Whether the kernels of ``backend`` take a [out, in] weight without padding it."""
    rows, cols = WEIGHT_TILE[backend]
    return out_features >= rows and out_features % rows == 0 and in_features >= cols and in_features % cols == 0


def layer_pattern(layer: nn.Linear) -> NMPattern:
    """An NMLinear's pattern; for a plain Linear, 2:4 when its weights happen to obey it (a
    materialized or imported network), else dense."""
    if isinstance(layer, NMLinear):
        return layer.pattern
    two_of_four = NMPattern(2, 4)
    return two_of_four if not check_nm(layer.weight.detach(), two_of_four) else DENSE


def linear_layers(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear (NMLinear included) of ``module`` with its qualified name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]


def candidate(layer: nn.Linear, backend: str) -> bool:
    """Whether ``layer`` could run on ``backend``'s 2:4 kernels at all (pattern and shape)."""
    return fits_2of4(layer_pattern(layer)) and shape_supported(layer.out_features, layer.in_features, backend)


def choose_layers(
    layers: list[tuple[str, nn.Linear]],
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
        if not support.available:
            sparse, reason = False, f"no 2:4 path here: {support.reason}"
        elif not fits_2of4(pattern):
            sparse, reason = False, f"pattern {pattern} is not 2:4-compatible"
        elif not shape_supported(layer.out_features, layer.in_features, backend):
            rows, cols = WEIGHT_TILE[backend]
            sparse, reason = False, f"{backend} needs out % {rows} == 0 and in % {cols} == 0"
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
