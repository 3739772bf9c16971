"""The public training API: :class:`TD3` and :class:`SAC` (``nmrl.TD3``, ``nmrl.SAC``), with
Stable-Baselines3's names where they mean the same.

    model = nmrl.TD3("Hopper-v5", sparsity="2:4", seed=1)
    model.learn(100_000, callback=nmrl.EvalCallback(eval_freq=5_000))
    model.save("runs/hopper")              # a run directory: nmrl eval / export / train --resume read it
    model = nmrl.TD3.load("runs/hopper")   # continues exactly where it was saved
    action, _ = model.predict(obs, deterministic=True)

An agent is a :class:`~nmrl.train.trainer.Trainer` (collect and update) over a
:class:`~nmrl.train.config.TrainConfig`; ``nmrl train`` builds the same agent from its flags
(:mod:`nmrl.train.loop`), so a run from Python and one from the command line with the same
settings and seed are the same run, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np

from nmrl.envs import env_id_from_file
from nmrl.errors import NmrlError
from nmrl.files import check_name_lengths, remove_stale_temp_files
from nmrl.sparsity.spec import Dense, NMSparsity, Sparsity, UnstructuredSparsity
from nmrl.train.callbacks import BaseCallback, CallbackList, as_callback
from nmrl.train.checkpoint import load_checkpoint, save_checkpoint
from nmrl.train.config import TrainConfig, check_compatible
from nmrl.train.evaluate import EvalResult
from nmrl.train.progress import ProgressCallback, log_to_stderr
from nmrl.train.rundir import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    existing_run_dir,
    new_run_dir,
)
from nmrl.train.sparse import COSTS_FILE, log_costs
from nmrl.train.trainer import Trainer

logger = logging.getLogger(__name__)

Agent = TypeVar("Agent", bound="OffPolicyAgent")


def sparsity_text(sparsity: str | float | Sparsity) -> tuple[str, dict[str, Any]]:
    """``--sparsity``'s text for ``sparsity`` (text, a fraction or a spec), and the settings a
    spec carries besides it (an unstructured spec's topology, allocation, layers)."""
    if isinstance(sparsity, str):
        return sparsity, {}
    if isinstance(sparsity, bool):
        raise NmrlError(f"sparsity must be text like '2:4', 'dense', a fraction or a spec, got {sparsity!r}")
    if isinstance(sparsity, int | float):
        return repr(float(sparsity)), {}
    if isinstance(sparsity, Dense | NMSparsity):
        return str(sparsity), {}
    if isinstance(sparsity, UnstructuredSparsity):
        options = {
            "topology": sparsity.topology,
            "density_allocation": sparsity.allocation,
            "sparse_layers": sparsity.layers,
        }
        return str(sparsity), options
    raise NmrlError(f"sparsity must be text like '2:4', 'dense', a fraction or a spec, got {sparsity!r}")


def recreatable_id(env: gym.Env) -> str | None:
    """The Gymnasium id that makes an env equal to ``env`` (same spec: kwargs, wrappers, time
    limit), or None when ``env`` cannot be made again from an id."""
    spec = env.spec
    if spec is None or spec.id not in gym.registry:
        return None
    try:
        probe = gym.make(spec.id)
    except gym.error.Error:
        return None
    try:
        return spec.id if probe.spec == spec else None
    finally:
        probe.close()


class OffPolicyAgent:
    """An off-policy agent (see the module docstring); :class:`TD3` and :class:`SAC` name the
    algorithm. Settings other than the common ones go in ``settings`` by their ``nmrl train`` flag
    names (``policy_delay=3``, ``mask_interval=1``, ``srste_decay=2e-4``, ``alpha=0.2``, ...).

    ``env``: a Gymnasium id, or an env object (trained on as given); ``env_kwargs``: settings
    for ``gymnasium.make`` of an id (``nmrl train --env-kwargs``). ``eval_env``: where
    :meth:`evaluate` and an :class:`~nmrl.train.callbacks.EvalCallback` without an env of its
    own evaluate; by default a fresh env made from the id (an env object that cannot be made again
    from an id has no default: evaluating it without ``eval_env`` is refused). ``verbose=1`` shows
    nmrl's log lines (evaluations, costs) on stderr during :meth:`learn`.
    """

    algo: ClassVar[str]

    def __init__(
        self,
        env: str | gym.Env,
        sparsity: str | float | Sparsity = "2:4",
        *,
        env_kwargs: dict[str, Any] | None = None,
        topology: str = "auto",
        seed: int = 1,
        learning_starts: int = 25_000,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        hidden: Iterable[int] = (256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        device: str = "auto",
        eval_env: str | gym.Env | None = None,
        verbose: int = 0,
        **settings: Any,
    ) -> None:
        text, spec_settings = sparsity_text(sparsity)
        env_object = None if isinstance(env, str) else env
        if env_object is not None and not isinstance(env_object, gym.Env):
            raise NmrlError(f"env must be a Gymnasium id or a gymnasium.Env, got {type(env).__name__}")
        if env_object is not None and env_kwargs:
            raise NmrlError("env_kwargs are settings for making an env from its id; make the env object with them")
        if env_object is None:
            env_id = str(env)
            self._recreatable = True
        else:
            env_id = recreatable_id(env_object) or _env_name(env_object)
            self._recreatable = recreatable_id(env_object) is not None
        config = TrainConfig.from_settings(
            env=env_id,
            env_kwargs=dict(env_kwargs or {}),
            algo=self.algo,
            sparsity=text,
            seed=seed,
            learning_starts=learning_starts,
            batch_size=batch_size,
            buffer_size=buffer_size,
            hidden=tuple(hidden),
            actor_lr=actor_lr,
            critic_lr=critic_lr,
            gamma=gamma,
            tau=tau,
            device=device,
            progress=False,
            **{"topology": topology, **spec_settings, **settings},
        )
        self._setup(config, env_object, eval_env, verbose)

    def _setup(self, config: TrainConfig, env: gym.Env | None, eval_env: str | gym.Env | None, verbose: int) -> None:
        self._env_object, self._eval_env, self.verbose = env, eval_env, verbose
        self.trainer = Trainer(config, env)
        self._learned = False

    @classmethod
    def from_config(
        cls: type[Agent], config: TrainConfig, env: gym.Env | None = None, eval_env: str | gym.Env | None = None
    ) -> Agent:
        """The agent a :class:`TrainConfig` describes (what ``nmrl train`` builds from its flags)."""
        if config.algo != cls.algo:
            cls = agent_class(config.algo)  # type: ignore[assignment]
        agent = cls.__new__(cls)
        agent._recreatable = env is None or recreatable_id(env) is not None
        agent._setup(config, env, eval_env, verbose=0)
        return agent

    # ---- what it is ------------------------------------------------------------------------
    @property
    def config(self) -> TrainConfig:
        return self.trainer.config

    @property
    def env(self) -> gym.Env:
        return self.trainer.env

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far (counting across :meth:`learn` calls and a :meth:`load`)."""
        return self.trainer.state.step

    @property
    def algorithm(self) -> Any:
        """The :class:`~nmrl.train.algorithm.Algorithm` (networks, optimizers, ``update(batch)``)."""
        return self.trainer.algo

    def eval_env(self) -> str | gym.Env:
        """Where this agent is evaluated: ``eval_env`` as given, else its env's id; an env object
        that cannot be made again from an id has none (one-line :class:`NmrlError`)."""
        if self._eval_env is not None:
            return self._eval_env
        if not self._recreatable:
            raise NmrlError(
                f"the env object ({_env_name(self.env)}) cannot be made again from a Gymnasium id, so nmrl "
                "cannot evaluate on a fresh copy of it: pass eval_env=<an env or id> to evaluate"
            )
        return self.config.env

    def eval_env_kwargs(self) -> dict[str, Any] | None:
        """The settings :meth:`eval_env` is made with: the agent's ``env_kwargs`` when it evaluates
        on its own env id, none for an ``eval_env`` given."""
        return self.config.env_kwargs if self._eval_env is None else None

    # ---- training ----------------------------------------------------------------------------
    def learn(
        self,
        total_timesteps: int,
        callback: BaseCallback | Iterable[BaseCallback] | None = None,
        progress_bar: bool = False,
    ) -> OffPolicyAgent:
        """Train ``total_timesteps`` more env steps (a loaded agent continues its count), or until
        a callback's ``on_step`` returns False; returns the agent (as SB3 does)."""
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, int) or total_timesteps < 0:
            raise NmrlError(f"total_timesteps must be a whole number >= 0, got {total_timesteps!r}")
        target = self.num_timesteps + total_timesteps
        self._plan(target)
        callbacks = as_callback(callback)
        if progress_bar:
            callbacks = CallbackList([callbacks, ProgressCallback(f"{self.algo} {self.config.sparsity}")])
        self._learned = True
        with log_to_stderr() if self.verbose else contextlib.nullcontext():
            self.trainer.learn(target, _ModelCallback(callbacks, self))
        return self

    def _plan(self, total_steps: int) -> None:
        """Record the run's planned length in its config; a run not yet started whose sparsity
        schedule depends on it (RigL's default end) is built again for it, as the CLI builds it."""
        config = self.config
        if total_steps == config.total_steps:
            return
        planned = dataclasses.replace(config, total_steps=max(total_steps, 1))
        fresh = not self._learned and self.num_timesteps == 0
        if fresh and _schedule_needs_length(config):
            self.trainer.close()
            self.trainer = Trainer(planned, self._env_object)
        else:
            self.trainer.config = planned

    def evaluate(self, n_eval_episodes: int = 10, seed: int | None = None) -> EvalResult:
        """Deterministic returns on :meth:`eval_env` (episode ``i`` from seed ``seed + i``; by
        default the seeds evaluations during training use)."""
        from nmrl.train.callbacks import EvalCallback

        evaluation = EvalCallback(
            self.eval_env(), n_eval_episodes=n_eval_episodes, seed=seed, env_kwargs=self.eval_env_kwargs()
        )
        evaluation.init_callback(self.trainer, self)
        return evaluation.evaluate(record=False)

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Actions for one observation or a batch of them, and None (SB3's ``(action, state)``:
        these policies have no recurrent state)."""
        return self.trainer.predict(observation, deterministic), None

    # ---- run directories ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a run directory at ``path`` (``config.json``, ``checkpoints/last.pt``,
        ``costs.json``): ``nmrl eval``, ``nmrl export`` and ``nmrl train --resume`` read it, and
        :meth:`load` continues from it exactly. ``path`` must be new, empty, or a run directory
        (then its config and last checkpoint are replaced; its metrics stay). Returns ``path``."""
        run_dir = Path(path)
        check_name_lengths(run_dir, "the save path")
        if not self._recreatable:
            logger.warning(
                "%s: saved with env %r, which Gymnasium cannot make: verbs that run the env need it registered",
                run_dir,
                self.config.env,
            )
        state = self._checked_state(run_dir)
        if (run_dir / CONFIG_FILE).is_file():
            with existing_run_dir(run_dir):
                remove_stale_temp_files(run_dir)
                self._write(run_dir, state)
            return run_dir
        with new_run_dir(run_dir):
            self._write(run_dir, state)
        return run_dir

    def _checked_state(self, run_dir: Path) -> dict[str, Any]:
        self.trainer.refuse_nonfinite(f"nothing was saved to {run_dir}")
        return self.trainer.checkpoint_state()

    def _write(self, run_dir: Path, state: dict[str, Any]) -> None:
        save_checkpoint(run_dir / LAST_CHECKPOINT, state, inside=run_dir)
        if not (run_dir / COSTS_FILE).exists():
            log_costs(run_dir, self.algorithm.networks(), lambda record: None)
        self.config.save(run_dir / CONFIG_FILE)  # last: a folder with a config holds a run

    @classmethod
    def load(
        cls: type[Agent],
        path: str | Path,
        env: gym.Env | None = None,
        eval_env: str | gym.Env | None = None,
        device: str | None = None,
    ) -> Agent:
        """The agent saved at ``path`` (by :meth:`save` or ``nmrl train``), ready to continue
        exactly: networks with their masks, optimizers, replay buffer, RNG states and counters.
        ``env``: an env object to continue on (for an env nmrl cannot make from the saved id)."""
        run_dir = Path(path)
        if not (run_dir / CONFIG_FILE).is_file():
            raise NmrlError(f"{run_dir}: not an nmrl run directory (no {CONFIG_FILE})")
        config = TrainConfig.load(run_dir / CONFIG_FILE)
        if env is None:
            env_id_from_file(config.env, run_dir / CONFIG_FILE)
        if config.algo != cls.algo and cls is not OffPolicyAgent:
            raise NmrlError(f"{run_dir} holds a {config.algo} run; load it with nmrl.{config.algo.upper()}.load")
        if device is not None:
            config = config.with_settings(device=device)
        last = run_dir / LAST_CHECKPOINT
        if not last.exists():
            raise NmrlError(f"{run_dir}: no checkpoint to continue from ({LAST_CHECKPOINT} is missing)")
        state = load_checkpoint(last)
        check_compatible(state, config, last)
        agent = agent_class(config.algo).from_config(config, env, eval_env)
        agent.trainer.restore(state, last)
        return agent  # type: ignore[return-value]


class TD3(OffPolicyAgent):
    """TD3 (Fujimoto et al., 2018); with an N:M ``sparsity`` (the default ``"2:4"``), RNM-TD3:
    all six networks N:M. See :class:`OffPolicyAgent` for the arguments."""

    algo = "td3"


class SAC(OffPolicyAgent):
    """SAC (Haarnoja et al., 2018) with the learned temperature, dense, N:M or unstructured. See
    :class:`OffPolicyAgent` for the arguments."""

    algo = "sac"


AGENTS: dict[str, type[OffPolicyAgent]] = {"td3": TD3, "sac": SAC}


def agent_class(algo: str) -> type[OffPolicyAgent]:
    """The public agent class of ``--algo``; an algorithm registered without one gets the generic agent."""
    if algo in AGENTS:
        return AGENTS[algo]
    return type(algo.upper(), (OffPolicyAgent,), {"algo": algo})


class _ModelCallback(CallbackList):
    """The user's callbacks, handed the agent (``callback.model``) as SB3 hands its model."""

    def __init__(self, callback: BaseCallback, model: OffPolicyAgent) -> None:
        super().__init__([callback])
        self._model = model

    def init_callback(self, trainer: Trainer, model: Any = None) -> None:
        super().init_callback(trainer, self._model)


def _schedule_needs_length(config: TrainConfig) -> bool:
    """Whether the networks' sparsity schedule is set from the run's length (RigL's default end)."""
    spec = config.spec
    return (
        isinstance(spec, UnstructuredSparsity) and spec.topology == "rigl" and not config.unstructured.topology_end_step
    )


def _env_name(env: gym.Env) -> str:
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__
