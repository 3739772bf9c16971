"""The N:M core: patterns, masks and masked layers. Knows nothing about RL."""

from nmrl.sparsity.layers import (
    LayerReport,
    MaskedLinear,
    NMLinear,
    layer_report,
    masked_layers,
    nm_layers,
    refresh_masks,
    sparsify,
)
from nmrl.sparsity.mask import check_nm, finest_nm, nm_mask
from nmrl.sparsity.pattern import DENSE, NMPattern, fits_2of4

__all__ = [
    "DENSE",
    "LayerReport",
    "MaskedLinear",
    "NMLinear",
    "NMPattern",
    "check_nm",
    "finest_nm",
    "fits_2of4",
    "layer_report",
    "masked_layers",
    "nm_layers",
    "nm_mask",
    "refresh_masks",
    "sparsify",
]
