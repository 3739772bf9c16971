"""``nmrl train`` over the public API: a run directory, the CLI's callbacks and signals.

:func:`train` and :func:`resume` build the same agent :class:`nmrl.TD3` / :class:`nmrl.SAC` build
(:meth:`~nmrl.train.api.OffPolicyAgent.from_config`) and run its :meth:`learn` with the callbacks
a run directory needs: metrics (``metrics.jsonl`` + TensorBoard), evaluation with the best
checkpoint and ``--stop-at-return``, the last checkpoint, the progress bar, and a stop on
SIGINT/SIGTERM that saves first. The run-directory protocol itself (lock, clean failed starts,
links refused, truncated metrics on resume, signals) is :mod:`nmrl.train.rundir`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from nmrl.envs import env_id_from_file
from nmrl.errors import NmrlError
from nmrl.files import check_name_lengths, remove_stale_temp_files
from nmrl.train.api import OffPolicyAgent, agent_class
from nmrl.train.callbacks import (
    EVAL_SEED_OFFSET,
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    MetricsCallback,
    StopTrainingOnReturn,
)
from nmrl.train.checkpoint import load_checkpoint
from nmrl.train.config import TrainConfig, check_compatible
from nmrl.train.progress import ProgressCallback, log_to_stderr
from nmrl.train.rundir import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    StopFlag,
    check_run_name,
    default_run_name,
    existing_run_dir,
    new_run_dir,
    stop_on_signals,
    truncate_metrics,
)
from nmrl.train.sparse import log_costs
from nmrl.train.tracking import TrackingOptions, WandbCallback, require_wandb
from nmrl.train.trainer import TrainingDiverged, resolve_device

__all__ = [
    "BEST_CHECKPOINT",
    "EVAL_SEED_OFFSET",
    "LAST_CHECKPOINT",
    "TrainingDiverged",
    "resolve_device",
    "resume",
    "run_callbacks",
    "train",
]

logger = logging.getLogger(__name__)


class StopOnSignal(BaseCallback):
    """Ends training after the step in which SIGINT/SIGTERM came (the checkpoint is saved at the end)."""

    def __init__(self, flag: StopFlag) -> None:
        super().__init__()
        self.flag = flag

    def _on_step(self) -> bool:
        return self.flag.signal is None


def run_callbacks(
    config: TrainConfig,
    run_dir: Path,
    stop: StopFlag | None = None,
    purge_step: int | None = None,
    tracking: TrackingOptions | None = None,
) -> tuple[MetricsCallback, list[BaseCallback]]:
    """The callbacks of ``nmrl train`` (the metrics one first, also returned on its own); with
    ``tracking.track``, W&B's too."""
    metrics = MetricsCallback(run_dir, purge_step=purge_step, inside=run_dir)
    stop_at = None if config.stop_at_return is None else StopTrainingOnReturn(config.stop_at_return)
    callbacks: list[BaseCallback] = [
        metrics,
        EvalCallback(
            config.env,
            config.eval_every,
            config.eval_episodes,
            seed=config.seed + EVAL_SEED_OFFSET,
            best_checkpoint=run_dir / BEST_CHECKPOINT,
            callback_after_eval=stop_at,
            inside=run_dir,
            env_kwargs=config.env_kwargs,
        ),
        CheckpointCallback(run_dir / LAST_CHECKPOINT, config.checkpoint_every, inside=run_dir),
    ]
    if tracking is not None and tracking.track:
        callbacks.append(WandbCallback(run_dir, config.to_dict(), tracking))
    if config.progress:
        callbacks.append(ProgressCallback(f"{config.algo} {config.sparsity} {config.env}"))
    if stop is not None:
        callbacks.append(StopOnSignal(stop))
    return metrics, callbacks


def train(config: TrainConfig, tracking: TrackingOptions | None = None) -> Path:
    """Start a new run; returns its directory (``tracking``: W&B, :mod:`nmrl.train.tracking`).

    Everything that can be checked is checked before anything is written, and a run that fails to
    start (an unknown env, a buffer too large, Ctrl-C while starting) leaves no folder behind. The
    run directory is locked for the life of the run.
    """
    config.validate()
    if tracking is not None and tracking.track:
        require_wandb()  # a missing extra before anything is made
    name = config.run_name or default_run_name(config.env, config.algo, config.sparsity, config.seed)
    check_run_name(name)
    run_dir = Path(config.runs_dir) / name
    check_name_lengths(run_dir, "the run directory's path (--runs-dir / --run-name)")
    with log_to_stderr(), stop_on_signals() as stop, new_run_dir(run_dir):
        agent = agent_class(config.algo).from_config(config)
        try:
            stop.raise_if_set("while starting: stopped, nothing saved")
            metrics, callbacks = run_callbacks(config, run_dir, stop, tracking=tracking)
            log_costs(run_dir, agent.algorithm.networks(), metrics.write)  # params and FLOPs vs dense
            config.save(run_dir / CONFIG_FILE)  # last: a folder with a config and no checkpoint is an unstarted run
            _learn(agent, config.total_steps, callbacks, run_dir, stop)
        finally:
            agent.trainer.close()
    return run_dir


def resume(
    run_dir: Path, total_steps: int | None = None, env: str | None = None, tracking: TrackingOptions | None = None
) -> Path:
    """Continue a run from its last checkpoint with its saved config (``total_steps`` may extend it,
    or shorten it down to the checkpoint's step; ``env``, when given, must be the run's;
    ``tracking``: W&B, continuing the W&B run the directory holds).

    The run directory is locked first; ``config.json`` is rewritten only once the extended config
    has been checked and the checkpoint loaded.
    """
    run_dir = Path(run_dir)
    if tracking is not None and tracking.track:
        require_wandb()
    with log_to_stderr(), stop_on_signals() as stop, existing_run_dir(run_dir):
        config = TrainConfig.load(run_dir / CONFIG_FILE)
        if env is not None and env != config.env:
            raise NmrlError(f"--env {env} is not this run's environment ({config.env})")
        env_id_from_file(config.env, run_dir / CONFIG_FILE)
        last = run_dir / LAST_CHECKPOINT
        if not last.exists():
            raise NmrlError(
                f"{run_dir}: no checkpoint to resume from ({LAST_CHECKPOINT} is missing: the run stopped before "
                "its first one); start it again with the nmrl train command that began it, which reuses a run "
                "folder that holds no checkpoint"
            )
        changed = total_steps is not None and total_steps != config.total_steps
        saved_total = config.total_steps
        if changed:
            assert total_steps is not None  # `changed` says it was given
            config = dataclasses.replace(config, total_steps=total_steps)
        remove_stale_temp_files(run_dir)
        config.validate()
        state = load_checkpoint(last)
        check_compatible(state, config, last)
        agent = agent_class(config.algo).from_config(config)
        try:
            agent.trainer.restore(state, last)  # refuses a total below the checkpoint's step
            stop.raise_if_set("while starting: stopped, nothing saved")
            if changed:
                config.save(run_dir / CONFIG_FILE)
                verb = "extended" if config.total_steps > saved_total else "shortened"
                logger.info(
                    "--total-steps: run %s from %s to %s steps", verb, f"{saved_total:,}", f"{config.total_steps:,}"
                )
            step = agent.num_timesteps
            truncate_metrics(run_dir, step)
            _, callbacks = run_callbacks(config, run_dir, stop, purge_step=step, tracking=tracking)
            _learn(agent, config.total_steps, callbacks, run_dir, stop)
        finally:
            agent.trainer.close()
    return run_dir


def _learn(
    agent: OffPolicyAgent, total_steps: int, callbacks: list[BaseCallback], run_dir: Path, stop: StopFlag
) -> None:
    try:
        agent.learn(total_steps - agent.num_timesteps, callback=callbacks)
    except TrainingDiverged as error:
        text = str(error)
        if "kept" not in text and "no checkpoint" not in text:
            last = run_dir / LAST_CHECKPOINT
            text += f", the last good checkpoint ({last}) is kept" if last.exists() else ", no checkpoint was written"
        raise TrainingDiverged(text) from None
    stop.raise_if_set(
        f"received: checkpoint saved at step {agent.num_timesteps}; resume with: nmrl train --resume {run_dir}"
    )
