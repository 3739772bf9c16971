"""``TensorRTPolicy``: run one engine file as a deploy policy.

The runner learns everything it needs from the engine itself (its input and output tensors,
their shapes and dtypes, the batch profile) and from its caller (the flavour, the environment
id): it reads no file but the engine. Device buffers and the CUDA stream come from Polygraphy's
CUDA wrapper (ctypes over libcudart), so running an engine needs no PyTorch: this is what the
Jetson image uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.deploy.tensorrt.buildlog import capturing_logger
from nmrl.deploy.tensorrt.engines import engine_flavour
from nmrl.deploy.tensorrt.flavours import import_tensorrt
from nmrl.errors import NmrlError


class TensorRTPolicy(Policy):
    """Runs a TensorRT (or TensorRT-RTX) engine as a policy: ``act(obs[batch, obs_dim]) -> actions``.

    Args:
        plan_path: the engine file.
        flavour: ``tensorrt`` or ``tensorrt-rtx``; default: from the file name
            (:func:`nmrl.deploy.tensorrt.engines.engine_flavour`).
        env_id: the environment the policy was trained on, when the caller knows it (the loader
            reads it from the ONNX the engine was built from); engines carry no metadata.
        env_kwargs: that environment's settings, as that ONNX holds them (``nmrl.env_kwargs``).
    """

    def __init__(
        self,
        plan_path: Path | str,
        flavour: str | None = None,
        env_id: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise NmrlError(f"{plan_path}: no such engine file")
        self.flavour = flavour or engine_flavour(plan_path)
        trt = import_tensorrt(self.flavour)
        self._trt = trt
        self._logger = capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            last = (self._logger.errors() or ["no message"])[-1]
            raise NmrlError(
                f"{plan_path}: {self.flavour} could not load the engine (needs a compatible "
                f"NVIDIA GPU and driver): {last}"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NmrlError(f"{plan_path}: expected one input and one output, found {inputs} -> {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        self.obs_dim = int(self._engine.get_tensor_shape(self._input)[-1])
        self.act_dim = int(self._engine.get_tensor_shape(self._output)[-1])
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._output_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        min_shape, _, max_shape = self._engine.get_tensor_profile_shape(self._input, 0)
        self.batch_range = (int(min_shape[0]), int(max_shape[0]))
        self._context = self._engine.create_execution_context()
        self.backend = self.flavour
        self.plan_path = plan_path
        self.env_id, self.env_kwargs = env_id, env_kwargs

        from polygraphy import cuda
        from polygraphy.datatype import DataType

        self._stream = cuda.Stream()
        self._device_in = cuda.DeviceArray(shape=(1, self.obs_dim), dtype=DataType.from_dtype(self._input_dtype))
        self._device_out = cuda.DeviceArray(shape=(1, self.act_dim), dtype=DataType.from_dtype(self._output_dtype))

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        """Actions for a float32 batch [rows, obs_dim] (``Policy.act`` checks shapes and dtypes)."""
        batch = np.ascontiguousarray(obs, dtype=self._input_dtype)
        rows = batch.shape[0]
        if not self.batch_range[0] <= rows <= self.batch_range[1]:
            raise NmrlError(
                f"batch {rows} is outside the engine's profile {self.batch_range}; rebuild with --min-batch/--max-batch"
            )
        self._device_in.resize(batch.shape)
        self._device_out.resize((rows, self.act_dim))
        self._device_in.copy_from(batch, self._stream)
        self._context.set_input_shape(self._input, batch.shape)
        self._context.set_tensor_address(self._input, self._device_in.ptr)
        self._context.set_tensor_address(self._output, self._device_out.ptr)
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"TensorRT execution failed: {self._logger.errors()[-1:]}")
        actions = np.empty((rows, self.act_dim), dtype=self._output_dtype)
        self._device_out.copy_to(actions, self._stream)
        self._stream.synchronize()
        return actions.astype(np.float32, copy=False)

    def describe(self) -> str:
        """One line: engine, flavour and version, input precision, batch range."""
        version = self._trt.__version__
        low, high = self.batch_range
        return f"{self.flavour} {version}, {self.plan_path.name}, {self._input_dtype} input, batch {low}-{high}"

    def close(self) -> None:
        """Free the device buffers, the stream and the engine."""
        for name in ("_device_in", "_device_out", "_stream"):
            resource = self.__dict__.pop(name, None)
            if resource is not None:
                resource.free()
        self._context = self._engine = None
