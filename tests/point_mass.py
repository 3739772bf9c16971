"""A user's own environment, as README "Your own environment" describes: a module that registers
a Gymnasium id when imported, named to nmrl as ``point_mass:PointMass-v0`` (this folder on
``PYTHONPATH``).

A point on a line, pushed by a bounded force, rewarded for staying near the origin. Its episode
length is a setting without a default (``--env-kwargs '{"length": 50}'``), so any step of nmrl that
made the env without the run's settings would fail instead of quietly running another task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

ENV_ID = "PointMass-v0"


class PointMass(gym.Env):
    """Observation: position, velocity, position squared, fraction of the episode left."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, length: int, gain: float = 1.0) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if not isinstance(gain, int | float) or not np.isfinite(gain):
            raise ValueError(f"gain must be a finite number, got {gain!r}")
        self.length, self.gain = length, float(gain)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.position = self.velocity = 0.0
        self.steps = 0

    def _obs(self) -> np.ndarray:
        left = 1.0 - self.steps / self.length
        return np.array([self.position, self.velocity, self.position**2, left], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position, self.velocity, self.steps = float(self.np_random.uniform(-1, 1)), 0.0, 0
        return self._obs(), {}

    def step(self, action: np.ndarray):
        force = float(np.clip(action, -1.0, 1.0)[0])
        self.velocity = 0.9 * self.velocity + 0.1 * self.gain * force
        self.position += self.velocity
        self.steps += 1
        reward = -abs(self.position) - 0.01 * force**2
        return self._obs(), reward, False, self.steps >= self.length, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=PointMass)
