"""One command for a machine with an NVIDIA GPU: is the 2:4 fast path correct here, and where does it pay?

    python benchmarks/gpu_check.py                 # full run (a few minutes on an A100/H100)
    python benchmarks/gpu_check.py --quick         # smaller grid, fewer repeats

1. prints ``nmrl doctor``'s probe;
2. checks the semi-structured fast path against masked dense (forward and backward, fp16 and
   bf16, fresh random inputs) and fails loudly if they disagree beyond the dtype's tolerance;
3. times dense vs 2:4, median of many runs with CUDA events:
   (a) single ``linear`` matmuls over batch (1 ... 16384) x width (256 ... 8192), square weights;
   (b) an actor forward (Ant-v5 sizes, obs 105 -> act 8) at batch 1 and 4096, widths 256 and 2048:
       dense fp16 vs the same actor converted with ``to_semi_structured``;
   (c) a full TD3 update step (batch 256) at widths 256 and 2048: masked dense under autocast vs
       ``--semi-structured``;
   (d) when TensorRT is installed: the actor engine with SPARSE_WEIGHTS vs its dense twin.
Writes every row to a CSV (``--out``) and prints the tables. Exit code 1 when a correctness check
fails or there is no capable GPU.
"""

from __future__ import annotations

import argparse
import copy
import csv
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nmrl.doctor import collect
from nmrl.sparsity import NMLinear, NMPattern, sparsify
from nmrl.sparsity import semi_structured as ss
from nmrl.train.networks import Actor

OBS_DIM, ACT_DIM = 105, 8  # Ant-v5


@dataclass
class Row:
    section: str
    case: str
    batch: int
    width: int
    dtype: str
    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms


def print_probe() -> None:
    for check in collect():
        print(f"  {check.name:<30} {'yes' if check.ok else 'no ':<4} {check.detail}")


def check_correctness(dtype: torch.dtype, width: int = 1024, batch: int = 512) -> tuple[bool, str]:
    """Fast path vs masked dense on fresh random inputs: outputs and every parameter gradient."""
    torch.manual_seed(int(time.time()))  # fresh inputs each run, on purpose

    def net() -> nn.Sequential:
        pattern = NMPattern(2, 4)
        return nn.Sequential(NMLinear(width, width, pattern), nn.ReLU(), NMLinear(width, width, pattern))

    reference = net().cuda()
    fast = copy.deepcopy(reference)
    ss.enable_semi_structured(fast)
    x = torch.randn(batch, width, device="cuda")
    upstream = torch.randn(batch, width, device="cuda")
    results = []
    for model in (reference, fast):
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
        (out.float() * upstream).sum().backward()
        results.append((out.float(), [p.grad.float() for p in model.parameters()]))
    tolerance = 2e-2 if dtype == torch.float16 else 5e-2

    def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))

    errors = [rel_err(results[1][0], results[0][0])]
    errors += [rel_err(g1, g0) for g1, g0 in zip(results[1][1], results[0][1], strict=True)]
    worst = max(errors)
    return worst <= tolerance, f"max relative error {worst:.2e} (tolerance {tolerance:.0e})"


def time_matmuls(batches: list[int], widths: list[int], repeats: int) -> list[Row]:
    rows = []
    for width in widths:
        for batch in batches:
            inputs = torch.randn(batch, width, device="cuda", dtype=torch.float16)
            weight = torch.randn(width, width, device="cuda", dtype=torch.float16)
            weight = weight * ss._two_of_four_mask(weight)
            packed = torch.sparse.to_sparse_semi_structured(weight)
            dense_ms = ss.time_cuda(lambda w=weight, x=inputs: nn.functional.linear(x, w), repeats)
            sparse_ms = ss.time_cuda(lambda w=packed, x=inputs: nn.functional.linear(x, w), repeats)
            rows.append(Row("matmul", f"{width}x{width}", batch, width, "float16", dense_ms, sparse_ms))
            print(f"  matmul width {width:>5} batch {batch:>6}: dense {dense_ms:.4f} ms, 2:4 {sparse_ms:.4f} ms")
    return rows


def _actor(width: int) -> Actor:
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, hidden=(width, width))
    sparsify(actor.net, NMPattern(2, 4))
    return actor.eval()


@torch.no_grad()
def time_actor(widths: list[int], batches: list[int], repeats: int) -> list[Row]:
    rows = []
    for width in widths:
        dense = _actor(width)  # plain fp16 Linear layers with the same (masked) weights
        ss.to_semi_structured(dense, torch.float16, compress=False)
        sparse = _actor(width)
        choices = ss.to_semi_structured(sparse, torch.float16)
        print(f"  actor {width}-{width}: " + ", ".join(f"{c.name} {'2:4' if c.sparse else 'dense'}" for c in choices))
        for batch in batches:
            obs = torch.randn(batch, OBS_DIM, device="cuda", dtype=torch.float16)
            dense_ms = ss.time_cuda(lambda m=dense, o=obs: m(o), repeats)
            sparse_ms = ss.time_cuda(lambda m=sparse, o=obs: m(o), repeats)
            rows.append(Row("actor forward", f"{width}-{width}", batch, width, "float16", dense_ms, sparse_ms))
    return rows


def time_td3(widths: list[int], repeats: int, dtype_name: str = "bfloat16") -> list[Row]:
    from nmrl.train.buffer import Batch
    from nmrl.train.config import TrainConfig
    from nmrl.train.td3 import TD3

    rows = []
    device = torch.device("cuda")
    batch_size = 256
    batch = Batch(
        obs=torch.randn(batch_size, OBS_DIM, device=device),
        action=torch.rand(batch_size, ACT_DIM, device=device) * 2 - 1,
        reward=torch.randn(batch_size, device=device),
        next_obs=torch.randn(batch_size, OBS_DIM, device=device),
        terminated=torch.zeros(batch_size, device=device),
    )
    dtype = ss.FAST_DTYPES[dtype_name]
    for width in widths:
        timings = {}
        for semi in (False, True):
            config = TrainConfig(
                env="Ant-v5",
                hidden=(width, width),
                batch_size=batch_size,
                semi_structured=semi,
                semi_structured_dtype=dtype_name,
                progress=False,
            )
            torch.manual_seed(0)
            algo = TD3(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, config, device)

            def step(algo: TD3 = algo) -> None:
                with torch.autocast("cuda", dtype=dtype):  # same precision for both
                    algo.update(batch)

            timings[semi] = ss.time_cuda(step, repeats)
        rows.append(
            Row(
                "td3 update",
                f"{width}-{width} batch {batch_size}",
                batch_size,
                width,
                dtype_name,
                timings[False],
                timings[True],
            )
        )
    return rows


def time_tensorrt(widths: list[int], batches: list[int], repeats: int) -> list[Row]:
    """The actor as TensorRT engines: SPARSE_WEIGHTS vs the dense twin (host-side wall time of
    ``act``, copies included, as a deployment sees it)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        print("  TensorRT not installed: skipped")
        return []
    import numpy as np
    import tensorrt

    from nmrl.deploy.tensorrt import BatchProfile, TensorRTPolicy, build_engines

    strongly_typed = int(tensorrt.__version__.split(".")[0]) >= 11
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for width in widths:
            actor = _actor(width)
            dtype = torch.float16 if strongly_typed else torch.float32
            actor.to(dtype)
            onnx_path = Path(folder) / f"actor{width}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    actor,
                    (torch.zeros(1, OBS_DIM, dtype=dtype),),
                    str(onnx_path),
                    input_names=["obs"],
                    output_names=["action"],
                    dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            report = build_engines(onnx_path, "tensorrt", profile=BatchProfile(1, max(batches), max(batches)))
            print(report.format())
            sparse, dense = TensorRTPolicy(report.plan), TensorRTPolicy(report.dense_plan)
            for batch in batches:
                obs = np.random.default_rng(0).standard_normal((batch, OBS_DIM)).astype(np.float32)
                timings = []
                for policy in (dense, sparse):
                    for _ in range(10):
                        policy.act(obs)
                    samples = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        policy.act(obs)
                        samples.append((time.perf_counter() - start) * 1e3)
                    timings.append(float(np.median(samples)))
                rows.append(Row("tensorrt actor", f"{width}-{width}", batch, width, "float16", timings[0], timings[1]))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'section':<16} {'case':<22} {'batch':>6} {'dtype':<9} {'dense ms':>10} {'2:4 ms':>10} {'speedup':>8}")
    for row in rows:
        print(
            f"{row.section:<16} {row.case:<22} {row.batch:>6} {row.dtype:<9} "
            f"{row.dense_ms:>10.4f} {row.sparse_ms:>10.4f} {row.speedup:>7.2f}x"
        )


def write_csv(rows: list[Row], path: Path, device: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["device", "torch", "section", "case", "batch", "width", "dtype", "dense_ms", "sparse_ms", "speedup"]
        )
        for row in rows:
            writer.writerow(
                [
                    device,
                    torch.__version__,
                    row.section,
                    row.case,
                    row.batch,
                    row.width,
                    row.dtype,
                    f"{row.dense_ms:.5f}",
                    f"{row.sparse_ms:.5f}",
                    f"{row.speedup:.3f}",
                ]
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 100, quick 20)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.csv"))
    parser.add_argument("--skip-td3", action="store_true")
    parser.add_argument("--skip-tensorrt", action="store_true")
    args = parser.parse_args(argv)

    print(f"nmrl gpu_check on {platform.node()} (torch {torch.__version__})")
    print_probe()
    support = ss.probe_semi_structured()
    if not support.available:
        print(f"\nno GPU with working 2:4 kernels here ({support.reason}): nothing to check or time")
        return 1
    device = f"{support.device} (sm {support.compute_capability[0]}.{support.compute_capability[1]})"

    print("\ncorrectness: fast path vs masked dense (forward + backward)")
    all_ok = True
    for dtype_name in support.dtypes:
        ok, detail = check_correctness(ss.FAST_DTYPES[dtype_name])
        all_ok &= ok
        print(f"  {dtype_name:<9} {'PASS' if ok else 'FAIL'}  {detail}")

    repeats = args.repeats or (20 if args.quick else 100)
    batches = [1, 64, 1024, 16384] if args.quick else [1, 16, 64, 256, 1024, 4096, 16384]
    widths = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
    rows: list[Row] = []
    print("\n(a) single matmuls, fp16, square weights")
    rows += time_matmuls(batches, widths, repeats)
    print("\n(b) actor forward")
    rows += time_actor([256, 2048], [1, 4096], repeats)
    if not args.skip_td3:
        print("\n(c) TD3 update step")
        rows += time_td3([256, 2048], repeats)
    if not args.skip_tensorrt:
        print("\n(d) TensorRT actor engines")
        rows += time_tensorrt([256, 2048], [1, 4096], repeats)

    print(f"\n{device}, torch {torch.__version__}, median of {repeats} runs (CUDA events; TensorRT: wall time)")
    print_table(rows)
    write_csv(rows, args.out, device)
    print(f"\nwrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
