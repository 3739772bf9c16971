"""Closed-loop evaluation of any policy function: the one evaluation loop of nmrl."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from nmrl.envs import make_env
from nmrl.errors import NmrlError
from nmrl.video import EpisodeVideo, choose_render_backend


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
    video: Path | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of ``env_id`` (made with ``env_kwargs``) with ``act_fn`` (one obs -> one action).

    Episode ``i`` resets with seed ``seed + i``, so two policies evaluated with the same seed see
    the same initial states. ``env_id`` may be an env object instead (``env_kwargs`` then unused):
    it is reset with those seeds and left open. ``video``: an MP4 path for the first episode (its
    reset state and every step: length + 1 frames), rendered offscreen (:mod:`nmrl.video`; an env
    given as an object must have been made with ``render_mode="rgb_array"``).
    """
    if episodes < 1:
        raise NmrlError(f"--episodes must be at least 1, got {episodes}")
    if video is not None:
        choose_render_backend()
    given = not isinstance(env_id, str)
    if isinstance(env_id, gym.Env):
        env = env_id
    else:
        env = make_env(env_id, kwargs=env_kwargs, render_mode="rgb_array" if video is not None else None)
    name = env_id if isinstance(env_id, str) else str(env.spec.id if env.spec else type(env).__name__)
    returns, lengths = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            with _recording(video if episode == 0 else None, env, name) as recorder:
                episode_return, length = _run_episode(act_fn, env, obs, episode, recorder)
            returns.append(episode_return)
            lengths.append(length)
    finally:
        if not given:
            env.close()
    return EvalResult(returns, lengths)


def video_path(folder: Path, name: str, seed: int) -> Path:
    """Where ``--capture-video`` writes the first episode: ``folder/videos/<name>-seed<seed>.mp4``."""
    return Path(folder) / "videos" / f"{name}-seed{seed}.mp4"


def _recording(path: Path | None, env: Any, env_id: str) -> contextlib.AbstractContextManager[EpisodeVideo | None]:
    if path is None:
        return contextlib.nullcontext()
    return EpisodeVideo(path, int(env.metadata.get("render_fps", 30)), env_id)


def _run_episode(
    act_fn: Callable[[np.ndarray], np.ndarray], env: Any, obs: Any, episode: int, recorder: EpisodeVideo | None
) -> tuple[float, int]:
    """One episode from the state ``env.reset`` gave: (return, length)."""
    episode_return, length, done = 0.0, 0, False
    if recorder is not None:
        recorder.add(env)
    while not done:
        action = np.asarray(act_fn(np.asarray(obs, dtype=np.float32)), dtype=np.float32)
        if not np.isfinite(action).all():  # NaN weights: no return is worth reporting
            raise NmrlError(f"the policy gave a non-finite action (step {length} of episode {episode})")
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        length += 1
        done = terminated or truncated
        if recorder is not None:
            recorder.add(env)
    return episode_return, length
