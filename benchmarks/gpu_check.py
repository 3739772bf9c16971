"""One command for a machine with an NVIDIA GPU: is the 2:4 fast path correct here, and where does it pay?

    python benchmarks/gpu_check.py --quick --out results/   # meant to take under 4 minutes on one H100/H200
    python benchmarks/gpu_check.py --out results/           # the full grid

Every result is written the moment it is measured, to ``gpu_check.csv``, ``gpu_check.json`` and
``gpu_check.md`` in ``--out`` (each file rewritten atomically after every row), and everything
printed goes to ``gpu_check.log`` there too, so a crash, a timeout or a lost machine keeps
everything measured before it. Each section is fail-soft: an exception (a sticky CUDA error in its
clean-up included) is recorded as that section's failure and the next section runs. All inputs
come from fixed seeds. The header names the device, L2, driver, torch, CUDA and cuSPARSELt
versions, the backend and ``_FORCE_CUTLASS``, and the SM clock, power and temperature before,
after the warm-up and at the end (read with nvidia-smi; nothing is set).

How a row is measured (``nmrl.sparsity.semi_structured.measure``): 2.5 s of large dense and 2:4
GEMMs warm the GPU first; dense and 2:4 are timed in alternating blocks (the side that goes first
swaps), each as a CUDA graph replay where both capture, else eagerly, and reported as median and
spread; the kernel time of each side comes from ``torch.profiler`` (the GPU's own time, without
launch overhead); batches <= 256 rotate through weight copies larger than twice the L2, or the row
says "L2-hot"; each row's 2:4 output is compared with the dense output (relative Frobenius error;
bound bf16 1e-2, fp16 2e-3); the matmul rows also give the kernel time of cuSPARSELt's default
algorithm and of the one ``torch._cslt_sparse_mm_search`` picks. The "unreliable because" column
says what, if anything, makes a row untrustworthy.

Sections:
  correctness  2:4 matmul vs dense, and one training step (forward, backward, fused Adam step,
               forward again) of 2:4 fast-path layers vs masked dense, in fp16 and bf16;
  (a) matmul   dense vs 2:4 ``linear``, square weights of width 1024-8192, batch 256-16384;
  (b) td3      one TD3 update (batch 256, bf16 autocast) with every eligible layer on 2:4
               kernels vs masked dense, at widths 256, 1024, 2048; a sample is ``policy_delay``
               updates (critic-only and full alike), and a gain above what the forward GEMM's
               kernel gain allows is flagged as a measurement error;
  (c) actor    torch 2:4 actor inference vs the dense fp16 twin at batch 1 and 4096;
  (d) tensorrt only where TensorRT is importable: the actor exported by nmrl's own export, built
               with SPARSE_WEIGHTS vs its dense twin, one engine pair per batch whose profile is
               tuned for that batch; CUDA events around ``execute_async_v3`` on pre-staged device
               buffers, the precision read back from the build.

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
from nmrl.sparsity.semi_structured import measure
from nmrl.train.networks import Actor

OBS_DIM, ACT_DIM = 105, 8  # Ant-v5
SEED = 0
TOLERANCE = {"float16": 2e-2, "bfloat16": 5e-2}  # max error relative to the largest reference value


@dataclass
class Row:
    """One timed comparison: the same work on dense and on 2:4 kernels, with what checks it.

    ``dense``/``sparse`` are eager latencies (per call, as the host sees them: CUDA events around
    the calls, a CUDA graph replay where capture worked); ``*_kernel_ms`` is the GPU's own time per
    call (the profiler's device events, summed). ``error`` is the 2:4 output's relative Frobenius
    error against the dense output (``error_of`` says which output); ``unreliable`` says what, if
    anything, makes the row untrustworthy ('' when nothing does)."""

    section: str
    case: str
    shape: str
    batch: int
    dtype: str
    dense: measure.Timing
    sparse: measure.Timing
    dense_kernel_ms: float | None
    sparse_kernel_ms: float | None
    error: float
    error_of: str
    unreliable: str = ""
    note: str = ""
    alg: str = ""  # cuSPARSELt: the searched algorithm's kernel time beside the default's

    @property
    def speedup(self) -> float:
        return self.dense.median_ms / self.sparse.median_ms

    @property
    def kernel_speedup(self) -> float | None:
        if not self.dense_kernel_ms or not self.sparse_kernel_ms:
            return None
        return self.dense_kernel_ms / self.sparse_kernel_ms

    def cells(self) -> list[str]:
        """The row's values, in :data:`COLUMNS` order."""
        kernel = self.kernel_speedup
        return [
            self.section,
            self.case,
            self.shape,
            str(self.batch),
            self.dtype,
            f"{self.dense.median_ms:.5f}",
            f"{self.dense.spread_pct:.1f}",
            f"{self.sparse.median_ms:.5f}",
            f"{self.sparse.spread_pct:.1f}",
            f"{self.speedup:.3f}",
            _ms(self.dense_kernel_ms),
            _ms(self.sparse_kernel_ms),
            "n/a" if kernel is None else f"{kernel:.3f}",
            f"{self.error:.2e} ({self.error_of})",
            self.dense.method
            if self.dense.method == self.sparse.method
            else f"{self.dense.method} / {self.sparse.method}",
            self.alg or "n/a",
            self.unreliable or "-",
            self.note,
        ]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


#: Every table's columns (CSV header and Markdown header alike).
COLUMNS = [
    "section",
    "case",
    "shape",
    "batch",
    "dtype",
    "dense eager ms",
    "dense spread %",
    "2:4 eager ms",
    "2:4 spread %",
    "eager ratio",
    "dense kernel ms",
    "2:4 kernel ms",
    "kernel ratio",
    "2:4 error (rel. Frobenius)",
    "eager timing",
    "cuSPARSELt alg (kernel ms)",
    "unreliable because",
    "note",
]


@dataclass
class Verdict:
    """One correctness check."""

    name: str
    ok: bool
    detail: str


class Report:
    """Everything measured so far, on disk after every addition: CSV (timings), JSON (header,
    checks, timings, section failures and skips) and Markdown (one table per section, for people)."""

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
        kernel = row.kernel_speedup
        print(
            f"  {row.section:<9} {row.case:<24} {row.shape:<12} b{row.batch:<6} {row.dtype:<9} "
            f"eager dense {row.dense.format()} 2:4 {row.sparse.format()} ms {row.speedup:5.2f}x | kernel "
            f"{_ms(row.dense_kernel_ms)} / {_ms(row.sparse_kernel_ms)} ms "
            f"{'n/a' if kernel is None else f'{kernel:.2f}x'} | err {row.error:.1e} | {row.unreliable or 'ok'}",
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
        writer.writerow(COLUMNS)
        for row in self.rows:
            writer.writerow(row.cells())
        atomic_write_text(paths["csv"], table.getvalue())
        document = {
            "header": self.header,
            "columns": COLUMNS,
            "checks": [asdict(verdict) for verdict in self.verdicts],
            "timings": [
                {**asdict(row), "speedup": row.speedup, "kernel_speedup": row.kernel_speedup} for row in self.rows
            ],
            "failed_sections": [{"section": s, "error": e} for s, e in self.failures],
            "skipped_sections": [{"section": s, "reason": r} for s, r in self.skips],
        }
        atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
        atomic_write_text(paths["md"], self.markdown())

    def markdown(self) -> str:
        lines = ["# nmrl gpu_check", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += [
            "",
            "Eager ms: per call as the host sees it (CUDA events; a CUDA graph replay where capture worked), "
            "median ± half the inter-quartile range; kernel ms: the GPU's own time per call (torch.profiler "
            "device events); ratios are dense / 2:4 (> 1: 2:4 faster).",
        ]
        if self.verdicts:
            lines += ["", "| check | result | detail |", "|---|---|---|"]
            lines += [f"| {v.name} | {'PASS' if v.ok else 'FAIL'} | {v.detail} |" for v in self.verdicts]
        for section in dict.fromkeys(row.section for row in self.rows):
            lines += ["", f"## {section}", "", "| " + " | ".join(COLUMNS[1:]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
            lines += ["| " + " | ".join(row.cells()[1:]) + " |" for row in self.rows if row.section == section]
        for section, error in self.failures:
            lines.append(f"\n**section {section} failed:** {error}")
        for section, reason in self.skips:
            lines.append(f"\nsection {section} skipped: {reason}")
        return "\n".join(lines) + "\n"


def run_sections(report: Report, sections: list[tuple[str, Callable[[Report], None]]]) -> None:
    """Run each section; an exception becomes that section's recorded failure, and the next runs.
    The clean-up after a section is guarded too: after a sticky CUDA error even ``empty_cache``
    raises, and that must not stop the sections after it (they record their own failures)."""
    for name, section in sections:
        print(f"\n[{name}]", flush=True)
        started = time.perf_counter()
        try:
            section(report)
        except Exception as error:  # fail-soft: keep the rows measured so far and go on
            traceback.print_exc()
            report.fail(name, f"{error.__class__.__name__}: {measure.first_line(error)}")
        finally:
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as error:  # a sticky CUDA error: the section's own failure says why
                if not any(failed == name for failed, _ in report.failures):
                    report.fail(
                        name,
                        f"clean-up after the section failed: {error.__class__.__name__}: {measure.first_line(error)}",
                    )
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


def make_header(
    support: ss.SemiStructuredSupport, quick: bool, repeats: int, hardware: Hardware | None = None
) -> dict[str, Any]:
    from torch.sparse import SparseSemiStructuredTensor

    import nmrl

    major, minor = support.compute_capability or (0, 0)
    on_gpu = torch.cuda.is_available()
    memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30 if on_gpu else 0
    l2 = hardware.l2_bytes if hardware is not None else None
    cusparselt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    return {
        "device": f"{support.device} (sm {major}.{minor}, {memory:.0f} GiB, L2 "
        + (f"{l2 / 2**20:.0f} MiB)" if l2 else "unknown)"),
        "driver": driver_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt,
        "2:4 backend": f"{support.backend} ({support.reason})",
        "_FORCE_CUTLASS": SparseSemiStructuredTensor._FORCE_CUTLASS,
        "nmrl": nmrl.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if quick else "full",
        "repeats": repeats,
        "seed": SEED,
        "timing": "dense and 2:4 interleaved in blocks; eager = CUDA events (graph replay where capture works), "
        "kernel = torch.profiler device time; TensorRT: CUDA events around execute_async_v3, input on device",
        "gpu before": measure.gpu_state() if on_gpu else "n/a (stand-in)",
    }


# ---- correctness ---------------------------------------------------------------------------------


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference relative to the largest reference value (the training-step check)."""
    got, expected = got.detach().float(), expected.detach().float()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def check_matmul(dtype_name: str, device: str = "cuda", width: int = 1024, batch: int = 512) -> Verdict:
    """A 2:4 ``linear`` against the same masked weight multiplied densely in fp32."""
    dtype = ss.FAST_DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(width, width, generator=generator)
    weight = (weight * ss.two_of_four_mask(weight)).to(device, dtype)
    inputs = torch.randn(batch, width, generator=generator).to(device, dtype)
    got = nn.functional.linear(inputs, torch.sparse.to_sparse_semi_structured(weight))
    error = measure.relative_frobenius(got, nn.functional.linear(inputs.float(), weight.float()))
    bound = measure.ERROR_BOUND[dtype_name]
    return Verdict(f"2:4 matmul {dtype_name}", error <= bound, f"relative Frobenius error {error:.2e} (<= {bound})")


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


def section_correctness(report: Report, dtypes: tuple[str, ...], device: str = "cuda") -> None:
    support = None if device == "cuda" else ss.probe.device_support(torch.device(device))
    width, batch = (1024, 512) if device == "cuda" else (64, 32)
    for dtype_name in dtypes:
        report.add_verdict(check_matmul(dtype_name, device, width, batch))
        report.add_verdict(check_training_step(dtype_name, device, width, batch, support))


# ---- timings -------------------------------------------------------------------------------------


def engine_event_timer(stream_ptr: int) -> measure.SampleTimer:
    """The timer for a TensorRT engine: PyTorch's CUDA events recorded on the engine's own stream,
    around ``execute_async_v3`` alone (input already on the device)."""
    from nmrl.deploy.tensorrt.timing import event_samples

    stream = torch.cuda.ExternalStream(stream_ptr)

    def timer(fn: Callable[[], object], samples: int, calls: int) -> list[float]:
        return event_samples(fn, samples, calls, lambda: torch.cuda.Event(enable_timing=True), stream)

    return timer


@dataclass
class Hardware:
    """Everything a timing section asks of the GPU, in one place: the real GPU by default, CPU
    stand-ins in the tests (which run every section of ``--quick`` through the same code)."""

    device: str = "cuda"
    timer: measure.SampleTimer = measure.cuda_event_samples
    graph: Callable[[Callable[[], object]], tuple[Callable[[], object] | None, str]] = measure.cuda_graph
    kernel_time: Callable[[Callable[[], object], int], measure.KernelTime] = measure.kernel_time
    alg_search: Callable[[torch.Tensor, torch.Tensor], tuple[Callable, Callable, int]] | None = measure.cusparselt_pair
    engine_timer: Callable[[int], measure.SampleTimer] = engine_event_timer  # a stream pointer -> its timer
    l2_bytes: int | None = None
    block: int = 5


def _kernel(hardware: Hardware, fn: Callable[[], object], calls: int, divide: int = 1) -> tuple[float | None, str]:
    """Kernel ms per call (None and why when the profiler saw nothing)."""
    try:
        found = hardware.kernel_time(fn, calls)
    except Exception as error:  # the row keeps its eager time and says why it has no kernel time
        return None, f"no kernel time ({error.__class__.__name__}: {measure.first_line(error)})"
    return found.ms / divide, f"top kernel {found.top_kernel}"


def time_row(
    hardware: Hardware,
    dense: Callable[[], object],
    sparse: Callable[[], object],
    repeats: int,
    calls_per_sample: int = 1,
    per_unit: int = 1,
    graphs: bool = True,
    eager_reason: str = "eager",
) -> tuple[measure.Timing, measure.Timing, float | None, float | None, list[str]]:
    """Eager latency of both sides (graphs where capture works, interleaved blocks) and kernel time;
    ``per_unit`` calls make one unit (a rotation over L2-cold copies): every figure is per call."""
    problems: list[str] = []
    fns, methods = [dense, sparse], [eager_reason, eager_reason]
    if graphs:  # both sides graphed, or neither: a graph on one side only would compare launches with kernels
        captured = [hardware.graph(fn) for fn in (dense, sparse)]
        if all(replay is not None for replay, _ in captured):
            fns = [replay for replay, _ in captured]  # type: ignore[misc]
            methods = [how for _, how in captured]
        else:
            why = "; ".join(how for replay, how in captured if replay is None)
            methods = [f"eager ({why})", f"eager ({why})"]
    dense_t, sparse_t = measure.interleaved(
        fns[0], fns[1], repeats, hardware.timer, calls_per_sample, hardware.block, methods=(methods[0], methods[1])
    )
    dense_t, sparse_t = (_per_call(t, per_unit) for t in (dense_t, sparse_t))
    calls = max(2, 2 * calls_per_sample)
    dense_k, why_dense = _kernel(hardware, dense, calls, per_unit)
    sparse_k, why_sparse = _kernel(hardware, sparse, calls, per_unit)
    problems += [why for why, got in ((why_dense, dense_k), (why_sparse, sparse_k)) if got is None]
    for side, timing in (("dense", dense_t), ("2:4", sparse_t)):
        if timing.spread_pct > 10:
            problems.append(f"{side} spread {timing.spread_pct:.0f}% > 10%")
    return dense_t, sparse_t, dense_k, sparse_k, problems


def _per_call(timing: measure.Timing, calls: int) -> measure.Timing:
    if calls == 1:
        return timing
    return measure.Timing(timing.median_ms / calls, timing.spread_ms / calls, timing.samples, timing.method)


def _copies(hardware: Hardware, operand_bytes: int, batch: int) -> tuple[int, str]:
    """How many operand copies a row rotates through, and '' or "L2-hot ..." when they still fit."""
    if batch > 256:
        return 1, ""
    count = measure.rotation_count(operand_bytes, hardware.l2_bytes)
    if measure.l2_hot(operand_bytes, count, hardware.l2_bytes):
        known = "L2 size unknown" if hardware.l2_bytes is None else f"{count} copies fit 2x L2"
        return count, f"L2-hot ({known})"
    return count, ""


def section_matmul(
    report: Report,
    widths: list[int],
    batches: list[int],
    dtypes: tuple[str, ...],
    repeats: int,
    hardware: Hardware | None = None,
) -> None:
    hardware = hardware or Hardware()
    device = hardware.device
    for dtype_name in dtypes:
        dtype = ss.FAST_DTYPES[dtype_name]
        for width in widths:
            for batch in batches:
                generator = torch.Generator(device=device).manual_seed(SEED)
                weight_bytes = width * width * torch.finfo(dtype).bits // 8
                copies, hot = _copies(hardware, weight_bytes, batch)
                weights = []
                for _ in range(copies):
                    weight = torch.randn(width, width, device=device, dtype=dtype, generator=generator)
                    weights.append(weight * ss.two_of_four_mask(weight))
                packed = [torch.sparse.to_sparse_semi_structured(weight) for weight in weights]
                inputs = torch.randn(batch, width, device=device, dtype=dtype, generator=generator)
                reference = nn.functional.linear(inputs, weights[0])
                error = measure.relative_frobenius(nn.functional.linear(inputs, packed[0]), reference)

                def dense(ws: list = weights, x: torch.Tensor = inputs) -> None:
                    for w in ws:
                        nn.functional.linear(x, w)

                def sparse(ps: list = packed, x: torch.Tensor = inputs) -> None:
                    for p in ps:
                        nn.functional.linear(x, p)

                dense_t, sparse_t, dense_k, sparse_k, problems = time_row(
                    hardware, dense, sparse, repeats, per_unit=copies
                )
                alg = ""
                if hardware.alg_search is not None:
                    try:
                        default, best, best_id = hardware.alg_search(packed[0], inputs)
                        default_k, _ = _kernel(hardware, default, 4)
                        best_k, _ = _kernel(hardware, best, 4)
                        alg = f"alg 0 {_ms(default_k)}; searched alg {best_id} {_ms(best_k)}"
                    except Exception as failure:  # the row stands without it, and says so
                        alg = f"search failed: {failure.__class__.__name__}: {measure.first_line(failure)}"
                problems += [hot, measure.error_note(error, dtype_name)]
                note = f"{copies} weight copies rotated" if copies > 1 else ""
                row = Row(
                    "matmul",
                    "linear",
                    f"{width}x{width}",
                    batch,
                    dtype_name,
                    dense_t,
                    sparse_t,
                    dense_k,
                    sparse_k,
                    error,
                    "output",
                    "; ".join(p for p in problems if p),
                    note,
                    alg,
                )
                report.add_row(row)
                del weights, packed, inputs, reference


def _forward_kernel_speedup(hardware: Hardware, width: int, batch: int, dtype: torch.dtype) -> float | None:
    """Kernel-time ratio of one width x width forward GEMM at ``batch`` rows: the yardstick of the
    update's sanity bound."""
    generator = torch.Generator(device=hardware.device).manual_seed(SEED)
    weight = torch.randn(width, width, device=hardware.device, dtype=dtype, generator=generator)
    weight = weight * ss.two_of_four_mask(weight)
    packed = torch.sparse.to_sparse_semi_structured(weight)
    inputs = torch.randn(batch, width, device=hardware.device, dtype=dtype, generator=generator)
    dense_k, _ = _kernel(hardware, lambda: nn.functional.linear(inputs, weight), 4)
    sparse_k, _ = _kernel(hardware, lambda: nn.functional.linear(inputs, packed), 4)
    return None if not dense_k or not sparse_k else dense_k / sparse_k


def section_td3(
    report: Report,
    widths: list[int],
    repeats: int,
    dtype_name: str = "bfloat16",
    hardware: Hardware | None = None,
) -> None:
    """One TD3 update, masked dense vs every eligible layer on 2:4 kernels. The actor steps once per
    ``policy_delay`` updates, so one sample is ``policy_delay`` updates (both kinds) divided by it."""
    from nmrl.train.buffer import Batch
    from nmrl.train.config import TrainConfig
    from nmrl.train.td3 import TD3

    hardware = hardware or Hardware()
    device, batch_size, dtype = torch.device(hardware.device), 256, ss.FAST_DTYPES[dtype_name]
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
        algos, notes = {}, ""
        for fast in (False, True):
            config = TrainConfig(env="Ant-v5", hidden=(width, width), batch_size=batch_size, progress=False)
            torch.manual_seed(SEED)
            algo = TD3(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, config.algorithm_config(), device)
            if fast:  # every eligible layer on 2:4 kernels, whatever the per-layer selection would keep
                chosen = [
                    c for net in algo.modules.values() for c in ss.enable_semi_structured(net, support) if c.sparse
                ]
                notes = f"{len(chosen)} layers on 2:4 kernels"
            algos[fast] = algo
        delay = algos[False].config.td3.policy_delay
        # Before any update both sides hold the same weights: the 2:4 actions and Q values must match.
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            actions = [algos[fast].actor(batch.obs) for fast in (False, True)]
            q_values = [algos[fast].critic1(batch.obs, batch.action) for fast in (False, True)]
        error = max(
            measure.relative_frobenius(actions[1], actions[0]), measure.relative_frobenius(q_values[1], q_values[0])
        )

        def step(algo: TD3) -> Callable[[], None]:
            def update() -> None:
                with torch.autocast(device.type, dtype=dtype):  # the same precision for both
                    algo.update(batch)

            return update

        dense_t, sparse_t, dense_k, sparse_k, problems = time_row(
            hardware,
            step(algos[False]),
            step(algos[True]),
            repeats,
            calls_per_sample=delay,
            graphs=False,
            eager_reason=f"eager, {delay} updates per sample (an update is Python control flow: not graphed)",
        )
        forward = _forward_kernel_speedup(hardware, width, batch_size, dtype)
        speedup = dense_t.median_ms / sparse_t.median_ms
        problems += [measure.update_gain_note(speedup, forward), measure.error_note(error, dtype_name)]
        if dense_k and sparse_k:
            problems.append(measure.update_gain_note(dense_k / sparse_k, forward))
        if forward is not None:
            notes += f"; forward GEMM kernel {forward:.2f}x (bound {measure.update_gain_bound(max(forward, 1)):.2f}x)"
        broken = [
            f"{name}.{layer_name}"
            for name, net in algos[True].modules.items()
            for layer_name, layer in nm_layers(net)
            if check_nm(layer.effective_weight(), NMPattern(2, 4))
        ]
        report.add_verdict(
            Verdict(f"td3 {width} 2:4 updates keep 2:4", not broken, ", ".join(broken) or "every layer 2:4")
        )
        row = Row(
            "td3",
            "update",
            f"{width}-{width}",
            batch_size,
            dtype_name,
            dense_t,
            sparse_t,
            dense_k,
            sparse_k,
            error,
            "actions, Q",
            "; ".join(dict.fromkeys(p for p in problems if p)),
            notes,
        )
        report.add_row(row)
        del algos


def _actor(width: int) -> Actor:
    torch.manual_seed(SEED)
    actor = Actor(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [1.0] * ACT_DIM, hidden=(width, width))
    sparsify(actor.net, NMPattern(2, 4))
    return actor.eval()


@torch.no_grad()
def section_actor(
    report: Report, widths: list[int], batches: list[int], repeats: int, hardware: Hardware | None = None
) -> None:
    hardware = hardware or Hardware()
    for width in widths:
        params = sum(p.numel() for p in _actor(width).parameters())
        for batch in batches:
            copies, hot = _copies(hardware, params * 2, batch)
            dense, sparse, note = [], [], ""
            for _ in range(copies):
                twin = _actor(width)  # plain fp16 Linear layers holding the same (masked) weights
                ss.to_semi_structured(twin, torch.float16, compress=False, device=hardware.device)
                dense.append(twin)
                fast = _actor(width)
                choices = ss.to_semi_structured(fast, torch.float16, device=hardware.device)
                sparse.append(fast)
                note = ", ".join(f"{c.name} {'2:4' if c.sparse else 'dense'}" for c in choices)
            generator = torch.Generator(device=hardware.device).manual_seed(SEED)
            obs = torch.randn(batch, OBS_DIM, device=hardware.device, dtype=torch.float16, generator=generator)
            error = measure.relative_frobenius(sparse[0](obs), dense[0](obs))

            def run(models: list, o: torch.Tensor = obs) -> Callable[[], None]:
                def call() -> None:
                    for model in models:
                        model(o)

                return call

            dense_t, sparse_t, dense_k, sparse_k, problems = time_row(
                hardware, run(dense), run(sparse), repeats, per_unit=copies
            )
            problems += [hot, measure.error_note(error, "float16")]
            if copies > 1:
                note += f"; {copies} actor copies rotated"
            row = Row(
                "actor",
                "forward",
                f"{width}-{width}",
                batch,
                "float16",
                dense_t,
                sparse_t,
                dense_k,
                sparse_k,
                error,
                "actions",
                "; ".join(p for p in problems if p),
                note,
            )
            report.add_row(row)
            del dense, sparse


def engine_profile(batch: int) -> Any:
    """The optimisation profile of the engine pair timed at ``batch``: tuned for that batch, so
    the kernels timed are the ones TensorRT picked for it."""
    from nmrl.deploy.tensorrt import BatchProfile

    return BatchProfile(min=1, opt=batch, max=batch)


def export_actor(width: int, path: Path, dtype: str) -> Path:
    """The 2:4 actor as users deploy it: through nmrl's own export (verified 2:4 along K)."""
    from nmrl.export.onnx_export import export_policy

    return export_policy(path, _actor(width), OBS_DIM, ACT_DIM, NMPattern(2, 4), dtype=dtype).path


def section_tensorrt(
    report: Report,
    widths: list[int],
    batches: list[int],
    repeats: int,
    hardware: Hardware | None = None,
) -> None:
    """TensorRT engines of the actor, SPARSE_WEIGHTS vs the dense-kernel twin: CUDA events around
    ``execute_async_v3`` on pre-staged device buffers, the precision read back from the build."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        report.skip("(d) tensorrt", "TensorRT is not importable here (pip install tensorrt-cu13 polygraphy)")
        return
    import numpy as np
    import tensorrt

    from nmrl.deploy.tensorrt import TensorRTPolicy, build_engines
    from nmrl.deploy.tensorrt.timing import StagedEngine, engine_precision

    hardware = hardware or Hardware()
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
                policies = [TensorRTPolicy(built.dense_plan), TensorRTPolicy(built.plan)]
                try:
                    staged = [StagedEngine(policy, obs) for policy in policies]
                    outputs = []
                    for engine in staged:
                        engine.launch()
                        outputs.append(engine.outputs())
                    error = measure.relative_frobenius(torch.from_numpy(outputs[1]), torch.from_numpy(outputs[0]))
                    method = "cuda events on execute_async_v3 (input on device)"
                    launches = (staged[0].launch, staged[1].launch)  # bound once: the timer keys on them
                    timers = {
                        id(launch): hardware.engine_timer(engine.stream_ptr)
                        for launch, engine in zip(launches, staged, strict=True)
                    }
                    dense_t, sparse_t = measure.interleaved(
                        *launches,
                        repeats,
                        lambda fn, samples, calls, by=timers: by[id(fn)](fn, samples, calls),
                        1,
                        hardware.block,
                        methods=(method, method),
                    )
                    dense_k, why_dense = _kernel(hardware, launches[0], 4)
                    sparse_k, why_sparse = _kernel(hardware, launches[1], 4)
                finally:
                    for policy in policies:
                        policy.close()
                precision = engine_precision(built, graph_dtype)
                problems = [why for why, got in ((why_dense, dense_k), (why_sparse, sparse_k)) if got is None]
                problems.append(measure.error_note(error, "float16"))
                row = Row(
                    "tensorrt",
                    "engine",
                    f"{width}-{width}",
                    batch,
                    precision,
                    dense_t,
                    sparse_t,
                    dense_k,
                    sparse_k,
                    error,
                    "actions",
                    "; ".join(p for p in problems if p),
                    note,
                )
                report.add_row(row)


# ---- main ----------------------------------------------------------------------------------------


def measured_backend() -> str:
    """Make sure the run measures a 2:4 backend that has kernels on this GPU: a forced CUTLASS on
    compute capability >= 9 (where CUTLASS has no 2:4 kernels) with cuSPARSELt available is lifted
    for this run, and the returned line says so ('' when nothing was changed)."""
    from torch.sparse import SparseSemiStructuredTensor

    if not SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.cuda.is_available():
        return ""
    major, minor = torch.cuda.get_device_capability()
    if major < 9 or not torch.backends.cusparselt.is_available():
        return ""
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    ss.probe.probe_semi_structured.cache_clear()
    return (
        f"_FORCE_CUTLASS was set, but CUTLASS has no 2:4 kernels on sm {major}.{minor}: "
        "this run measured cuSPARSELt instead"
    )


@dataclass(frozen=True)
class Grid:
    """The shapes one run times."""

    widths: list[int]
    batches: list[int]
    td3_widths: list[int]
    actor_widths: list[int]
    actor_batches: list[int]
    trt_widths: list[int]


GRIDS = {
    "quick": Grid([1024, 4096, 8192], [256, 4096, 16384], [256, 1024, 2048], [256, 2048], [1, 4096], [2048]),
    "full": Grid(
        [1024, 2048, 4096, 8192], [256, 1024, 4096, 16384], [256, 1024, 2048], [256, 2048], [1, 4096], [1024, 2048]
    ),
}


class _Tee(io.TextIOBase):
    """Everything printed goes to the terminal and to the full log in the results folder."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()


def main(argv: list[str] | None = None, hardware: Hardware | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smaller grid (under 4 minutes on an H100/H200)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed samples per side of a row (default 50, quick 20)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"), help="results folder")
    parser.add_argument("--skip-td3", action="store_true", help="leave out section (b)")
    parser.add_argument("--skip-tensorrt", action="store_true", help="leave out section (d)")
    parser.add_argument("--warmup-s", type=float, default=2.5, help="seconds of large GEMMs before the first row")
    args = parser.parse_args(argv)

    forced_note = measured_backend() if hardware is None else ""
    support = ss.probe_semi_structured()
    if not support.available:  # one line, nothing written
        print(f"gpu_check: no GPU with working 2:4 kernels here ({support.reason}); nothing checked or timed")
        return 1
    if hardware is None:
        hardware = Hardware(l2_bytes=measure.l2_bytes())
        if support.backend != "cusparselt":
            hardware.alg_search = None
    args.out.mkdir(parents=True, exist_ok=True)
    # Line-buffered: a run ended by ``timeout`` (SIGTERM, no clean-up) keeps every line it printed.
    with (args.out / "gpu_check.log").open("w", buffering=1) as log:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            return _run(args, support, hardware, forced_note)
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def _run(args: argparse.Namespace, support: ss.SemiStructuredSupport, hardware: Hardware, forced_note: str) -> int:
    repeats = args.repeats or (20 if args.quick else 50)
    header = make_header(support, args.quick, repeats, hardware)
    if forced_note:
        header["backend note"] = forced_note
    report = Report(args.out, header)
    print("nmrl gpu_check\n" + "\n".join(f"  {key}: {value}" for key, value in report.header.items()))
    try:
        from nmrl.doctor import collect

        for check in collect():
            print(f"  {check.name:<30} {'yes' if check.ok else 'no ':<4} {check.detail}")
    except Exception as error:  # the doctor is context, not a measurement: the run goes on
        print(f"  nmrl doctor failed: {error.__class__.__name__}: {measure.first_line(error)}")
    if args.warmup_s > 0 and hardware.device == "cuda":
        try:
            count = measure.warm_up(args.warmup_s)
            report.header["gpu after warm-up"] = measure.gpu_state()
        except Exception as error:  # the rows then say they ran cold; the run goes on
            count = 0
            report.header["gpu after warm-up"] = (
                f"warm-up failed: {error.__class__.__name__}: {measure.first_line(error)}"
            )
        report.write()
        print(f"  warm-up: {count} GEMMs in {args.warmup_s:.1f} s; {report.header['gpu after warm-up']}", flush=True)

    grid = GRIDS["quick" if args.quick else "full"]
    device = hardware.device
    sections: list[tuple[str, Callable[[Report], None]]] = [
        ("correctness", lambda r: section_correctness(r, support.dtypes, device)),
        ("(a) matmul", lambda r: section_matmul(r, grid.widths, grid.batches, support.dtypes, repeats, hardware)),
    ]
    if not args.skip_td3:
        td3_dtype = "bfloat16" if "bfloat16" in support.dtypes else support.dtypes[0]
        sections.append(("(b) td3 update", lambda r: section_td3(r, grid.td3_widths, repeats, td3_dtype, hardware)))
    sections.append(
        ("(c) actor inference", lambda r: section_actor(r, grid.actor_widths, grid.actor_batches, repeats, hardware))
    )
    if not args.skip_tensorrt:
        sections.append(
            ("(d) tensorrt", lambda r: section_tensorrt(r, grid.trt_widths, grid.actor_batches, repeats, hardware))
        )
    run_sections(report, sections)

    report.header["gpu after"] = measure.gpu_state() if device == "cuda" else "n/a (stand-in)"
    report.write()
    print(f"\nwrote {', '.join(str(path) for path in report.paths.values())}, {args.out / 'gpu_check.log'}")
    print(report.markdown())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
