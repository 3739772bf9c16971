"""The N:M core: patterns, masks and masked layers. Knows nothing about RL.

``pattern`` needs only the standard library and ``nm_core`` (N:M counting) and ``two_four`` (the 2:4
verdict) only numpy; ``mask`` and ``layers`` need PyTorch. Their names are
loaded on first use (PEP 562) so that torch-free code (``nmrl inspect``, the ONNX Runtime policy)
can import ``nmrl.sparsity.pattern`` without pulling in PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nmrl.sparsity.nm_core import finest_nm, fits_2of4
from nmrl.sparsity.pattern import DENSE, NMPattern

if TYPE_CHECKING:
    from nmrl.sparsity.helpers import bind_optimizer, bind_target, sparsify
    from nmrl.sparsity.layers import (
        LayerReport,
        MaskedLinear,
        NMLinear,
        dense_state_dict,
        layer_report,
        masked_layers,
        nm_layers,
        refresh_masks,
    )
    from nmrl.sparsity.mask import check_nm, nm_mask

_LAZY = {
    "LayerReport": "nmrl.sparsity.layers",
    "NMLinear": "nmrl.sparsity.layers",
    "MaskedLinear": "nmrl.sparsity.layers",
    "masked_layers": "nmrl.sparsity.layers",
    "layer_report": "nmrl.sparsity.layers",
    "nm_layers": "nmrl.sparsity.layers",
    "refresh_masks": "nmrl.sparsity.layers",
    "dense_state_dict": "nmrl.sparsity.layers",
    "sparsify": "nmrl.sparsity.helpers",
    "bind_optimizer": "nmrl.sparsity.helpers",
    "bind_target": "nmrl.sparsity.helpers",
    "check_nm": "nmrl.sparsity.mask",
    "nm_mask": "nmrl.sparsity.mask",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nmrl.sparsity' has no attribute {name!r}")


__all__ = [
    "DENSE",
    "LayerReport",
    "MaskedLinear",
    "NMLinear",
    "NMPattern",
    "bind_optimizer",
    "bind_target",
    "check_nm",
    "dense_state_dict",
    "finest_nm",
    "fits_2of4",
    "layer_report",
    "masked_layers",
    "nm_layers",
    "nm_mask",
    "refresh_masks",
    "sparsify",
]
