"""The N:M core: patterns, masks and masked layers. Knows nothing about RL."""

from nmrl.sparsity.layers import (
    LayerReport,
    NMLinear,
    layer_report,
    nm_layers,
    refresh_masks,
    sparsify,
)
from nmrl.sparsity.mask import check_nm, finest_nm, nm_mask
from nmrl.sparsity.pattern import DENSE, NMPattern, fits_2of4

__all__ = [
    "DENSE",
    "LayerReport",
    "NMLinear",
    "NMPattern",
    "check_nm",
    "finest_nm",
    "fits_2of4",
    "layer_report",
    "nm_layers",
    "nm_mask",
    "refresh_masks",
    "sparsify",
]
