"""The run-directory protocol: what a folder under ``runs/`` promises, kept in one place.

A run directory holds ``config.json``, ``checkpoints/last.pt`` (everything needed to resume:
networks with shadow weights and masks, optimizers, replay buffer, RNG states, counters),
``checkpoints/best.pt`` (the networks at the best evaluation), ``metrics.jsonl``, ``costs.json``
and TensorBoard ``events.*`` files. Its promises:

- one owner at a time (a lock held for the life of the run);
- nothing left by a refused or failed start (:func:`new_run_dir` removes what it created), and a
  start killed before its first checkpoint is started again by the next ``nmrl train`` of that
  name (:func:`~nmrl.train.run.unstarted_run_files`);
- no write through a symbolic link planted inside it (``inside=`` of :mod:`nmrl.files`; a resume
  refuses any link there before it writes);
- checkpoints written atomically and only from finite networks
  (:class:`~nmrl.train.callbacks.CheckpointCallback`), and a checkpoint holding NaN/inf is never
  continued from (:meth:`~nmrl.train.trainer.Trainer.restore`);
- a resume continues from the last checkpoint and drops what a killed run logged after it
  (:func:`truncate_metrics`);
- SIGINT/SIGTERM become a flag the run checks, so it saves before it stops
  (:func:`stop_on_signals`, installed only on the main thread: Python lets no other thread set
  signal handlers, and a run in a thread is stopped by its callbacks instead).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType

from nmrl.errors import Interrupted, NmrlError
from nmrl.files import LockHeld, atomic_write_text, hold_lock, refuse_links
from nmrl.train.run import CHECKPOINTS, WANDB_FOLDER, read_metrics, unstarted_run_files

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = CHECKPOINTS["last"]
BEST_CHECKPOINT = CHECKPOINTS["best"]
METRICS_FILE = "metrics.jsonl"


def default_run_name(env: str, algo: str, sparsity: str, seed: int) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    sparsity = sparsity.replace(":", "of")
    env = env.replace("/", "-").replace(":", "-")
    return f"{env}__{algo}__{sparsity}__s{seed}__{stamp}"


def check_run_name(name: str) -> None:
    """A run name is one plain folder name: it can never point outside --runs-dir."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise NmrlError(
            f"--run-name must be a plain folder name (no '/', '.', '..' or surrounding spaces), got {name!r}"
        )


class StopFlag:
    """Set by SIGINT/SIGTERM (see :func:`stop_on_signals`); the run checks it after every step."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.number = 0

    def raise_if_set(self, what: str) -> None:
        """Raise :class:`Interrupted` (exit 128 + the signal's number) when a signal came; its text is
        the signal's name followed by ``what`` ("SIGINT while starting: ...")."""
        if self.signal is not None:
            raise Interrupted(f"{self.signal} {what}", self.number)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM into a flag the run checks, so it can checkpoint before exiting; a
    second signal stops at once (KeyboardInterrupt). Off the main thread, a flag no signal sets."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if flag.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag.signal, flag.number = signal.Signals(signum).name, signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def new_run_dir(run_dir: Path) -> Iterator[Path]:
    """Create and lock ``run_dir`` for a new run (or one that a kill stopped before its first
    checkpoint: what it left is removed first). If the body raises (a failed or interrupted start),
    what this created is removed; the body marks the start done by writing the config."""
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir)
    created = _make_folders(run_dir)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(hold_lock(run_dir, "run"))
        except LockHeld:
            raise  # the folder is another process's now: not ours to remove
        except BaseException:
            remove_failed_start(run_dir, created)  # the lock could not be written (a full disk)
            raise
        try:
            check_new_run_dir(run_dir)  # another process may have started it since the first check
            _clear_unstarted_run(run_dir)
            yield run_dir
        except BaseException:
            if not (run_dir / CONFIG_FILE).exists():
                remove_failed_start(run_dir, created)
            raise


@contextmanager
def existing_run_dir(run_dir: Path) -> Iterator[Path]:
    """Lock a run directory that holds a run (to resume it or write into it); a symbolic link
    anywhere in it is refused before anything is written (it would redirect a write)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise NmrlError(f"{run_dir}: not an nmrl run directory (no {CONFIG_FILE})")
    with hold_lock(run_dir, "run"):
        refuse_links(run_dir, skip=(WANDB_FOLDER,))
        yield run_dir


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop what a killed run logged after its last checkpoint, and a line torn by a crash."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record.get("step", 0) <= step]
    text = "".join(json.dumps(record) + "\n" for record in kept)
    if text != path.read_text(errors="replace"):  # no rewrite (and no space needed) otherwise
        atomic_write_text(path, text)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or already holds something."""
    for folder in (run_dir, *run_dir.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise NmrlError(f"cannot create run directory {run_dir}: {folder} is a file, not a folder")
        if folder == run_dir:
            if unstarted_run_files(run_dir) is None:
                what = "holds a run" if (run_dir / CONFIG_FILE).exists() else "is not empty"
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
        logger.warning("%s: a run stopped before its first checkpoint; starting it again", run_dir)
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
            remove_failed_start(run_dir, created)
            raise NmrlError(f"cannot create run directory {run_dir}: {error.strerror} ({folder})") from None
    return created


def remove_failed_start(run_dir: Path, created: list[Path]) -> None:
    """Undo a start that failed: remove the folders it created, or what it wrote into an empty one."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    elif run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
