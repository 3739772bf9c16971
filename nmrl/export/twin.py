"""Dense twins: the same model with every zero weight replaced by a nonzero one.

A twin is timed against the sparse original to measure what the zeros buy on a backend. Zeros
are filled with Gaussian values of the layer's nonzero weights' scale (the values do not matter
for latency, only that no weight is zero). Imports onnx and numpy only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from nmrl.export.verify import inspect_model
from nmrl.policy_file import PolicyClaims, metadata_of, read_claims, write_claims


def fill_zeros(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weight`` with its zeros replaced by nonzero Gaussian values of the weight's own scale."""
    nonzero = weight[weight != 0].astype(np.float64)
    scale = float(nonzero.std()) if nonzero.size > 1 else 0.05
    filled = weight.copy()
    zeros = filled == 0
    draws = rng.standard_normal(int(zeros.sum())) * (scale or 0.05)
    draws[draws == 0] = scale or 0.05
    filled[zeros] = draws.astype(weight.dtype)
    # Values that underflow to 0 in fp16 are pushed to the smallest normal magnitude.
    still_zero = filled == 0
    filled[still_zero] = np.finfo(weight.dtype).tiny if np.issubdtype(weight.dtype, np.floating) else 1
    return filled


def dense_twin_onnx(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose GEMM weight initializers have no zeros (graph unchanged);
    its ``nmrl.sparsity`` claim becomes ``none``."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    rng = np.random.default_rng(seed)
    weight_names = {layer.weight_name for layer in inspect_model(twin).layers}
    for init in twin.graph.initializer:
        if init.name in weight_names:
            init.CopyFrom(numpy_helper.from_array(fill_zeros(numpy_helper.to_array(init), rng), init.name))
    original = read_claims(metadata_of(twin))
    # The twin's claims change where the original made them: no N:M pattern, no per-layer patterns.
    write_claims(
        twin,
        PolicyClaims(
            sparsity="none" if original.sparsity is not None else None,
            layers=[] if original.layers is not None else None,
            dense_twin=True,
        ),
    )
    return twin
