"""N:4 and 1:M mask computation on a CPU: the compiled kernels vs the tensor code, side by side.

RNM-TD3 recomputes 12 layer masks per update, so this is the per-layer cost behind the 2:4
training overhead. Both paths are checked to give the same mask before timing; the two are
timed alternately (kernel, tensor, kernel, ...) so that load drifts hit both alike, and the table
shows the median over rounds of the per-call time.

    python benchmarks/mask_kernel.py
    python benchmarks/mask_kernel.py --shapes 256x256 4096x4096 --rounds 30 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nmrl.sparsity import NMPattern
from nmrl.sparsity.cpu_kernel import cpu_mask
from nmrl.sparsity.mask import tensor_nm_mask

# The layers of a 256-256 TD3 agent on Ant-v5 (27-dim observations, 8-dim actions), then wide ones.
DEFAULT_SHAPES = ["256x27", "256x35", "256x256", "8x256", "1x256", "1024x1024", "2048x2048"]


def per_call_us(fn: Callable[..., object], fn_args: tuple, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*fn_args)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="weight shapes OUTxIN")
    parser.add_argument("--patterns", nargs="+", default=["2:4", "1:4", "1:8"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    rows = []
    for shape_text in args.shapes:
        out_features, in_features = (int(part) for part in shape_text.lower().split("x"))
        weight = torch.randn(out_features, in_features, generator=generator)
        for pattern_text in args.patterns:
            pattern = NMPattern.parse(pattern_text)
            kernel_mask = cpu_mask(weight, pattern.n, pattern.m)
            if kernel_mask is None:
                raise SystemExit(f"no compiled kernel for {pattern} here (N:4 and 1:M; is numba installed?)")
            if not torch.equal(kernel_mask, tensor_nm_mask(weight, pattern)):
                raise SystemExit(f"kernel and tensor code disagree on {shape_text} {pattern}")
            # about 20 ms of work per timed block
            calls = max(3, int(2e7 / max(weight.numel(), 1) / 20))
            kernel_times, tensor_times = [], []
            for _ in range(args.rounds):
                kernel_times.append(per_call_us(cpu_mask, (weight, pattern.n, pattern.m), calls))
                tensor_times.append(per_call_us(tensor_nm_mask, (weight, pattern), calls))
            kernel_us, tensor_us = statistics.median(kernel_times), statistics.median(tensor_times)
            rows.append((shape_text, str(pattern), tensor_us, kernel_us, tensor_us / kernel_us))

    print(f"N:M masks on CPU, median per-call time over {args.rounds} alternating rounds, {args.threads} thread(s)")
    print(f"{'shape':<11} {'pattern':<8} {'tensor code us':>15} {'kernel us':>10} {'speedup':>8}")
    for shape_text, pattern_text, tensor_us, kernel_us, speedup in rows:
        print(f"{shape_text:<11} {pattern_text:<8} {tensor_us:>15.1f} {kernel_us:>10.1f} {speedup:>7.1f}x")


if __name__ == "__main__":
    main()
