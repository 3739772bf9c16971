"""Callbacks: what a run does besides collecting and updating, on Stable-Baselines3's model.

A callback gets the :class:`~nmrl.train.trainer.Trainer` (``self.trainer``; ``self.model`` is the
public agent when the run came through :class:`nmrl.TD3` / :class:`nmrl.SAC`) and is called:

- ``on_training_start()`` once a :meth:`learn` begins;
- ``on_step()`` after every env step (and its update); returning False stops training;
- ``on_record(record)`` for each metrics record (``kind``: ``train`` every 1000 steps, ``episode``
  at each episode's end, ``eval`` after an evaluation, ``costs`` once);
- ``on_training_end()`` when training ends normally (all steps done, or stopped by a callback);
  not after an error, so nothing is saved from a run that broke;
- ``close()`` always, last.

The CLI's ``nmrl train`` is these callbacks over a run directory (:mod:`nmrl.train.loop`):
:class:`EvalCallback` (with the best checkpoint and :class:`StopTrainingOnReturn`),
:class:`CheckpointCallback`, :class:`MetricsCallback` and :class:`~nmrl.train.progress.ProgressCallback`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from nmrl.errors import NmrlError
from nmrl.files import append_text
from nmrl.sparsity import layer_report
from nmrl.train.checkpoint import save_checkpoint
from nmrl.train.evaluate import EvalResult, evaluate
from nmrl.train.events import EventsWriter

if TYPE_CHECKING:
    from nmrl.train.config import SharedConfig
    from nmrl.train.trainer import Trainer

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 10_000
"""Evaluation episodes use seeds far from the training env's, so they are never training starts."""


class BaseCallback:
    """Override the ``_on_*`` hooks (``_on_step`` returns whether to go on), as in SB3."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.model: Any = None
        """The :class:`nmrl.TD3` / :class:`nmrl.SAC` being trained, when there is one."""

    @property
    def num_timesteps(self) -> int:
        return self._trainer.state.step

    @property
    def _trainer(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a run yet")
        return self.trainer

    def init_callback(self, trainer: Trainer, model: Any = None) -> None:
        self.trainer, self.model = trainer, model
        self._init_callback()

    def on_training_start(self) -> None:
        self._on_training_start()

    def on_step(self) -> bool:
        return self._on_step()

    def on_record(self, record: dict[str, Any]) -> None:
        self._on_record(record)

    def on_training_end(self) -> None:
        self._on_training_end()

    def close(self) -> None:
        self._close()

    def _init_callback(self) -> None:
        pass

    def _on_training_start(self) -> None:
        pass

    def _on_step(self) -> bool:
        return True

    def _on_record(self, record: dict[str, Any]) -> None:
        pass

    def _on_training_end(self) -> None:
        pass

    def _close(self) -> None:
        pass


class CallbackList(BaseCallback):
    """Several callbacks called in order; training stops when any ``on_step`` returns False
    (every callback still sees that step)."""

    def __init__(self, callbacks: Iterable[BaseCallback]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)

    def init_callback(self, trainer: Trainer, model: Any = None) -> None:
        super().init_callback(trainer, model)
        for callback in self.callbacks:
            callback.init_callback(trainer, model)

    def _on_training_start(self) -> None:
        for callback in self.callbacks:
            callback.on_training_start()

    def _on_step(self) -> bool:
        go_on = True
        for callback in self.callbacks:
            go_on = callback.on_step() and go_on
        return go_on

    def _on_record(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_record(record)

    def _on_training_end(self) -> None:
        for callback in self.callbacks:
            callback.on_training_end()

    def _close(self) -> None:
        errors = []
        for callback in self.callbacks:
            try:
                callback.close()
            except Exception as error:  # close them all; the first failure is raised after
                errors.append(error)
        if errors:
            raise errors[0]


def as_callback(callback: BaseCallback | Iterable[BaseCallback] | None) -> BaseCallback:
    """One callback for ``callback``: itself, a :class:`CallbackList` of a list, or a no-op."""
    if callback is None:
        return BaseCallback()
    if isinstance(callback, BaseCallback):
        return callback
    return CallbackList(callback)


class StopTrainingOnReturn(BaseCallback):
    """Given to :class:`EvalCallback` as ``callback_after_eval``: stops training once an
    evaluation's mean return reaches ``threshold`` (SB3's StopTrainingOnRewardThreshold)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def _on_step(self) -> bool:
        state = self._trainer.state
        if state.last_eval >= self.threshold:
            logger.info(
                "eval return %.1f reached --stop-at-return %s: stopping at step %d",
                state.last_eval,
                self.threshold,
                state.step,
            )
            return False
        return True


class EvalCallback(BaseCallback):
    """Deterministic evaluation every ``eval_freq`` steps and at the last step of a :meth:`learn`.

    Episode ``i`` of every evaluation starts from seed ``seed + i`` (by default the run's seed +
    :data:`EVAL_SEED_OFFSET`). ``eval_env``: a Gymnasium id (made afresh for each evaluation, with
    the settings ``env_kwargs``) or an env object (reset with those seeds); by default the agent's
    (:meth:`nmrl.TD3.eval_env`, with the agent's ``env_kwargs``). Each result is
    an ``eval`` record; a new best mean return saves :meth:`Trainer.best_state` to
    ``best_checkpoint`` when given (``inside``: a folder holding it, below which no symbolic link
    is followed, as :mod:`nmrl.files` has it). ``callback_after_eval`` runs after each evaluation
    (e.g. :class:`StopTrainingOnReturn`).
    """

    def __init__(
        self,
        eval_env: str | gym.Env | None = None,
        eval_freq: int = 5_000,
        n_eval_episodes: int = 10,
        seed: int | None = None,
        best_checkpoint: Path | None = None,
        callback_after_eval: BaseCallback | None = None,
        inside: Path | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if eval_freq < 1 or n_eval_episodes < 1:
            raise NmrlError(f"eval_freq and n_eval_episodes must be at least 1, got {eval_freq}, {n_eval_episodes}")
        self.eval_env, self.eval_freq, self.n_eval_episodes, self.seed = eval_env, eval_freq, n_eval_episodes, seed
        self.best_checkpoint, self.inside, self.env_kwargs = best_checkpoint, inside, env_kwargs
        self.callback_after_eval = callback_after_eval
        self.last_result: EvalResult | None = None

    def _init_callback(self) -> None:
        if self.eval_env is None:
            if self.model is None:
                raise NmrlError("EvalCallback needs an eval_env when the run has no agent to take it from")
            self.eval_env = self.model.eval_env()
            if self.env_kwargs is None:
                self.env_kwargs = self.model.eval_env_kwargs()
        if self.callback_after_eval is not None:
            self.callback_after_eval.init_callback(self._trainer, self.model)

    def _on_step(self) -> bool:
        trainer = self._trainer
        step = trainer.state.step
        if step % self.eval_freq != 0 and step != trainer.total_steps:
            return True
        self.evaluate()
        return self.callback_after_eval is None or self.callback_after_eval.on_step()

    def evaluate(self, record: bool = True) -> EvalResult:
        """Evaluate now; ``record``: as a step of training (an ``eval`` record, best checkpoint)."""
        trainer = self._trainer
        assert self.eval_env is not None  # set by _init_callback
        trainer.refuse_nonfinite()
        policy, device = trainer.policy(), trainer.device

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return policy(torch.as_tensor(obs, device=device).unsqueeze(0))[0].cpu().numpy()

        seed = trainer.config.seed + EVAL_SEED_OFFSET if self.seed is None else self.seed
        result = evaluate(act, self.eval_env, self.n_eval_episodes, seed, self.env_kwargs)
        if not record:
            return result
        self.last_result = result
        state = trainer.state
        state.last_eval = result.mean
        trainer.record(
            {
                "kind": "eval",
                "step": state.step,
                "return_mean": result.mean,
                "return_std": result.std,
                "episode_length_mean": float(np.mean(result.lengths)),
            }
        )
        logger.info("step %9s  eval return %s", f"{state.step:,}", result)
        if result.mean > state.best_eval:
            state.best_eval = result.mean
            if self.best_checkpoint is not None:
                save_checkpoint(self.best_checkpoint, trainer.best_state(), inside=self.inside)
        return result


class CheckpointCallback(BaseCallback):
    """Saves :meth:`Trainer.checkpoint_state` to ``path`` (atomically) every ``save_freq`` steps
    and when training ends; only from finite networks (else the run stops, the last good file kept).
    ``inside``: a folder holding ``path``, below which no symbolic link is followed."""

    def __init__(self, path: Path, save_freq: int = 50_000, inside: Path | None = None) -> None:
        super().__init__()
        if save_freq < 1:
            raise NmrlError(f"save_freq must be at least 1, got {save_freq}")
        self.path, self.save_freq, self.inside = Path(path), save_freq, inside
        self._saved_at = -1

    def _on_step(self) -> bool:
        if self.num_timesteps % self.save_freq == 0:
            self.save()
        return True

    def _on_training_end(self) -> None:
        if self._saved_at != self.num_timesteps:
            self.save()

    def save(self) -> None:
        trainer = self._trainer
        kept = f"the last good checkpoint ({self.path}) is kept" if self.path.exists() else "no checkpoint was written"
        trainer.refuse_nonfinite(kept)
        save_checkpoint(self.path, trainer.checkpoint_state(), inside=self.inside)
        self._saved_at = trainer.state.step


HPARAM_METRICS = ["eval/return_mean", "eval/best_return"]
"""The scalars TensorBoard's HParams dashboard shows beside a run's settings: the last evaluation's
mean return and the best one so far (each is its tag's last value)."""


def hparams_of(config: SharedConfig) -> dict[str, float | str | bool]:
    """Every setting of ``config`` by its flag name, as values the HParams dashboard takes
    (numbers, text, booleans): widths as ``"256 256"``, env settings as JSON, None as ``"none"``."""
    values: dict[str, float | str | bool] = {}
    for name, value in config.flat_settings().items():
        if isinstance(value, list | tuple):
            value = " ".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif value is None:
            value = "none"
        values[name] = value
    return values


def record_scalars(record: dict[str, Any], trainer: Trainer | None = None) -> dict[str, float]:
    """The numbers of one record by their TensorBoard tag (``<kind>/<key>``; an episode's as
    ``train/episode_return`` and ``train/episode_length``), what every tracker of a run logs.

    With the ``trainer``, an ``eval`` record also gives ``eval/best_return`` (the best evaluation so
    far, this one included) and each layer's sparsity (``sparsity/<network>/<layer>``).
    """
    if record["kind"] == "episode":
        return {"train/episode_return": record["return"], "train/episode_length": record["length"]}
    kind = record["kind"]
    scalars = {
        f"{kind}/{key}": value
        for key, value in record.items()
        if key not in ("step", "kind") and isinstance(value, int | float) and not isinstance(value, bool)
    }
    if kind == "eval" and trainer is not None:
        # the trainer's best is updated after this record: the best so far includes it
        scalars["eval/best_return"] = max(trainer.state.best_eval, record["return_mean"])
        for net_name, module in trainer.algo.networks().items():
            for report in layer_report(module):
                scalars[f"sparsity/{net_name}/{report.name}"] = 1 - report.density
    return scalars


class MetricsCallback(BaseCallback):
    """Keeps the run's records: ``metrics.jsonl`` (train, eval and costs records, one JSON per
    line) and TensorBoard events (every number, episode returns and lengths, each layer's sparsity
    after every evaluation, the best evaluation so far as ``eval/best_return``, and the run's
    settings for the HParams dashboard, :func:`hparams_of`) in ``folder``.

    ``purge_step``: a resumed run's step, so that TensorBoard drops what a killed run logged after
    its last checkpoint. Both files are written without following a symbolic link planted under
    their names (``inside``: a folder holding ``folder``, below which no link is followed); the
    event file is created at the first number (:class:`~nmrl.train.events.EventsWriter`).
    """

    def __init__(self, folder: Path, purge_step: int | None = None, inside: Path | None = None) -> None:
        super().__init__()
        self.folder, self.purge_step, self.inside = Path(folder), purge_step, inside
        self.path = self.folder / "metrics.jsonl"
        self.writer: EventsWriter | None = None
        self._hparams: dict[str, float | str | bool] | None = None  # to write before the next number
        self._session = False  # whether this event file holds the settings (and so ends a session)

    def _on_training_start(self) -> None:
        self._open_writer()
        if not self._session:
            self._hparams = hparams_of(self._trainer.config)

    def _open_writer(self) -> EventsWriter:
        if self.writer is None:
            self.writer = EventsWriter(self.folder, purge_step=self.purge_step, inside=self.inside)
        if self._hparams is not None:
            # with the first number (a resume that trains nothing leaves no file for its settings alone)
            hparams, self._hparams = self._hparams, None
            self.writer.add_hparams(hparams, HPARAM_METRICS)
            self._session = True
        return self.writer

    def _on_record(self, record: dict[str, Any]) -> None:
        if record["kind"] == "episode":  # TensorBoard only: one line per episode would swamp metrics.jsonl
            self._scalars(record)
            return
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` and its numbers to TensorBoard."""
        append_text(self.path, json.dumps(record) + "\n", self.inside, outcome="a resume drops a torn last line")
        self._scalars(record)

    def _scalars(self, record: dict[str, Any]) -> None:
        writer = self._open_writer()
        for tag, value in record_scalars(record, self.trainer).items():
            writer.add_scalar(tag, value, record["step"])

    def _on_training_end(self) -> None:
        if self._session and self.writer is not None:
            self.writer.end_session()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
