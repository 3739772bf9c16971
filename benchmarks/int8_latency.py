"""ONNX Runtime CPU, 1 thread: int8 Q/DQ vs fp32 actors, side by side in one run.

Synthetic 2:4 actors 17-W-W-6 (HalfCheetah's sizes), W in 256 and 1024, exported with nmrl's
exporter and quantized with nmrl's int8 path (ONNX Runtime's static quantizer, Q/DQ, calibrated on
wide Gaussian observations). fp32 and int8 sessions are timed interleaved (nmrl.deploy.bench's
time_policies: 5 alternating rounds after warm-up) at batch 1 and 256; the table gives median
latencies and the fp32/int8 ratio. Targets from the quantization issue: >= 2.5x at batch 256, width
256, and >= 1.5x at batch 1, width 1024 (on a 2-core x86 machine with AVX-512 VNNI).

Run: python benchmarks/int8_latency.py [--calls 400] [--max-seconds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from nmrl.deploy.bench import time_policies
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.export.onnx_export import build_policy_onnx, random_observations
from nmrl.export.quantize import quantize_int8
from nmrl.sparsity import sparsify
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.networks import Actor

OBS, ACT = 17, 6
TARGETS = {(256, 256): 2.5, (1024, 1): 1.5}


def actors(width: int) -> tuple[bytes, bytes]:
    torch.manual_seed(width)
    actor = Actor(OBS, ACT, [-1.0] * ACT, [1.0] * ACT, hidden=(width, width))
    sparsify(actor, NMPattern(2, 4))
    fp32, _ = build_policy_onnx(actor, OBS, ACT, NMPattern(2, 4))
    int8, _ = quantize_int8(fp32, random_observations(OBS, 2048, 1, scale=1.0), "Gaussian observations")
    return fp32.SerializeToString(), int8.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    args = parser.parse_args()
    rows = []
    for width in (256, 1024):
        fp32, int8 = actors(width)
        policies = {"fp32": OrtPolicy(fp32, threads=1), "int8": OrtPolicy(int8, threads=1)}
        for batch in (1, 256):
            latencies = time_policies(policies, batch, warmup=50, calls=args.calls, max_seconds=args.max_seconds)
            medians = {name: float(np.median(values)) / 1e3 for name, values in latencies.items()}
            rows.append((width, batch, medians["fp32"], medians["int8"], len(latencies["int8"])))
    print(f"ONNX Runtime CPU, 1 thread, actor {OBS}-W-W-{ACT} 2:4; median latency per call (µs)")
    print(f"{'width':>6} {'batch':>6} {'fp32':>10} {'int8':>10} {'fp32/int8':>10} {'target':>8} {'calls':>6}")
    for width, batch, fp32_us, int8_us, calls in rows:
        target = TARGETS.get((width, batch))
        verdict = "" if target is None else f">={target}x {'met' if fp32_us / int8_us >= target else 'MISSED'}"
        ratio = fp32_us / int8_us
        print(f"{width:>6} {batch:>6} {fp32_us:>10.1f} {int8_us:>10.1f} {ratio:>9.2f}x {verdict:>8} {calls:>6}")


if __name__ == "__main__":
    main()
