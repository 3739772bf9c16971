"""benchmarks/gpu_check.py: results on disk row by row, fail-soft sections, reproducible checks
that can fail, engine profiles per batch, and one line (no files) without a GPU."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmrl.sparsity import semi_structured as ss

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAND_IN = ss.SemiStructuredSupport(True, "stand-in", backend="cusparselt", dtypes=("float16", "bfloat16"))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dense_compressor(monkeypatch):
    """CPU stand-in for to_sparse_semi_structured: keeps the weight dense (the CPU can multiply it)."""
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach().clone())


def _row(gpu_check, section, speedup=1.0):
    from nmrl.sparsity.semi_structured.measure import Timing

    dense, sparse = Timing(2.0, 0.02, 20, "cuda graph"), Timing(2.0 / speedup, 0.02, 20, "cuda graph")
    return gpu_check.Row(
        section, "case", "1024x1024", 256, "float16", dense, sparse, 1.9, 1.9 / speedup, 1e-3, "output"
    )


def test_rows_reach_disk_as_measured_and_a_failing_section_loses_nothing(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "out", {"device": "Stand-in GPU", "torch": torch.__version__})
    seen_on_disk = []

    def first(r):
        r.add_row(_row(gpu_check, "first", 1.25))

    def crashing(r):
        r.add_row(_row(gpu_check, "second", 0.5))
        with (tmp_path / "out" / "gpu_check.csv").open() as handle:  # already written, mid-section
            seen_on_disk.extend(row["section"] for row in csv.DictReader(handle))
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    def last(r):
        r.add_verdict(gpu_check.Verdict("last check", True, "fine"))

    gpu_check.run_sections(report, [("a", first), ("b", crashing), ("c", last)])
    assert seen_on_disk == ["first", "second"]
    with (tmp_path / "out" / "gpu_check.csv").open() as handle:
        assert [row["eager ratio"] for row in csv.DictReader(handle)] == ["1.250", "0.500"]
    document = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert document["header"]["device"] == "Stand-in GPU"
    assert document["failed_sections"] == [
        {"section": "b", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    ]
    assert document["checks"] == [{"name": "last check", "ok": True, "detail": "fine"}]  # c still ran
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "Stand-in GPU" in markdown and "| 1.250 |" in markdown and "section b failed" in markdown
    assert not report.ok


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_correctness_checks_are_reproducible_and_pass_on_a_faithful_stand_in(gpu_check, dense_compressor, dtype_name):
    first = gpu_check.check_training_step(dtype_name, device="cpu", width=64, batch=32, support=STAND_IN)
    second = gpu_check.check_training_step(dtype_name, device="cpu", width=64, batch=32, support=STAND_IN)
    assert first.ok, first.detail
    assert first.detail == second.detail  # fixed seeds: the same numbers every run
    matmul = gpu_check.check_matmul(dtype_name, device="cpu", width=64, batch=32)
    assert matmul.ok and matmul.detail == gpu_check.check_matmul(dtype_name, device="cpu", width=64, batch=32).detail


def test_training_step_check_catches_a_stale_compressed_weight(gpu_check, dense_compressor, monkeypatch):
    monkeypatch.setattr(ss.SemiStructuredKernel, "drop_compressed", lambda self: None)  # the defect
    verdict = gpu_check.check_training_step("bfloat16", device="cpu", width=64, batch=32, support=STAND_IN)
    assert not verdict.ok and "stale compressed weight" in verdict.detail


def test_training_step_check_catches_a_wrong_matmul(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.detach() * 1.1)
    verdict = gpu_check.check_training_step("float16", device="cpu", width=64, batch=32, support=STAND_IN)
    assert not verdict.ok


def test_each_engine_pair_is_tuned_for_the_batch_it_is_timed_at(gpu_check):
    for batch in (1, 4096):
        profile = gpu_check.engine_profile(batch)
        assert profile.opt == batch and profile.min <= batch <= profile.max


def test_tensorrt_section_exports_with_nmrls_own_export(gpu_check, tmp_path):
    import onnx

    path = gpu_check.export_actor(64, tmp_path / "actor.onnx", "fp32")
    keys = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert keys["nmrl.sparsity"] == "2:4"  # verified 2:4 along K by the export itself


@pytest.mark.skipif(ss.probe_semi_structured().available, reason="this machine has working 2:4 kernels")
def test_without_a_capable_gpu_one_line_and_no_files(tmp_path):
    """Run exactly as documented: from a checkout with nmrl importable through PYTHONPATH only."""
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "nothing checked or timed" in lines[0] and "CUDA" in lines[0]
    assert not out.exists()


def test_timing_sections_run_end_to_end_on_stand_ins(gpu_check, dense_compressor, monkeypatch, tmp_path):
    """Sections (a) and (b) on the CPU with a stand-in timer, profiler and compressor: the code a GPU
    run will execute, minus the kernels, so a slip in it cannot waste the GPU's few minutes."""
    from nmrl.sparsity.semi_structured.measure import KernelTime

    monkeypatch.setattr(ss.probe, "device_support", lambda device: STAND_IN)
    hardware = gpu_check.Hardware(
        device="cpu",
        timer=lambda fn, samples, calls: (fn(), [1.0] * samples)[1],
        graph=lambda fn: (None, "stand-in"),
        kernel_time=lambda fn, calls: KernelTime(0.5, 1, "stand-in"),
        alg_search=None,
    )
    report = gpu_check.Report(tmp_path / "out", {"device": "stand-in"})
    gpu_check.section_matmul(report, [32], [8, 16], ("bfloat16",), repeats=1, hardware=hardware)
    gpu_check.section_td3(report, [32], repeats=1, hardware=hardware)
    sections = [row.section for row in report.rows]
    assert sections == ["matmul", "matmul", "td3"]
    assert report.verdicts and all(v.ok for v in report.verdicts), report.verdicts
    assert "layers on 2:4 kernels" in report.rows[-1].note and not report.rows[-1].note.startswith("0 ")
