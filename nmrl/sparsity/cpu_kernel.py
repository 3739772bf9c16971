"""Compiled CPU kernels for the N:M masks RNM training uses most: N:4 (2:4, 1:4, 3:4) and 1:M.

RNM training recomputes the masks of all six TD3 networks after (almost) every update, so on a
CPU the mask is a large share of a sparse update. Tensor code needs a dozen passes over the weight
(magnitudes, a threshold per group broadcast back, a tie check); these kernels settle each group
in one pass, several times faster. They give exactly :func:`nm_mask`'s result (ties to the lower
index, short tail groups keep min(N, length)), which the tests check.

numba compiles them on first use (cached on disk afterwards); without numba, or for other
patterns, devices and dtypes, ``nm_mask`` keeps to its tensor code.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.autograd.graph

logger = logging.getLogger(__name__)
_broken: list[str] = []  # why the kernels failed in this process, once they have


@functools.cache
def _compile() -> tuple[Callable, Callable] | None:
    """(N:4 kernel, 1:M kernel), or None without numba."""
    try:
        import numba
    except Exception as error:  # ImportError, or a numba that breaks on import (e.g. a numpy it does not support)
        if not isinstance(error, ImportError):
            _give_up(error)
        return None

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def keep_top_n_of_4(weight, n, out):  # pragma: no cover - compiled; tested through nm_mask
        rows, cols = weight.shape
        full = cols - cols % 4
        for r in range(rows):
            for g in range(0, full, 4):
                a, b, c, d = abs(weight[r, g]), abs(weight[r, g + 1]), abs(weight[r, g + 2]), abs(weight[r, g + 3])
                # How many entries of the group beat each one: larger, or equal and earlier.
                # int32 sums instead of bool logic let LLVM keep this branch-free.
                beat_a = np.int32(b > a) + np.int32(c > a) + np.int32(d > a)
                beat_b = np.int32(a >= b) + np.int32(c > b) + np.int32(d > b)
                beat_c = np.int32(a >= c) + np.int32(b >= c) + np.int32(d > c)
                beat_d = np.int32(a >= d) + np.int32(b >= d) + np.int32(c >= d)
                out[r, g] = beat_a < n
                out[r, g + 1] = beat_b < n
                out[r, g + 2] = beat_c < n
                out[r, g + 3] = beat_d < n
            for i in range(full, cols):  # the short tail group, if any
                mag = abs(weight[r, i])
                beaten = 0
                for j in range(full, cols):
                    other = abs(weight[r, j])
                    beaten += (other > mag) or (other == mag and j < i)
                out[r, i] = beaten < n

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def keep_largest_of_m(weight, m, out):  # pragma: no cover - compiled; tested through nm_mask
        rows, cols = weight.shape
        for r in range(rows):
            for start in range(0, cols, m):
                # the first largest magnitude of the group (strictly larger replaces: ties stay earlier)
                best, best_mag = start, abs(weight[r, start])
                out[r, start] = 0.0
                for j in range(start + 1, min(start + m, cols)):
                    mag = abs(weight[r, j])
                    out[r, j] = 0.0
                    if mag > best_mag:
                        best, best_mag = j, mag
                out[r, best] = 1.0

    return keep_top_n_of_4, keep_largest_of_m


def _give_up(error: BaseException) -> None:
    """Stop using the kernels in this process: the tensor code gives the same masks, slower."""
    if not _broken:
        logger.warning(
            "compiled CPU mask kernels unusable (%s: %s); using the tensor code", type(error).__name__, error
        )
    _broken.append(f"{type(error).__name__}: {error}")


def unusable_reason() -> str | None:
    """Why the compiled kernels failed in this process (None while they work or were never tried)."""
    return _broken[0] if _broken else None


def cpu_mask(weight: torch.Tensor, n: int, m: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The N:M magnitude mask of a CPU float32/float64 ``weight [out, in]`` for N:4 and 1:M
    patterns (written into ``out`` when given: a tensor of the weight's shape and dtype), or None
    when no kernel applies here (other pattern, device or dtype; numba missing)."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.float64) or not (m == 4 or n == 1):
        return None
    kernels = None if _broken else _compile()
    if kernels is None:
        return None
    keep_top_n_of_4, keep_largest_of_m = kernels
    source = weight.detach().contiguous()
    mask = out if out is not None and out.is_contiguous() else torch.empty_like(source)
    # numba compiles at the first call (before writing anything): a compiler or LLVM failure
    # surfaces here, not at import.
    try:
        if m == 4:
            keep_top_n_of_4(source.numpy(), n, mask.numpy())
        else:
            keep_largest_of_m(source.numpy(), m, mask.numpy())
    except Exception as error:
        _give_up(error)
        return None
    if mask is out:
        # Written through numpy, behind torch's back: move the version counter as an in-place
        # op would, so caches keyed on it (the compressed 2:4 weight) see the new mask.
        torch.autograd.graph.increment_version(out)
        return out
    return mask if out is None else out.copy_(mask)
