"""Engines that train the cells of an ``nmrl compare`` grid: local worker processes or Ray tasks.

Both engines run the same unit of work, :func:`run_cell`: train one cell's run directory, or
resume it from ``checkpoints/last.pt`` when an earlier attempt left one. So a retried cell (its
worker died) continues from its last checkpoint, and both engines give the same results for the
same cells (CPU training is deterministic per seed).

Every attempt appends a line to ``<cell>.attempts.jsonl`` beside the cell's log: the process, the
host and the step it started from. That file is how a user (and the tests) see that a cell was
retried and resumed rather than restarted.

- ``local`` (default): one spawned process per cell, ``--workers`` at a time. A worker dies with
  its parent (Linux ``PR_SET_PDEATHSIG``, elsewhere a parent-pid watchdog) after checkpointing, and
  SIGINT/SIGTERM of ``nmrl compare`` are forwarded once to every worker, which checkpoints and
  stops; so no trainer outlives the command. A worker killed by a signal is retried.
- ``ray``: each cell is a Ray core task with its own CPU (and GPU fraction) request and
  ``max_retries`` for workers or nodes that die. Run directories must be on storage every node
  reaches (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_processes
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, cast

from nmrl.errors import NmrlError, gist
from nmrl.files import LOCK_FILE, hold_lock
from nmrl.train.config import TrainConfig

POLL_SECONDS = 1.0


# ---- one cell ---------------------------------------------------------------------------------
def attempts_path(log_path: Path) -> Path:
    return Path(log_path).with_suffix(".attempts.jsonl")


def read_attempts(log_path: Path) -> list[dict[str, Any]]:
    """The attempts record of a cell (one dict per start or error), oldest first."""
    path = attempts_path(log_path)
    if not path.exists():
        return []
    from nmrl.train.run import read_metrics  # the torn-line-tolerant JSON-lines reader

    return read_metrics(path)


def _record_attempt(log_path: Path, record: dict[str, Any]) -> None:
    with attempts_path(log_path).open("a") as file:
        file.write(json.dumps({"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **record}) + "\n")


def run_cell(config_data: dict[str, Any], log_path: str, grid_file: str) -> float:
    """Train (or resume) one cell, its output going to ``log_path``; returns the seconds it took.

    ``grid_file`` is the grid's ``grid.json``: a worker that cannot see it is on a node that does
    not share the grid's storage, and training there would write results nobody reads."""
    from nmrl.envs import confirm_env_id
    from nmrl.train.checkpoint import load_checkpoint
    from nmrl.train.loop import LAST_CHECKPOINT, resume, train

    if not Path(grid_file).exists():
        raise NmrlError(
            f"{grid_file} is not visible on host {socket.gethostname()}: the grid's --out must be on "
            "storage every node reaches (a shared file system)"
        )
    config = TrainConfig.from_dict(config_data)
    confirm_env_id(config.env)  # the grid's env came from the user's command line, not from a file
    run_dir = Path(config.runs_dir) / config.run_name
    checkpoint = run_dir / LAST_CHECKPOINT
    start_step = int(load_checkpoint(checkpoint)["train_state"]["step"]) if checkpoint.exists() else 0
    _record_attempt(Path(log_path), {"event": "start", "start_step": start_step})
    start = time.perf_counter()
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            if checkpoint.exists():
                resume(run_dir, total_steps=config.total_steps)
            else:
                # A cell killed before its first checkpoint left only logs: start it afresh, under
                # the run's lock so that a cell another process is training is never wiped.
                clear_unfinished_cell(run_dir)
                train(config)
        except Exception as error:
            _record_attempt(Path(log_path), {"event": "error", "error": f"{type(error).__name__}: {error}"})
            raise
    return time.perf_counter() - start


def clear_unfinished_cell(run_dir: Path) -> None:
    """Empty ``run_dir`` (a cell without a checkpoint) while holding its lock; the lock file stays,
    and an empty folder holding only it counts as a new run's folder."""
    if not run_dir.exists():
        return
    with hold_lock(run_dir, "run"):
        for child in run_dir.iterdir():
            if child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# ---- local worker processes --------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker stop (SIGTERM: checkpoint, then exit) when the process that started it dies,
    however it died (SIGKILL included)."""
    installed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            installed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(128 + signal.SIGTERM)
    if installed:
        return

    def watchdog() -> None:  # where the kernel cannot do it: poll the parent pid
        while os.getppid() == parent_pid:
            time.sleep(POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watchdog, daemon=True, name="nmrl-parent-watchdog").start()


def _local_worker(config_data: dict[str, Any], log_path: str, grid_file: str, parent_pid: int) -> None:
    # Before PyTorch loads: its OpenMP pool sized to the cell's threads. torch.set_num_threads
    # alone left a slower worker (15-30% fewer steps per second, measured on two shared cores).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(config_data["threads"]))
    # Its own process group: a Ctrl-C in the terminal reaches only `nmrl compare`, which forwards
    # exactly one SIGTERM (a second signal would make the loop stop without its final checkpoint).
    os.setpgrp()
    _die_with_parent(parent_pid)
    try:
        run_cell(config_data, log_path, grid_file)
    except Exception:
        sys.exit(1)  # the error is in the attempts record and the log


@contextlib.contextmanager
def interrupt_requests() -> Iterator[dict[str, Any]]:
    """Turn SIGINT/SIGTERM of ``nmrl compare`` into a request the engine acts on (stop its cells,
    which checkpoint) instead of dying at once and leaving them running."""
    request: dict[str, Any] = {"signal": None, "count": 0}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: Any) -> None:
        request["signal"] = signal.Signals(signum)
        request["count"] += 1

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_interrupted(request: dict[str, Any]) -> None:
    """After the cells stopped: end the command the conventional way for its signal."""
    if request["signal"] == signal.SIGTERM:
        print("nmrl compare: terminated; cells stopped at their checkpoints (run again to resume)", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM)
    raise KeyboardInterrupt


@dataclass
class CellJob:
    """What an engine needs to run a cell and to report on it."""

    label: str
    config: TrainConfig
    log_path: Path
    attempt: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.config.runs_dir) / self.config.run_name


@dataclass
class Outcome:
    """How a grid's invocation ended: the failed cells' messages."""

    failures: list[str] = field(default_factory=list)


def run_local(jobs: Sequence[CellJob], grid_file: Path, workers: int, retries: int, progress: Any) -> Outcome:
    """Train ``jobs`` in spawned worker processes, ``workers`` at a time."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch/MuJoCo state
    queue, outcome = deque(jobs), Outcome()
    running: dict[int, tuple[SpawnProcess, CellJob]] = {}  # by the process's sentinel
    forwarded = 0
    with interrupt_requests() as request:
        while running or (queue and request["signal"] is None):
            while queue and len(running) < workers and request["signal"] is None:
                job = queue.popleft()
                process = context.Process(
                    target=_local_worker,
                    args=(job.config.to_dict(), str(job.log_path), str(grid_file), os.getpid()),
                    name=f"nmrl-cell-{job.label}",
                )
                process.start()
                running[process.sentinel] = (process, job)
                progress.started(job)
            if request["count"] > forwarded:  # forward each signal once to every worker
                forwarded = request["count"]
                for process, _ in running.values():
                    assert process.pid is not None  # started before it was put in `running`
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
            for sentinel in wait_for_processes(list(running), timeout=POLL_SECONDS):
                # wait() hands back the objects it was given: here the sentinels, which are ints
                process, job = running.pop(cast(int, sentinel))
                process.join()
                exitcode = process.exitcode
                assert exitcode is not None  # join() without a timeout returns once it has ended
                stopping = request["signal"] is not None
                if exitcode < 0 and not stopping and job.attempt < retries:
                    job.attempt += 1
                    progress.message(
                        f"{job.label}: worker died ({signal.Signals(-exitcode).name}); "
                        f"retry {job.attempt} of {retries} resumes from its last checkpoint"
                    )
                    queue.appendleft(job)
                    continue
                failed = exitcode != 0 and not stopping
                if failed:
                    outcome.failures.append(f"{job.label}: {_last_error(job)}")
                progress.ended(job, failed=failed)
            progress.refresh()
    if request["signal"] is not None:
        raise_interrupted(request)
    return outcome


def _last_error(job: CellJob) -> str:
    errors = [a["error"] for a in read_attempts(job.log_path) if a.get("event") == "error"]
    return errors[-1] if errors else f"worker died; log: {job.log_path}"


# ---- Ray ---------------------------------------------------------------------------------------
def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise NmrlError("--engine ray needs Ray, which is not installed: pip install 'nmrl[ray]'") from None
    return ray


# How long nmrl waits to reach a Ray head before saying so (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (or ``ray://host:port``) as (host, port); None for ``auto``; one-line
    :class:`NmrlError` for anything else (Ray's own answer is a ValueError traceback)."""
    if address == "auto":
        return None
    text = address.removeprefix("ray://")
    host, separator, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address: [::1]:6379
    elif ":" in host:
        host = ""
    labels = host.split(".")
    if not (separator and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise NmrlError(
            f"invalid --address {address[:80]!r}: expected host:port of the Ray head (10.0.0.5:6379) or auto"
        )
    if len(host) > 253 or (":" not in host and any(not 0 < len(label) <= 63 for label in labels)):
        raise NmrlError(f"invalid --address: the host name {host[:40]!r}... is not a valid host name (too long)")
    return host, int(port)


def _not_a_ray_head(endpoint: tuple[str, int]) -> str | None:
    """Why ``endpoint`` is not a Ray head (None: it answers as one). A Ray head (GCS) and a Ray
    Client server are gRPC servers: sent HTTP/2's client preface, they answer with a SETTINGS
    frame. Ray itself, given a port that is closed or accepts connections but is not Ray, retries
    for minutes. With TLS (RAY_USE_TLS) only the TCP connection is checked."""
    try:
        with socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None
            connection.sendall(HTTP2_PREFACE)
            frame = connection.recv(9)
    except TimeoutError:
        return "no answer"
    except OSError as error:
        return error.strerror or str(error)
    if len(frame) < 9 or frame[3] != 0x04:  # HTTP/2 frame header: length (3 bytes), type 4 = SETTINGS
        return "it answers, but not as a Ray head (no gRPC)"
    return None


# HTTP/2's client connection preface (RFC 9113, 3.4): the magic string and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int) -> Iterator[Any]:
    """Ray, connected to ``address`` (or RAY_ADDRESS; neither: a private instance of ``num_cpus``
    CPUs on this machine) for the block, and shut down after it if this call started it.

    An address is checked, and its head reached over TCP within :data:`CONNECT_TIMEOUT_S`, before
    Ray is asked: a malformed or unreachable address is one line, before the grid writes anything."""
    ray = import_ray()
    if ray.is_initialized():  # a caller's own Ray (a driver script, the tests)
        yield ray
        return
    target = address or os.environ.get("RAY_ADDRESS", "")
    endpoint = check_ray_address(target) if target else None
    if endpoint is not None:
        reason = _not_a_ray_head(endpoint)
        if reason:
            raise NmrlError(
                f"cannot reach the Ray cluster at {target[:80]}: {reason} (waited at most {CONNECT_TIMEOUT_S:.0f} s)"
            )
    # With no address, a private instance on this machine, sized so that --workers still bounds
    # how many cells train at once, as on the local engine.
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        options["address"] = address
    elif not target:
        options["num_cpus"] = num_cpus
    try:
        ray.init(**options)
    except (ConnectionError, ValueError) as error:
        raise NmrlError(
            f"cannot reach the Ray cluster at {target}: {gist(error, 1)} (a cluster started with token "
            "authentication needs RAY_AUTH_MODE=token here too: docs/scale-out.md)"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def run_ray(
    jobs: Sequence[CellJob],
    grid_file: Path,
    workers: int,
    retries: int,
    cell_gpus: float,
    progress: Any,
) -> Outcome:
    """Train ``jobs`` as Ray core tasks on the Ray that :func:`ray_session` connected (see
    docs/scale-out.md for why core rather than Tune)."""
    ray = import_ray()
    task = ray.remote(run_cell)
    refs: dict[Any, CellJob] = {}
    for job in jobs:
        uses_gpu = job.config.device == "cuda"
        options = {
            "num_cpus": job.config.threads,
            "num_gpus": cell_gpus if uses_gpu else 0,
            "max_retries": retries,  # a worker or node that died: run again, resuming the checkpoint
            "retry_exceptions": False,  # an error in the cell (bad env, NaN) would only repeat
            "name": f"nmrl-cell-{job.label}",
        }
        refs[task.options(**options).remote(job.config.to_dict(), str(job.log_path), str(grid_file))] = job
        progress.queued(job)
    outcome, pending, cancelled = Outcome(), list(refs), False
    with interrupt_requests() as request:
        while pending:
            if request["signal"] is not None and not cancelled:
                for ref in pending:  # a KeyboardInterrupt in the task: the loop checkpoints and stops
                    ray.cancel(ref)
                cancelled = True
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                job = refs[ref]
                try:
                    ray.get(ref)
                    progress.ended(job, failed=False)
                except Exception as error:
                    if not cancelled:
                        outcome.failures.append(f"{job.label}: {_ray_error_text(error)}")
                    progress.ended(job, failed=not cancelled)
            progress.refresh()
    if request["signal"] is not None:
        raise_interrupted(request)
    return outcome


def _ray_error_text(error: Exception) -> str:
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(error).strip().splitlines()[0]
