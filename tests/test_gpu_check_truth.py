"""The first GPU table must be true (issue 21): each way ``benchmarks/gpu_check.py`` could mislabel a
row, tested on the CPU with stand-ins that would fail if the real thing misbehaved — a timer that
returns two modes, a fake profiler trace, a fake TensorRT context that records what it was given, a
CUDA error injected into a section's clean-up — and the whole ``--quick`` run end to end, without
gymnasium or mujoco, writing a complete table."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.autograd import DeviceType

from nmrl.sparsity import NMPattern, cpu_kernel, nm_mask
from nmrl.sparsity import semi_structured as ss
from nmrl.sparsity.mask import tensor_nm_mask
from nmrl.sparsity.semi_structured import measure

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAND_IN = ss.SemiStructuredSupport(
    True,
    "stand-in",
    device="Stand-in GPU",
    compute_capability=(9, 0),
    backend="cusparselt",
    dtypes=("float16", "bfloat16"),
)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_gpu_check()


# ---- stand-ins ------------------------------------------------------------------------------------


@dataclass
class FakeEvent:
    name: str
    device_type: DeviceType
    us: float

    @property
    def time_range(self):
        return SimpleNamespace(elapsed_us=lambda: self.us)


class FakeProfiler:
    """A trace as torch.profiler gives one: CPU ops (which must not count) and CUDA kernels, one
    pair per call made inside the ``with``."""

    calls: ClassVar[list[int]] = []

    def __init__(self, per_call_kernels=(("gemm_dense", 30.0), ("memset", 2.0)), cpu_us=500.0):
        self.per_call_kernels, self.cpu_us, self.count = per_call_kernels, cpu_us, 0

    def __enter__(self):
        FakeProfiler.calls.append(0)
        return self

    def __exit__(self, *exc):
        return False

    def events(self):
        events = []
        for _ in range(FakeProfiler.calls[-1]):
            events.append(FakeEvent("aten::linear", DeviceType.CPU, self.cpu_us))
            events += [FakeEvent(name, DeviceType.CUDA, us) for name, us in self.per_call_kernels]
        return events


def counted(fn):
    def call():
        if FakeProfiler.calls:
            FakeProfiler.calls[-1] += 1
        return fn()

    return call


def fake_kernel_time(fn, calls):
    return measure.kernel_time(counted(fn), calls, profiler=FakeProfiler)


def constant_timer(fn, samples, calls):
    for _ in range(samples * calls):
        fn()
    return [1.0] * samples


def stand_in_hardware(gpu_check, **changes):
    def search(packed, inputs):
        def default():
            return torch.nn.functional.linear(inputs, packed)

        return default, default, 3

    fields = {
        "device": "cpu",
        "timer": constant_timer,
        "graph": lambda fn: (None, "eager (stand-in: no CUDA graphs on a CPU)"),
        "kernel_time": fake_kernel_time,
        "alg_search": search,
        "engine_timer": lambda stream_ptr: constant_timer,
        "l2_bytes": 16 * 1024,
        "block": 2,
    }
    return gpu_check.Hardware(**{**fields, **changes})


@pytest.fixture
def stand_ins(monkeypatch):
    """CPU stand-ins for the GPU: a compressor that keeps the weight dense (the CPU can multiply
    it) and a probe that says the 2:4 kernels work."""
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach().clone())
    monkeypatch.setattr(ss.probe, "device_support", lambda device: STAND_IN)
    monkeypatch.setattr(ss.probe, "probe_semi_structured", lambda *a: STAND_IN)
    monkeypatch.setattr(ss, "probe_semi_structured", lambda *a: STAND_IN)


# ---- 1: the TD3 row is not the median of a two-mode sample -----------------------------------------


def test_td3_row_times_policy_delay_updates_per_sample(gpu_check, stand_ins, monkeypatch, tmp_path):
    """A virtual clock: a critic-only update costs ~1 ms, one with the actor step ~3 ms. The
    median of single updates lands between the modes (wherever the noise puts it); the row must
    report the mean cost of an update."""
    from nmrl.train.td3 import TD3

    clock = {"now": 0.0, "costs": []}
    real_update = TD3.update

    def update(self, batch):
        metrics = real_update(self, batch)
        k = self.updates % 7
        cost = 3.0 + 0.05 * k if self.updates % self.config.td3.policy_delay == 0 else 1.0 + 0.01 * k
        clock["now"] += cost
        clock["costs"].append(cost)
        return metrics

    monkeypatch.setattr(TD3, "update", update)

    def virtual_timer(fn, samples, calls):
        times = []
        for _ in range(samples):
            start = clock["now"]
            for _ in range(calls):
                fn()
            times.append((clock["now"] - start) / calls)
        return times

    report = gpu_check.Report(tmp_path, {})
    hardware = stand_in_hardware(gpu_check, timer=virtual_timer)
    gpu_check.section_td3(report, [32], repeats=9, hardware=hardware)
    row = report.rows[0]
    true_mean = float(np.mean(clock["costs"]))
    assert abs(row.dense.median_ms - true_mean) / true_mean < 0.03
    assert "2 updates per sample" in row.dense.method


def test_interleaved_alternates_which_side_goes_first():
    order = []

    def timer(fn, samples, calls):
        fn()
        return [1.0] * samples

    measure.interleaved(lambda: order.append("d"), lambda: order.append("s"), 6, timer, block=2, warmup=1)
    assert order[:2] == ["d", "s"]  # warm-up
    assert order[2:] == ["d", "s", "s", "d", "d", "s"]  # each block, the other side first


# ---- 2: kernel time from the profiler beside eager latency ---------------------------------------


def test_kernel_time_sums_cuda_events_only_per_call():
    FakeProfiler.calls.clear()
    found = measure.kernel_time(counted(lambda: None), 4, profiler=FakeProfiler)
    assert found.ms == pytest.approx(0.032)  # 30 + 2 us per call, CPU ops left out
    assert found.kernels_per_call == 2 and found.top_kernel == "gemm_dense"


def test_a_profiler_that_sees_no_kernel_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="no CUDA kernel"):
        measure.kernel_time(counted(lambda: None), 2, profiler=lambda: FakeProfiler(per_call_kernels=()))


class FakeCuda:
    """The torch.cuda calls a graph capture makes, recorded in order: which stream each call of
    the captured function ran on, and whether it ran inside ``torch.cuda.graph``."""

    def __init__(self, log, fail_capture=None):
        self.log, self.fail_capture, self.where = log, fail_capture, "default"
        fake = self

        class Stream:
            def __init__(self, name="side"):
                self.name = name

            def wait_stream(self, other):
                fake.log.append(("wait", self.name, other.name))

        class CUDAGraph:
            def replay(self):
                fake.log.append(("replay",))

        self.Stream, self.CUDAGraph, self.default = Stream, CUDAGraph, Stream("default")

    def current_stream(self):
        return self.default

    def stream(self, stream):
        return self._inside("side stream")

    def graph(self, graph):
        if self.fail_capture:
            raise self.fail_capture
        return self._inside("capture")

    def synchronize(self):
        self.log.append(("synchronize",))

    def _inside(self, where):
        fake = self

        class Context:
            def __enter__(self):
                fake.where = where

            def __exit__(self, *exc):
                fake.where = "default"
                return False

        return Context()


def test_cuda_graph_warms_up_on_a_side_stream_then_captures_once(monkeypatch):
    log: list = []
    fake = FakeCuda(log)
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    replay, how = measure.cuda_graph(lambda: log.append(("call", fake.where)), warmup=2)
    assert how == "cuda graph"
    calls = [entry for entry in log if entry[0] == "call"]
    assert calls == [("call", "side stream")] * 2 + [("call", "capture")]  # capture needs a side-stream warm-up
    waits = [entry for entry in log if entry[0] == "wait"]
    assert waits == [("wait", "side", "default"), ("wait", "default", "side")]  # ordered both ways
    log.clear()
    replay()
    assert log == [("replay",)]  # the timed function is the replay, not the Python function


def test_a_failed_capture_reports_its_own_error_and_the_row_runs_eager(gpu_check, monkeypatch):
    log: list = []
    fake = FakeCuda(log, fail_capture=RuntimeError("operation not permitted when stream is capturing"))
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    replay, how = measure.cuda_graph(lambda: None)
    assert replay is None and "RuntimeError: operation not permitted" in how and log[-1] == ("synchronize",)

    # time_row: a graph on one side only would compare kernels with launches, so both run eager.
    timed = []

    def timer(fn, samples, calls):
        timed.append(fn)
        return [1.0] * samples

    def dense():
        return None

    def sparse():
        return None

    def replay_of(fn):
        def replayed():
            return fn()

        return replayed

    only_dense = {dense: (replay_of(dense), "cuda graph"), sparse: (None, "no CUDA graph (stand-in)")}
    hardware = stand_in_hardware(gpu_check, timer=timer, graph=only_dense.__getitem__)
    dense_t, sparse_t, *_ = gpu_check.time_row(hardware, dense, sparse, 2)
    assert set(timed) == {dense, sparse} and dense_t.method == sparse_t.method == "eager (no CUDA graph (stand-in))"
    replays = {fn: replay_of(fn) for fn in (dense, sparse)}
    timed.clear()
    hardware = stand_in_hardware(gpu_check, timer=timer, graph=lambda fn: (replays[fn], "cuda graph"))
    dense_t, sparse_t, *_ = gpu_check.time_row(hardware, dense, sparse, 2)
    assert set(timed) == set(replays.values()) and dense_t.method == sparse_t.method == "cuda graph"


# ---- 3: TensorRT timed on the engine, precision read back -----------------------------------------


class FakeContext:
    def __init__(self, log):
        self.log = log

    def set_input_shape(self, name, shape):
        self.log.append(("shape", name, tuple(shape)))

    def set_tensor_address(self, name, ptr):
        self.log.append(("address", name, ptr))

    def execute_async_v3(self, stream):
        self.log.append(("execute", stream))
        return True


class FakeDeviceArray:
    def __init__(self, log, name, ptr):
        self.log, self.name, self.ptr = log, name, ptr

    def resize(self, shape):
        self.log.append(("resize", self.name, tuple(shape)))

    def copy_from(self, array, stream):
        self.log.append(("h2d", self.name, array.dtype.name, array.shape))

    def copy_to(self, array, stream):
        self.log.append(("d2h", self.name))
        array[...] = 0.5


def fake_policy(log, stream=77):
    policy = SimpleNamespace(
        _input_dtype=np.dtype(np.float32),
        _output_dtype=np.dtype(np.float16),
        act_dim=8,
        _input="obs",
        _output="action",
        _context=FakeContext(log),
        _stream=SimpleNamespace(ptr=stream, synchronize=lambda: log.append(("sync",))),
        _device_in=FakeDeviceArray(log, "in", 1000),
        _device_out=FakeDeviceArray(log, "out", 2000),
        _logger=SimpleNamespace(errors=lambda: []),
    )
    return policy


def install_fake_tensorrt(patch, gpu_check, fake_export=True):
    """A fake TensorRT 10 behind section (d): ``import tensorrt`` finds it, ``build_engines`` returns
    a build with the FP16 flag on an fp32 graph, and each ``TensorRTPolicy`` is a fake engine on a
    stream of its own (77 dense, 78 sparse) whose log records every call it was given."""
    import nmrl.deploy.tensorrt as trt_deploy

    logs: list[list] = []
    exported: list[str] = []
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.13.3.9"
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # what find_spec answers
    patch.setitem(sys.modules, "tensorrt", module)
    built = SimpleNamespace(
        flags={"FP16": True, "SPARSE_WEIGHTS": True, "STRONGLY_TYPED": False},
        builder_picked=["/net/net.2/Gemm"],
        dense_plan="dense.plan",
        plan="sparse.plan",
        format=lambda: "fake build",
    )
    patch.setattr(trt_deploy, "build_engines", lambda *a, **k: built)
    if fake_export:
        patch.setattr(gpu_check, "export_actor", lambda width, path, dtype: exported.append(dtype) or path)

    def policy(path):
        logs.append([])
        fake = fake_policy(logs[-1], stream=77 if path == "dense.plan" else 78)
        fake.close = lambda log=logs[-1]: log.append(("close",))
        return fake

    patch.setattr(trt_deploy, "TensorRTPolicy", policy)
    return logs, exported


def test_tensorrt_timing_launches_only_the_engine_on_staged_buffers():
    from nmrl.deploy.tensorrt.timing import StagedEngine, event_samples

    log: list = []
    engine = StagedEngine(fake_policy(log), np.zeros((4, 105), dtype=np.float64))
    staged = list(log)
    assert ("h2d", "in", "float32", (4, 105)) in staged  # the input is cast and copied once, up front
    assert ("address", "obs", 1000) in staged and ("address", "action", 2000) in staged
    log.clear()

    recorded = []

    class Event:
        def __init__(self):
            self.t = None

        def record(self, stream):
            recorded.append(stream)
            self.t = float(len(log))

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return other.t - self.t

    times = event_samples(engine.launch, 3, 2, Event, "trt-stream")
    assert log == [("execute", 77)] * 6  # nothing copied, cast or synchronized between the events
    assert set(recorded) == {"trt-stream"} and times == [1.0, 1.0, 1.0]  # per launch
    assert engine.outputs().dtype == np.float32


def test_tensorrt_section_times_the_engine_and_labels_its_real_precision(gpu_check, monkeypatch, tmp_path):
    """Section (d) with a fake TensorRT 10 (FP16 flag on an fp32 graph): the row's dtype is fp16,
    each engine is timed on its own stream, and between the timing events only that engine's
    ``execute_async_v3`` runs (no copies, no casts, not the other engine)."""
    logs, exported = install_fake_tensorrt(monkeypatch, gpu_check)
    timed: dict[int, list] = {}

    def engine_timer(stream_ptr):
        def timer(fn, samples, calls):
            before = [len(log) for log in logs]
            for _ in range(samples * calls):
                fn()
            ran = [entry for log, start in zip(logs, before, strict=True) for entry in log[start:]]
            timed.setdefault(stream_ptr, []).extend(ran)
            return [1.0] * samples

        return timer

    report = gpu_check.Report(tmp_path, {})
    gpu_check.section_tensorrt(report, [32], [4], 3, stand_in_hardware(gpu_check, engine_timer=engine_timer))
    (row,) = report.rows
    assert exported == ["fp32"] and row.dtype.startswith("fp16 (FP16 flag")  # TensorRT 10: fp32 graph + FP16
    assert row.dense.method.startswith("cuda events on execute_async_v3")
    assert set(timed) == {77, 78}  # one timer per engine, on that engine's stream
    assert {stream: set(entries) for stream, entries in timed.items()} == {77: {("execute", 77)}, 78: {("execute", 78)}}
    assert row.dense_kernel_ms is not None and row.error == 0.0
    assert all(log[-1] == ("close",) for log in logs)  # both engines released


def test_tensorrt_precision_is_what_the_engine_runs():
    from nmrl.deploy.tensorrt.timing import engine_precision

    trt10 = SimpleNamespace(flags={"FP16": True, "SPARSE_WEIGHTS": True, "STRONGLY_TYPED": False})
    assert engine_precision(trt10, "fp32").startswith("fp16 (FP16 flag")
    typed = SimpleNamespace(flags={"SPARSE_WEIGHTS": True, "STRONGLY_TYPED": True})
    assert engine_precision(typed, "fp16") == "fp16 (strongly typed)"


def test_strongly_typed_is_read_back_from_the_network_not_echoed(tmp_path):
    """TensorRT 11 ignores the creation flag (every network is strongly typed): the report must
    say what the network is, not what was asked."""
    from test_tensorrt import _FakeTensorRT10, export_actor

    import nmrl.deploy.tensorrt as trt_deploy
    from nmrl.deploy.onnx_gemms import read_graph_info

    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp32")
    info = read_graph_info(onnx_path)
    fake = _FakeTensorRT10()
    real_builder = fake.Builder

    class AlwaysTyped(real_builder):
        def create_network(self, flags):
            network = super().create_network(flags)
            network.get_flag = lambda flag: True
            return network

    fake.Builder = AlwaysTyped
    settings = trt_deploy.build_settings("tensorrt", fake.__version__, info.compute_dtype, sparse=True)
    built = trt_deploy.build_plan(fake, onnx_path, info, settings, trt_deploy.BatchProfile())
    assert settings.strongly_typed is False and built.flags["STRONGLY_TYPED"] is True


# ---- 4: warm-up, interleaving and the GPU's state (read only) -------------------------------------


def test_gpu_state_only_reads():
    seen = []

    def run(command, **kwargs):
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout="1980 MHz, 1980 MHz, 312.5 W, 51, 0x0\n")

    state = measure.gpu_state(run)
    assert "SM clock 1980 MHz" in state and "power 312.5 W" in state and "temperature 51" in state
    (command,) = seen
    assert command[0] == "nvidia-smi" and all(arg.startswith(("--query-gpu=", "--format=")) for arg in command[1:])


def test_warm_up_interleaves_dense_and_2of4_gemms(stand_ins, monkeypatch):
    kinds = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: (kinds.append(w.data_ptr()), real(x, w))[1])
    count = measure.warm_up(0.05, size=64, dtype=torch.float32, device="cpu")
    assert count == len(kinds) and len(set(kinds)) == 2  # the dense and the compressed weight
    assert kinds[:8] == [kinds[0]] * 4 + [kinds[4]] * 4 and kinds[0] != kinds[4]  # in blocks of four


# ---- 5, 7, 8: every row checked, alg search, L2 ----------------------------------------------------


def test_every_matmul_row_carries_its_error_and_a_wrong_kernel_is_flagged(gpu_check, stand_ins, monkeypatch, tmp_path):
    report = gpu_check.Report(tmp_path, {})
    hardware = stand_in_hardware(gpu_check)
    gpu_check.section_matmul(report, [32], [512], ("float16",), repeats=2, hardware=hardware)
    assert report.rows[0].error < 1e-3 and "output off" not in report.rows[0].unreliable
    assert "searched alg 3" in report.rows[0].alg
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach() * 1.01)
    gpu_check.section_matmul(report, [32], [512], ("float16",), repeats=2, hardware=hardware)
    assert "2:4 output off" in report.rows[1].unreliable


def test_small_batches_rotate_l2_cold_copies_or_say_l2_hot(gpu_check, stand_ins, tmp_path):
    report = gpu_check.Report(tmp_path, {})
    weight = 32 * 32 * 2  # bytes of one fp16 32x32 weight
    assert measure.rotation_count(2 << 20, 50 << 20) == 51  # 2 MiB weights, 50 MiB L2: > 2x L2
    gpu_check.section_matmul(report, [32], [8], ("float16",), 2, stand_in_hardware(gpu_check, l2_bytes=4 * weight))
    assert report.rows[0].note == "9 weight copies rotated" and "L2-hot" not in report.rows[0].unreliable
    gpu_check.section_matmul(report, [32], [8], ("float16",), 2, stand_in_hardware(gpu_check, l2_bytes=1 << 20))
    assert "L2-hot" in report.rows[1].unreliable  # 64 copies cannot exceed 2 MiB


def test_cusparselt_pair_times_alg_0_against_the_searched_one_on_the_linear_operands(monkeypatch):
    """The pair multiplies what ``linear`` multiplies (the compressed weight by the input
    transposed): the default with ``alg_id`` 0, the other with the id the search returned."""
    seen = []

    def search(compressed, dense_b):
        seen.append(("search", compressed, dense_b.shape))
        return 5

    def matmul(compressed, dense_b, alg_id=0, **kwargs):
        seen.append(("mm", alg_id))
        return compressed @ dense_b

    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", search)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", matmul)
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    inputs = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    default, searched, best = measure.cusparselt_pair(SimpleNamespace(packed=weight), inputs)
    assert best == 5 and seen == [("search", weight, (32, 4))]
    assert torch.allclose(default().t(), torch.nn.functional.linear(inputs, weight))
    searched()
    assert seen[1:] == [("mm", 0), ("mm", 5)]


def test_searched_algorithm_failure_is_written_in_the_row(gpu_check, stand_ins, tmp_path):
    def broken(packed, inputs):
        raise RuntimeError("CUDA error: cusparseLt search failed")

    report = gpu_check.Report(tmp_path, {})
    gpu_check.section_matmul(report, [32], [512], ("float16",), 2, stand_in_hardware(gpu_check, alg_search=broken))
    assert report.rows[0].alg.startswith("search failed: RuntimeError")


# ---- 6: sync-free masks on a GPU, and the sanity bound --------------------------------------------


def test_mask_refresh_needs_no_host_sync_off_the_cpu():
    """A meta tensor has no values: any host sync (``int(...)``, boolean indexing) raises, as a
    sync would stall a GPU after every optimizer step."""
    mask = tensor_nm_mask(torch.empty(16, 30, device="meta"), NMPattern(2, 4))
    assert mask.shape == (16, 30) and mask.device.type == "meta"


@pytest.mark.parametrize(("n", "m", "cols"), [(2, 4, 32), (2, 4, 30), (1, 8, 20), (3, 8, 17), (2, 4, 1)])
def test_sync_free_tie_handling_gives_the_cpu_mask(monkeypatch, n, m, cols):
    import nmrl.sparsity.mask as mask_module

    generator = torch.Generator().manual_seed(n * 100 + cols)
    weight = torch.randint(-2, 3, (24, cols), generator=generator).float()  # many ties, zeros included
    expected = tensor_nm_mask(weight, NMPattern(n, m))

    # The same CPU tensor, seen as if it lived on a GPU: tensor_nm_mask takes the sync-free branch.
    on_gpu = SimpleNamespace(
        device=SimpleNamespace(type="cuda"),
        shape=weight.shape,
        detach=weight.detach,
        dim=weight.dim,
        dtype=weight.dtype,
    )
    monkeypatch.setattr(mask_module, "_rank_keep_lean", counting(mask_module._rank_keep_lean, calls := []))
    got = mask_module.tensor_nm_mask(on_gpu, NMPattern(n, m))
    assert torch.equal(got, expected) and calls == [1]  # ranked once, over every group


def counting(fn, calls):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)

    return wrapped


def test_update_gain_bound_flags_an_impossible_td3_figure():
    assert measure.update_gain_bound(1.3) == pytest.approx(1.083, abs=1e-3)
    assert measure.update_gain_note(1.06, 1.3) == ""
    assert "implausible" in measure.update_gain_note(1.5, 1.3)


# ---- 9: fail-soft ----------------------------------------------------------------------------------


def test_doctor_collect_survives_a_crashing_check(monkeypatch):
    from nmrl import doctor

    def crash():
        raise RuntimeError("numba: LLVM ERROR: Cannot select")

    monkeypatch.setattr(doctor, "check_cpu_mask_kernel", crash)
    rows = {check.name: check for check in doctor.collect()}
    row = rows["CPU mask kernel (numba)"]
    assert not row.ok and "LLVM ERROR" in row.detail and "ONNX Runtime" in rows


def test_a_numba_kernel_that_fails_to_compile_falls_back_to_the_tensor_code(monkeypatch):
    def failing(*args):
        raise RuntimeError("numba.core.errors.LoweringError: stand-in")

    monkeypatch.setattr(cpu_kernel, "_compile", lambda: (failing, failing))
    monkeypatch.setattr(cpu_kernel, "_broken", [])
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nm_mask(weight, NMPattern(2, 4)), tensor_nm_mask(weight, NMPattern(2, 4)))
    assert "LoweringError" in cpu_kernel.unusable_reason()


def test_the_probe_reports_a_mask_that_fails_to_compute_instead_of_crashing(monkeypatch):
    def broken(weight):
        raise RuntimeError("numba: LLVM ERROR: stand-in")

    monkeypatch.setattr(ss.probe, "two_of_four_mask", broken)
    reason = ss.probe._tiny_check(torch.float16, torch.device("cpu"))
    assert reason == "RuntimeError: numba: LLVM ERROR: stand-in"


def test_a_sticky_cuda_error_in_clean_up_does_not_stop_later_sections(gpu_check, monkeypatch, tmp_path):
    def sticky():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", sticky)
    report = gpu_check.Report(tmp_path, {})
    ran = []
    gpu_check.run_sections(report, [("a", lambda r: ran.append("a")), ("b", lambda r: ran.append("b"))])
    assert ran == ["a", "b"]
    assert [section for section, _ in report.failures] == ["a", "b"]
    assert "illegal memory access" in report.failures[0][1]


# ---- 10: _FORCE_CUTLASS ----------------------------------------------------------------------------


def test_forced_cutlass_on_hopper_is_lifted_and_said(gpu_check, monkeypatch):
    from torch.sparse import SparseSemiStructuredTensor

    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    note = gpu_check.measured_backend()
    assert SparseSemiStructuredTensor._FORCE_CUTLASS is False
    assert "sm 9.0" in note and "cuSPARSELt instead" in note
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    SparseSemiStructuredTensor._FORCE_CUTLASS = True
    assert gpu_check.measured_backend() == "" and SparseSemiStructuredTensor._FORCE_CUTLASS is True


# ---- 11: the whole --quick run on stand-ins, without gymnasium or mujoco -------------------------


TINY = dict(widths=[32], batches=[8, 512], td3_widths=[32], actor_widths=[32], actor_batches=[1, 300], trt_widths=[32])


def run_stand_in_quick(out: Path) -> int:
    """The whole ``--quick`` run on CPU stand-ins, tiny shapes (for the subprocess below)."""
    import pytest as _pytest

    gpu_check = load_gpu_check()
    patch = _pytest.MonkeyPatch()
    patch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach().clone())
    patch.setattr(ss.probe, "device_support", lambda device: STAND_IN)
    patch.setattr(ss.probe, "probe_semi_structured", lambda *a: STAND_IN)
    patch.setattr(ss, "probe_semi_structured", lambda *a: STAND_IN)
    patch.setitem(gpu_check.GRIDS, "quick", gpu_check.Grid(**TINY))
    install_fake_tensorrt(patch, gpu_check, fake_export=False)  # nmrl's real export, a fake build
    return gpu_check.main(["--quick", "--repeats", "4", "--out", str(out)], hardware=stand_in_hardware(gpu_check))


def test_quick_run_writes_a_complete_table_without_gymnasium_or_mujoco(tmp_path):
    out = tmp_path / "results"
    code = (
        "import sys; sys.modules['gymnasium'] = None; sys.modules['mujoco'] = None\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from pathlib import Path\nimport test_gpu_check_truth as t\n"
        f"sys.exit(t.run_stand_in_quick(Path({str(out)!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    document = json.loads((out / "gpu_check.json").read_text())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sections = [row["section"] for row in document["timings"]]
    assert sections.count("matmul") == 4 and "td3" in sections and sections.count("actor") == 2
    assert sections.count("tensorrt") == 2 and not document["skipped_sections"]
    with (out / "gpu_check.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # every column of every row holds a value
        missing = [column for column, value in row.items() if column != "note" and value in ("", None)]
        assert not missing, (row, missing)
        assert row["dense kernel ms"] != "n/a" and "(" in row["2:4 error (rel. Frobenius)"]
    assert {row["cuSPARSELt alg (kernel ms)"] != "n/a" for row in rows if row["section"] == "matmul"} == {True}
    header = document["header"]
    assert header["_FORCE_CUTLASS"] is False and "gpu before" in header and "gpu after" in header
    markdown = (out / "gpu_check.md").read_text()
    assert all(f"## {section}\n" in markdown for section in ("matmul", "td3", "actor", "tensorrt"))
    log = (out / "gpu_check.log").read_text()
    assert "[(a) matmul]" in log and "wrote" in log  # the full log, in the results folder
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and all(path.stat().st_size < 16 << 20 for path in out.iterdir()), files
