"""What ``--normalize-obs`` costs a deployed policy: the explicit Sub/Div/Clip before the first Gemm
vs the same actor without them (which is also what folding the scale and shift into the first
layer would cost: a folded graph has the plain graph's ops), in ONNX Runtime, 1 thread.

2:4 actors of the trained policies' sizes at width 256 (Hopper 11-256-256-3, HalfCheetah
17-256-256-6, Ant 105-256-256-8), exported with nmrl's exporter twice from the same weights: plain,
and wrapped in the normalisation (statistics of Gaussian observations). The two sessions of one
actor are timed interleaved (nmrl.deploy.bench's time_policies: alternating rounds after warm-up)
at batch 1 and 256; the table gives median latencies and their ratio, and the CPU's SIMD sets.

Second table (``--train-steps N``, 0 skips it): training steps per second of a Hopper-v5 TD3 2:4 run
(256-256, batch 256) with and without the flag, the two runs alternated ``--repeats`` times, each
timing the steps after its warm-up (updates running): the statistics' update per step and the
normalisation of every sampled batch.

Run: python benchmarks/normalize_obs_cost.py [--calls 2000] [--max-seconds 3] [--train-steps 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from nmrl.deploy.bench import time_policies
from nmrl.deploy.ort_backend import OrtPolicy
from nmrl.export.onnx_export import build_policy_onnx
from nmrl.sparsity import sparsify
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.api import TD3
from nmrl.train.networks import Actor
from nmrl.train.normalization import NormalizedPolicy, ObservationNormalizer

SHAPES = {"Hopper": (11, 3), "HalfCheetah": (17, 6), "Ant": (105, 8)}
WIDTH = 256


def files(shape: str) -> dict[str, bytes]:
    """The plain and the normalised file of one synthetic 2:4 actor (the same weights)."""
    obs, act = SHAPES[shape]
    torch.manual_seed(obs)
    actor = Actor(obs, act, [-1.0] * act, [1.0] * act, hidden=(WIDTH, WIDTH))
    sparsify(actor, NMPattern(2, 4))
    normalizer = ObservationNormalizer(obs, 10.0, torch.device("cpu"))
    rng = np.random.default_rng(0)
    normalizer.update(rng.normal(3.0, 5.0, size=(4096, obs)))
    plain, _ = build_policy_onnx(actor, obs, act, NMPattern(2, 4))
    normalised, _ = build_policy_onnx(NormalizedPolicy(normalizer.module, actor), obs, act, NMPattern(2, 4))
    return {"plain": plain.SerializeToString(), "normalised": normalised.SerializeToString()}


def train_rate(normalize: bool, steps: int, warmup: int = 300) -> float:
    """Env steps per second of a Hopper TD3 2:4 run past its warm-up, with or without the flag."""
    model = TD3("Hopper-v5", "2:4", learning_starts=warmup, normalize_obs=normalize, threads=1, seed=1)
    model.learn(warmup + 10)
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def simd_sets() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"
    found = [flag for flag in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if flag in flags]
    return f"{name}; {', '.join(found) or 'no avx2/avx512'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"ONNX Runtime CPU, 1 thread, 2:4 actors obs-{WIDTH}-{WIDTH}-act; median latency per call (µs)")
    print(f"CPU: {simd_sets()}")
    print(f"{'actor':>22} {'batch':>5} {'plain':>10} {'normalised':>11} {'ratio':>7} {'extra µs':>9} {'calls':>6}")
    for shape in SHAPES:
        policies = {name: OrtPolicy(data, threads=1) for name, data in files(shape).items()}
        for batch in (1, 256):
            latencies = time_policies(policies, batch, warmup=100, calls=args.calls, max_seconds=args.max_seconds)
            median = {name: float(np.median(values)) / 1e3 for name, values in latencies.items()}
            calls = min(len(values) for values in latencies.values())
            obs, act = SHAPES[shape]
            print(
                f"{shape + f' {obs}-{WIDTH}-{WIDTH}-{act}':>22} {batch:>5} {median['plain']:>10.2f} "
                f"{median['normalised']:>11.2f} {median['normalised'] / median['plain']:>6.3f}x "
                f"{median['normalised'] - median['plain']:>9.2f} {calls:>6}"
            )
        for policy in policies.values():
            policy.close()
    if args.train_steps > 0:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for normalize in (False, True):
                rates[normalize].append(train_rate(normalize, args.train_steps))
        plain, normalised = (float(np.median(rates[flag])) for flag in (False, True))
        print(f"\nHopper-v5 TD3 2:4 256-256, batch 256, 1 thread: env steps/s past warm-up, median of {args.repeats}")
        print(f"{'plain':>10} {'--normalize-obs':>16} {'ratio':>7}")
        print(f"{plain:>10.1f} {normalised:>16.1f} {normalised / plain:>6.3f}x")


if __name__ == "__main__":
    main()
