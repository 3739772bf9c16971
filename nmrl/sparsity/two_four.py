"""The 2:4 verdict: can a weight run on 2:4 sparse kernels, and if not, why, in named layers.

2:4 kernels (sparse tensor cores through TensorRT's SPARSE_WEIGHTS, cuSPARSELt, CUTLASS) need, in
this order:

1. ``structure``: at most 2 nonzeros in every group of 4 along K (the reduction axis, the input
   dim of ``W[out, in]``). Decided from the actual values when they are at hand, else from the
   N:M pattern the weight is trained to (:func:`nmrl.sparsity.nm_core.fits_2of4`). An unstructured
   mask, even a very sparse one, almost always has a group with 3 or 4 nonzeros.
2. ``k%4``: K % 4 == 0 (a short last group has no sparse form).
3. ``dtype``: reduced precision (fp16, bf16, int8, fp8); fp32 has no 2:4 sparse form.
4. ``tile``: the kernel's tile shape, for torch's semi-structured tensors: rows (out) and K at
   least, and multiples of, the backend's tile for the dtype (cuSPARSELt: 16 for fp16/bf16, 32 for
   int8; CUTLASS: 32 x 64 for fp16/bf16, 16 x 128 for int8). Not asked for TensorRT, whose
   builder chooses its tactics itself.

Every layer is always judged; each caller asks about the layers it needs:
:data:`FOR_TENSORRT` (``nmrl inspect`` and ``nmrl deploy build``) and :data:`FOR_TORCH_KERNELS`
(the semi-structured selection, whose dtype is the autocast one it chooses itself).
numpy only, never torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmrl.sparsity.nm_core import TWO_FOUR, fits_2of4, group_nonzeros
from nmrl.sparsity.pattern import NMPattern

STRUCTURE = "structure"
K_MULTIPLE_OF_4 = "k%4"
DTYPE = "dtype"
TILE = "tile"
LAYERS = (STRUCTURE, K_MULTIPLE_OF_4, DTYPE, TILE)
FOR_TENSORRT = (STRUCTURE, K_MULTIPLE_OF_4, DTYPE)
"""What ``nmrl inspect`` and ``nmrl deploy build`` ask (TensorRT's builder has no torch tile rule)."""
FOR_TORCH_KERNELS = (STRUCTURE, TILE)
"""What the semi-structured selection asks (the tile rule implies K % 4; it picks fp16/bf16 itself)."""

# Weight dtypes 2:4 sparse kernels exist for (numpy / ml_dtypes names, as ONNX weights arrive).
REDUCED_PRECISION = ("float16", "bfloat16", "int8", "float8_e4m3fn", "float8_e5m2")
# Smallest sparse-operand (weight) tile, (rows, cols), per backend and dtype: rows and cols must be
# at least, and multiples of, these (torch/sparse/semi_structured.py, _DTYPE_SHAPE_CONSTRAINTS).
WEIGHT_TILE: dict[str, dict[str, tuple[int, int]]] = {
    "cusparselt": {"float16": (16, 16), "bfloat16": (16, 16), "int8": (32, 32), "float8_e4m3fn": (32, 32)},
    "cutlass": {"float16": (32, 64), "bfloat16": (32, 64), "int8": (16, 128)},
}


@dataclass(frozen=True)
class TwoFourVerdict:
    """Each layer of the verdict that fails, with its reason, in layer order (empty: all hold)."""

    failures: tuple[tuple[str, str], ...]

    def reasons(self, layers: Sequence[str] = LAYERS) -> tuple[str, ...]:
        """Why not, for the asked ``layers`` only (empty when they all hold)."""
        return tuple(reason for layer, reason in self.failures if layer in layers)

    def fits(self, layers: Sequence[str] = LAYERS) -> bool:
        """Whether every asked layer holds."""
        return not self.reasons(layers)


def dtype_name(dtype: object) -> str:
    """``torch.float16`` / ``np.float16`` / ``"float16"`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def tile_shape(backend: str, dtype: str) -> tuple[int, int]:
    """The weight tile of ``backend``'s kernels for ``dtype`` (fp16's for dtypes it has none for:
    fp32 weights the selection runs under fp16/bf16 autocast)."""
    tiles = WEIGHT_TILE[backend]
    return tiles.get(dtype_name(dtype), tiles["float16"])


def _structure_of_weights(weight: np.ndarray, k_axis: int) -> str | None:
    nonzeros = group_nonzeros(weight, k_axis, TWO_FOUR.m)
    broken = nonzeros > TWO_FOUR.n
    if not broken.any():
        return None
    row, group = (int(i[0]) for i in np.nonzero(broken))
    return (
        f"not 2:4 along K: {int(broken.sum())} of {nonzeros.size} groups of 4 hold more than 2 nonzeros "
        f"(e.g. row {row}, K {4 * group}-{4 * group + 3}: {int(nonzeros[row, group])})"
    )


def _structure_of_pattern(pattern: NMPattern) -> str | None:
    return None if not pattern.is_dense and fits_2of4(pattern) else f"pattern {pattern} is not 2:4-compatible"


def _verdict(structure: str | None, rows: int, k: int, dtype: str, backend: str) -> TwoFourVerdict:
    failures = []
    if structure is not None:
        failures.append((STRUCTURE, structure))
    if k % 4:
        failures.append((K_MULTIPLE_OF_4, f"K={k} not a multiple of 4"))
    dtype = dtype_name(dtype)
    if dtype not in REDUCED_PRECISION:
        failures.append((DTYPE, f"{dtype}: needs fp16/bf16/int8/fp8"))
    tile_rows, tile_cols = tile_shape(backend, dtype)
    if not (rows >= tile_rows and rows % tile_rows == 0 and k >= tile_cols and k % tile_cols == 0):
        failures.append((TILE, f"{backend} needs out % {tile_rows} == 0 and in % {tile_cols} == 0, got {rows} x {k}"))
    return TwoFourVerdict(tuple(failures))


def verdict_of_weights(weight: np.ndarray, k_axis: int, dtype: str, backend: str = "cusparselt") -> TwoFourVerdict:
    """The verdict on actual values (exact zeros count as pruned); rows are all axes but K."""
    weight = np.asarray(weight)
    k = weight.shape[k_axis]
    rows = weight.size // k if k else 0
    return _verdict(_structure_of_weights(weight, k_axis), rows, k, dtype, backend)


def verdict_of_pattern(
    pattern: NMPattern, shape: tuple[int, int], dtype: str, backend: str = "cusparselt"
) -> TwoFourVerdict:
    """The verdict on a ``[out, in]`` weight trained to ``pattern`` (its values not looked at)."""
    out_features, in_features = shape
    return _verdict(_structure_of_pattern(pattern), out_features, in_features, dtype, backend)
