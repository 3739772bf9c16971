"""The training seam: a :class:`Trainer` collects experience and updates its algorithm; everything
else a run does (evaluate, checkpoint, stop early, show progress, log metrics) is a callback
(:mod:`nmrl.train.callbacks`).

The trainer owns one agent's env, algorithm, replay buffer, RNG and counters. It knows nothing of
run directories, signals or terminals: the public API (:class:`nmrl.TD3`, :class:`nmrl.SAC`) and
the CLI (:mod:`nmrl.train.loop`) both drive it, with the same callbacks, so a run from either is
the same run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from nmrl.envs import check_env, env_dims, make_env
from nmrl.errors import NmrlError, gist
from nmrl.train.algorithm import Algorithm, get_algorithm
from nmrl.train.buffer import Batch, ReplayBuffer
from nmrl.train.checkpoint import checkpoint_step, nonfinite_tensors
from nmrl.train.config import TrainConfig
from nmrl.train.networks import check_networks_fit
from nmrl.train.normalization import NormalizedPolicy, ObservationNormalizer

if TYPE_CHECKING:
    from nmrl.train.callbacks import BaseCallback

LOG_INTERVAL = 1000
"""Env steps between two ``train`` records (steps/s over the window, losses of its last update)."""


class TrainingDiverged(NmrlError):
    """A loss or a weight became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NmrlError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(name)


@dataclass
class TrainState:
    """Counters that, with the RNG states, say where a run is."""

    step: int = 0  # env steps taken
    episodes: int = 0
    best_eval: float = -math.inf
    last_eval: float = float("nan")


class Trainer:
    """One agent in training: builds env, algorithm and buffer from ``config``, then
    :meth:`learn` collects and updates, calling its callbacks after every env step.

    ``env``: an env object to train on instead of making ``config.env`` (its spaces are checked
    as :func:`nmrl.envs.make_env` checks an id's; it is reset with ``config.seed``).
    """

    def __init__(self, config: TrainConfig, env: gym.Env | None = None) -> None:
        config.validate()
        self.config = config
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        if env is None:
            self.env = make_env(config.env, seed=config.seed, kwargs=config.env_kwargs)
        else:
            self.env = check_env(env, config.env, seed=config.seed)
        obs_dim, act_dim, low, high = env_dims(self.env)
        self.action_low, self.action_high = np.array(low, np.float32), np.array(high, np.float32)
        check_networks_fit(obs_dim, act_dim, config.hidden, self.device)  # before building them: no OOM kill
        algorithm = get_algorithm(config.algo)
        self.algo: Algorithm = algorithm(obs_dim, act_dim, low, high, config.algorithm_config(), self.device)
        self.normalizer = ObservationNormalizer(obs_dim, config.clip_obs, self.device) if config.normalize_obs else None
        """--normalize-obs: the running statistics (updated only by :meth:`learn`'s collection)."""
        self.buffer = ReplayBuffer.allocate(config.buffer_size, obs_dim, act_dim, self.device, seed=config.seed)
        self.rng = np.random.default_rng(config.seed)  # warm-up actions
        self.state = TrainState()
        self.total_steps = config.total_steps
        """The step the current (or last) :meth:`learn` trains to."""
        self.losses: dict[str, torch.Tensor] = {}
        """The last update's losses (0-d tensors; read them only when logging)."""
        self.steps_per_second = 0.0
        """Env steps per second over the last :data:`LOG_INTERVAL` steps."""
        # The episode in progress; None = reset the env before the next step. An ended episode's
        # reset waits for the next step, so a checkpoint taken between the two holds the env's RNG
        # before that reset and a resume from it resets exactly as the uninterrupted run does.
        self._obs: np.ndarray | None = None
        self._episode_return, self._episode_length = 0.0, 0
        self._callback: BaseCallback | None = None

    # ---- collect and update --------------------------------------------------------------
    def learn(self, total_steps: int, callback: BaseCallback) -> None:
        """Train until the step counter reaches ``total_steps``, or until a callback's
        ``on_step`` returns False. Raises :class:`TrainingDiverged` when a loss is NaN/inf
        (``on_training_end`` is then not called: nothing is saved from broken networks)."""
        cfg, state = self.config, self.state
        if total_steps < state.step:
            raise NmrlError(f"this agent is at step {state.step:,}, past {total_steps:,}")
        self.total_steps = total_steps
        self._callback = callback
        callback.init_callback(self)
        try:
            callback.on_training_start()
            window_start, window_step = time.perf_counter(), state.step
            while state.step < total_steps:
                if self._obs is None:
                    self._obs, _ = self.env.reset()
                obs = self._obs
                if self.normalizer is not None:  # each observation acted on counts once (SB3's VecNormalize)
                    self.normalizer.update(obs)
                if state.step < cfg.learning_starts:
                    action = self.rng.uniform(self.action_low, self.action_high).astype(np.float32)
                else:
                    obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
                    if self.normalizer is not None:
                        obs_tensor = self.normalizer(obs_tensor)
                    action = self.algo.act(obs_tensor, explore=True)[0].cpu().numpy()
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                self.buffer.add(obs, action, float(reward), next_obs, terminated)
                self._obs = next_obs
                self._episode_return += float(reward)
                self._episode_length += 1
                state.step += 1
                if terminated or truncated:
                    state.episodes += 1
                    self.record(
                        {
                            "kind": "episode",
                            "step": state.step,
                            "return": self._episode_return,
                            "length": self._episode_length,
                        }
                    )
                    self._obs = None
                    self._episode_return, self._episode_length = 0.0, 0

                if state.step > cfg.learning_starts:
                    self.losses = self.algo.update(self.sample())
                    if not all(torch.isfinite(v) for v in self.losses.values()):
                        raise TrainingDiverged(f"a loss became NaN/inf at step {state.step}; stopped")

                if state.step % LOG_INTERVAL == 0:
                    now = time.perf_counter()
                    self.steps_per_second = (state.step - window_step) / (now - window_start)
                    window_start, window_step = now, state.step
                    self.record(
                        {
                            "kind": "train",
                            "step": state.step,
                            "steps_per_second": self.steps_per_second,
                            "episodes": state.episodes,
                            **{k: float(v) for k, v in self.losses.items()},
                        }
                    )
                if not callback.on_step():
                    break
            callback.on_training_end()
        finally:
            callback.close()
            self._callback = None

    def sample(self) -> Batch:
        """A training batch; with --normalize-obs its observations are normalised with the current
        statistics (the buffer keeps raw ones)."""
        batch = self.buffer.sample(self.config.batch_size)
        if self.normalizer is None:
            return batch
        return batch._replace(obs=self.normalizer(batch.obs), next_obs=self.normalizer(batch.next_obs))

    def policy(self) -> nn.Module:
        """The deterministic policy on raw observations (with --normalize-obs: the normalisation
        with the current statistics, then the algorithm's policy), as evaluated and exported."""
        if self.normalizer is None:
            return self.algo.policy()
        return NormalizedPolicy(self.normalizer.module, self.algo.policy())

    def policy_part(self) -> dict[str, Any]:
        """The checkpoint's ``policy`` part: the algorithm's, with the frozen normalisation."""
        part = self.algo.policy_part()
        if self.normalizer is not None:
            part["obs_normalization"] = self.normalizer.policy_part()
        return part

    def record(self, record: dict[str, Any]) -> None:
        """Hand a metrics record (``kind``, ``step``, numbers) to the callbacks that keep them."""
        if self._callback is not None:
            self._callback.on_record(record)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions in env units for one observation or a batch of them."""
        obs = np.asarray(obs, dtype=np.float32)
        batch = torch.as_tensor(obs.reshape(-1, obs.shape[-1]), device=self.device)
        if deterministic:
            action = self.policy()(batch)
        else:
            action = self.algo.act(self.normalizer(batch) if self.normalizer is not None else batch, explore=True)
        return action.cpu().numpy().reshape(*obs.shape[:-1], -1)

    def refuse_nonfinite(self, kept: str = "") -> None:
        """Raise :class:`TrainingDiverged` when a weight of any network is NaN/inf (a loss can still
        be finite in the update that broke them); ``kept``: what the error says survives."""
        broken = self._nonfinite_weights()
        if broken:
            raise TrainingDiverged(
                f"the networks hold NaN/inf at step {self.state.step} ({', '.join(broken[:3])}); stopped"
                + (f", {kept}" if kept else "")
            )

    def _nonfinite_weights(self) -> list[str]:
        return nonfinite_tensors({name: net.state_dict() for name, net in self.algo.networks().items()})

    # ---- what a checkpoint holds -----------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue: config, networks (shadow weights and masks), optimizers,
        replay buffer, RNG states and counters. Taken between two episodes (as every checkpoint of
        an env with fixed-length episodes is), a resume continues exactly; taken mid-episode, the
        resume starts a new episode (an env's physical state is not saved)."""
        return {
            "config": self.config.to_dict(),
            "algorithm": self.algo.state_dict(),
            "policy": self.policy_part(),
            "buffer": self.buffer.state_dict(),
            **({"obs_normalization": self.normalizer.state_dict()} if self.normalizer is not None else {}),
            "train_state": vars(self.state).copy(),
            "rng": {
                "python": random.getstate(),
                "numpy_loop": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "env": self.env.unwrapped.np_random.bit_generator.state,
            },
        }

    def best_state(self) -> dict[str, Any]:
        """What the best checkpoint holds: the networks at the best evaluation (no buffer)."""
        return {
            "config": self.config.to_dict(),
            "algorithm": self.algo.state_dict(),
            "policy": self.policy_part(),
            "train_state": vars(self.state).copy(),
        }

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a :meth:`checkpoint_state`; ``source`` names it in errors. An episode the
        checkpoint cut short is not resumed: the next step starts a new one. A checkpoint whose
        networks hold NaN/inf (written elsewhere: nmrl saves only finite ones) is refused."""
        step = checkpoint_step(state, source)
        if step > self.config.total_steps:
            raise NmrlError(
                f"{source} is at step {step:,}, beyond --total-steps {self.config.total_steps:,}: "
                "a run cannot be shortened below its checkpoint"
            )
        try:
            self.algo.load_state_dict(state["algorithm"])
            self.buffer.load_state_dict(state["buffer"])
            if self.normalizer is not None:
                if "obs_normalization" not in state:
                    raise KeyError("no observation statistics for --normalize-obs")
                self.normalizer.load_state_dict(state["obs_normalization"])
            self.state = TrainState(**state["train_state"])
            rng = state["rng"]
            random.setstate(_as_python_random_state(rng["python"]))
            self.rng.bit_generator.state = rng["numpy_loop"]
            torch.set_rng_state(rng["torch"])
            if rng["torch_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["torch_cuda"])
            self.env.unwrapped.np_random.bit_generator.state = rng["env"]
            self._obs, self._episode_return, self._episode_length = None, 0.0, 0
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise NmrlError(f"{source}: does not fit this run ({gist(error)})") from None
        broken = self._nonfinite_weights()
        if broken:  # a run cannot go on from it (and would call it "the last good one")
            raise NmrlError(
                f"{source}: its networks hold NaN/inf ({', '.join(broken[:3])}); a run cannot continue from it"
            )

    def close(self) -> None:
        self.env.close()


def _as_python_random_state(saved: Any) -> tuple:
    # weights_only loading turns the nested tuples of random.getstate() into lists.
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
