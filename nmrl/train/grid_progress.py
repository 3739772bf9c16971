"""Progress of an ``nmrl compare`` grid: a line per running cell and a grid bar with an ETA.

The state is read from the cells' own files (``metrics.jsonl``: a record every 1,000 steps and at
each evaluation; ``<cell>.attempts.jsonl``: when an attempt started), not sent by the workers, so
it works the same for local worker processes and for Ray tasks on other machines that write to the
shared storage. On a terminal it is a live rich display; elsewhere (CI logs, pipes) a plain line
when a cell starts and when it ends, with the grid's ETA.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from nmrl.train.engines import CellJob, read_attempts


def cell_step(job: CellJob) -> tuple[int, float]:
    """The last step a cell logged and its last evaluation return (nan before the first)."""
    path = job.run_dir / "metrics.jsonl"
    step, last_eval = 0, math.nan
    if not path.exists():
        return step, last_eval
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        step = max(step, int(record.get("step", 0)))
        if record.get("kind") == "eval":
            last_eval = float(record["return_mean"])
    return step, last_eval


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class GridProgress:
    """Tracks the cells an engine trains in this invocation of ``nmrl compare``."""

    def __init__(self, jobs: Sequence[CellJob], finished_before: int, total_cells: int, live: bool | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.jobs = list(jobs)
        self.total_cells, self.done = total_cells, finished_before
        self.start_time = time.monotonic()
        self.start_step = {job.label: cell_step(job)[0] for job in self.jobs}
        self.ended_labels: set[str] = set()
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            disable=not self.live,
        )
        self.grid_task = self.bar.add_task("grid", total=total_cells, completed=finished_before, status="")
        self.cell_tasks: dict[str, Any] = {}

    # ---- what engines call ------------------------------------------------------------------
    def __enter__(self) -> GridProgress:
        self.bar.start()
        self.refresh()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.refresh()
        self.bar.stop()

    def queued(self, job: CellJob) -> None:
        """A Ray task was submitted; it is shown once its attempt starts on some node."""

    def started(self, job: CellJob) -> None:
        self._show_cell(job)
        if not self.live:
            self.message(f"{job.label}: started")

    def ended(self, job: CellJob, failed: bool) -> None:
        self.ended_labels.add(job.label)
        task = self.cell_tasks.pop(job.label, None)
        if task is not None:
            self.bar.remove_task(task)
        step, last_eval = cell_step(job)
        finished = step >= job.config.total_steps or (
            job.config.stop_at_return is not None and last_eval >= job.config.stop_at_return
        )
        self.done += finished and not failed
        if failed:
            state = "FAILED"
        elif finished:
            state = f"final return {last_eval:.1f}"
        else:  # stopped by a signal: its checkpoint is kept, the next invocation resumes it
            state = f"stopped at step {step:,} (not finished; run again to resume)"
        self.message(f"[{self.done}/{self.total_cells}] {job.label}: {state}; grid ETA {self.eta()}")

    def message(self, text: str) -> None:
        if self.live:
            self.bar.console.log(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def refresh(self) -> None:
        """Re-read the running cells' files and redraw."""
        for job in self.jobs:
            if job.label in self.ended_labels:
                continue
            if job.label not in self.cell_tasks and self._attempt_started(job):
                self._show_cell(job)
            if job.label in self.cell_tasks:
                step, last_eval = cell_step(job)
                score = "-" if math.isnan(last_eval) else f"{last_eval:.1f}"
                self.bar.update(
                    self.cell_tasks[job.label],
                    completed=step,
                    status=f"{step:,}/{job.config.total_steps:,} steps  eval {score}",
                )
        self.bar.update(
            self.grid_task, completed=self.done, status=f"{self.done}/{self.total_cells} cells  ETA {self.eta()}"
        )

    # ---- helpers --------------------------------------------------------------------------------
    def eta(self) -> str:
        """Remaining steps of this invocation's cells over the steps per second trained so far."""
        trained = remaining = 0
        for job in self.jobs:
            step = cell_step(job)[0]
            trained += max(0, step - self.start_step[job.label])
            if job.label not in self.ended_labels:
                remaining += max(0, job.config.total_steps - step)
        elapsed = time.monotonic() - self.start_time
        if remaining == 0:
            return "0m00s"
        return format_duration(remaining / (trained / elapsed)) if trained else "?"

    def _attempt_started(self, job: CellJob) -> bool:
        return any(a.get("event") == "start" and a["time"] >= self.wall_start for a in read_attempts(job.log_path))

    @property
    def wall_start(self) -> float:
        return time.time() - (time.monotonic() - self.start_time)

    def _show_cell(self, job: CellJob) -> None:
        if job.label not in self.cell_tasks:
            self.cell_tasks[job.label] = self.bar.add_task(
                f"  {job.label}", total=job.config.total_steps, completed=cell_step(job)[0], status=""
            )
