"""Closed-loop evaluation of any policy function: the one evaluation loop of nmrl."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from nmrl.envs import make_env
from nmrl.errors import NmrlError


@dataclass(frozen=True)
class EvalResult:
    """Undiscounted episode returns and lengths of a deterministic evaluation."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f} over {len(self.returns)} episodes"

    def report(self, seed: int) -> str:
        """The line ``nmrl eval`` and ``nmrl deploy eval`` print: return, seeds, mean episode length."""
        last = seed + len(self.returns) - 1
        return f"return {self} (seeds {seed}..{last}), mean length {np.mean(self.lengths):.0f}"


def evaluate(
    act_fn: Callable[[np.ndarray], np.ndarray],
    env_id: str | gym.Env,
    episodes: int = 10,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of ``env_id`` (made with ``env_kwargs``) with ``act_fn`` (one obs -> one action).

    Episode ``i`` resets with seed ``seed + i``, so two policies evaluated with the same seed see
    the same initial states. ``env_id`` may be an env object instead (``env_kwargs`` then unused):
    it is reset with those seeds and left open.
    """
    if episodes < 1:
        raise NmrlError(f"--episodes must be at least 1, got {episodes}")
    given = not isinstance(env_id, str)
    env = env_id if isinstance(env_id, gym.Env) else make_env(env_id, kwargs=env_kwargs)
    returns, lengths = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            episode_return, length, done = 0.0, 0, False
            while not done:
                action = np.asarray(act_fn(np.asarray(obs, dtype=np.float32)), dtype=np.float32)
                if not np.isfinite(action).all():  # NaN weights: no return is worth reporting
                    raise NmrlError(f"the policy gave a non-finite action (step {length} of episode {episode})")
                obs, reward, terminated, truncated, _ = env.step(action)
                episode_return += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(episode_return)
            lengths.append(length)
    finally:
        if not given:
            env.close()
    return EvalResult(returns, lengths)
