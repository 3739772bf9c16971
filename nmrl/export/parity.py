"""Parity: does the ONNX file compute what the torch policy computes?

Compared on observations from the policy's own environment (a short random-action rollout, the
states a deployed policy sees first) and on wide random ones (to exercise every unit). fp32 files
must match to 1e-5 absolute; fp16 files to 1e-2 relative to the largest action magnitude (fp16
keeps ~3 decimal digits, and rounding errors grow with depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from nmrl.export.onnx_export import INPUT_NAME, random_observations

FP32_ABS_TOLERANCE = 1e-5
FP16_REL_TOLERANCE = 1e-2


def env_observations(env_id: str, count: int, seed: int = 0) -> np.ndarray:
    """``count`` observations from random-action episodes of ``env_id`` (reset when one ends)."""
    from nmrl.envs import make_env

    env = make_env(env_id, seed=seed)
    try:
        obs, _ = env.reset(seed=seed)
        collected = []
        for _ in range(count):
            collected.append(np.asarray(obs, dtype=np.float32))
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        return np.stack(collected)
    finally:
        env.close()


@dataclass(frozen=True)
class ParityResult:
    """Largest differences between ONNX Runtime and torch over ``count`` observations."""

    source: str
    count: int
    max_abs_error: float
    max_rel_error: float
    dtype: str

    @property
    def tolerance(self) -> str:
        return f"abs <= {FP32_ABS_TOLERANCE:g}" if self.dtype == "fp32" else f"rel <= {FP16_REL_TOLERANCE:g}"

    @property
    def passed(self) -> bool:
        if self.dtype == "fp32":
            return self.max_abs_error <= FP32_ABS_TOLERANCE
        return self.max_rel_error <= FP16_REL_TOLERANCE

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.source:<6} {self.count:>4} obs: max abs error {self.max_abs_error:.2e}, "
            f"rel {self.max_rel_error:.2e} ({self.tolerance}: {verdict})"
        )


def compare(
    policy: nn.Module, model: onnx.ModelProto | Path, observations: np.ndarray, dtype: str, source: str
) -> ParityResult:
    """Run ``observations`` through the torch ``policy`` (fp32) and the ONNX model (ORT CPU)."""
    import onnxruntime as ort

    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    input_type = session.get_inputs()[0].type
    feed = observations.astype(np.float16 if input_type == "tensor(float16)" else np.float32)
    onnx_actions = np.asarray(session.run(None, {INPUT_NAME: feed})[0], dtype=np.float64)
    with torch.no_grad():
        torch_actions = policy.cpu().eval()(torch.as_tensor(observations, dtype=torch.float32)).double().numpy()
    error = np.abs(onnx_actions - torch_actions)
    scale = max(float(np.abs(torch_actions).max()), 1e-3)
    return ParityResult(source, len(observations), float(error.max()), float(error.max()) / scale, dtype)


def check_parity(
    policy: nn.Module,
    model: onnx.ModelProto | Path,
    obs_dim: int,
    dtype: str,
    env_id: str | None = None,
    count: int = 256,
    seed: int = 0,
) -> list[ParityResult]:
    """Parity on env observations (when ``env_id`` is known) and on random ones."""
    results = []
    if env_id:
        results.append(compare(policy, model, env_observations(env_id, count, seed), dtype, "env"))
    results.append(compare(policy, model, random_observations(obs_dim, count, seed), dtype, "random"))
    return results
