"""The PyTorch reference policy: a run's checkpoint, run eagerly.

The module is :func:`nmrl.export.onnx_export.materialize`-d: masked layers become plain Linear
layers holding their effective weights, exactly what the ONNX file computes, without the
training-time masking multiply on every call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError


class TorchPolicy(Policy):
    """An ``nn.Module`` policy (obs -> action) run eagerly under ``torch.inference_mode``."""

    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        obs_dim: int,
        act_dim: int,
        device: str = "cpu",
        threads: int | None = 1,
        env_id: str | None = None,
        dtype: str = "fp32",
    ) -> None:
        from nmrl.export.onnx_export import TORCH_DTYPES, materialize

        if device == "cuda" and not torch.cuda.is_available():
            raise NmrlError("device cuda was asked for, but PyTorch sees no CUDA GPU here")
        if threads:
            # Process-wide in torch: the latest policy's setting applies to all torch policies.
            torch.set_num_threads(threads)
        if dtype not in TORCH_DTYPES:
            raise NmrlError(f"unsupported dtype {dtype!r}: choose {', '.join(TORCH_DTYPES)}")
        self.dtype = TORCH_DTYPES[dtype]
        self.module = materialize(module).to(device=device, dtype=self.dtype)
        self.device = torch.device(device)
        self.obs_dim, self.act_dim, self.threads, self.env_id = obs_dim, act_dim, threads, env_id

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            # .cpu() waits for the GPU's result, so timings of a CUDA policy are synchronised.
            actions = self.module(torch.from_numpy(obs).to(self.device, self.dtype))
            return actions.float().cpu().numpy()

    def describe(self) -> str:
        where = "CPU" if self.device.type == "cpu" else f"CUDA ({torch.cuda.get_device_name(self.device)})"
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        precision = "" if self.dtype == torch.float32 else f", {self.dtype}".replace("torch.", "")
        return f"PyTorch {torch.__version__.split('+')[0]} eager, {where}{threads}{precision}"


def load_torch_policy(path: Path, which: str = "last", device: str = "cpu", threads: int | None = 1) -> TorchPolicy:
    """A run directory's ``last`` or ``best`` checkpoint as a policy."""
    from nmrl.train.run import load_trained_actor

    if Path(path).suffix == ".onnx":
        raise NmrlError(f"{path}: the torch backend loads a run directory's checkpoint, not an ONNX file")
    loaded = load_trained_actor(Path(path), which)
    policy = TorchPolicy(loaded.policy, loaded.obs_dim, loaded.act_dim, device, threads, loaded.env_id)
    policy.env_kwargs = loaded.config.env_kwargs
    return policy
