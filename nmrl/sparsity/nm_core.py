"""N:M counting, once: groups of M consecutive weights along K, and what they hold.

Everything that asks "which N:M does this weight obey?" asks it here: mask verification
(:func:`nmrl.sparsity.mask.check_nm`), ``nmrl inspect`` and the export checks
(:mod:`nmrl.export.verify`), nm-packed storage (:mod:`nmrl.export.packed`) and the 2:4 verdict
(:mod:`nmrl.sparsity.two_four`). numpy only, never torch: ``nmrl inspect`` runs without it.

A group is M consecutive entries along the reduction axis K (the input dim of ``W[out, in]``,
the axis sparse tensor cores group). When ``K % M != 0`` the last group is shorter and still holds
at most N nonzeros; counting treats it as padded with zeros, which is the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nmrl.sparsity.pattern import NMPattern

TWO_FOUR = NMPattern(2, 4)


@dataclass(frozen=True)
class Violation:
    """One group that holds more than N nonzeros: ``row`` (all axes but K, flattened), ``group``
    (index along K, in units of M) and its nonzero count."""

    row: int
    group: int
    nonzeros: int


def grouped(weight: np.ndarray, k_axis: int, m: int) -> np.ndarray:
    """``weight`` as ``[rows, groups, m]``: K moved last, the other axes flattened into rows, the
    short last group padded with zeros."""
    rows = np.moveaxis(np.asarray(weight), k_axis, -1)
    rows = rows.reshape(-1, rows.shape[-1])
    pad = (-rows.shape[1]) % m
    if pad:
        rows = np.pad(rows, ((0, 0), (0, pad)))
    return rows.reshape(rows.shape[0], -1, m)


def group_nonzeros(weight: np.ndarray, k_axis: int, m: int) -> np.ndarray:
    """Nonzero count of every group of ``m`` along ``k_axis``: shape ``[rows, groups]``."""
    return grouped(np.asarray(weight) != 0, k_axis, m).sum(axis=-1)


def violating_groups(weight: np.ndarray, k_axis: int, pattern: NMPattern) -> list[Violation]:
    """Every group of ``weight`` holding more than N nonzeros along ``k_axis``; empty when it obeys."""
    if pattern.is_dense:
        return []
    nonzeros = group_nonzeros(weight, k_axis, pattern.m)
    rows, groups = np.nonzero(nonzeros > pattern.n)
    return [Violation(int(r), int(g), int(nonzeros[r, g])) for r, g in zip(rows, groups, strict=True)]


def nm_violations(weight: np.ndarray, k_axis: int, pattern: NMPattern) -> int:
    """How many groups along ``k_axis`` hold more than N nonzeros (0: ``weight`` obeys ``pattern``)."""
    if pattern.is_dense:
        return 0
    return int((group_nonzeros(weight, k_axis, pattern.m) > pattern.n).sum())


def finest_nm(weight: np.ndarray, k_axis: int = -1, ms: tuple[int, ...] = (4, 8, 16)) -> NMPattern | None:
    """The sparsest N:M (lowest N/M over ``ms``, smaller M on ties) ``weight`` obeys along
    ``k_axis``; None when only dense fits. Group sizes longer than K are not tried: one short group
    shows no structure."""
    weight = np.asarray(weight)
    best: NMPattern | None = None
    for m in sorted(ms):
        if m > weight.shape[k_axis]:
            continue
        nonzeros = group_nonzeros(weight, k_axis, m)
        n = max(int(nonzeros.max()) if nonzeros.size else 0, 1)
        if n < m:
            candidate = NMPattern(n, m)
            if best is None or candidate.density < best.density:
                best = candidate
    return best


def fits_2of4(pattern: NMPattern) -> bool:
    """True when every weight obeying ``pattern`` also obeys 2:4 (so 2:4 sparse kernels apply).

    A 2:4 group (aligned at multiples of 4) overlaps one or more N:M groups (aligned at multiples
    of M); from each it can hold at most min(N, overlap) nonzeros. The alignments repeat every
    lcm(4, M) columns, so checking one period decides it for every width (a short tail group only
    lowers the counts).
    """
    period = math.lcm(4, pattern.m)
    for window_start in range(0, period, 4):
        window_end = window_start + 4
        most_nonzeros = 0
        group_start = (window_start // pattern.m) * pattern.m
        while group_start < window_end:
            overlap = min(group_start + pattern.m, window_end) - max(group_start, window_start)
            most_nonzeros += min(pattern.n, overlap)
            group_start += pattern.m
        if most_nonzeros > 2:
            return False
    return True


def weights_fit_2of4(weight: np.ndarray, k_axis: int = -1) -> bool:
    """True when the actual values of ``weight`` hold at most 2 nonzeros in every group of 4 along K."""
    return nm_violations(weight, k_axis, TWO_FOUR) == 0
