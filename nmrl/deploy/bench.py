"""Latency profiling: a sparse actor and its dense twin, per precision, backend and batch size.

The dense twin has the same architecture with every pruned weight replaced by a nonzero value, so
any speed difference between the two is what the zeros buy on that backend. On a CPU nothing
exploits 2:4 zeros and the expected ratio is ~1.0x; 2:4 kernels need sparse tensor cores
(TensorRT on Ampere or newer, fp16/int8), large layers and large batches.

Timing: every call is timed on its own with ``time.perf_counter_ns`` around ``Policy.act``, which
returns host arrays (a GPU backend's copy back synchronises it), after warm-up calls. Inputs
rotate through a pool of distinct observation batches rather than replaying one buffer. Every
variant and precision of one model (sparse and dense twin, each in fp32/fp16/int8) is timed on a
backend in the same interleaved rounds, so the dense/sparse and int8/fp32 ratios compare calls made
side by side.
"""

from __future__ import annotations

import csv
import math
import platform
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError
from nmrl.files import format_bytes, physical_memory

INPUT_POOL = 8
# Copies of one synthetic actor's weights alive while it is benched, per dtype: torch module and
# dense twin, their ONNX exports (in memory and as files read back) and a runtime session of each.
WEIGHT_COPIES = 8
# The reference precision of the "relative to fp32" ratios.
REFERENCE_DTYPE = "fp32"

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one (model, variant, dtype, backend, batch) cell, in microseconds.
    ``dtype`` is the precision the policy ran in (fp32, fp16, int8)."""

    model: str
    variant: str
    dtype: str
    backend: str
    batch: int
    calls: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float

    @property
    def throughput(self) -> float:
        """Observations per second at the median latency."""
        return self.batch / (self.p50_us * 1e-6)


def memory_needed(batch: int, obs_dim: int, act_dim: int, widths: list[int], dtypes: int = 1) -> int:
    """Bytes a bench needs at least (float32): the input pool at ``batch``, and per synthetic width
    its weights (:data:`WEIGHT_COPIES` of them per dtype) and two layers of activations."""
    needed = INPUT_POOL * batch * obs_dim * 4
    for width in widths:
        weights = obs_dim * width + width * width + width * act_dim
        needed += WEIGHT_COPIES * dtypes * weights * 4 + 4 * batch * width * 4
    return needed


def check_memory(batch: int, obs_dim: int, act_dim: int, widths: list[int], dtypes: int = 1) -> None:
    """:class:`NmrlError` when a bench of this size cannot fit in this machine's memory, before
    anything is allocated (``--batch 100000000000`` was a MemoryError, ``--widths 10000000`` an
    allocation error deep in PyTorch)."""
    needed, available = memory_needed(batch, obs_dim, act_dim, widths, dtypes), physical_memory()
    if needed > available:
        sizes = f"batch {batch:,}" + (f", widths up to {max(widths):,}" if widths else "")
        raise NmrlError(
            f"a bench at {sizes} needs at least {format_bytes(needed)}, more than the "
            f"{format_bytes(available)} of memory here: choose a smaller --batch or --widths"
        )


def time_policies(
    policies: dict[Key, Policy],
    batch: int,
    warmup: int = 20,
    calls: int = 200,
    max_seconds: float = 2.0,
    min_calls: int = 10,
    rounds: int = 5,
    seed: int = 0,
) -> dict[Key, np.ndarray]:
    """Per-call latencies (ns) of each policy's ``act`` on ``[batch, obs_dim]`` inputs; ``policies``
    are keyed by anything hashable (run_bench: (variant, dtype), all of one model on one backend).

    Each policy gets ``warmup`` untimed calls, then ``calls`` timed ones (fewer, but at least
    ``min_calls``, when the warm-up estimate says they would take longer than ``max_seconds`` per
    policy). The timed calls are split into ``rounds`` that alternate between the policies, so a
    slow spell of the machine (other processes, frequency changes) hits all of them alike instead
    of whichever happened to run at the time.
    """
    if calls < 1 or warmup < 0 or not (math.isfinite(max_seconds) and max_seconds > 0):
        raise NmrlError(f"calls >= 1, warmup >= 0 and a finite max_seconds > 0, got {calls}, {warmup}, {max_seconds}")
    rng = np.random.default_rng(seed)
    obs_dim = next(iter(policies.values())).obs_dim
    check_memory(batch, obs_dim, 0, [])
    pool = [rng.standard_normal((batch, obs_dim)).astype(np.float32) for _ in range(INPUT_POOL)]
    counts = {}
    for name, policy in policies.items():
        start = time.perf_counter_ns()
        for i in range(max(warmup, 1)):
            policy.act(pool[i % INPUT_POOL])
        per_call_s = (time.perf_counter_ns() - start) * 1e-9 / max(warmup, 1)
        budget_calls = int(max_seconds / per_call_s) if per_call_s > 0 else calls
        counts[name] = min(calls, max(min_calls, budget_calls))  # never more calls than asked
    latencies = {name: np.empty(count, dtype=np.int64) for name, count in counts.items()}
    done = dict.fromkeys(policies, 0)
    for round_index in range(rounds):
        for name, policy in policies.items():
            stop = counts[name] * (round_index + 1) // rounds
            for i in range(done[name], stop):
                obs = pool[i % INPUT_POOL]
                began = time.perf_counter_ns()
                policy.act(obs)
                latencies[name][i] = time.perf_counter_ns() - began
            done[name] = stop
    return latencies


def timing_of(model: str, variant: str, dtype: str, backend: str, batch: int, latencies_ns: np.ndarray) -> Timing:
    """Percentiles and mean (µs) of one model x variant x dtype x backend x batch's per-call latencies."""
    us = latencies_ns / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return Timing(model, variant, dtype, backend, batch, len(us), float(p50), float(p90), float(p99), float(us.mean()))


@dataclass
class BenchModel:
    """One model to time in one precision (``dtype``), with a loader per backend:
    ``loaders[backend]() -> Policy``."""

    name: str
    variant: str
    dtype: str
    loaders: dict[str, Callable[[], Policy]]


@dataclass(frozen=True)
class Ratio:
    """Dense twin latency over sparse latency at one precision (> 1: the sparse actor is faster)."""

    model: str
    dtype: str
    backend: str
    batch: int
    sparse_p50_us: float
    dense_p50_us: float

    @property
    def speedup(self) -> float:
        return self.dense_p50_us / self.sparse_p50_us


def run_bench(
    models: list[BenchModel],
    backends: list[str],
    batches: list[int],
    warmup: int = 20,
    calls: int = 200,
    max_seconds: float = 2.0,
    on_result: Callable[[Timing], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> tuple[list[Timing], dict[str, str]]:
    """Time every model x backend x batch. All variants and precisions of one model on one backend
    (sparse and dense twin, each in every dtype) are loaded together and timed in the same
    interleaved rounds at each batch, so a slow spell of the machine hits them alike.

    A loader that refuses with an :class:`NmrlError` (a combination the backend cannot run) is
    skipped and reported through ``on_skip``; the others of the group are still timed. Returns the
    timings and, per backend, what ran it."""
    timings: list[Timing] = []
    described: dict[str, str] = {}
    groups: dict[str, list[BenchModel]] = {}
    for model in models:
        groups.setdefault(model.name, []).append(model)
    for name, members in groups.items():
        for backend in backends:
            loaders = {(m.variant, m.dtype): m.loaders[backend] for m in members if backend in m.loaders}
            if not loaders:
                continue
            policies: dict[tuple[str, str], Policy] = {}
            try:
                for (variant, dtype), loader in loaders.items():
                    try:
                        policies[variant, dtype] = loader()
                    except NmrlError as error:
                        if on_skip is not None:
                            on_skip(f"{name} {variant} {dtype} skipped on {backend}: {error}")
                if not policies:
                    continue
                described.setdefault(backend, next(iter(policies.values())).describe())
                for batch in batches:
                    latencies = time_policies(policies, batch, warmup, calls, max_seconds)
                    for (variant, dtype), values in latencies.items():
                        timing = timing_of(name, variant, dtype, backend, batch, values)
                        timings.append(timing)
                        if on_result is not None:
                            on_result(timing)
            finally:
                for policy in policies.values():
                    policy.close()
    return timings, described


def ratios(timings: list[Timing]) -> list[Ratio]:
    """Sparse vs dense twin, matched on model, dtype, backend and batch."""
    by_key = {(t.model, t.variant, t.dtype, t.backend, t.batch): t for t in timings}
    found = []
    for (model, variant, dtype, backend, batch), sparse in by_key.items():
        dense = by_key.get((model, "dense", dtype, backend, batch))
        if variant == "sparse" and dense is not None:
            found.append(Ratio(model, dtype, backend, batch, sparse.p50_us, dense.p50_us))
    return found


def relative_to_fp32(timings: list[Timing]) -> dict[Timing, float]:
    """Each non-fp32 cell's speed relative to fp32: the fp32 p50 of the same model, variant,
    backend and batch over this cell's p50 (> 1: faster than fp32). Cells without an fp32
    counterpart in ``timings`` (no fp32 timed, or torch at int8) are absent."""
    reference = {(t.model, t.variant, t.backend, t.batch): t for t in timings if t.dtype == REFERENCE_DTYPE}
    found = {}
    for t in timings:
        fp32 = reference.get((t.model, t.variant, t.backend, t.batch))
        if t.dtype != REFERENCE_DTYPE and fp32 is not None:
            found[t] = fp32.p50_us / t.p50_us
    return found


def write_csv(timings: list[Timing], path: Path) -> None:
    """One row per cell: the Timing fields, throughput, dense/sparse p50 (sparse rows) and fp32 p50
    over this p50 (non-fp32 rows whose fp32 cell was timed); empty where a ratio does not apply."""
    path.parent.mkdir(parents=True, exist_ok=True)
    speedups = {(r.model, r.dtype, r.backend, r.batch): r.speedup for r in ratios(timings)}
    versus_fp32 = relative_to_fp32(timings)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        fields = [*asdict(timings[0]).keys(), "throughput_obs_per_s", "dense_over_sparse_p50", "fp32_p50_over_p50"]
        writer.writerow(fields)
        for t in timings:
            speedup = speedups.get((t.model, t.dtype, t.backend, t.batch)) if t.variant == "sparse" else None
            relative = versus_fp32.get(t)
            writer.writerow(
                [
                    *asdict(t).values(),
                    f"{t.throughput:.1f}",
                    "" if speedup is None else f"{speedup:.4f}",
                    "" if relative is None else f"{relative:.4f}",
                ]
            )


def read_csv(path: Path) -> list[Timing]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [
        Timing(
            row["model"],
            row["variant"],
            row["dtype"],
            row["backend"],
            int(row["batch"]),
            int(row["calls"]),
            float(row["p50_us"]),
            float(row["p90_us"]),
            float(row["p99_us"]),
            float(row["mean_us"]),
        )
        for row in rows
    ]


# Colour per precision, so fp32 / fp16 / int8 read apart at a glance (other dtypes: grey).
DTYPE_COLORS = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
BACKEND_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot(timings: list[Timing], path: Path) -> None:
    """Median latency vs batch (log-log), one panel per model: colour = dtype, solid = sparse,
    dashed = dense twin, marker = backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    # Plain numbers (256, 4096; 12.5 µs, 1,000,000 µs) rather than log-axis powers of ten.
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    models = list(dict.fromkeys(t.model for t in timings))
    batches = sorted({t.batch for t in timings})
    dtypes = list(dict.fromkeys(t.dtype for t in timings))
    backends = list(dict.fromkeys(t.backend for t in timings))
    columns = min(len(models), 3)
    rows = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 6 * rows), squeeze=False)
    for axis, model in zip(axes.flat, models, strict=False):
        for dtype in dtypes:
            for index, backend in enumerate(backends):
                for variant, style in (("sparse", "-"), ("dense", "--")):
                    cells = sorted(
                        (
                            t
                            for t in timings
                            if (t.model, t.dtype, t.backend, t.variant) == (model, dtype, backend, variant)
                        ),
                        key=lambda t: t.batch,
                    )
                    if cells:
                        axis.plot(
                            [t.batch for t in cells],
                            [t.p50_us for t in cells],
                            style,
                            marker=BACKEND_MARKERS[index % len(BACKEND_MARKERS)],
                            markerfacecolor="none" if variant == "dense" else None,
                            color=DTYPE_COLORS.get(dtype, "tab:gray"),
                            label=f"{dtype} {backend} {variant}",
                        )
        axis.set(xscale="log", yscale="log", title=model, xlabel="batch", ylabel="p50 latency (µs)")
        axis.set_xticks(batches)
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_formatter(plain)
        low, high = axis.get_ylim()
        # Within about a decade the powers of ten alone leave the axis unlabelled: label the minor
        # ticks too; over several decades they would overlap.
        axis.yaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
        axis.tick_params(axis="y", which="minor", labelsize="x-small")
        axis.grid(True, which="both", alpha=0.3)
        # Below the panel, so the legend never hides a line.
        axis.legend(fontsize="small", ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    figure.suptitle(
        "p50 latency per call\ncolour: dtype, solid: sparse, dashed: dense twin, marker: backend\n"
        + machine_description(),
        fontsize="medium",
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def machine_description() -> str:
    import os

    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores visible"


def verdict(found: list[Ratio], described: dict[str, str]) -> str:
    """What the measurement says, in words, for the end of the report."""
    if not found:
        return "no sparse/dense pairs were timed"
    speedups = np.array([r.speedup for r in found])
    text = (
        f"dense/sparse median-latency ratio over {len(found)} cells: median {np.median(speedups):.2f}x "
        f"(range {speedups.min():.2f}-{speedups.max():.2f}x)."
    )
    sparse_capable = [b for b in described if b.startswith(("tensorrt", "torch-2:4"))]
    if sparse_capable:
        text += (
            f" {', '.join(sparse_capable)} can run 2:4 layers on sparse tensor cores: a ratio above 1 there is "
            "what the sparsity buys; the other backends multiply the zeros like any weight."
        )
    else:
        text += (
            " None of these backends has 2:4 sparse kernels (PyTorch eager and ONNX Runtime CPU/CUDA "
            "multiply the zeros like any weight), so ~1.0x is the expected result: differences are noise. "
            "2:4 speedups need sparse tensor cores (TensorRT, fp16/int8, Ampere or newer) and large layers."
        )
    return text
