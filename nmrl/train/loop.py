"""The training loop shared by every algorithm: collect, update, evaluate, log, checkpoint.

A run directory holds ``config.json``, ``checkpoints/last.pt`` (everything needed to resume:
networks with shadow weights and masks, optimizers, replay buffer, RNG states, counters),
``checkpoints/best.pt`` (the networks at the best evaluation), ``metrics.jsonl`` and TensorBoard
``events.*`` files.

Longer than most modules (~490 lines) on purpose: what a run directory promises (one owner at a
time, nothing written by a refused start, checkpoints only from finite state, exact resume, a save
on every interrupt) is enforced by this one file, so the whole protocol can be read in one place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from nmrl.envs import env_dims, env_id_from_file, make_env
from nmrl.errors import Interrupted, NmrlError, gist
from nmrl.files import (
    LockHeld,
    append_text,
    atomic_write_text,
    check_name_lengths,
    hold_lock,
    refuse_links,
    remove_stale_temp_files,
)
from nmrl.sparsity import layer_report
from nmrl.train.algorithm import Algorithm, get_algorithm
from nmrl.train.buffer import ReplayBuffer
from nmrl.train.checkpoint import checkpoint_step, load_checkpoint, nonfinite_tensors, save_checkpoint
from nmrl.train.config import TrainConfig, check_compatible
from nmrl.train.evaluate import EvalResult, evaluate
from nmrl.train.events import EventsWriter
from nmrl.train.networks import check_networks_fit
from nmrl.train.run import read_metrics, unstarted_run_files
from nmrl.train.sparse import log_costs

LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
# Evaluation episodes use seeds far from the training env's, so they are never training starts.
EVAL_SEED_OFFSET = 10_000


class TrainingDiverged(NmrlError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NmrlError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(name)


def default_run_name(config: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    sparsity = config.sparsity.replace(":", "of")
    env = config.env.replace("/", "-").replace(":", "-")
    return f"{env}__{config.algo}__{sparsity}__s{config.seed}__{stamp}"


def check_run_name(name: str) -> None:
    """A run name is one plain folder name: it can never point outside --runs-dir."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise NmrlError(
            f"--run-name must be a plain folder name (no '/', '.', '..' or surrounding spaces), got {name!r}"
        )


@contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""
    requested: dict[str, Any] = {"signal": None, "number": 0}

    def handler(signum: int, _frame: FrameType | None) -> None:
        if requested["signal"] is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        requested["signal"], requested["number"] = signal.Signals(signum).name, signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class TrainState:
    """Counters that, with the RNG states, say where a run is."""

    step: int = 0  # env steps taken
    episodes: int = 0
    best_eval: float = -math.inf
    last_eval: float = float("nan")


class Trainer:
    """Owns one run: its env, algorithm, buffer, loggers and run directory."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool) -> None:
        config.validate()
        self.config, self.run_dir = config, run_dir
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.env = make_env(config.env, seed=config.seed, kwargs=config.env_kwargs)
        obs_dim, act_dim, low, high = env_dims(self.env)
        self.action_low, self.action_high = np.array(low, np.float32), np.array(high, np.float32)
        check_networks_fit(obs_dim, act_dim, config.hidden, self.device)
        self.algo: Algorithm = get_algorithm(config.algo)(obs_dim, act_dim, low, high, config, self.device)
        self.buffer = ReplayBuffer.allocate(config.buffer_size, obs_dim, act_dim, self.device, seed=config.seed)
        self.rng = np.random.default_rng(config.seed)  # warm-up actions
        self.state = TrainState()
        if resume:
            self._restore(load_checkpoint(run_dir / LAST_CHECKPOINT))
        # purge_step drops events a killed run logged after its last checkpoint.
        self.writer = EventsWriter(run_dir, purge_step=self.state.step if resume else None)
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume:
            self._truncate_metrics(self.state.step)
        else:
            log_costs(run_dir, self.algo.networks(), self.log)  # params and FLOPs vs dense

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "algorithm": self.algo.state_dict(),
            "policy": self.algo.policy_part(),
            "buffer": self.buffer.state_dict(),
            "train_state": vars(self.state).copy(),
            "rng": {
                "python": random.getstate(),
                "numpy_loop": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "env": self.env.unwrapped.np_random.bit_generator.state,
            },
        }

    def save(self) -> None:
        self._refuse_nonfinite()
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, self.checkpoint_state(), inside=self.run_dir)

    def _refuse_nonfinite(self) -> None:
        """A checkpoint is written only from finite networks: a NaN in any weight (a loss can still
        be finite in the update that broke them) stops the run and keeps the last good checkpoint."""
        broken = self._nonfinite_weights()
        if broken:
            raise TrainingDiverged(
                f"the networks hold NaN/inf at step {self.state.step} ({', '.join(broken[:3])}); "
                f"stopped, {self._kept_checkpoint()}"
            )

    def _nonfinite_weights(self) -> list[str]:
        return nonfinite_tensors({name: net.state_dict() for name, net in self.algo.networks().items()})

    def _kept_checkpoint(self) -> str:
        # every checkpoint is written from finite networks, and a resume refuses one that is not
        last = self.run_dir / LAST_CHECKPOINT
        return f"the last good checkpoint ({last}) is kept" if last.exists() else "no checkpoint was written"

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.run_dir / LAST_CHECKPOINT
        check_compatible(state, self.config, path)
        step = checkpoint_step(state, path)
        if step > self.config.total_steps:
            raise NmrlError(
                f"{path} is at step {step:,}, beyond --total-steps {self.config.total_steps:,}: "
                "a run cannot be shortened below its checkpoint"
            )
        try:
            self.algo.load_state_dict(state["algorithm"])
            self.buffer.load_state_dict(state["buffer"])
            self.state = TrainState(**state["train_state"])
            rng = state["rng"]
            random.setstate(_as_python_random_state(rng["python"]))
            self.rng.bit_generator.state = rng["numpy_loop"]
            torch.set_rng_state(rng["torch"])
            if rng["torch_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["torch_cuda"])
            self.env.unwrapped.np_random.bit_generator.state = rng["env"]
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise NmrlError(f"{path}: does not fit this run ({gist(error)})") from None
        broken = self._nonfinite_weights()
        if broken:  # written elsewhere: a run cannot go on from it (and would call it "the last good one")
            raise NmrlError(
                f"{path}: its networks hold NaN/inf ({', '.join(broken[:3])}); a run cannot continue from it"
            )

    def _truncate_metrics(self, step: int) -> None:
        """Drop what a killed run logged after its last checkpoint, and a line torn by a crash."""
        if not self.metrics_path.exists():
            return
        kept = [record for record in read_metrics(self.metrics_path) if record.get("step", 0) <= step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        if text != self.metrics_path.read_text(errors="replace"):  # no rewrite (and no space needed) otherwise
            atomic_write_text(self.metrics_path, text)

    # ---- logging -----------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        append_text(self.metrics_path, json.dumps(record) + "\n", outcome="a resume drops a torn last line")
        for key, value in record.items():
            if key not in ("step", "kind") and isinstance(value, int | float):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def log_sparsity(self) -> None:
        for net_name, module in self.algo.networks().items():
            for report in layer_report(module):
                self.writer.add_scalar(f"sparsity/{net_name}/{report.name}", 1 - report.density, self.state.step)

    def evaluate(self) -> EvalResult:
        policy = self.algo.policy()

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return policy(torch.as_tensor(obs, device=self.device).unsqueeze(0))[0].cpu().numpy()

        config = self.config
        return evaluate(act, config.env, config.eval_episodes, config.seed + EVAL_SEED_OFFSET, config.env_kwargs)

    # ---- the loop ----------------------------------------------------------------------
    def run(self, stop: dict[str, Any] | None = None) -> None:
        """Train to ``total_steps``; on SIGINT/SIGTERM save a checkpoint, then raise :class:`Interrupted`.

        ``stop``: the flag of a :func:`stop_on_signals` the caller already holds (so a signal that
        came while the run was starting is not lost); by default the run installs its own.
        """
        try:
            if stop is None:
                with stop_on_signals() as stop:
                    self._run(stop)
            else:
                self._run(stop)
        finally:
            self.close()

    def close(self) -> None:
        """Close the TensorBoard writer and the env (an open writer writes its file again at exit)."""
        self.writer.close()
        self.env.close()

    def _run(self, stop: dict[str, Any]) -> None:
        cfg, state = self.config, self.state
        obs, _ = self.env.reset()
        episode_return, episode_length = 0.0, 0
        losses: dict[str, torch.Tensor] = {}
        window_start, window_step = time.perf_counter(), state.step
        steps_per_second = 0.0
        with _progress(cfg, state.step) as progress:
            while state.step < cfg.total_steps:
                if state.step < cfg.learning_starts:
                    action = self.rng.uniform(self.action_low, self.action_high).astype(np.float32)
                else:
                    obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
                    action = self.algo.act(obs_tensor, explore=True)[0].cpu().numpy()
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                self.buffer.add(obs, action, float(reward), next_obs, terminated)
                obs = next_obs
                episode_return += float(reward)
                episode_length += 1
                state.step += 1
                if terminated or truncated:
                    state.episodes += 1
                    self.writer.add_scalar("train/episode_return", episode_return, state.step)
                    self.writer.add_scalar("train/episode_length", episode_length, state.step)
                    obs, _ = self.env.reset()
                    episode_return, episode_length = 0.0, 0

                if state.step > cfg.learning_starts:
                    losses = self.algo.update(self.buffer.sample(cfg.batch_size))
                    if not all(torch.isfinite(v) for v in losses.values()):
                        raise TrainingDiverged(
                            f"a loss became NaN/inf at step {state.step}; stopped, {self._kept_checkpoint()}"
                        )

                if state.step % 1000 == 0:
                    now = time.perf_counter()
                    steps_per_second = (state.step - window_step) / (now - window_start)
                    window_start, window_step = now, state.step
                    record = {
                        "kind": "train",
                        "step": state.step,
                        "steps_per_second": steps_per_second,
                        "episodes": state.episodes,
                        **{k: float(v) for k, v in losses.items()},
                    }
                    self.log(record)
                solved = False
                if state.step % cfg.eval_every == 0 or state.step == cfg.total_steps:
                    self._evaluate_and_log(progress)
                    solved = cfg.stop_at_return is not None and state.last_eval >= cfg.stop_at_return
                if state.step % cfg.checkpoint_every == 0 or state.step == cfg.total_steps or solved:
                    self.save()
                if solved:
                    progress.message(
                        f"eval return {state.last_eval:.1f} reached --stop-at-return "
                        f"{cfg.stop_at_return}: stopping at step {state.step}"
                    )
                    break
                progress.update(state.step, steps_per_second, state.last_eval)
                if stop["signal"] is not None:
                    self.save()
                    raise Interrupted(
                        f"{stop['signal']}: checkpoint saved at step {state.step}; "
                        f"resume with: nmrl train --resume {self.run_dir}",
                        stop["number"],
                    )

    def _evaluate_and_log(self, progress: _Progress) -> None:
        self._refuse_nonfinite()
        result = self.evaluate()
        self.state.last_eval = result.mean
        self.log(
            {
                "kind": "eval",
                "step": self.state.step,
                "return_mean": result.mean,
                "return_std": result.std,
                "episode_length_mean": float(np.mean(result.lengths)),
            }
        )
        self.log_sparsity()
        progress.message(f"step {self.state.step:>9,}  eval return {result}")
        if result.mean > self.state.best_eval:
            self.state.best_eval = result.mean
            save_checkpoint(
                self.run_dir / BEST_CHECKPOINT,
                {
                    "config": self.config.to_dict(),
                    "algorithm": self.algo.state_dict(),
                    "policy": self.algo.policy_part(),
                    "train_state": vars(self.state).copy(),
                },
                inside=self.run_dir,
            )


def _as_python_random_state(saved: Any) -> tuple:
    # weights_only loading turns the nested tuples of random.getstate() into lists.
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


class _Progress:
    """A rich progress bar on a terminal; plain lines elsewhere (CI logs, pipes)."""

    def __init__(self, config: TrainConfig, start: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.live = config.progress and self.console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>6.0f} steps/s"),
            TextColumn("eval {task.fields[eval]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.bar.add_task(
            f"{config.algo} {config.sparsity} {config.env}",
            total=config.total_steps,
            completed=start,
            rate=0.0,
            eval="-",
        )

    def update(self, step: int, rate: float, last_eval: float) -> None:
        if self.live and step % 100 == 0:
            self.bar.update(
                self.task, completed=step, rate=rate, eval="-" if math.isnan(last_eval) else f"{last_eval:.1f}"
            )

    def message(self, text: str) -> None:
        if self.live:
            self.bar.console.log(text)
        else:
            print(text, file=sys.stderr, flush=True)


@contextmanager
def _progress(config: TrainConfig, start: int):
    progress = _Progress(config, start)
    with progress.bar:
        yield progress


def train(config: TrainConfig) -> Path:
    """Start a new run; returns its directory.

    Everything that can be checked is checked before anything is written, and a run that fails to
    start (an unknown env, a buffer too large, Ctrl-C while starting) leaves no folder behind. The
    run directory is locked for the life of the run.
    """
    config.validate()
    name = config.run_name or default_run_name(config)
    check_run_name(name)
    run_dir = Path(config.runs_dir) / name
    check_name_lengths(run_dir, "the run directory's path (--runs-dir / --run-name)")
    _check_new_run_dir(run_dir)
    created = _make_folders(run_dir)
    with contextlib.ExitStack() as held:
        stop = held.enter_context(stop_on_signals())
        try:
            held.enter_context(hold_lock(run_dir, "run"))
        except LockHeld:
            raise  # the folder is another process's now: not ours to remove
        except BaseException:
            _remove_failed_start(run_dir, created)  # the lock could not be written (a full disk)
            raise
        _check_new_run_dir(run_dir)  # another process may have started it since the first check
        _clear_unstarted_run(run_dir)
        trainer: Trainer | None = None
        try:
            trainer = Trainer(config, run_dir, resume=False)
            _stop_if_signalled(stop)
            config.save(run_dir / "config.json")
        except BaseException:
            if trainer is not None:  # else its writer would recreate the folder with its event file at exit
                trainer.close()
            _remove_failed_start(run_dir, created)
            raise
        trainer.run(stop)
    return run_dir


def _stop_if_signalled(stop: dict[str, Any]) -> None:
    """A signal that came while a run was starting ends it before anything is saved."""
    if stop["signal"] is not None:
        raise Interrupted(f"{stop['signal']} while starting: stopped, nothing saved", stop["number"])


def resume(run_dir: Path, total_steps: int | None = None, env: str | None = None) -> Path:
    """Continue a run from its last checkpoint with its saved config (``total_steps`` may extend it,
    or shorten it down to the checkpoint's step; ``env``, when given, must be the run's).

    The run directory is locked first; ``config.json`` is rewritten only once the extended config
    has been checked and the checkpoint loaded.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise NmrlError(f"{run_dir}: not an nmrl run directory (no config.json)")
    with stop_on_signals() as stop, hold_lock(run_dir, "run"):
        refuse_links(run_dir)  # before anything is written: a link there would redirect a write
        config = TrainConfig.load(run_dir / "config.json")
        if env is not None and env != config.env:
            raise NmrlError(f"--env {env} is not this run's environment ({config.env})")
        env_id_from_file(config.env, run_dir / "config.json")
        if not (run_dir / LAST_CHECKPOINT).exists():
            raise NmrlError(
                f"{run_dir}: no checkpoint to resume from ({LAST_CHECKPOINT} is missing: the run stopped before "
                "its first one); start it again with the nmrl train command that began it, which reuses a run "
                "folder that holds no checkpoint"
            )
        changed = total_steps is not None and total_steps != config.total_steps
        saved_total = config.total_steps
        if changed:
            assert total_steps is not None  # `changed` says it was given
            config = replace(config, total_steps=total_steps)
        remove_stale_temp_files(run_dir)
        trainer = Trainer(config, run_dir, resume=True)  # validates config and checkpoint (not past its end)
        _stop_if_signalled(stop)
        if changed:
            config.save(run_dir / "config.json")
            verb = "extended" if config.total_steps > saved_total else "shortened"
            print(f"--total-steps: run {verb} from {saved_total:,} to {config.total_steps:,} steps", file=sys.stderr)
        trainer.run(stop)
    return run_dir


def _check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or already holds something."""
    for folder in (run_dir, *run_dir.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise NmrlError(f"cannot create run directory {run_dir}: {folder} is a file, not a folder")
        if folder == run_dir:
            if unstarted_run_files(run_dir) is None:
                what = "holds a run" if (run_dir / "config.json").exists() else "is not empty"
                raise NmrlError(
                    f"{run_dir} already {what}; resume it with: nmrl train --resume {run_dir}, "
                    "or choose another --run-name"
                )
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise NmrlError(f"cannot create run directory {run_dir}: {folder} is not writable")
        return


def _clear_unstarted_run(run_dir: Path) -> None:
    """Remove what a run killed before its first checkpoint left (the lock is held)."""
    leftovers = unstarted_run_files(run_dir)
    if leftovers:
        print(f"{run_dir}: a run stopped before its first checkpoint; starting it again", file=sys.stderr)
    for path in leftovers or []:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _make_folders(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` and missing parents; returns the folders this call created, outermost first."""
    missing = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()][::-1]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:
            pass  # created by someone else meanwhile: not ours to remove
        except OSError as error:
            _remove_failed_start(run_dir, created)
            raise NmrlError(f"cannot create run directory {run_dir}: {error.strerror} ({folder})") from None
    return created


def _remove_failed_start(run_dir: Path, created: list[Path]) -> None:
    """Undo a start that failed: remove the folders it created, or what it wrote into an empty one."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    elif run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
