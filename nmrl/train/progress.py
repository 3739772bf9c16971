"""Showing a run: a rich progress bar on a terminal, and nmrl's log lines on stderr.

Library code logs through :mod:`logging` (logger ``nmrl``) and never prints; the CLI (and
``verbose=1`` in the API) shows those lines with :func:`log_to_stderr`. While the bar is live,
rich redirects stderr above it, so log lines and the bar do not tear each other.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from nmrl.train.callbacks import BaseCallback

PROGRESS_EVERY = 100
"""Env steps between two redraws of the bar."""


class _Stderr(logging.Handler):
    """Each record's message on the stderr of the moment (rich's redirect while a bar is live)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """Show nmrl's log lines (``logging.getLogger("nmrl")``) on stderr for the block, unless the
    application already gave that logger a handler of its own."""
    nmrl_logger = logging.getLogger("nmrl")
    if nmrl_logger.handlers:
        yield
        return
    handler = _Stderr(level)
    previous = nmrl_logger.level
    nmrl_logger.addHandler(handler)
    if nmrl_logger.getEffectiveLevel() > level:
        nmrl_logger.setLevel(level)
    try:
        yield
    finally:
        nmrl_logger.removeHandler(handler)
        nmrl_logger.setLevel(previous)


class ProgressCallback(BaseCallback):
    """A progress bar (steps, steps/s, last eval return, time left) while stderr is a terminal;
    nothing elsewhere (CI logs and pipes get the log lines only)."""

    def __init__(self, description: str = "training") -> None:
        super().__init__()
        self.description = description
        self.bar: object | None = None

    def _on_training_start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        trainer = self._trainer
        self.bar = bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>6.0f} steps/s"),
            TextColumn("eval {task.fields[eval]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = bar.add_task(
            self.description, total=trainer.total_steps, completed=trainer.state.step, rate=0.0, eval="-"
        )
        bar.start()

    def _on_step(self) -> bool:
        if self.bar is not None and self.num_timesteps % PROGRESS_EVERY == 0:
            trainer = self._trainer
            last = trainer.state.last_eval
            self.bar.update(  # type: ignore[attr-defined]
                self.task,
                completed=trainer.state.step,
                rate=trainer.steps_per_second,
                eval="-" if math.isnan(last) else f"{last:.1f}",
            )
        return True

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.stop()  # type: ignore[attr-defined]
            self.bar = None
