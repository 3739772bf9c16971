"""What nmrl promises about a ``nmrl compare`` grid (docs/reliability.md), round two: a report
rebuilt from a grid's own settings and never over them, a report of an unfinished grid that says
so, and a Ray cluster address that is checked before anything is written. Each test failed on the
code before the fix that made it pass.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from nmrl.cli import main

pytestmark = pytest.mark.xdist_group("train")

GRID = [
    "--env", "InvertedPendulum-v5", "--methods", "dense,2:4", "--seeds", "1", "--workers", "1",
    "--total-steps", "300", "--learning-starts", "150", "--batch-size", "32", "--hidden", "16", "16",
    "--eval-every", "300", "--eval-episodes", "1",
]  # fmt: skip
ENV = "InvertedPendulum-v5"


def nmrl(capsys, *args: str) -> tuple[int, str, str]:
    """``nmrl ARGS`` in-process: exit code, stdout and stderr (which must hold no traceback)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def one_line_error(capsys, *args: str) -> str:
    code, _, err = nmrl(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    """A real two-cell grid (dense and 2:4, one seed, 300 steps on InvertedPendulum-v5), trained once."""
    out = tmp_path_factory.mktemp("grid") / "cmp"
    assert main(["compare", *GRID, "--out", str(out)]) == 0
    return out


@pytest.fixture
def grid(finished_grid, tmp_path) -> Path:
    copy = tmp_path / "cmp"
    shutil.copytree(finished_grid, copy)
    return copy


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- --report-only ---------------------------------------------------------------------------------
def test_report_only_reports_a_grid_with_its_own_settings_and_never_rewrites_them(grid, capsys):
    grid_file = (grid / "grid.json").read_bytes()
    runs = files_of(grid / ENV / "runs")
    code, out, _ = nmrl(capsys, "compare", "--report-only", "--out", str(grid))  # no training flag repeated
    assert code == 0
    assert (grid / "grid.json").read_bytes() == grid_file
    assert files_of(grid / ENV / "runs") == runs
    results = (grid / ENV / "results.md").read_text()
    assert "300 steps" in results and "1,000,000" not in results
    rows = [line.split("|")[1].strip() for line in results.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["dense", "2:4"]  # the grid's methods, not compare's defaults
    assert "| dense |" in out and "ds-0.5" not in results + (grid / "summary.md").read_text()
    # flags that only say how to run it are not settings of the report
    assert nmrl(capsys, "compare", "--report-only", "--out", str(grid), "--threads", "2")[0] == 0


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--total-steps", "5000"], "--total-steps 5000 (the grid's: 300)"),
        (["--hidden", "64", "64"], "--hidden"),
        (["--methods", "dense"], "--methods dense (the grid's: dense,2:4)"),
        (["--seeds", "2"], "--seeds 2"),
        (["--env", "HalfCheetah-v5"], "--env HalfCheetah-v5"),
    ],
)
def test_report_only_refuses_flags_that_differ_from_the_grid_and_changes_nothing(grid, capsys, flags, named):
    before = files_of(grid)
    err = one_line_error(capsys, "compare", "--report-only", "--out", str(grid), *flags)
    assert named in err and "other settings" in err
    assert files_of(grid) == before


def test_report_only_of_a_folder_that_is_not_a_grid_is_one_line(grid, capsys):
    (grid / "grid.json").write_text('{"envs": ["../../etc"], "methods": ["dense"], "seeds": [1], "base_config": {}}')
    before = files_of(grid)
    assert "not a grid file" in one_line_error(capsys, "compare", "--report-only", "--out", str(grid))
    (grid / "grid.json").unlink()
    assert "grid.json is missing" in one_line_error(capsys, "compare", "--report-only", "--out", str(grid))
    del before["grid.json"]
    assert files_of(grid) == before


def test_a_report_of_an_unfinished_grid_says_how_many_cells_finished_never_nan(grid, capsys):
    shutil.rmtree(grid / ENV / "runs" / "2of4__s1")  # a cell that never started
    code, out, _ = nmrl(capsys, "compare", "--report-only", "--out", str(grid))
    assert code == 0
    for text in (out, (grid / ENV / "results.md").read_text(), (grid / "summary.md").read_text()):
        assert "nan" not in text.lower(), text
        assert "1 of 2 cells finished" in text, text
    assert "| 2:4 | - | - | 0 of 1 | - |" in (grid / ENV / "results.md").read_text()


# ---- a Ray cluster address -------------------------------------------------------------------------
class SilentServer:
    """A TCP port on loopback that accepts connections and never answers (not a Ray head)."""

    def __init__(self, reply: bytes = b"") -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.reply, self.port = reply, self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.reply:
                connection.sendall(self.reply)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.socket.close()


@pytest.fixture
def deadline():
    """Fail a test that hangs (Ray retried an unreachable head for minutes) instead of waiting."""

    def hung(*_):
        raise TimeoutError("nmrl compare --engine ray still waiting after 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1:1", "Connection refused"),
        ("127.0.0.1:99999", "invalid --address"),
        ("h" * 300 + ":6379", "not a valid host name"),
        ("garbage", "invalid --address"),
        ("a:b:c", "invalid --address"),
        ("silent", "no answer"),
        ("http", "not as a Ray head"),
    ],
)
def test_an_unreachable_ray_address_is_one_line_in_bounded_time_and_writes_nothing(
    tmp_path, capsys, monkeypatch, deadline, address, reason
):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'nmrl[ray]')")
    from nmrl.train import engines

    monkeypatch.setattr(engines, "CONNECT_TIMEOUT_S", 1.0)
    server = None
    if address in ("silent", "http"):
        server = SilentServer(b"HTTP/1.1 400 Bad Request\r\n\r\n" if address == "http" else b"")
        address = f"127.0.0.1:{server.port}"
    out, runs = tmp_path / "cmp", tmp_path / "runs"
    started = time.monotonic()
    try:
        err = one_line_error(
            capsys,
            "compare",
            *GRID,
            "--engine",
            "ray",
            "--address",
            address,
            "--out",
            str(out),
            "--runs-dir",
            str(runs),
        )
    finally:
        if server is not None:
            server.close()
    assert reason in err and time.monotonic() - started < 15
    assert list(tmp_path.iterdir()) == []  # no grid.json, no <env>/runs
