"""Files nmrl writes: atomic writes, stale temp files, and the lock that gives a folder one owner.

A file is written to a temporary name in the same folder, flushed to disk and renamed over the
old one, so a crash or SIGKILL at any moment leaves the previous file or the new one, never a
half-written file under the real name (which a resume, a deploy or an engine loader would read).
A write that fails (disk full, read-only folder) raises :class:`NmrlError` naming the file and
leaves the previous file as it was.

Inside a folder nmrl owns (a run directory, a grid), a symbolic link is never written through: a
link planted in place of a file or subfolder nmrl writes (``.lock``, ``metrics.jsonl``,
``checkpoints/``, TensorBoard event files) is refused with one line and its target is untouched.
Folders below ``inside=`` are opened one by one without following links, temp files are created
with ``O_EXCL | O_NOFOLLOW``, and appends and the lock open their file with ``O_NOFOLLOW``. The
owned folder itself (and those above it) may be a link: that is where the user chose to keep it.
No PyTorch import.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from nmrl.errors import NmrlError

# mkstemp names of atomic writes: ".<name>.<random>.tmp" beside the file they become.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
LOCK_FILE = ".lock"
# Longest name of one path component on Linux and macOS file systems (NAME_MAX), in bytes.
NAME_MAX = 255
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class LockHeld(NmrlError):
    """Another process holds the folder's lock."""


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


def symlink_refused(path: Path) -> NmrlError:
    return NmrlError(
        f"{path} is a symbolic link; nmrl never writes through a link inside a folder it owns: remove it (rm {path})"
    )


def refuse_links(folder: Path, skip: tuple[str, ...] = ()) -> None:
    """:class:`NmrlError` naming the first symbolic link found in ``folder`` or below (links are
    not followed): a command that would write there refuses before it changes anything.
    ``skip``: names of folders directly in ``folder`` that another program owns and nmrl never
    writes into (their links are theirs)."""
    for root, dirs, files in os.walk(folder):
        if root == os.fspath(folder):
            dirs[:] = [name for name in dirs if name not in skip or os.path.islink(os.path.join(root, name))]
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                raise symlink_refused(Path(root, name))


def check_name_lengths(path: Path, what: str) -> None:
    """:class:`NmrlError` when a component of ``path`` is longer than a file system allows (the
    OS would say "File name too long" as a traceback, after a folder was made)."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise NmrlError(f"{what} holds a name of {size} bytes, longer than the {NAME_MAX} allowed: {part[:40]}...")


@contextlib.contextmanager
def _folder(folder: Path, inside: Path | None) -> Iterator[int]:
    """A descriptor of ``folder``, created if missing. Below ``inside`` each component is opened
    without following a link (a link there is refused), so no swap can redirect the writes."""
    folder = Path(folder)
    if inside is None:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, _DIRECTORY)
    else:
        parts = folder.relative_to(inside).parts  # ValueError: a caller's mistake
        Path(inside).mkdir(parents=True, exist_ok=True)
        fd, current = os.open(inside, _DIRECTORY), Path(inside)
        for part in parts:
            current = current / part
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ELOOP, errno.ENOTDIR) and current.is_symlink():
                    raise symlink_refused(current) from None
                raise
            os.close(fd)
            fd = child
    try:
        yield fd
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, inside: Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created). ``inside``: a folder
    nmrl owns that holds ``path``; no link below it is followed."""
    path = Path(path)
    try:
        with _folder(path.parent, inside) as folder:
            tmp = f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as tmp_file:
                    tmp_file.write(data)
                    tmp_file.flush()
                    os.fsync(tmp_file.fileno())
                # a link under the final name is replaced, not followed
                os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
                raise
            os.fsync(folder)  # make the rename itself durable
    except OSError as error:
        raise write_error(path, error, len(data)) from None


def open_for_append(path: Path, inside: Path | None = None) -> int:
    """A descriptor appending to ``path`` (created if missing); a link or a non-file there is refused."""
    path = Path(path)
    with _folder(path.parent, inside) as folder:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, 0o644, dir_fd=folder)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise symlink_refused(path) from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted under the name
        os.close(fd)
        raise NmrlError(f"{path} is not a regular file; nmrl writes only its own files there: remove it")
    return fd


def append_text(path: Path, text: str, inside: Path | None = None, outcome: str = "the file is unchanged") -> None:
    """Append ``text`` to ``path`` in one write (see :func:`open_for_append`); a failed write is
    one :class:`NmrlError` saying ``outcome``."""
    data = text.encode()
    try:
        fd = open_for_append(path, inside)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as error:
        raise write_error(path, error, len(data), outcome) from None


def create_new_file(folder: Path, name: str, inside: Path | None = None) -> int | None:
    """A descriptor of the new file ``folder/name`` created by this call (``O_EXCL``), or None when
    a file of that name exists; a link under the name is refused."""
    with _folder(folder, inside) as dir_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, flags, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            if Path(folder, name).is_symlink():
                raise symlink_refused(Path(folder, name)) from None
            return None


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


@contextlib.contextmanager
def hold_lock(folder: Path, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock (an exclusive ``flock`` on ``folder/.lock``) for the block.

    A second process gets :class:`NmrlError` ("<what> X is in use by pid N") at once instead of
    waiting. The kernel releases the lock when the holder exits, however it exits (SIGKILL too),
    so a stale ``.lock`` file never blocks anyone.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_FILE
    try:
        # O_NOFOLLOW: a link planted as .lock would have its target truncated to our pid
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise symlink_refused(lock_path) from None
        raise NmrlError(f"cannot lock {what} {folder}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NmrlError(f"{lock_path} is not a regular file; remove it and run again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LockHeld(f"{what} {folder} is in use by pid {holder}") from None
        pid = f"{os.getpid()}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        except OSError as error:
            raise write_error(lock_path, error, len(pid), "nothing was changed") from None
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
