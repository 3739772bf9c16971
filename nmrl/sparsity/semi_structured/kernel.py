"""The 2:4 kernel an ``NMLinear`` holds on the fast path: forward on sparse tensor cores, exact backward.

:class:`SemiStructuredKernel` replaces the layer's default :data:`~nmrl.sparsity.layers.MASKED_DENSE`
kernel (``layer.kernel = SemiStructuredKernel()``); the layer's class, parameters, buffers and
``state_dict`` stay those of ``NMLinear``. The kernel keeps the compressed ``shadow * mask``
(half the values plus 2-bit indices, ``to_sparse_semi_structured``) and recompresses it when the
weight, the mask or the dtype changed, or after :meth:`SemiStructuredKernel.drop_compressed`.

The backward pass is exact: the input gradient uses the masked weight densely (a 1-D N:M mask
is 2:4 along ``in`` only, and the input-gradient GEMM reduces over ``out``, so sparse tensor
cores cannot run it); the weight gradient is dense and gets the same treatment as on CPU: the
straight-through + SR-STE gradient for ``gradient="ste"``, the kept entries' gradient only for
``gradient="active"``. Inputs that are not fp16/bf16 (CPU, fp32) run the masked-dense kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from nmrl.sparsity.layers import MASKED_DENSE, NMLinear
from nmrl.sparsity.semi_structured.probe import FAST_DTYPES


class SemiStructuredLinearFn(torch.autograd.Function):
    """``y = x @ (W*mask)^T + b`` with the forward GEMM on sparse tensor cores.

    Backward (exact): grad_x = grad_y @ (W*mask) densely; grad_W = grad_y^T @ x, plus SR-STE's decay
    on the pruned entries (as ``NMLinear``'s SR-STE), or times the mask when ``active`` (only the
    kept weights learn, as ``NMLinear(gradient="active")``); grad_b = sum of grad_y.
    """

    @staticmethod
    def forward(ctx, x, weight, mask, bias, decay, packed, compute_dtype, active):
        x_c = x.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
        flat = x_c.reshape(-1, x_c.shape[-1])
        out = nn.functional.linear(flat, packed, bias_c).reshape(*x_c.shape[:-1], -1)
        ctx.save_for_backward(x_c, weight, mask)
        ctx.decay, ctx.active, ctx.has_bias, ctx.x_dtype = decay, active, bias is not None, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_c, weight, mask = ctx.saved_tensors
        grad_flat = grad_out.reshape(-1, grad_out.shape[-1]).to(x_c.dtype)
        x_flat = x_c.reshape(-1, x_c.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            effective = (weight.detach() * mask).to(x_c.dtype)
            grad_x = (grad_flat @ effective).reshape(*x_c.shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_flat.t() @ x_flat).to(weight.dtype)
            if ctx.active:
                grad_w = grad_w * mask
            elif ctx.decay:
                grad_w = torch.addcmul(grad_w, weight.detach(), 1.0 - mask, value=ctx.decay)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_flat.sum(dim=0).to(weight.dtype)
        return grad_x, grad_w, None, grad_b, None, None, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    return dtype if dtype in FAST_DTYPES.values() else None


class SemiStructuredKernel:
    """An ``NMLinear``'s kernel on sparse tensor cores, with its compressed-weight cache (one per
    layer). The fast path is taken for fp16/bf16 inputs or under fp16/bf16 autocast."""

    name = "2:4 semi-structured"

    def __init__(self) -> None:
        self.cache: tuple[tuple, torch.Tensor] | None = None  # (key, compressed weight)

    def __getstate__(self) -> dict:
        # The compressed weight is derived data tied to one tensor's storage: copies and pickles
        # rebuild it on first use instead of carrying it along.
        return {"cache": None}

    def drop_compressed(self) -> None:
        """Forget the compressed weight: the next forward compresses ``shadow * mask`` afresh.
        Called after every optimizer step (a fused optimizer writes the weight without moving its
        version counter, so the cache key alone would keep a stale weight)."""
        self.cache = None

    def packed_weight(self, layer: NMLinear, dtype: torch.dtype) -> torch.Tensor:
        """The compressed ``shadow * mask`` of ``layer``; recompressed only when the weight, the
        mask or the dtype changed (tensor version counters move on every in-place update)."""
        key = (layer.weight._version, layer.mask._version, dtype, layer.weight.data_ptr())
        if self.cache is None or self.cache[0] != key:
            with torch.no_grad():
                effective = (layer.weight * layer.mask).to(dtype).contiguous()
                packed = torch.sparse.to_sparse_semi_structured(effective)
            self.cache = (key, packed)
            return packed
        return self.cache[1]

    def forward(self, layer: NMLinear, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        if dtype is None:
            return MASKED_DENSE.forward(layer, x)
        with torch.autocast(x.device.type, enabled=False):
            return SemiStructuredLinearFn.apply(
                x,
                layer.weight,
                layer.mask,
                layer.bias,
                layer.srste_decay,
                self.packed_weight(layer, dtype),
                dtype,
                layer.gradient == "active",
            )

    def __repr__(self) -> str:
        return "SemiStructuredKernel()"


def fast_path_kernel(layer: nn.Module) -> SemiStructuredKernel | None:
    """The 2:4 kernel ``layer`` holds, or None when it holds another kernel (or none)."""
    kernel = getattr(layer, "kernel", None)
    return kernel if isinstance(kernel, SemiStructuredKernel) else None


def on_fast_path(layer: nn.Module) -> bool:
    """Whether ``layer`` holds the 2:4 kernel."""
    return fast_path_kernel(layer) is not None
