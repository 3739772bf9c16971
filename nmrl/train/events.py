"""TensorBoard scalars of a run (``events.out.tfevents.*``), written through one descriptor nmrl opened.

``torch.utils.tensorboard.SummaryWriter`` opens its event file by name again for every write (the
TensorBoard stub's ``GFile``: ``open(name, "wb")`` then ``"ab"`` per record), following any link
planted under that name, and reports a full disk from its background thread as a traceback after
it has left a 0-byte file. This writer keeps TensorBoard's file format (TFRecord framing from
``tensorboard.summary.writer.record_writer``, ``Event`` protos, torch's ``scalar`` summaries) and
changes only how the file is handled:

- it is created with ``O_EXCL | O_NOFOLLOW`` (``nmrl.files.create_new_file``) and written only
  through that descriptor, so no link can redirect a write;
- it is created at the first scalar, so a resume that trains nothing adds no empty file;
- every record is one unbuffered write: a failed write (disk full) raises one :class:`NmrlError`
  at once, and a file that could not take its first record is removed.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path

from nmrl.errors import NmrlError
from nmrl.files import create_new_file, write_error

EVENTS_PREFIX = "events.out.tfevents"
_serial = count()  # tells apart the files one process creates within a second


class EventsWriter:
    """``add_scalar`` / ``close`` as ``SummaryWriter`` has them, for a run directory ``folder``.

    ``purge_step``: on a resume, the step of the checkpoint; TensorBoard then drops the events an
    earlier file logged after it (what a killed run wrote past its last checkpoint).
    """

    def __init__(self, folder: Path, purge_step: int | None = None, inside: Path | None = None) -> None:
        self.folder, self.purge_step, self.inside = Path(folder), purge_step, inside
        self.path: Path | None = None
        self._fd: int | None = None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self._write(self._event(step, summary=scalar(tag, value)))

    def add_hparams(self, hparams: dict[str, float | str | bool], metrics: list[str]) -> None:
        """The run's hyperparameters for TensorBoard's HParams dashboard, with ``metrics`` (scalar
        tags of this run, each shown as its last value) beside them.

        Unlike ``SummaryWriter.add_hparams``, which writes them to a new sub-run of their own, they
        go into this file, so the run directory itself is the session and its scalars the metrics.
        """
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        experiment, session_start, _ = hparams_summaries(hparams, dict.fromkeys(metrics, 0.0))
        self._write(self._event(summary=experiment))
        self._write(self._event(summary=session_start))

    def end_session(self) -> None:
        """Mark the session :meth:`add_hparams` began as ended successfully (the run finished)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        _, _, session_end = hparams_summaries({}, {})
        self._write(self._event(summary=session_end))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- the file ------------------------------------------------------------------------
    @staticmethod
    def _event(step: int | None = None, **fields):
        from tensorboard.compat.proto.event_pb2 import Event

        event = Event(wall_time=time.time(), **fields)
        if step is not None:
            event.step = int(step)
        return event

    def _open(self) -> None:
        from tensorboard.compat.proto.event_pb2 import SessionLog

        while self._fd is None:  # a name already taken by a file of ours: the next serial
            name = f"{EVENTS_PREFIX}.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_serial)}"
            try:
                self._fd = create_new_file(self.folder, name, self.inside)
            except OSError as error:
                raise write_error(self.folder / name, error, 0, "nothing was written") from None
            self.path = self.folder / name
        try:
            self._record(self._event(file_version="brain.Event:2"))
            if self.purge_step is not None:
                self._record(self._event(self.purge_step, session_log=SessionLog(status=SessionLog.START)))
        except NmrlError:
            self.close()
            assert self.path is not None
            self.path.unlink(missing_ok=True)  # created by this call and still without a record
            self.path = None
            raise

    def _write(self, event) -> None:
        if self._fd is None:
            self._open()
        self._record(event)

    def _record(self, event) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        assert self._fd is not None and self.path is not None
        frame = _Frame()
        RecordWriter(frame).write(event.SerializeToString())
        try:
            written = os.write(self._fd, frame.data)
        except OSError as error:
            raise write_error(self.path, error, len(frame.data), "TensorBoard skips a torn last record") from None
        if written != len(frame.data):  # a short write: the disk filled during it
            raise NmrlError(f"cannot write {self.path}: the disk filled during the write (TensorBoard skips it)")


class _Frame:
    """What ``RecordWriter.write`` hands its file: one framed record, kept for a single ``os.write``."""

    data = b""

    def write(self, data: bytes) -> None:
        self.data = data
