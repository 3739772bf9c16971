"""One command for a machine with an NVIDIA GPU: is the 2:4 fast path correct here, and where does it pay?

    python benchmarks/gpu_check.py --quick --out results/   # under 6 minutes on one H100/H200
    python benchmarks/gpu_check.py --out results/           # the full grid

Every result is written the moment it is measured, to ``gpu_check.csv``, ``gpu_check.json`` and
``gpu_check.md`` in ``--out`` (each file rewritten atomically after every row), so a crash, a
timeout or a lost machine keeps everything measured before it. Each section is fail-soft: an
exception is recorded as that section's failure (its message in the files, its traceback on
stderr) and the next section runs. All inputs come from fixed seeds, so two runs check the same
numbers. The header names the device, driver, torch, CUDA and cuSPARSELt versions.

Sections:
  correctness  2:4 matmul vs dense, and one training step (forward, backward, fused Adam step,
               forward again) of 2:4 fast-path layers vs masked dense, in fp16 and bf16;
  (a) matmul   dense vs 2:4 ``linear``, square weights of width 1024-8192, batch 256-16384;
  (b) td3      one TD3 update (batch 256, bf16 autocast) with every eligible layer on 2:4
               kernels vs masked dense, at widths 256, 1024, 2048;
  (c) actor    torch 2:4 actor inference vs the dense fp16 twin at batch 1 and 4096;
  (d) tensorrt only where TensorRT is importable: the actor exported by nmrl's own export, built
               with SPARSE_WEIGHTS vs its dense twin, one engine pair per batch whose profile is
               tuned for that batch.

Exit code: 0 when every correctness check passed and no section failed; 1 otherwise, and 1 with
one line (and no files) on a machine without a GPU whose 2:4 kernels work.
"""

from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmrl.files import atomic_write_text
from nmrl.sparsity import NMLinear, NMPattern, check_nm, nm_layers, sparsify
from nmrl.sparsity import semi_structured as ss
from nmrl.train.networks import Actor

OBS_DIM, ACT_DIM = 105, 8  # Ant-v5
SEED = 0
TOLERANCE = {"float16": 2e-2, "bfloat16": 5e-2}  # max error relative to the largest reference value


@dataclass
class Row:
    """One timing: dense vs 2:4, median milliseconds."""

    section: str
    case: str
    batch: int
    width: int
    dtype: str
    dense_ms: float
    sparse_ms: float
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms


@dataclass
class Verdict:
    """One correctness check."""

    name: str
    ok: bool
    detail: str


CSV_FIELDS = ["section", "case", "batch", "width", "dtype", "dense_ms", "sparse_ms", "speedup", "note"]


class Report:
    """Everything measured so far, on disk after every addition: CSV (timings), JSON (header,
    checks, timings, section failures and skips) and Markdown (all of it, for people)."""

    def __init__(self, out_dir: Path, header: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.header = header
        self.rows: list[Row] = []
        self.verdicts: list[Verdict] = []
        self.failures: list[tuple[str, str]] = []
        self.skips: list[tuple[str, str]] = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.write()

    @property
    def paths(self) -> dict[str, Path]:
        return {kind: self.out_dir / f"gpu_check.{kind}" for kind in ("csv", "json", "md")}

    @property
    def ok(self) -> bool:
        return all(verdict.ok for verdict in self.verdicts) and not self.failures

    def add_row(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.section:<9} {row.case:<22} batch {row.batch:>6} {row.dtype:<9} "
            f"dense {row.dense_ms:9.4f} ms  2:4 {row.sparse_ms:9.4f} ms  {row.speedup:5.2f}x  {row.note}",
            flush=True,
        )
        self.write()

    def add_verdict(self, verdict: Verdict) -> None:
        self.verdicts.append(verdict)
        print(f"  {verdict.name:<40} {'PASS' if verdict.ok else 'FAIL'}  {verdict.detail}", flush=True)
        self.write()

    def fail(self, section: str, error: str) -> None:
        self.failures.append((section, error))
        print(f"  section {section} FAILED: {error}", flush=True)
        self.write()

    def skip(self, section: str, reason: str) -> None:
        self.skips.append((section, reason))
        print(f"  section {section} skipped: {reason}", flush=True)
        self.write()

    def write(self) -> None:
        paths = self.paths
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(CSV_FIELDS)
        for row in self.rows:
            timings = [f"{row.dense_ms:.5f}", f"{row.sparse_ms:.5f}", f"{row.speedup:.3f}"]
            writer.writerow([row.section, row.case, row.batch, row.width, row.dtype, *timings, row.note])
        atomic_write_text(paths["csv"], table.getvalue())
        document = {
            "header": self.header,
            "checks": [asdict(verdict) for verdict in self.verdicts],
            "timings": [{**asdict(row), "speedup": row.speedup} for row in self.rows],
            "failed_sections": [{"section": s, "error": e} for s, e in self.failures],
            "skipped_sections": [{"section": s, "reason": r} for s, r in self.skips],
        }
        atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
        atomic_write_text(paths["md"], self.markdown())

    def markdown(self) -> str:
        lines = ["# nmrl gpu_check", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        if self.verdicts:
            lines += ["", "| check | result | detail |", "|---|---|---|"]
            lines += [f"| {v.name} | {'PASS' if v.ok else 'FAIL'} | {v.detail} |" for v in self.verdicts]
        if self.rows:
            lines += [
                "",
                "| section | case | batch | dtype | dense ms | 2:4 ms | speedup | note |",
                "|---|---|---:|---|---:|---:|---:|---|",
            ]
            lines += [
                f"| {r.section} | {r.case} | {r.batch} | {r.dtype} | {r.dense_ms:.4f} | {r.sparse_ms:.4f} "
                f"| {r.speedup:.2f}x | {r.note} |"
                for r in self.rows
            ]
        for section, error in self.failures:
            lines.append(f"\n**section {section} failed:** {error}")
        for section, reason in self.skips:
            lines.append(f"\nsection {section} skipped: {reason}")
        return "\n".join(lines) + "\n"


def run_sections(report: Report, sections: list[tuple[str, Callable[[Report], None]]]) -> None:
    """Run each section; an exception becomes that section's recorded failure, and the next runs."""
    for name, section in sections:
        print(f"\n[{name}]", flush=True)
        started = time.perf_counter()
        try:
            section(report)
        except Exception as error:  # fail-soft: keep the rows measured so far and go on
            traceback.print_exc()
            message = (str(error).strip().splitlines() or [""])[0]
            report.fail(name, f"{error.__class__.__name__}: {message}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


# ---- header --------------------------------------------------------------------------------------


def driver_version() -> str:
    """The NVIDIA driver version (nvidia-smi), or the CUDA driver API version libcuda reports."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        version = ctypes.c_int(0)
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"unknown (CUDA driver API {version.value // 1000}.{version.value % 1000 // 10})"
    except OSError:
        pass
    return "unknown"


def make_header(support: ss.SemiStructuredSupport, quick: bool, repeats: int) -> dict[str, Any]:
    import nmrl

    major, minor = support.compute_capability or (0, 0)
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    cusparselt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    return {
        "device": f"{support.device} (sm {major}.{minor}, {properties.total_memory / 2**30:.0f} GiB)",
        "driver": driver_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt,
        "2:4 backend": f"{support.backend} ({support.reason})",
        "nmrl": nmrl.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if quick else "full",
        "repeats": repeats,
        "seed": SEED,
        "timing": "median of CUDA-event timings (TensorRT: host wall time of act, copies included)",
    }


# ---- correctness ---------------------------------------------------------------------------------


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6))


def check_matmul(dtype_name: str, device: str = "cuda", width: int = 1024, batch: int = 512) -> Verdict:
    """A 2:4 ``linear`` against the same masked weight multiplied densely in fp32."""
    dtype = ss.FAST_DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(width, width, generator=generator)
    weight = (weight * ss.two_of_four_mask(weight)).to(device, dtype)
    inputs = torch.randn(batch, width, generator=generator).to(device, dtype)
    got = nn.functional.linear(inputs, torch.sparse.to_sparse_semi_structured(weight))
    error = _relative_error(got, nn.functional.linear(inputs.float(), weight.float()))
    tolerance = TOLERANCE[dtype_name]
    return Verdict(f"2:4 matmul {dtype_name}", error <= tolerance, f"max relative error {error:.2e} (<= {tolerance})")


def _compressed_drift(layer: NMLinear, dtype: torch.dtype) -> float:
    """Largest difference between the weight a fast layer multiplies by and its current one."""
    current = (layer.weight * layer.mask).detach().to(dtype).float()
    return float((layer.kernel.cache[1].to_dense().float() - current).abs().max())


def check_training_step(
    dtype_name: str,
    device: str = "cuda",
    width: int = 1024,
    batch: int = 512,
    support: ss.SemiStructuredSupport | None = None,
) -> Verdict:
    """Two 2:4 layers on the fast path against the same layers masked-dense: the forward, every
    gradient, then a fused Adam step (through nmrl's SparseTraining optimizer hook) and the forward
    again, which must use the updated weights on both sides; and the compressed weight each fast
    layer holds after the step must be its current ``shadow * mask``."""
    from nmrl.train.config import TrainConfig
    from nmrl.train.sparse_training import SparseTraining

    dtype = ss.FAST_DTYPES[dtype_name]
    torch.manual_seed(SEED)
    pattern = NMPattern(2, 4)
    # mask_interval 4: the step leaves the mask alone, so only the optimizer hook can tell the
    # fast layers that fused Adam (which does not move version counters) changed their weights.
    reference = nn.Sequential(
        NMLinear(width, width, pattern, mask_interval=4), nn.ReLU(), NMLinear(width, width, pattern, mask_interval=4)
    ).to(device)
    fast = copy.deepcopy(reference)
    ss.enable_semi_structured(fast, support)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(batch, width, generator=generator).to(device)
    upstream = torch.randn(batch, width, generator=generator).to(device)
    core = SparseTraining(TrainConfig().algorithm_config(), torch.device(device))
    errors: dict[str, float] = {}
    outputs, grads, after = [], [], []
    for model in (reference, fast):
        optimizer = core.optimizer(model, lr=1e-3)
        with torch.autocast(torch.device(device).type, dtype=dtype):
            out = model(x)
        (out.float() * upstream).sum().backward()
        outputs.append(out.float())
        grads.append([p.grad.float().clone() for p in model.parameters()])
        optimizer.step()
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype):
            after.append(model(x).float())
    errors["forward"] = _relative_error(outputs[1], outputs[0])
    errors["gradients"] = max(_relative_error(g1, g0) for g1, g0 in zip(grads[1], grads[0], strict=True))
    errors["forward after step"] = _relative_error(after[1], after[0])
    # The Adam step moved every kept weight by about lr = 1e-3; a fresh compressed weight is the
    # current one to within rounding, a stale one is off by the whole step.
    stale = [
        name
        for name, layer in fast.named_modules()
        if ss.on_fast_path(layer) and _compressed_drift(layer, dtype) > 2e-4
    ]
    tolerance = TOLERANCE[dtype_name]
    worst = max(errors.values())
    detail = ", ".join(f"{name} {error:.2e}" for name, error in errors.items()) + f" (<= {tolerance})"
    if stale:
        detail += f"; stale compressed weight in {', '.join(stale)}"
    return Verdict(f"2:4 training step {dtype_name}", worst <= tolerance and not stale, detail)


def section_correctness(report: Report, dtypes: tuple[str, ...]) -> None:
    for dtype_name in dtypes:
        report.add_verdict(check_matmul(dtype_name))
        report.add_verdict(check_training_step(dtype_name))


# ---- timings -------------------------------------------------------------------------------------


def section_matmul(
    report: Report,
    widths: list[int],
    batches: list[int],
    dtypes: tuple[str, ...],
    repeats: int,
    device: str = "cuda",
) -> None:
    for dtype_name in dtypes:
        dtype = ss.FAST_DTYPES[dtype_name]
        for width in widths:
            generator = torch.Generator(device=device).manual_seed(SEED)
            weight = torch.randn(width, width, device=device, dtype=dtype, generator=generator)
            weight = weight * ss.two_of_four_mask(weight)
            packed = torch.sparse.to_sparse_semi_structured(weight)
            for batch in batches:
                inputs = torch.randn(batch, width, device=device, dtype=dtype, generator=generator)
                dense_ms = ss.timing.time_cuda(lambda w=weight, x=inputs: nn.functional.linear(x, w), repeats)
                sparse_ms = ss.timing.time_cuda(lambda w=packed, x=inputs: nn.functional.linear(x, w), repeats)
                report.add_row(Row("matmul", f"{width}x{width}", batch, width, dtype_name, dense_ms, sparse_ms))
                del inputs


def section_td3(
    report: Report, widths: list[int], repeats: int, dtype_name: str = "bfloat16", device_name: str = "cuda"
) -> None:
    from nmrl.train.buffer import Batch
    from nmrl.train.config import TrainConfig
    from nmrl.train.td3 import TD3

    device, batch_size, dtype = torch.device(device_name), 256, ss.FAST_DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(SEED)
    batch = Batch(
        obs=torch.randn(batch_size, OBS_DIM, generator=generator).to(device),
        action=(torch.rand(batch_size, ACT_DIM, generator=generator) * 2 - 1).to(device),
        reward=torch.randn(batch_size, generator=generator).to(device),
        next_obs=torch.randn(batch_size, OBS_DIM, generator=generator).to(device),
        terminated=torch.zeros(batch_size, device=device),
    )
    support = ss.probe.device_support(device)
    for width in widths:
        timings, notes = {}, ""
        for fast in (False, True):
            config = TrainConfig(env="Ant-v5", hidden=(width, width), batch_size=batch_size, progress=False)
            torch.manual_seed(SEED)
            algo = TD3(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, config.algorithm_config(), device)
            if fast:  # every eligible layer on 2:4 kernels, whatever the per-layer selection would keep
                chosen = [
                    c for net in algo.modules.values() for c in ss.enable_semi_structured(net, support) if c.sparse
                ]
                notes = f"{len(chosen)} layers on 2:4 kernels"

            def step(algo: TD3 = algo) -> None:
                with torch.autocast(device.type, dtype=dtype):  # the same precision for both
                    algo.update(batch)

            timings[fast] = ss.timing.time_cuda(step, repeats)
            if fast:
                broken = [
                    f"{name}.{layer_name}"
                    for name, net in algo.modules.items()
                    for layer_name, layer in nm_layers(net)
                    if check_nm(layer.effective_weight(), NMPattern(2, 4))
                ]
                report.add_verdict(
                    Verdict(f"td3 {width} 2:4 updates keep 2:4", not broken, ", ".join(broken) or "every layer 2:4")
                )
            del algo
        row = Row("td3", f"update {width}-{width}", batch_size, width, dtype_name, timings[False], timings[True], notes)
        report.add_row(row)


def _actor(width: int) -> Actor:
    torch.manual_seed(SEED)
    actor = Actor(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, hidden=(width, width))
    sparsify(actor.net, NMPattern(2, 4))
    return actor.eval()


@torch.no_grad()
def section_actor(report: Report, widths: list[int], batches: list[int], repeats: int) -> None:
    for width in widths:
        dense = _actor(width)  # plain fp16 Linear layers holding the same (masked) weights
        ss.to_semi_structured(dense, torch.float16, compress=False)
        sparse = _actor(width)
        choices = ss.to_semi_structured(sparse, torch.float16)
        note = ", ".join(f"{c.name} {'2:4' if c.sparse else 'dense'}" for c in choices)
        generator = torch.Generator(device="cuda").manual_seed(SEED)
        for batch in batches:
            obs = torch.randn(batch, OBS_DIM, device="cuda", dtype=torch.float16, generator=generator)
            dense_ms = ss.timing.time_cuda(lambda m=dense, o=obs: m(o), repeats)
            sparse_ms = ss.timing.time_cuda(lambda m=sparse, o=obs: m(o), repeats)
            report.add_row(Row("actor", f"forward {width}-{width}", batch, width, "float16", dense_ms, sparse_ms, note))


def engine_profile(batch: int) -> Any:
    """The optimisation profile of the engine pair timed at ``batch``: tuned for that batch, so
    the kernels timed are the ones TensorRT picked for it."""
    from nmrl.deploy.tensorrt import BatchProfile

    return BatchProfile(min=1, opt=batch, max=batch)


def export_actor(width: int, path: Path, dtype: str) -> Path:
    """The 2:4 actor as users deploy it: through nmrl's own export (verified 2:4 along K)."""
    from nmrl.export.onnx_export import export_policy

    return export_policy(path, _actor(width), OBS_DIM, ACT_DIM, NMPattern(2, 4), dtype=dtype).path


def section_tensorrt(report: Report, widths: list[int], batches: list[int], repeats: int) -> None:
    """TensorRT engines of the actor: SPARSE_WEIGHTS vs the dense twin (host wall time of ``act``)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        report.skip("(d) tensorrt", "TensorRT is not importable here (pip install tensorrt-cu13 polygraphy)")
        return
    import numpy as np
    import tensorrt

    from nmrl.deploy.tensorrt import TensorRTPolicy, build_engines

    graph_dtype = "fp16" if int(tensorrt.__version__.split(".")[0]) >= 11 else "fp32"  # 10: FP16 flag
    with tempfile.TemporaryDirectory() as folder:
        for width in widths:
            onnx_path = export_actor(width, Path(folder) / f"actor{width}.onnx", graph_dtype)
            for batch in batches:
                plan = Path(folder) / f"actor{width}_b{batch}.plan"
                built = build_engines(onnx_path, "tensorrt", output=plan, profile=engine_profile(batch))
                print(built.format(), flush=True)
                picked = built.builder_picked
                note = f"sparse kernels picked for {len(picked)} layers" if picked is not None else "picked: not logged"
                obs = np.random.default_rng(SEED).standard_normal((batch, OBS_DIM)).astype(np.float32)
                timings = []
                for policy in (TensorRTPolicy(built.dense_plan), TensorRTPolicy(built.plan)):
                    for _ in range(10):
                        policy.act(obs)
                    samples = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        policy.act(obs)
                        samples.append((time.perf_counter() - start) * 1e3)
                    timings.append(float(np.median(samples)))
                    policy.close()
                case = f"engine {width}-{width}"
                report.add_row(Row("tensorrt", case, batch, width, graph_dtype, timings[0], timings[1], note))


# ---- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smaller grid (under 6 minutes on an H100/H200)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 50, quick 20)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"), help="results folder")
    parser.add_argument("--skip-td3", action="store_true", help="leave out section (b)")
    parser.add_argument("--skip-tensorrt", action="store_true", help="leave out section (d)")
    args = parser.parse_args(argv)

    support = ss.probe_semi_structured()
    if not support.available:  # one line, nothing written
        print(f"gpu_check: no GPU with working 2:4 kernels here ({support.reason}); nothing checked or timed")
        return 1

    repeats = args.repeats or (20 if args.quick else 50)
    report = Report(args.out, make_header(support, args.quick, repeats))
    print("nmrl gpu_check\n" + "\n".join(f"  {key}: {value}" for key, value in report.header.items()))
    from nmrl.doctor import collect

    for check in collect():
        print(f"  {check.name:<30} {'yes' if check.ok else 'no ':<4} {check.detail}")

    widths = [1024, 4096, 8192] if args.quick else [1024, 2048, 4096, 8192]
    batches = [256, 4096, 16384] if args.quick else [256, 1024, 4096, 16384]
    sections: list[tuple[str, Callable[[Report], None]]] = [
        ("correctness", lambda r: section_correctness(r, support.dtypes)),
        ("(a) matmul", lambda r: section_matmul(r, widths, batches, support.dtypes, repeats)),
    ]
    if not args.skip_td3:
        sections.append(("(b) td3 update", lambda r: section_td3(r, [256, 1024, 2048], repeats)))
    sections.append(("(c) actor inference", lambda r: section_actor(r, [256, 2048], [1, 4096], repeats)))
    if not args.skip_tensorrt:
        trt_widths = [2048] if args.quick else [1024, 2048]
        sections.append(("(d) tensorrt", lambda r: section_tensorrt(r, trt_widths, [1, 4096], repeats)))
    run_sections(report, sections)

    print(f"\nwrote {', '.join(str(path) for path in report.paths.values())}")
    print(report.markdown())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
