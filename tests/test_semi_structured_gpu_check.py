"""benchmarks/gpu_check.py: its CSV/table output, and its refusal to time anything without a GPU."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from nmrl.sparsity import semi_structured as ss

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_csv_and_table(gpu_check, tmp_path, capsys):
    rows = [
        gpu_check.Row("matmul", "4096x4096", 4096, 4096, "float16", 2.0, 1.6),
        gpu_check.Row("actor forward", "256-256", 1, 256, "float16", 0.05, 0.07),
    ]
    out = tmp_path / "results" / "gpu.csv"
    gpu_check.write_csv(rows, out, "Test GPU (sm 8.0)")
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert [r["speedup"] for r in written] == ["1.250", "0.714"]
    assert written[0]["device"] == "Test GPU (sm 8.0)" and written[0]["torch"] == torch.__version__
    gpu_check.print_table(rows)
    table = capsys.readouterr().out
    assert "1.25x" in table and "0.71x" in table


@pytest.mark.skipif(ss.probe_semi_structured().available, reason="this machine has working 2:4 kernels")
def test_without_a_capable_gpu_it_says_why_and_times_nothing(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu.csv"
    assert gpu_check.main(["--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "nothing to check or time" in printed and "CUDA" in printed
    assert not out.exists()
