"""ONNX Runtime CPU, 1 thread: both int8 Q/DQ recipes vs fp32 actors, side by side in one run.

Synthetic 2:4 actors 17-W-W-6 (HalfCheetah's sizes), W in 256 and 1024, exported with nmrl's
exporter and quantized with nmrl's int8 path (ONNX Runtime's static quantizer, Q/DQ, calibrated on
Gaussian observations) for each --int8-target: ``ort`` (every Gemm output quantized, fused into integer
QGemm kernels) and ``tensorrt`` (the settings TensorRT builds; fp32 GEMMs in ONNX Runtime). The three
sessions are timed interleaved (nmrl.deploy.bench's time_policies: alternating rounds after warm-up)
at batch 1 and 256; the table gives median latencies and fp32/int8 ratios. Targets from the
quantization issue (for the CPU recipe, ``ort``): >= 2.5x at batch 256, width 256, and >= 1.5x at
batch 1, width 1024 (set on a 2-core x86 machine with AVX-512 VNNI; the table prints the CPU's
int8 instruction set, since a CPU without VNNI runs int8 GEMMs on the slower AVX2 path).

Run: python benchmarks/int8_latency.py [--calls 400] [--max-seconds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from nmrl.deploy.bench import time_policies
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import build_policy_onnx
from nmrl.export.quantize import INT8_TARGETS, quantize_int8
from nmrl.sparsity import sparsify
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.networks import Actor

OBS, ACT = 17, 6
TARGETS = {(256, 256): 2.5, (1024, 1): 1.5}


def actors(width: int) -> dict[str, bytes]:
    """fp32 and one int8 file per target, by name."""
    torch.manual_seed(width)
    actor = Actor(OBS, ACT, [-1.0] * ACT, [1.0] * ACT, hidden=(width, width))
    sparsify(actor, NMPattern(2, 4))
    fp32, _ = build_policy_onnx(actor, OBS, ACT, NMPattern(2, 4))
    calibration = random_observations(OBS, 2048, 1, scale=1.0)
    files = {"fp32": fp32.SerializeToString()}
    for target in INT8_TARGETS:
        files[f"int8 {target}"] = quantize_int8(fp32, calibration, "Gaussian observations", target)[
            0
        ].SerializeToString()
    return files


def int8_instructions() -> str:
    """The CPU's int8 dot-product support, as Linux reports it (what ONNX Runtime's kernels use)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8", "avx512bw", "avx2") if flag in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    args = parser.parse_args()
    names = ["fp32", *(f"int8 {target}" for target in INT8_TARGETS)]
    rows = []
    for width in (256, 1024):
        policies = {name: OrtPolicy(data, threads=1) for name, data in actors(width).items()}
        for batch in (1, 256):
            latencies = time_policies(policies, batch, warmup=50, calls=args.calls, max_seconds=args.max_seconds)
            medians = {name: float(np.median(values)) / 1e3 for name, values in latencies.items()}
            rows.append((width, batch, medians, min(len(values) for values in latencies.values())))
    print(f"ONNX Runtime CPU, 1 thread, actor {OBS}-W-W-{ACT} 2:4; median latency per call (µs)")
    print(f"CPU int8 instructions: {int8_instructions()}")
    header = "".join(f"{name:>15}" for name in names)
    ratios = "".join(f"{'fp32/' + name.split()[1]:>15}" for name in names[1:])
    print(f"{'width':>6} {'batch':>6}{header}{ratios} {'target (ort)':>16} {'calls':>6}")
    for width, batch, medians, calls in rows:
        speedups = [medians["fp32"] / medians[name] for name in names[1:]]
        target = TARGETS.get((width, batch))
        verdict = "" if target is None else f">={target}x {'met' if speedups[0] >= target else 'MISSED'}"
        cells = "".join(f"{medians[name]:>15.1f}" for name in names)
        print(f"{width:>6} {batch:>6}{cells}{''.join(f'{r:>14.2f}x' for r in speedups)} {verdict:>16} {calls:>6}")


if __name__ == "__main__":
    main()
