"""Does 2:4 pay for a layer? CUDA-event timings of dense vs 2:4, per layer shape, for inference
(one matmul) or training (recompress + forward + backward)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nmrl.sparsity.layers import NMLinear
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.semi_structured.kernel import SemiStructuredKernel
from nmrl.sparsity.semi_structured.probe import semi_structured_backend, two_of_four_mask
from nmrl.sparsity.semi_structured.selection import candidate


def time_cuda(fn: Callable[[], object], repeats: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_speedup(
    out_features: int, in_features: int, batch: int, dtype: torch.dtype = torch.float16, repeats: int = 50
) -> float:
    """Dense time / 2:4 time of one inference ``linear`` with this weight shape and batch, on the
    current GPU (the weight compressed once, as a deployed actor holds it)."""
    weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    weight = weight * two_of_four_mask(weight)
    inputs = torch.randn(batch, in_features, device="cuda", dtype=dtype)
    sparse = torch.sparse.to_sparse_semi_structured(weight)
    dense_ms = time_cuda(lambda: nn.functional.linear(inputs, weight), repeats)
    sparse_ms = time_cuda(lambda: nn.functional.linear(inputs, sparse), repeats)
    return dense_ms / sparse_ms


def layer_training_step(
    shape: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device | str, sparse: bool
) -> Callable[[], None]:
    """One training step of a 2:4 layer of ``shape`` (out, in), as training runs it: for the fast
    path, recompress ``shadow * mask`` (the optimizer moved the weights since the last step), the
    forward on sparse tensor cores and the exact backward; for the masked-dense layer, its forward
    and backward. Both under ``dtype`` autocast."""
    device = torch.device(device)
    out_features, in_features = shape
    layer = NMLinear(in_features, out_features, NMPattern(2, 4), device=device)
    if sparse:
        layer.kernel = SemiStructuredKernel()
    inputs = torch.randn(batch, in_features, device=device, requires_grad=True)
    upstream = torch.randn(batch, out_features, device=device, dtype=dtype)

    def step() -> None:
        layer.kernel.drop_compressed()
        with torch.autocast(device.type, dtype=dtype):
            out = layer(inputs)
        out.backward(upstream)

    return step


def measure_layers(
    layers: Sequence[tuple[str, nn.Linear]],
    batch: int,
    dtype: torch.dtype = torch.float16,
    training: bool = False,
    device: torch.device | str = "cuda",
) -> dict[str, float]:
    """Measured dense/2:4 speedup of every layer whose shape the kernels take, at ``batch`` rows;
    each distinct shape is timed once. ``training`` times a whole training step of the layer
    (:func:`layer_training_step`: recompress + forward + backward) instead of one inference matmul."""
    backend = semi_structured_backend(torch.cuda.get_device_capability())[0] if torch.cuda.is_available() else None
    backend = backend or "cusparselt"
    by_shape: dict[tuple[int, int], float] = {}  # networks repeat shapes: time each once
    speedups = {}
    for name, layer in layers:
        shape = (layer.out_features, layer.in_features)
        if not candidate(layer, backend):
            continue
        if shape not in by_shape:
            if training:
                dense_ms = time_cuda(layer_training_step(shape, batch, dtype, device, sparse=False))
                sparse_ms = time_cuda(layer_training_step(shape, batch, dtype, device, sparse=True))
                by_shape[shape] = dense_ms / sparse_ms
            else:
                by_shape[shape] = measure_speedup(*shape, batch, dtype)
        speedups[name] = by_shape[shape]
    return speedups
