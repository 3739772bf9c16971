"""Timing an engine itself, for benchmarks: its input staged on the device once, the tensor
addresses set once, and only ``execute_async_v3`` between two CUDA events on the engine's stream.

:meth:`TensorRTPolicy.act` is what a deployed policy calls, and its host wall time includes a
pageable host-to-device copy, a host-side cast and the copy back: at RL batch sizes those swamp the
GEMMs a 2:4 engine speeds up. :class:`StagedEngine` leaves them out, so the timing is the engine's.
The events come from the caller (``benchmarks/gpu_check.py`` records PyTorch's CUDA events on the
engine's stream), which keeps this module free of PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nmrl.deploy.tensorrt.report import BuildReport
from nmrl.deploy.tensorrt.runner import TensorRTPolicy


class StagedEngine:
    """A loaded engine with one batch of observations already in device memory.

    ``launch()`` enqueues one inference on the engine's stream and returns at once; ``outputs()``
    copies the actions back (after the timing) for the correctness check.
    """

    def __init__(self, policy: TensorRTPolicy, obs: np.ndarray) -> None:
        batch = np.ascontiguousarray(obs, dtype=policy._input_dtype)
        rows = batch.shape[0]
        self.policy, self.rows = policy, rows
        self.stream_ptr: int = policy._stream.ptr
        context = policy._context
        policy._device_in.resize(batch.shape)
        policy._device_out.resize((rows, policy.act_dim))
        policy._device_in.copy_from(batch, policy._stream)
        policy._stream.synchronize()
        context.set_input_shape(policy._input, batch.shape)
        context.set_tensor_address(policy._input, policy._device_in.ptr)
        context.set_tensor_address(policy._output, policy._device_out.ptr)
        self._context = context

    def launch(self) -> None:
        """Enqueue one inference on the engine's stream (nothing copied, nothing waited for)."""
        if not self._context.execute_async_v3(self.stream_ptr):
            raise RuntimeError(f"TensorRT execution failed: {self.policy._logger.errors()[-1:]}")

    def outputs(self) -> np.ndarray:
        """The actions of the staged batch, as float32."""
        actions = np.empty((self.rows, self.policy.act_dim), dtype=self.policy._output_dtype)
        self.policy._device_out.copy_to(actions, self.policy._stream)
        self.policy._stream.synchronize()
        return actions.astype(np.float32, copy=False)


def event_samples(
    launch: Callable[[], object], samples: int, calls_per_sample: int, new_event: Callable[[], Any], stream: Any
) -> list[float]:
    """Per-call milliseconds: events recorded on ``stream`` around ``calls_per_sample`` launches.
    ``new_event()`` makes an event with ``record(stream)``, ``synchronize()`` and ``elapsed_time(other)``
    (PyTorch's ``torch.cuda.Event(enable_timing=True)`` does)."""
    times = []
    for _ in range(samples):
        start, end = new_event(), new_event()
        start.record(stream)
        for _ in range(calls_per_sample):
            launch()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_sample)
    return times


def engine_precision(report: BuildReport, graph_dtype: str) -> str:
    """The precision an engine's GEMMs really run in, from the flags read back after the build:
    TensorRT 10 with the FP16 flag on a weakly typed fp32 graph runs fp16 kernels (its I/O stays
    fp32); a strongly typed network runs its graph's own dtype."""
    flags = report.flags
    if flags.get("FP16") and not flags.get("STRONGLY_TYPED"):
        return f"fp16 (FP16 flag; {graph_dtype} graph and I/O)"
    if flags.get("STRONGLY_TYPED"):
        return f"{graph_dtype} (strongly typed)"
    return f"{graph_dtype} (weakly typed, no reduced-precision flag)"
