"""How ``benchmarks/gpu_check.py`` measures, one tested piece at a time, so that a GPU table cannot
mislabel a row: interleaved dense/2:4 timing with medians and spreads, kernel time read from
``torch.profiler``, CUDA-graph capture where it works, L2-cold operands, cuSPARSELt algorithm
search, the errors every timed row carries, the GPU's clocks (read only) and the sanity bound of a
TD3 update's gain.

Every piece that touches the hardware takes its stand-in as an argument (a timer, a profiler, a
state reader), so the tests run the same code on a CPU with fakes that would fail if it misbehaved.
Nothing here changes a GPU setting: clocks, power and temperature are only read.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Relative Frobenius error a 2:4 output may have against the dense output of the same masked weight.
ERROR_BOUND = {"bfloat16": 1e-2, "float16": 2e-3}

#: ``(fn, samples, calls_per_sample) -> milliseconds per call, one value per sample``.
SampleTimer = Callable[[Callable[[], object], int, int], list[float]]


@dataclass(frozen=True)
class Timing:
    """Per-call milliseconds of one side of a row: the median of the samples and their spread."""

    median_ms: float
    spread_ms: float  # half the inter-quartile range: a typical distance from the median
    samples: int
    method: str  # "cuda graph", "eager", "cuda events on execute_async_v3", ...

    @property
    def spread_pct(self) -> float:
        return 100.0 * self.spread_ms / self.median_ms if self.median_ms > 0 else float("nan")

    def format(self) -> str:
        return f"{self.median_ms:.4f} ±{self.spread_pct:.0f}%"


def summarize(samples: Sequence[float], method: str) -> Timing:
    """Median and half the inter-quartile range of per-call samples."""
    if not samples:
        raise ValueError("no timing samples")
    values = sorted(samples)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
    else:
        q1, q3 = values[0], values[-1]
    return Timing(statistics.median(values), (q3 - q1) / 2, len(values), method)


def cuda_event_samples(fn: Callable[[], object], samples: int, calls_per_sample: int = 1) -> list[float]:
    """Per-call milliseconds: CUDA events around ``calls_per_sample`` calls, divided by that count."""
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls_per_sample):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_sample)
    return times


def interleaved(
    dense: Callable[[], object],
    sparse: Callable[[], object],
    samples: int,
    timer: SampleTimer = cuda_event_samples,
    calls_per_sample: int = 1,
    block: int = 5,
    warmup: int = 2,
    methods: tuple[str, str] = ("eager", "eager"),
) -> tuple[Timing, Timing]:
    """Time ``dense`` and ``sparse`` in alternating blocks of ``block`` samples, the side that goes
    first swapping every round, so clock drift and heat fall on both alike. A sample is
    ``calls_per_sample`` calls (a TD3 update is two kinds of call: time ``policy_delay`` of them)."""
    for fn in (dense, sparse):
        timer(fn, warmup, calls_per_sample)
    got: dict[int, list[float]] = {0: [], 1: []}
    sides = (dense, sparse)
    round_index = 0
    while len(got[0]) < samples:
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        size = min(block, samples - len(got[0]))
        for side in order:
            got[side] += timer(sides[side], size, calls_per_sample)
        round_index += 1
    return summarize(got[0], methods[0]), summarize(got[1], methods[1])


def cuda_graph(fn: Callable[[], object], warmup: int = 3) -> tuple[Callable[[], object] | None, str]:
    """``fn`` captured into a CUDA graph (a replay launches every kernel at once, so the timing
    is the GPU's, not Python's), or (None, why capture failed)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as error:  # capture is an optimisation: any failure means eager timing
        with contextlib.suppress(Exception):  # the capture's own error is the one to report
            torch.cuda.synchronize()
        return None, f"no CUDA graph ({error.__class__.__name__}: {first_line(error)})"
    return graph.replay, "cuda graph"


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:160]


# ---- kernel time -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTime:
    """What the GPU itself spent per call: the summed durations of the device events the profiler
    saw (kernels, memsets, copies), and the longest kernel's name (to see which GEMM ran)."""

    ms: float
    kernels_per_call: float
    top_kernel: str


def _profile_cuda() -> Any:
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def kernel_time(fn: Callable[[], object], calls: int = 10, profiler: Callable[[], Any] = _profile_cuda) -> KernelTime:
    """Device time per call of ``fn`` from ``torch.profiler``: every event whose ``device_type`` is
    CUDA, its ``time_range`` in microseconds, summed over ``calls`` calls and divided."""
    from torch.autograd import DeviceType

    fn()  # one call outside the trace: lazy setup is not a kernel of the row
    synchronize()
    with profiler() as prof:
        for _ in range(calls):
            fn()
        synchronize()
    device_events = [event for event in prof.events() if event.device_type == DeviceType.CUDA]
    if not device_events:
        raise RuntimeError("the profiler saw no CUDA kernel")
    by_name: dict[str, float] = {}
    for event in device_events:
        by_name[event.name] = by_name.get(event.name, 0.0) + event.time_range.elapsed_us()
    total_us = sum(by_name.values())
    top = max(by_name, key=lambda name: by_name[name])
    return KernelTime(total_us / 1e3 / calls, len(device_events) / calls, top[:60])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- operands that do not sit in L2 -------------------------------------------------------------


def l2_bytes(device: int | None = None) -> int | None:
    """The GPU's L2 size in bytes (None where torch does not report it)."""
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(torch.cuda.current_device() if device is None else device)
    size = getattr(properties, "L2_cache_size", None)
    return int(size) if size else None


def rotation_count(operand_bytes: int, l2: int | None, limit: int = 64) -> int:
    """How many copies of a row's operands to cycle through so that together they exceed twice
    the L2 (each call then reads its weight from memory, as a real network's next layer does);
    1 when one copy already does or L2's size is unknown."""
    if not l2 or operand_bytes <= 0 or operand_bytes > 2 * l2:
        return 1
    return min(limit, 2 * l2 // operand_bytes + 1)


def l2_hot(operand_bytes: int, copies: int, l2: int | None) -> bool:
    """Whether ``copies`` of the operands still fit twice the L2 (the row then reads from cache)."""
    return l2 is None or operand_bytes * copies <= 2 * l2


class Rotating:
    """Call ``fns`` in turn, one per call: each sees operands no other call touched lately."""

    def __init__(self, fns: Sequence[Callable[[], object]]) -> None:
        self.fns = list(fns)
        self.index = 0

    def __call__(self) -> object:
        fn = self.fns[self.index]
        self.index = (self.index + 1) % len(self.fns)
        return fn()


# ---- correctness ------------------------------------------------------------------------------


def relative_frobenius(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``||got - expected||_F / ||expected||_F``, in fp32."""
    expected = expected.detach().float()
    return float(
        torch.linalg.vector_norm(got.detach().float() - expected) / torch.linalg.vector_norm(expected).clamp_min(1e-12)
    )


def error_note(error: float, dtype_name: str) -> str:
    """Why a row's output cannot be trusted ('' when its error is within the dtype's bound)."""
    bound = ERROR_BOUND.get(dtype_name)
    if bound is None or error != error:  # NaN
        return "" if bound is None else "2:4 output is NaN"
    return f"2:4 output off: rel. error {error:.1e} > {bound:.0e}" if error > bound else ""


# ---- cuSPARSELt's algorithm ---------------------------------------------------------------------


def cusparselt_pair(
    packed: torch.Tensor, inputs: torch.Tensor
) -> tuple[Callable[[], object], Callable[[], object], int]:
    """(the default algorithm's matmul, the searched best one's, the best id) for a cuSPARSELt
    semi-structured weight and a [batch, in] input: ``torch._cslt_sparse_mm`` with ``alg_id`` 0
    (what ``to_sparse_semi_structured`` uses) and the id ``torch._cslt_sparse_mm_search`` picks."""
    compressed = packed.packed  # type: ignore[attr-defined]
    dense_b = inputs.t()
    best = int(torch._cslt_sparse_mm_search(compressed, dense_b))

    def default() -> object:
        return torch._cslt_sparse_mm(compressed, dense_b, alg_id=0)

    def searched() -> object:
        return torch._cslt_sparse_mm(compressed, dense_b, alg_id=best)

    return default, searched, best


# ---- the GPU's state, read only ------------------------------------------------------------------

GPU_QUERY = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


def gpu_state(run: Callable[..., Any] = subprocess.run) -> str:
    """SM clock, power and temperature (read only: nvidia-smi queries; nothing is set)."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        result = run(
            ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error.__class__.__name__})"
    if result.returncode != 0 or not result.stdout.strip():
        return f"unknown (nvidia-smi rc {result.returncode})"
    values = [value.strip() for value in result.stdout.strip().splitlines()[0].split(",")]
    names = ["SM clock", "max SM clock", "power", "temperature", "throttle reasons"]
    return ", ".join(f"{name} {value}" for name, value in zip(names, values, strict=False))


def warm_up(seconds: float = 2.5, size: int = 8192, dtype: torch.dtype = torch.float16, device: str = "cuda") -> int:
    """Large GEMMs for ``seconds``, dense and 2:4 alternating in blocks of four, so the first timed
    row does not run at idle clocks and neither kind always runs on a colder GPU; returns the
    number of GEMMs run (the 2:4 ones are left out where compression fails)."""
    from nmrl.sparsity.semi_structured.probe import two_of_four_mask

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    try:
        sparse: torch.Tensor | None = torch.sparse.to_sparse_semi_structured(b * two_of_four_mask(b))
    except Exception as error:  # the warm-up still warms with dense GEMMs
        logger.warning("warm-up without 2:4 GEMMs: %s", first_line(error))
        sparse = None
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for weight in (b, sparse):
            if weight is None:
                continue
            for _ in range(4):
                torch.nn.functional.linear(a, weight)
            count += 4
        synchronize()
    return count


# ---- the sanity bound of a whole update ----------------------------------------------------------


def update_gain_bound(kernel_speedup: float, gemm_share: float = 1 / 3) -> float:
    """The largest speedup of a TD3 update whose forward GEMMs alone run 2:4 at ``kernel_speedup``:
    the forward is at most ``gemm_share`` of the update's GEMM work (the two backward GEMMs stay
    dense), so by Amdahl the update gains at most ``1 / (1 - share + share / kernel_speedup)``."""
    if kernel_speedup <= 0:
        return float("inf")
    return 1.0 / (1.0 - gemm_share + gemm_share / kernel_speedup)


def update_gain_note(update_speedup: float, kernel_speedup: float | None) -> str:
    """'' when a measured update gain is possible given the forward kernel's gain, else why not."""
    if kernel_speedup is None:
        return ""
    bound = update_gain_bound(max(kernel_speedup, 1.0))
    if update_speedup > bound * 1.02:
        return (
            f"implausible: {update_speedup:.2f}x update from a {kernel_speedup:.2f}x forward kernel "
            f"(bound {bound:.2f}x with only the forward GEMM sparse): a measurement error"
        )
    return ""
