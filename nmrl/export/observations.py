"""Where export's observations come from: parity checks, closed-loop states and int8 calibration.

Four sources, each a ``[count, obs_dim]`` float32 array:

- :func:`random_observations`: wide Gaussians (3x unit scale) that drive every unit of a layer,
  including ones a trained policy never uses;
- :func:`env_observations`: a random-action rollout of the env (the first states a policy sees,
  and states off its usual path);
- :func:`policy_observations`: the states a policy visits in its own deterministic episodes, plus
  a random-action rollout of as many steps (what int8 calibration needs);
- :func:`load_calibration`: a user's ``.npy``, checked before it is believed.

A policy here is a deployed :class:`~nmrl.deploy.policy.Policy` (the torch reference is
:class:`~nmrl.deploy.torch_backend.TorchPolicy`), so this module needs no PyTorch of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nmrl.deploy.policy import Policy
from nmrl.errors import NmrlError, gist
from nmrl.files import read_npy_header

CALIBRATION_SEED = 1000
"""int8 calibration episodes start at this seed, away from the verification's seeds (0..)."""
CALIBRATION_EPISODES = 10


def random_observations(obs_dim: int, count: int, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """Gaussian observations, wider than typical normalised inputs, to exercise every layer."""
    return (np.random.default_rng(seed).standard_normal((count, obs_dim)) * scale).astype(np.float32)


def env_observations(env_id: str, count: int, seed: int = 0, env_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """``count`` observations from random-action episodes of ``env_id`` made with ``env_kwargs``
    (reset when one ends)."""
    from nmrl.envs import make_env

    env = make_env(env_id, seed=seed, kwargs=env_kwargs)
    try:
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        collected = []
        for _ in range(count):
            collected.append(np.asarray(obs, dtype=np.float32))
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        return np.stack(collected)
    finally:
        env.close()


def policy_observations(
    policy: Policy,
    env_id: str,
    episodes: int = CALIBRATION_EPISODES,
    seed: int = CALIBRATION_SEED,
    env_kwargs: dict[str, Any] | None = None,
) -> np.ndarray:
    """Observations of ``policy``'s deterministic episodes (seeds ``seed..``) plus a random-action
    rollout of as many steps: the states the deployed policy sees, and the first ones off its path
    (the env made with ``env_kwargs``, the run's ``--env-kwargs``)."""
    from nmrl.train.evaluate import evaluate

    visited: list[np.ndarray] = []

    def step(obs: np.ndarray) -> np.ndarray:
        visited.append(obs)
        return policy.act(obs)

    evaluate(step, env_id, episodes, seed, env_kwargs)
    random_states = env_observations(env_id, min(len(visited), 1000), seed, env_kwargs)
    return np.concatenate([np.stack(visited), random_states]).astype(np.float32)


def load_calibration(path: Path, obs_dim: int) -> np.ndarray:
    """A user's calibration observations: an ``.npy`` of real numbers, shape [count, obs_dim].

    The header is read and checked before the data (numpy would allocate whatever shape a header
    declares, and read strings, complex or structured values as well); every refusal is one line
    saying what the file holds instead."""
    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise NmrlError(f"{path}: the calibration file is empty (0 bytes), not a numpy .npy array")
    with path.open("rb") as file:
        try:
            shape, dtype = read_npy_header(file, size)
        except ValueError as error:
            raise NmrlError(f"{path}: cannot be read as .npy observations ({gist(error, 1, 160)})") from None
    if dtype.kind == "c":
        raise NmrlError(f"{path}: calibration observations are complex ({dtype}): their imaginary part would be lost")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NmrlError(f"{path}: calibration observations must be real numbers, the file holds {dtype} values")
    if len(shape) != 2 or shape[1] != obs_dim or shape[0] == 0:
        raise NmrlError(f"{path}: calibration observations must be [count, {obs_dim}], got {list(shape)}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise NmrlError(f"{path}: not a numpy .npy array ({gist(error, 1, 120)})") from None
    if not np.isfinite(data).all():
        raise NmrlError(f"{path}: calibration observations hold NaN or inf")
    return data.astype(np.float32)
