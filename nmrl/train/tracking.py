"""Weights & Biases tracking of a run: ``nmrl train --track`` (the ``track`` extra, ``wandb``).

:class:`WandbCallback` logs to a W&B run every number the run's TensorBoard file gets, under the
same tags and steps (:func:`~nmrl.train.callbacks.record_scalars`), with the run's config as the W&B
run's config and its params/FLOPs (``costs.json``) in the summary. The numbers are logged from the
callback rather than by ``wandb.init(sync_tensorboard=True)``: that option follows the files of
TensorBoard's own writer, and nmrl writes its event files through its own descriptor
(:mod:`nmrl.train.events`).

The W&B run's files go to ``RUN/wandb/``; a resumed run continues the W&B run found there. W&B's
own settings apply (``WANDB_MODE=offline`` keeps everything in ``RUN/wandb/offline-run-*``, for
``wandb sync`` later; ``WANDB_API_KEY`` or ``wandb login`` for online runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmrl.errors import NmrlError
from nmrl.train.callbacks import BaseCallback, record_scalars
from nmrl.train.run import WANDB_FOLDER

_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class TrackingOptions:
    """Weights & Biases tracking (needs the track extra: pip install 'nmrl[track]')."""

    track: bool = False
    """Log the run to Weights & Biases (every TensorBoard number, the config); WANDB_MODE=offline
    keeps it in RUN/wandb/ for `wandb sync` later."""
    wandb_project: str = "nmrl"
    """W&B project of --track."""
    wandb_entity: str = ""
    """W&B entity (user or team) of --track ('' = your default entity)."""
    wandb_name: str = ""
    """W&B run name of --track ('' = the run directory's name)."""


NO_TRACKING = TrackingOptions()
"""The defaults: no tracking (and, given --track alone, project nmrl under your default entity)."""


def require_wandb() -> None:
    """Import wandb now, so that a missing track extra is one line before a run directory exists
    (``ModuleNotFoundError``, which :mod:`nmrl.cli` answers with the extra to install)."""
    import wandb  # noqa: F401


def _resumed_id(run_dir: Path) -> str | None:
    """The id of the newest W&B run of ``run_dir`` (its ``wandb/[offline-]run-<time>-<id>`` folders)."""
    folder = run_dir / WANDB_FOLDER
    if not folder.is_dir():
        return None
    runs = sorted(  # by the time in their names: run-YYYYMMDD_HHMMSS-<id>
        (name.removeprefix("offline-"), match.group("id"))
        for name in (path.name for path in folder.iterdir())
        if (match := _RUN_FOLDER.match(name)) is not None
    )
    return runs[-1][1] if runs else None


class WandbCallback(BaseCallback):
    """Logs a run to Weights & Biases: every record's numbers (the TensorBoard tags and steps) and,
    once, ``config`` and the run's ``costs.json``; ``run_dir`` holds W&B's files (``RUN/wandb/``).

    The W&B run starts when training starts (continuing the one ``run_dir`` already holds, on a
    resume) and is finished when training ends, or marked failed when it broke.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], options: TrackingOptions = NO_TRACKING) -> None:
        super().__init__()
        require_wandb()
        self.run_dir, self.config, self.options = Path(run_dir), config, options
        self.run: Any = None

    def _on_training_start(self) -> None:
        import wandb

        resumed = _resumed_id(self.run_dir)
        options = self.options
        try:
            self.run = wandb.init(
                project=options.wandb_project,
                entity=options.wandb_entity or None,
                name=options.wandb_name or self.run_dir.name,
                dir=str(self.run_dir),
                config=self.config,
                id=resumed,
                resume="allow" if resumed else None,
                # nmrl's own lines stay on the terminal as they are (W&B would wrap stdout and stderr)
                settings=wandb.Settings(console="off"),
            )
        except (wandb.Error, OSError) as error:
            raise NmrlError(
                f"--track: Weights & Biases could not start a run ({' '.join(str(error).split())}); "
                "log in with `wandb login`, or set WANDB_MODE=offline"
            ) from None
        costs = self.run_dir / "costs.json"
        if costs.is_file():
            self.run.summary.update({"costs": json.loads(costs.read_text())})

    def _on_record(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(record_scalars(record, self.trainer), step=record["step"])

    def _on_training_end(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def _close(self) -> None:
        if self.run is not None:  # training broke (or was stopped by an error): not a finished run
            self.run.finish(exit_code=1)
            self.run = None
