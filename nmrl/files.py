"""Files nmrl writes: atomic writes, stale temp files, and the lock that gives a folder one owner.

A file is written to a temporary name in the same folder, flushed to disk and renamed over the
old one, so a crash or SIGKILL at any moment leaves the previous file or the new one, never a
half-written file under the real name (which a resume, a deploy or an engine loader would read).
A write that fails (disk full, read-only folder) raises :class:`NmrlError` naming the file and
leaves the previous file as it was. No PyTorch import.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from nmrl.errors import NmrlError

# mkstemp names of atomic writes: ".<name>.<random>.tmp" beside the file they become.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
LOCK_FILE = ".lock"


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def physical_memory() -> int:
    """Bytes of RAM this machine has: what an allocation a file or a flag asks for is checked
    against before it is made (a MemoryError, or the kernel's OOM kill, says nothing useful)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_npy_header(stream: IO[bytes], size: int) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` stream (a file, an ``.npz`` member) of ``size`` bytes declares,
    read before numpy allocates them: ``numpy.load`` allocates whatever a header declares, so a
    100-byte file claiming a terabyte array is a MemoryError. ValueError when the stream does not
    start with an .npy header or declares more data than it holds."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
    declared = math.prod(shape) * dtype.itemsize
    if stream.tell() + declared > size:
        raise ValueError(
            f"the header declares {list(shape)} {dtype} ({format_bytes(declared)}), "
            f"more than the {format_bytes(max(size - stream.tell(), 0))} of data the file holds"
        )
    return shape, dtype


def write_error(
    path: Path, error: OSError, size: int, outcome: str = "the previous file, if any, is unchanged"
) -> NmrlError:
    """A one-line :class:`NmrlError` for a failed write of ``size`` bytes to ``path``; ``outcome``
    says what became of the file."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = format_bytes(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        reason = f"no space left on the device ({format_bytes(size)} to write, {free} free)"
    return NmrlError(f"cannot write {path}: {reason}; {outcome}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error, len(data)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of atomic writes that a SIGKILL interrupted, in ``folder`` and below.

    Only safe while nothing else writes there: call it with the folder's :func:`hold_lock` held.
    Returns the files removed.
    """
    removed = []
    for tmp in Path(folder).rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def hold_lock(folder: Path, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock (an exclusive ``flock`` on ``folder/.lock``) for the block.

    A second process gets :class:`NmrlError` ("<what> X is in use by pid N") at once instead of
    waiting. The kernel releases the lock when the holder exits, however it exits (SIGKILL too),
    so a stale ``.lock`` file never blocks anyone.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise NmrlError(f"cannot lock {what} {folder}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise NmrlError(f"{what} {folder} is in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
