"""nmrl doctor: runs and exits 0 on any machine, each row says what it found or what is missing."""

from __future__ import annotations

import importlib.util
import json
import sys

import torch

from nmrl import doctor
from nmrl.cli import main


def test_collect_names_every_capability():
    checks = doctor.collect()
    names = [check.name for check in checks]
    assert names == [
        "Python / PyTorch",
        "CPU mask kernel (numba)",
        "CUDA",
        "2:4 semi-structured (torch)",
        "TensorRT",
        "TensorRT-RTX",
        "ONNX Runtime",
        "Polygraphy",
    ]
    by_name = {check.name: check for check in checks}
    # numba is a dependency: the kernel compiles here and agrees with the tensor code
    assert by_name["CPU mask kernel (numba)"].ok, by_name["CPU mask kernel (numba)"].detail
    assert by_name["CUDA"].ok == torch.cuda.is_available()
    if not torch.cuda.is_available():
        # Without CUDA the 2:4 probe must say so rather than claim support.
        assert not by_name["2:4 semi-structured (torch)"].ok
        assert "CUDA" in by_name["2:4 semi-structured (torch)"].detail
    assert by_name["TensorRT"].ok == (importlib.util.find_spec("tensorrt") is not None)


def test_onnxruntime_row_lists_the_real_providers():
    import onnxruntime

    row = doctor.check_onnxruntime()
    assert row.ok
    for provider in onnxruntime.get_available_providers():
        assert provider in row.detail


def test_tensorrt_rtx_row_reports_the_installed_version():
    row = doctor.check_tensorrt_rtx()
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        assert not row.ok and row.detail == "not installed"
    else:
        import tensorrt_rtx_bindings

        assert row.ok and tensorrt_rtx_bindings.__version__ in row.detail


def test_missing_module_is_reported_not_raised():
    assert doctor._module_version("nmrl_no_such_module_xyz") == (False, "not installed")


def test_cli_prints_table_and_exits_zero(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("CUDA", "TensorRT-RTX", "ONNX Runtime", "2:4 semi-structured"):
        assert name in out


def test_cli_json(capsys):
    assert main(["doctor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} >= {"CUDA", "TensorRT", "ONNX Runtime"}
    assert all(isinstance(row["ok"], bool) for row in rows)


def test_cpu_mask_kernel_row_without_numba(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    row = doctor.check_cpu_mask_kernel()
    assert not row.ok and "not installed" in row.detail and "tensor code" in row.detail


def test_deploy_only_install_without_pytorch(monkeypatch):
    """The Jetson image has no PyTorch: every row must still be produced, none may raise."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    checks = {check.name: check for check in doctor.collect()}
    assert not checks["Python / PyTorch"].ok and "PyTorch not installed" in checks["Python / PyTorch"].detail
    assert checks["2:4 semi-structured (torch)"].detail == "PyTorch not installed"
    assert not checks["CPU mask kernel (numba)"].ok
    cuda = checks["CUDA"]
    assert cuda.ok or "CUDA" in cuda.detail
