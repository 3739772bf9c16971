"""Magnitude N:M masks and pattern checks for 2-D weights ``W[out, in]``.

Groups run along the input dimension (the GEMM reduction dim K, the one sparse tensor cores
group). When ``in % M != 0`` the last group is shorter and keeps min(N, its length) entries,
which is the same as padding the row with zero columns. Counting what a weight holds lives in
:mod:`nmrl.sparsity.nm_core` (numpy); :func:`check_nm` is its torch front end.
"""

from __future__ import annotations

import torch

from nmrl.errors import NmrlError
from nmrl.sparsity.cpu_kernel import cpu_mask
from nmrl.sparsity.nm_core import Violation, violating_groups
from nmrl.sparsity.pattern import NMPattern


def _grouped(weight: torch.Tensor, m: int, fill: float) -> torch.Tensor:
    """View ``weight[out, in]`` as ``[out, groups, m]``, padding the tail group with ``fill``."""
    if weight.dim() != 2:
        raise NmrlError(f"N:M masks need a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    pad = (-weight.shape[1]) % m
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad), value=fill)
    return weight.reshape(weight.shape[0], -1, m)


def _rank_keep(magnitude: torch.Tensor, n: int) -> torch.Tensor:
    """Exact top-n of each group (last dim) by pairwise ranking; ties go to the lower index."""
    m = magnitude.shape[-1]
    left = magnitude.unsqueeze(-1)  # entry i
    right = magnitude.unsqueeze(-2)  # entry j
    idx = torch.arange(m, device=magnitude.device)
    earlier = idx.unsqueeze(0) < idx.unsqueeze(1)  # [i, j]: j comes before i
    # rank[i] = number of entries that beat entry i: larger, or equal and earlier.
    rank = ((right > left) | ((right == left) & earlier)).sum(dim=-1)
    return rank < n


def _nth_largest(magnitude: torch.Tensor, n: int) -> torch.Tensor:
    """The n-th largest value of each group (last dim) of ``magnitude [rows, groups, m]``.

    1:M and 2:4 (the patterns RNM training uses most) take max-pooling over the flat contiguous
    data, several times faster on a CPU than a per-group selection; other patterns use kthvalue.
    """
    rows, groups, m = magnitude.shape
    flat = magnitude.reshape(1, 1, -1)
    pool = torch.nn.functional.max_pool1d
    if n == 1:
        return pool(flat, m).reshape(rows, groups, 1)
    if n == 2 and m == 4:
        # Groups (a, b, c, d): the second largest is
        # max(min(max(a, b), max(c, d)), max(min(a, b), min(c, d))).
        pair_max, pair_min = pool(flat, 2), -pool(-flat, 2)
        return torch.maximum(-pool(-pair_max, 2), pool(pair_min, 2)).reshape(rows, groups, 1)
    return magnitude.kthvalue(m - n + 1, dim=-1, keepdim=True).values


def _settle_ties_sync_free(keep: torch.Tensor, magnitude: torch.Tensor, n: int, short_tail: bool) -> torch.Tensor:
    """Tie handling without a host sync (on a GPU, the CPU-side count and the boolean indexing of
    the CPU path each wait for the device, after every optimizer step): every group is ranked
    exactly and the ranking replaces the threshold's answer only where ties kept more than N.
    The same mask as the CPU path, in a fixed number of kernels."""
    overfull = keep.sum(dim=-1, keepdim=True) > n
    if short_tail:
        overfull[:, -1] = False
    return torch.where(overfull, _rank_keep_lean(magnitude, n).to(keep.dtype), keep)


def _rank_keep_lean(magnitude: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`_rank_keep` in M passes over the weight instead of one M x M comparison tensor (which
    would need 16 bytes per weight for 2:4: a GiB for an 8192 x 8192 layer)."""
    m = magnitude.shape[-1]
    later = torch.arange(m, device=magnitude.device)
    rank = torch.zeros(magnitude.shape, dtype=torch.int32, device=magnitude.device)
    for j in range(m):
        other = magnitude[..., j : j + 1]
        # entry i is beaten by entry j when j is larger, or equal and earlier (j < i)
        rank += (other > magnitude) | ((other == magnitude) & (later > j))
    return rank < n


@torch.no_grad()
def nm_mask(weight: torch.Tensor, pattern: NMPattern, out: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the N largest-magnitude weights of every group of M along the input dim.

    Returns a 0/1 tensor of ``weight``'s shape, dtype and device (written into ``out`` when
    given, e.g. a layer's mask buffer). Ties go to the lower column index, so the mask is the
    same on every device and every call.
    """
    if weight.dim() != 2:
        raise NmrlError(f"N:M masks need a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if out is not None and (out.shape != weight.shape or out.dtype != weight.dtype):
        raise ValueError(
            f"out must match the weight: {tuple(out.shape)} {out.dtype} vs {tuple(weight.shape)} {weight.dtype}"
        )
    if pattern.is_dense:
        mask = torch.ones_like(weight)
    elif (kernel_mask := cpu_mask(weight, pattern.n, pattern.m, out)) is not None:
        return kernel_mask  # a compiled CPU kernel (N:4, 1:M): the same mask in one pass
    else:
        mask = tensor_nm_mask(weight, pattern)
    return mask if out is None else out.copy_(mask)


@torch.no_grad()
def tensor_nm_mask(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """:func:`nm_mask` in tensor operations, for any device and dtype (``pattern`` not dense)."""
    # Padding with -1 (below any magnitude) means padded slots are only "kept" when the tail
    # group is shorter than N, and they are cropped away below.
    magnitude = _grouped(weight.detach().abs(), pattern.m, fill=-1.0)
    # The fast path keeps everything at or above each group's N-th largest magnitude (this runs
    # after every optimizer step, so it matters). Only ties at that threshold can keep more than
    # N; the few groups where that happens are settled exactly by index order.
    threshold = _nth_largest(magnitude, pattern.n)
    # Comparing straight into a float tensor and counting with a float sum avoids bool tensors,
    # which are several times slower on a CPU here.
    keep = torch.ge(magnitude, threshold, out=torch.empty_like(magnitude))
    # Each group keeps >= N entries; a total above the expected one means ties. A tail group
    # shorter than N keeps all M of its slots (real and padding), which is expected.
    rows, groups, _ = keep.shape
    tail = weight.shape[1] % pattern.m
    kept_per_row = pattern.n * groups + ((pattern.m - pattern.n) if 0 < tail < pattern.n else 0)
    short_tail = 0 < tail < pattern.n
    if weight.device.type != "cpu":
        keep = _settle_ties_sync_free(keep, magnitude, pattern.n, short_tail)
    elif int(keep.sum(dtype=torch.float64)) != rows * kept_per_row:
        overfull = keep.sum(dim=-1) > pattern.n
        if short_tail:
            overfull[:, -1] = False
        keep[overfull] = _rank_keep(magnitude[overfull], pattern.n).to(keep.dtype)
    return keep.reshape(weight.shape[0], -1)[:, : weight.shape[1]].to(weight.dtype)


@torch.no_grad()
def check_nm(weight: torch.Tensor, pattern: NMPattern) -> list[Violation]:
    """Every (row, group) of a 2-D ``weight[out, in]`` holding more than N nonzeros along the input
    dim; empty when compliant. The torch front end of :func:`nmrl.sparsity.nm_core.violating_groups`."""
    if weight.dim() != 2:
        raise NmrlError(f"N:M masks need a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    return violating_groups((weight.detach() != 0).cpu().numpy(), 1, pattern)
