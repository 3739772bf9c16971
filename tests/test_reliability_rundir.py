"""What nmrl promises about a run directory (docs/reliability.md), round two: links planted in it,
a full disk, a start killed before its first checkpoint, sizes the machine cannot hold, and resumes
that say what they do. Each test failed on the code before the fix that made it pass.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import tiny_config

from nmrl.cli import main
from nmrl.train.checkpoint import load_checkpoint, save_checkpoint
from nmrl.train.loop import LAST_CHECKPOINT, train

LOCK_FILE = ".lock"
TINY = ["--env", "InvertedPendulum-v5", "--total-steps", "300", "--learning-starts", "256", "--batch-size", "32"]
TINY += ["--hidden", "16", "16", "--eval-every", "300", "--eval-episodes", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real 400-step RNM-TD3 run on InvertedPendulum-v5 (16-16 networks), trained once here."""
    return train(tiny_config(tmp_path_factory.mktemp("finished"), total_steps=400, checkpoint_every=200))


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(finished_run, copy)
    return copy


def nmrl(capsys, *args: str) -> tuple[int, str]:
    """``nmrl ARGS`` in-process: its exit code and stderr (which must hold no traceback)."""
    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def one_line_error(capsys, *args: str) -> str:
    code, err = nmrl(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    return err


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in skip
    }


# ---- links planted in a run directory ------------------------------------------------------------
def _plant_events_links(run_dir: Path, victim: Path, seconds: int = 90) -> None:
    """Links under every name TensorBoard's writer (and nmrl's) could give this process's next
    event file: events.out.tfevents.<time>.<host>.<pid>.<serial>."""
    now, host, pid = int(time.time()), socket.gethostname(), os.getpid()
    for stamp in range(now, now + seconds):
        for serial in range(60):
            link = run_dir / f"events.out.tfevents.{stamp:010d}.{host}.{pid}.{serial}"
            # The copied run's own event file may hold one of these names (written by this process
            # moments ago): a real file there cannot redirect a write, so it stays.
            if not link.exists():
                link.symlink_to(victim)


@pytest.mark.parametrize("planted", [".lock", "metrics.jsonl", "checkpoints", "events"])
def test_a_link_planted_in_a_run_directory_never_redirects_a_write(run_copy, tmp_path, capsys, planted):
    victim = tmp_path / "victim"
    if planted == "checkpoints":  # a folder elsewhere, holding the run's checkpoints
        shutil.move(run_copy / "checkpoints", victim)
        (run_copy / "checkpoints").symlink_to(victim)
    elif planted == "events":
        victim.write_bytes(b"DATA\n")
        _plant_events_links(run_copy, victim)
    else:
        victim.write_bytes((run_copy / planted).read_bytes() if planted == "metrics.jsonl" else b"DATA\n")
        (run_copy / planted).unlink()
        (run_copy / planted).symlink_to(victim)
    before = snapshot(victim) if victim.is_dir() else victim.read_bytes()
    code, err = nmrl(capsys, "train", "--resume", str(run_copy), "--total-steps", "600")
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before
    assert code == 1 and len(err.strip().splitlines()) == 1 and "symbolic link" in err, err


# ---- a full disk ---------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.decode().strip()[:80]}): needs root")
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_start_on_a_full_disk_is_one_line_and_leaves_no_folder(small_disk, capsys):
    fill(small_disk)
    err = one_line_error(capsys, "train", *TINY, "--runs-dir", str(small_disk / "runs"), "--run-name", "z")
    assert "no space left" in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_resume_on_a_full_disk_is_one_line_and_keeps_the_run_as_it_was(finished_run, small_disk, capsys):
    run = small_disk / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run, skip=(LOCK_FILE,))
    fill(small_disk)
    err = one_line_error(capsys, "train", "--resume", str(run), "--total-steps", "800")
    assert "no space left" in err
    assert snapshot(run, skip=(LOCK_FILE,)) == before  # no 0-byte event file, checkpoints as they were
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in finished_run.iterdir())


# ---- a start killed before its first checkpoint ----------------------------------------------------
def test_a_run_killed_before_its_first_checkpoint_is_started_again_by_train(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")  # what such a run leaves: config, metrics, costs, events, lock
    (run_copy / "checkpoints").mkdir()
    (run_copy / "checkpoints" / ".last.pt.a1b2c3.tmp").write_bytes(b"torn")
    err = one_line_error(capsys, "train", "--resume", str(run_copy))
    assert "start it again with the nmrl train command" in err
    runs, name = run_copy.parent, run_copy.name
    code, err = nmrl(capsys, "train", *TINY, "--runs-dir", str(runs), "--run-name", name)
    assert code == 0 and "starting it again" in err, err
    assert load_checkpoint(run_copy / LAST_CHECKPOINT)["train_state"]["step"] == 300


# ---- sizes the machine or its file system cannot hold -----------------------------------------------
def test_networks_too_large_for_the_memory_are_one_line_and_leave_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    err = one_line_error(capsys, "train", *TINY[:-5], "--hidden", "100000000", "--runs-dir", str(runs))
    assert "--hidden 100000000" in err and "memory" in err
    assert not runs.exists()


@pytest.mark.parametrize("which", ["--run-name", "--runs-dir"])
def test_a_run_path_too_long_for_the_file_system_is_one_line(tmp_path, capsys, which):
    value = "r" * 300 if which == "--run-name" else str(tmp_path / ("d" * 300))
    args = ["--run-name", value] if which == "--run-name" else ["--runs-dir", value, "--run-name", "x"]
    err = one_line_error(
        capsys, "train", *TINY, *([] if which == "--runs-dir" else ["--runs-dir", str(tmp_path)]), *args
    )
    assert "300 bytes" in err and "255" in err
    assert list(tmp_path.iterdir()) == []


# ---- resumes that say what they do ------------------------------------------------------------------
def test_a_checkpoint_holding_nan_is_refused_on_resume_never_called_the_last_good_one(run_copy, capsys):
    path = run_copy / LAST_CHECKPOINT
    state = load_checkpoint(path)
    state.pop("format")
    modules = state["algorithm"]["modules"]
    first = next(iter(modules["actor"]))
    modules["actor"][first].fill_(float("nan"))
    save_checkpoint(path, state)
    before = snapshot(run_copy, skip=(LOCK_FILE,))
    err = one_line_error(capsys, "train", "--resume", str(run_copy), "--total-steps", "600")
    assert "NaN" in err and "last good" not in err
    assert snapshot(run_copy, skip=(LOCK_FILE,)) == before


def test_a_resume_names_the_flags_it_ignores_and_refuses_another_env(run_copy, capsys):
    code, err = nmrl(capsys, "train", "--resume", str(run_copy), "--actor-lr", "0.1", "--hidden", "8")
    assert code == 0
    assert "ignored: --hidden, --actor-lr" in err or "ignored: --actor-lr, --hidden" in err, err
    err = one_line_error(capsys, "train", "--resume", str(run_copy), "--env", "HalfCheetah-v5")
    assert "not this run's environment" in err


def test_a_resume_that_trains_nothing_adds_no_event_file(run_copy, capsys):
    before = sorted(p.name for p in run_copy.iterdir())
    code, _ = nmrl(capsys, "train", "--resume", str(run_copy))
    assert code == 0
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_tensorboard_reads_the_run_s_events_and_drops_what_a_resume_purges(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nmrl.train.events import EventsWriter

    writer = EventsWriter(tmp_path)
    for step in range(0, 500, 100):  # a run killed at step 400 whose last checkpoint was at 200
        writer.add_scalar("eval/return_mean", float(step), step)
    writer.close()
    resumed = EventsWriter(tmp_path, purge_step=200)
    resumed.add_scalar("eval/return_mean", 3000.0, 300)
    resumed.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("eval/return_mean")] == [
        (0, 0.0),
        (100, 100.0),
        (300, 3000.0),
    ]
