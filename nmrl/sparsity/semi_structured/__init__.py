"""The CUDA fast path: 2:4 layers on sparse tensor cores through ``torch.sparse`` semi-structured tensors.

On an Ampere-or-newer GPU, PyTorch compresses a 2:4 weight (``to_sparse_semi_structured``: half
the values plus 2-bit indices) and multiplies it with cuSPARSELt (or CUTLASS on 8.x) in fp16/bf16.
One job per module:

* ``probe``     — does it work here [SemiStructuredSupport, probe_semi_structured, device_support,
  semi_structured_backend, FAST_DTYPES, two_of_four_mask]
* ``selection`` — which layers, and why (pattern, tile shapes, measured speedup) [LayerChoice,
  choose_layers, format_choices, candidate, layer_verdict, layer_pattern, linear_layers]
* ``timing``    — does it pay: CUDA-event timings [time_cuda, measure_speedup, layer_training_step,
  measure_layers]
* ``kernel``    — the strategy an ``NMLinear`` holds on the fast path, with its compressed-weight
  cache, and the exact autograd function [SemiStructuredKernel, SemiStructuredLinearFn, on_fast_path]
* ``training``  — give every network's chosen layers the kernel, keep it fresh [enable_semi_structured,
  disable_semi_structured, drop_compressed, SemiStructuredTraining]
* ``inference`` — convert a trained actor to compressed fp16/bf16 GPU layers [to_semi_structured]
* ``measure``   — how ``benchmarks/gpu_check.py`` measures (interleaved timing, profiler kernel time,
  CUDA graphs, L2-cold operands, cuSPARSELt algorithm search, errors, GPU state; used by module name)

Importing this package imports PyTorch but needs no GPU; patch a function in the module that
defines it (e.g. ``probe.device_support``, ``timing.time_cuda``).
"""

from nmrl.sparsity.semi_structured import inference, kernel, measure, probe, selection, timing, training
from nmrl.sparsity.semi_structured.inference import to_semi_structured
from nmrl.sparsity.semi_structured.kernel import SemiStructuredKernel, SemiStructuredLinearFn, on_fast_path
from nmrl.sparsity.semi_structured.probe import (
    FAST_DTYPES,
    SemiStructuredSupport,
    device_support,
    probe_semi_structured,
    semi_structured_backend,
    two_of_four_mask,
)
from nmrl.sparsity.semi_structured.selection import (
    LayerChoice,
    candidate,
    choose_layers,
    format_choices,
    layer_pattern,
    layer_verdict,
    linear_layers,
)
from nmrl.sparsity.semi_structured.timing import layer_training_step, measure_layers, measure_speedup, time_cuda
from nmrl.sparsity.semi_structured.training import (
    SemiStructuredTraining,
    disable_semi_structured,
    drop_compressed,
    enable_semi_structured,
)

__all__ = [
    "FAST_DTYPES",
    "LayerChoice",
    "SemiStructuredKernel",
    "SemiStructuredLinearFn",
    "SemiStructuredSupport",
    "SemiStructuredTraining",
    "candidate",
    "choose_layers",
    "device_support",
    "disable_semi_structured",
    "drop_compressed",
    "enable_semi_structured",
    "format_choices",
    "inference",
    "kernel",
    "layer_pattern",
    "layer_training_step",
    "layer_verdict",
    "linear_layers",
    "measure",
    "measure_layers",
    "measure_speedup",
    "on_fast_path",
    "probe",
    "probe_semi_structured",
    "selection",
    "semi_structured_backend",
    "time_cuda",
    "timing",
    "to_semi_structured",
    "training",
    "two_of_four_mask",
]
