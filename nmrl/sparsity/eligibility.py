"""Why a weight can or cannot use 2:4 sparse kernels: the one-line answer ``nmrl inspect`` prints.

2:4 kernels (sparse tensor cores, TensorRT's SPARSE_WEIGHTS) need at most 2 nonzeros in every
group of 4 consecutive weights along K (the input dim of ``W[out, in]``) and K % 4 == 0. An
unstructured mask, even a very sparse one, almost always has some group with 3 or 4 nonzeros,
so it gets no speedup from those kernels: its zeros only shrink a compressed file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmrl.sparsity.mask import check_nm
from nmrl.sparsity.pattern import NMPattern

TWO_FOUR = NMPattern(2, 4)


@dataclass(frozen=True)
class Eligibility:
    """Whether a weight ``[out, in]`` fits 2:4 along K, and a sentence saying why."""

    eligible: bool
    reason: str
    sparsity: float  # fraction of exact zeros
    violating_groups: int
    groups: int


@torch.no_grad()
def two_four_eligibility(weight: torch.Tensor) -> Eligibility:
    """Decide 2:4 eligibility from the actual values of ``weight`` (exact zeros count as pruned)."""
    out_features, in_features = weight.shape
    sparsity = float((weight == 0).float().mean())
    groups = out_features * -(-in_features // 4)
    violations = check_nm(weight, TWO_FOUR)
    if in_features % 4:
        return Eligibility(
            False,
            f"K={in_features} is not a multiple of 4 (2:4 kernels need K % 4 == 0)",
            sparsity,
            len(violations),
            groups,
        )
    if violations:
        worst = max(violations, key=lambda v: v.nonzeros)
        return Eligibility(
            False,
            f"{len(violations)} of {groups} groups of 4 along K hold more than 2 nonzeros (e.g. row {worst.row}, "
            f"columns {4 * worst.group}-{4 * worst.group + 3}: {worst.nonzeros}); "
            f"{sparsity:.1%} zeros without 2:4 structure"
            if sparsity > 0
            else "dense: no zeros",
            sparsity,
            len(violations),
            groups,
        )
    return Eligibility(True, "every group of 4 along K holds at most 2 nonzeros", sparsity, 0, groups)
