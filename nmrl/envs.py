"""The Gymnasium environment factory shared by training and deployment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from nmrl.errors import NmrlError


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """Make a Gymnasium env with a flat Box observation and a bounded Box action space.

    ``seed`` seeds the first reset and the action space. Raises :class:`NmrlError` for an unknown
    id, a missing simulator, or spaces nmrl's continuous-control agents cannot drive.
    """
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise NmrlError(f"cannot make environment {env_id!r}: {error}") from None
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        env.close()
        raise NmrlError(f"{env_id}: nmrl needs a 1-D Box action space, got {act_space}")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        env.close()
        raise NmrlError(f"{env_id}: the action space must be bounded, got {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        env.close()
        raise NmrlError(f"{env_id}: nmrl needs a flat 1-D Box observation space, got {obs_space}")
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_dims(env: gym.Env) -> tuple[int, int, list[float], list[float]]:
    """(obs_dim, act_dim, action_low, action_high) of an env made by :func:`make_env`."""
    act_space = env.action_space
    assert isinstance(act_space, gym.spaces.Box)
    return (
        int(env.observation_space.shape[0]),
        int(act_space.shape[0]),
        [float(x) for x in act_space.low],
        [float(x) for x in act_space.high],
    )
