"""ONNX Runtime CPU, 1 thread: the int8 Q/DQ recipes vs fp32 actors, side by side in one run.

Synthetic 2:4 actors of the trained policies' sizes at width 256 (Hopper 11-256-256-3, HalfCheetah
17-256-256-6, Ant 105-256-256-8) and HalfCheetah's at width 1024, exported with nmrl's exporter and
quantized with nmrl's int8 path (ONNX Runtime's static quantizer, Q/DQ, calibrated on Gaussian
observations): ``ort`` as export makes it (the first layer's precision measured for the policy),
``ort`` with the first layer forced fp32 and forced int8 (the two candidates it chooses between),
and ``tensorrt`` (the settings TensorRT builds; fp32 GEMMs in ONNX Runtime). The sessions of one
actor are timed interleaved (nmrl.deploy.bench's time_policies: alternating rounds after warm-up)
at batch 1 and 256; the table gives median latencies and fp32/int8 ratios. Targets (the ``ort``
recipe): >= 2.5x at batch 256, width 256, on all three shapes, and >= 1.5x at batch 1, width 1024.
The table prints the CPU's int8 instruction set: a CPU without VNNI runs int8 GEMMs on the slower
AVX2 path.

``--profile`` then shows where the time goes at batch 256, width 256: ONNX Runtime's own profiler
(one session per file, 1 thread, the same options as the timed sessions) on the fp32 and the ``ort``
int8 file of each shape, each node's median kernel time in µs, and the sum of the nodes (the profiler
itself adds a few µs a call, so the sums sit near, not at, the timed medians).

Run: python benchmarks/int8_latency.py [--calls 400] [--max-seconds 3] [--profile]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from nmrl.deploy.bench import time_policies
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import build_policy_onnx
from nmrl.export.quantize import quantize_int8
from nmrl.sparsity import sparsify
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.networks import Actor

SHAPES = {"Hopper": (11, 3), "HalfCheetah": (17, 6), "Ant": (105, 8)}
CELLS = [("Hopper", 256), ("HalfCheetah", 256), ("Ant", 256), ("HalfCheetah", 1024)]
TARGETS = {(256, 256): 2.5, (1024, 1): 1.5}
NAMES = ("fp32", "int8 ort", "ort first fp32", "ort first int8", "int8 tensorrt")


def actors(shape: str, width: int) -> tuple[dict[str, bytes], str]:
    """fp32 and each int8 variant by name, and the first-layer choice the ``ort`` export made."""
    obs, act = SHAPES[shape]
    torch.manual_seed(width + obs)
    actor = Actor(obs, act, [-1.0] * act, [1.0] * act, hidden=(width, width))
    sparsify(actor, NMPattern(2, 4))
    fp32, _ = build_policy_onnx(actor, obs, act, NMPattern(2, 4))
    calibration = random_observations(obs, 2048, 1, scale=1.0)
    measured, report = quantize_int8(fp32, calibration, "Gaussian observations", "ort")
    files = {"fp32": fp32.SerializeToString(), "int8 ort": measured.SerializeToString()}
    for first in ("fp32", "int8"):
        files[f"ort first {first}"] = quantize_int8(fp32, calibration, "Gaussian", "ort", first)[0].SerializeToString()
    files["int8 tensorrt"] = quantize_int8(fp32, calibration, "Gaussian", "tensorrt")[0].SerializeToString()
    choice = report.first_layer
    return files, "?" if choice is None else choice.chosen


def int8_instructions() -> str:
    """The CPU's int8 dot-product support, as Linux reports it (what ONNX Runtime's kernels use)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8", "avx512bw", "avx2") if flag in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def node_times(model: bytes, obs_dim: int, batch: int, calls: int) -> list[tuple[str, str, float]]:
    """(op, node, median kernel µs) of each node of ``model``'s session in execution order, from ONNX
    Runtime's profiler over ``calls`` runs at ``batch`` after a warm-up."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="nmrl-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: random_observations(obs_dim, batch, 2, scale=1.0)}
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[tuple[str, str], list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            times.setdefault((event["args"]["op_name"], node), []).append(float(event["dur"]))
    return [(op, node, float(np.median(values))) for (op, node), values in times.items()]


def print_profile(calls: int) -> None:
    print(f"\nWhere the time goes at batch 256 (ONNX Runtime's profiler, median kernel µs per node, {calls} calls)")
    for shape, width in CELLS:
        if width != 256:
            continue
        obs, act = SHAPES[shape]
        files, _ = actors(shape, width)
        for name in ("fp32", "int8 ort"):
            nodes = node_times(files[name], obs, 256, calls)
            cells = " | ".join(f"{op} {node} {us:.1f}" for op, node, us in nodes)
            print(f"  {shape} {obs}-{width}-{width}-{act} {name:>8}: {cells} | sum {sum(us for *_, us in nodes):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true", help="then profile each node at batch 256, width 256")
    args = parser.parse_args()
    rows = []
    for shape, width in CELLS:
        files, chosen = actors(shape, width)
        policies = {name: OrtPolicy(files[name], threads=1) for name in NAMES}
        for batch in (1, 256):
            latencies = time_policies(policies, batch, warmup=50, calls=args.calls, max_seconds=args.max_seconds)
            medians = {name: float(np.median(values)) / 1e3 for name, values in latencies.items()}
            rows.append((shape, width, batch, chosen, medians, min(len(values) for values in latencies.values())))
    print(f"ONNX Runtime CPU, 1 thread, 2:4 actors obs-W-W-act; median latency per call (µs); {cpu_name()}")
    print(f"CPU int8 instructions: {int8_instructions()}")
    header = "".join(f"{name:>15}" for name in NAMES)
    ratios = "".join(f"{'fp32/' + name.removeprefix('int8 '):>21}" for name in NAMES[1:])
    print(f"{'actor':>20} {'batch':>5} {'first':>5}{header}{ratios} {'target (ort)':>14} {'calls':>6}")
    for shape, width, batch, chosen, medians, calls in rows:
        obs, act = SHAPES[shape]
        speedups = [medians["fp32"] / medians[name] for name in NAMES[1:]]
        target = TARGETS.get((width, batch))
        verdict = "" if target is None else f">={target}x {'met' if speedups[0] >= target else 'MISSED'}"
        cells = "".join(f"{medians[name]:>15.1f}" for name in NAMES)
        actor = f"{shape} {obs}-{width}-{width}-{act}"
        print(
            f"{actor:>20} {batch:>5} {chosen:>5}{cells}{''.join(f'{r:>20.2f}x' for r in speedups)} "
            f"{verdict:>14} {calls:>6}"
        )
    if args.profile:
        print_profile(args.calls)


if __name__ == "__main__":
    main()
