"""Inference on the fast path: a trained network converted, in place, to plain fp16/bf16 GPU layers
whose chosen weights are compressed 2:4 tensors (or, for the dense-kernel variant, left dense)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity.layers import NMLinear, replace_submodule
from nmrl.sparsity.mask import check_nm
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.semi_structured import probe
from nmrl.sparsity.semi_structured.probe import FAST_DTYPES, SemiStructuredSupport
from nmrl.sparsity.semi_structured.selection import LayerChoice, choose_layers, linear_layers
from nmrl.sparsity.semi_structured.timing import measure_layers


def _effective_weight(layer: nn.Linear) -> torch.Tensor:
    return layer.effective_weight() if isinstance(layer, NMLinear) else layer.weight.detach()


@torch.no_grad()
def to_semi_structured(
    module: nn.Module,
    dtype: torch.dtype = torch.float16,
    support: SemiStructuredSupport | None = None,
    speedups: Mapping[str, float] | None = None,
    measure_batch: int | None = None,
    compress: bool = True,
    device: str = "cuda",
) -> list[LayerChoice]:
    """Convert a trained network for inference, in place: move it to the GPU in ``dtype`` and
    replace every Linear by a plain ``nn.Linear`` holding its effective weight, compressed to 2:4
    where the layer was chosen (plain Linear layers whose weights obey 2:4 qualify too). Returns
    the per-layer choice. Needs a capable GPU (NmrlError otherwise); feed the result ``dtype``
    observations on the GPU. ``compress=False`` makes the dense-kernel variant: the same plain layers,
    nothing compressed (the fair baseline, without the mask multiply of the training layer).
    ``device`` is for CPU stand-ins in tests (a CUDA device is the only real one)."""
    support = support or probe.probe_semi_structured()
    dtype_name = next((name for name, value in FAST_DTYPES.items() if value == dtype), None)
    if not support.available:
        raise NmrlError(f"2:4 semi-structured inference is not available here: {support.reason}")
    if dtype_name not in support.dtypes:
        raise NmrlError(f"2:4 semi-structured matmul does not work for {dtype} here ({support.reason})")
    layers = linear_layers(module)
    if measure_batch is not None and speedups is None:
        speedups = measure_layers(layers, measure_batch, dtype)
    choices = choose_layers(layers, support, speedups)
    module.to(device=device, dtype=dtype)
    for (name, layer), choice in zip(layers, choices, strict=True):
        effective = _effective_weight(layer).contiguous()
        if choice.sparse and check_nm(effective, NMPattern(2, 4)):
            raise NmrlError(f"layer {name}: effective weight is not 2:4 along its input dim")
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        plain.to(device=effective.device, dtype=dtype)
        weight = torch.sparse.to_sparse_semi_structured(effective) if choice.sparse and compress else effective
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        replace_submodule(module, name, plain)
    return choices
