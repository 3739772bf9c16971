"""Observation normalisation (``--normalize-obs``): Stable-Baselines3's VecNormalize rule, kept with
the run and carried into the deployed graph.

Statistics: a running mean and (population) variance of every observation feature, updated with
Chan et al.'s parallel rule exactly as SB3's ``RunningMeanStd`` does (float64, a prior count of
:data:`COUNT_PRIOR` so the first update needs no special case). They are updated with each
observation the agent is about to act on (an episode's first, and each one a step returns but the
last of an episode), during warm-up too: what SB3's VecNormalize around a one-env VecEnv counts.

Normalised observation: ``clip((obs - mean) / sqrt(var + EPSILON), -clip, clip)``, SB3's formula
and defaults (``EPSILON`` 1e-8, clip 10). It is computed in float32 from the float64 statistics
rounded once to float32 (``mean``, ``std``), by one module, :class:`ObsNormalization`, whose ops
(Sub, Div, Clip) are what the exported ONNX graph holds: training, evaluation, export's parity
and the deployed file compute the same numbers (SB3 computes it in float64 before its policy casts
to float32; the two differ in the last float32 bit at most).

The replay buffer keeps raw observations; a sampled batch is normalised with the statistics of the
moment (as SB3's buffers do with VecNormalize), so old transitions are read with the current
scale, the one the networks are learning on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nmrl.errors import NmrlError

EPSILON = 1e-8
"""Added to the variance before its square root (SB3's VecNormalize ``epsilon``)."""
COUNT_PRIOR = 1e-4
"""The count the statistics start from, with mean 0 and variance 1 (SB3's RunningMeanStd ``epsilon``)."""


class RunningMeanStd:
    """Running mean, variance and count of a stream of observations (float64), SB3's update rule."""

    def __init__(self, dim: int) -> None:
        self.mean = np.zeros(dim, np.float64)
        self.var = np.ones(dim, np.float64)
        self.count = COUNT_PRIOR

    def update(self, batch: np.ndarray) -> None:
        """Add a batch ``[n, dim]`` of observations."""
        batch = np.asarray(batch, np.float64).reshape(-1, self.mean.shape[0])
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m_2 = self.var * self.count + batch_var * batch_count + np.square(delta) * self.count * batch_count / total
        self.mean = self.mean + delta * batch_count / total
        self.var = m_2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "var": torch.from_numpy(self.var.copy()),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = state["mean"].numpy().astype(np.float64)
        var = state["var"].numpy().astype(np.float64)
        count = state["count"]
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(
                f"observation statistics of width {mean.shape} for observations of width {self.mean.shape}"
            )
        if not isinstance(count, int | float) or not count > 0 or not np.all(np.isfinite(mean)) or not np.all(var >= 0):
            raise ValueError("observation statistics are not finite, or their count is not positive")
        self.mean, self.var, self.count = mean, var, float(count)


class ObsNormalization(nn.Module):
    """``clip((obs - mean) / std, -clip, clip)`` with frozen float32 constants: the normalisation as
    the policy module and the ONNX graph (Sub, Div, Clip) compute it."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, clip: float, count: float = COUNT_PRIOR) -> None:
        super().__init__()
        self.count = float(count)
        """Observations the statistics were taken over (described in the policy file)."""
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("obs_std", torch.as_tensor(std, dtype=torch.float32).clone())
        self.clip = float(clip)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.clamp((obs - self.obs_mean) / self.obs_std, -self.clip, self.clip)

    def part(self) -> dict[str, Any]:
        """What a checkpoint's policy part holds of it."""
        count = self.count
        return {
            "mean": self.obs_mean.cpu().clone(),
            "std": self.obs_std.cpu().clone(),
            "clip": self.clip,
            "count": count,
        }

    @classmethod
    def from_part(cls, part: Any, obs_dim: int) -> ObsNormalization:
        """The module a policy part's ``obs_normalization`` describes; :class:`NmrlError` for anything
        else (untrusted input)."""
        if not isinstance(part, dict):
            raise NmrlError("the policy's observation normalisation is not a mapping")
        mean, std, clip, count = part.get("mean"), part.get("std"), part.get("clip"), part.get("count")
        if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
            raise NmrlError("the policy's observation normalisation lacks its mean and std")
        if mean.shape != (obs_dim,) or std.shape != (obs_dim,):
            raise NmrlError(f"the policy's observation normalisation is not of width {obs_dim}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise NmrlError("the policy's observation normalisation holds NaN/inf or a std that is not positive")
        if not valid_clip(clip):
            raise NmrlError(f"the policy's observation normalisation has an invalid clip {clip!r}")
        if not valid_clip(count):  # the same test: a positive finite number
            raise NmrlError(f"the policy's observation normalisation has an invalid count {count!r}")
        return cls(mean, std, float(clip), float(count))  # type: ignore[arg-type]


def valid_clip(clip: Any) -> bool:
    """Whether ``clip`` can bound normalised observations (a positive finite number)."""
    return isinstance(clip, int | float) and not isinstance(clip, bool) and math.isfinite(clip) and clip > 0


class NormalizedPolicy(nn.Module):
    """A policy that takes raw observations: :class:`ObsNormalization`, then the trained policy."""

    def __init__(self, normalization: ObsNormalization, policy: nn.Module) -> None:
        super().__init__()
        self.normalization, self.policy = normalization, policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.normalization(obs))


class ObservationNormalizer:
    """The training side: the running statistics and the float32 module made from them.

    :meth:`update` adds observations and refreshes :attr:`module`'s constants in place, so every
    holder of the module (the trainer's acting and sampling, the evaluated policy) always uses the
    current statistics, and nothing updates them but the trainer's collection.
    """

    def __init__(self, obs_dim: int, clip: float, device: torch.device) -> None:
        self.stats = RunningMeanStd(obs_dim)
        self.module = ObsNormalization(*self._constants(), clip).to(device)

    def _constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.from_numpy(self.stats.mean.astype(np.float32))
        std = torch.from_numpy(np.sqrt(self.stats.var + EPSILON).astype(np.float32))
        return mean, std

    def _refresh(self) -> None:
        mean, std = self._constants()
        self.module.obs_mean.copy_(mean)
        self.module.obs_std.copy_(std)
        self.module.count = self.stats.count

    def update(self, obs: np.ndarray) -> None:
        """Add one observation (or a batch) to the statistics."""
        self.stats.update(obs)
        self._refresh()

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs`` normalised with the current statistics."""
        return self.module(obs)

    def policy_part(self) -> dict[str, Any]:
        """The frozen normalisation a checkpoint's policy part carries (see :meth:`ObsNormalization.part`)."""
        return self.module.part()

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        self._refresh()
