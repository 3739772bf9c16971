"""``nmrl compare``: method parsing, and a tiny real grid in worker processes, resumed."""

from __future__ import annotations

import csv
import shutil

import pytest

from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.train.compare import parse_method, parse_methods

pytestmark = pytest.mark.xdist_group("train")


def test_methods_map_to_the_papers_baselines():
    assert parse_method("dense").settings["sparsity"] == "dense"
    assert parse_method("2:4").settings == {"sparsity": "2:4", "topology": "auto"}
    assert parse_method("2:4").slug == "2of4"
    assert parse_method("ss-0.9").settings == {"sparsity": "0.9", "topology": "static"}
    assert parse_method("ds-0.5").settings == {"sparsity": "0.5", "topology": "set"}
    assert parse_method("rigl-0.8").settings["topology"] == "rigl"
    assert parse_method("tows-0.9").settings == {
        "sparsity": "0.9",
        "topology": "set",
        "optimizer": "masked-adam",
        "activation": "leaky_relu",
    }
    for bad in ("ds", "ds-2:4", "foo-0.5", "ds-1.5", "3:2"):
        with pytest.raises(NmrlError):
            parse_method(bad)
    with pytest.raises(NmrlError, match="twice"):
        parse_methods("dense,2:4,dense")


def test_a_tiny_grid_runs_in_workers_writes_table_and_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--env",
        "InvertedPendulum-v5",
        "--methods",
        "dense,ds-0.5",
        "--seeds",
        "2",
        "--workers",
        "2",
        "--total-steps",
        "300",
        "--learning-starts",
        "150",
        "--batch-size",
        "32",
        "--hidden",
        "16",
        "16",
        "--eval-every",
        "150",
        "--eval-episodes",
        "1",
        "--topology-interval",
        "50",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "0 of 4 cells already finished" in first.err
    assert "[4/4] InvertedPendulum-v5" in first.err  # the grid's progress, one line per finished cell
    env_out = out / "InvertedPendulum-v5"
    with open(env_out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["method"] for row in rows] == ["dense", "ds-0.5"]
    assert all(row["seeds"] == "2" for row in rows)
    assert float(rows[0]["sparsity"]) == 0.0 and float(rows[0]["training_flops_vs_dense"]) == 1.0
    assert 0.3 < float(rows[1]["sparsity"]) < 0.5 and float(rows[1]["training_flops_vs_dense"]) < 0.7
    assert "| ds-0.5 |" in (env_out / "results.md").read_text()
    assert (env_out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(env_out / "curves.csv") as file:
        curve_rows = list(csv.DictReader(file))
    assert len(curve_rows) == 2 * 2 * 2  # methods x seeds x evaluations (steps 150, 300)
    assert (env_out / "runs" / "ds-0.5__s2" / "costs.json").exists()
    # The summary normalises by dense: dense is 100% by definition.
    with open(out / "summary.csv") as file:
        summary = {row["method"]: row for row in csv.DictReader(file)}
    assert float(summary["dense"]["InvertedPendulum-v5"]) == pytest.approx(1.0)
    assert summary["ds-0.5"]["runs"] == "2"

    # Again: nothing is re-run. Then lose one cell: only that one trains.
    finished = env_out / "runs" / "dense__s1" / "metrics.jsonl"
    stamp = finished.stat().st_mtime_ns
    assert main(args) == 0
    assert "4 of 4 cells already finished" in capsys.readouterr().err
    assert finished.stat().st_mtime_ns == stamp
    shutil.rmtree(env_out / "runs" / "ds-0.5__s1")
    assert main(args) == 0
    assert "3 of 4 cells already finished; training 1" in capsys.readouterr().err
    assert finished.stat().st_mtime_ns == stamp
    # The same folder with other settings is refused, not mixed in.
    assert main([*args, "--batch-size", "16"]) == 1
    assert "other settings (batch_size)" in capsys.readouterr().err


def test_compare_refuses_a_bad_method_before_training(tmp_path, capsys):
    assert main(["compare", "--methods", "dense,sparse-ish", "--out", str(tmp_path / "x")]) == 1
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_refuses_an_unknown_env_and_a_missing_report_folder(tmp_path, capsys):
    assert main(["compare", "--envs", "InvertedPendulum-v5,NoSuchEnv-v0", "--out", str(tmp_path / "x")]) == 1
    assert "NoSuchEnv-v0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["compare", "--report-only", "--out", str(tmp_path / "missing")]) == 1
    assert "no grid folder" in capsys.readouterr().err


def test_a_grid_of_the_single_env_layout_is_refused_with_the_move_to_make(tmp_path, capsys):
    old_cell = tmp_path / "grid" / "runs" / "dense__s1"
    old_cell.mkdir(parents=True)
    assert main(["compare", "--env", "InvertedPendulum-v5", "--out", str(tmp_path / "grid")]) == 1
    err = capsys.readouterr().err
    assert "older nmrl" in err and f"mv {tmp_path / 'grid' / 'runs'}" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["runs"]  # nothing written


def test_without_ray_the_ray_engine_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    assert main(["compare", "--engine", "ray", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "nmrl compare: error: --engine ray needs Ray, which is not installed: pip install 'nmrl[ray]'"
    assert not (tmp_path / "x").exists()
