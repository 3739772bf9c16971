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
    installed = importlib.util.find_spec("tensorrt") is not None
    assert by_name["TensorRT"].ok == (installed and by_name["Polygraphy"].ok)


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


class _Stream:
    """Stand-in for Polygraphy's ``cuda.Stream``; ``broken`` fails as it does without libcudart."""

    broken = False
    made = 0

    def __init__(self) -> None:
        if self.broken:
            raise RuntimeError("Could not find the CUDA runtime library.")
        type(self).made += 1

    def synchronize(self) -> None:
        pass

    def free(self) -> None:
        pass


def _fake_tensorrt(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))


def test_runner_rows_are_red_when_no_cuda_stream_can_be_made(monkeypatch):
    """The image's TensorRT imported fine while its runner could not load libcudart: the doctor
    must create a stream through what the runner loads (Polygraphy's CUDA wrapper)."""
    from polygraphy import cuda

    monkeypatch.setattr(_Stream, "broken", True)
    monkeypatch.setattr(cuda, "Stream", _Stream)
    _fake_tensorrt(monkeypatch)
    polygraphy_row = doctor.check_polygraphy()
    assert not polygraphy_row.ok
    assert "no CUDA stream" in polygraphy_row.detail and "nvidia/cu13/lib" in polygraphy_row.detail
    tensorrt_row = doctor.check_tensorrt(polygraphy_row)
    assert not tensorrt_row.ok and "engines cannot run" in tensorrt_row.detail


def test_runner_rows_are_green_when_a_stream_is_made(monkeypatch):
    from polygraphy import cuda

    monkeypatch.setattr(_Stream, "made", 0)
    monkeypatch.setattr(cuda, "Stream", _Stream)
    _fake_tensorrt(monkeypatch)
    polygraphy_row = doctor.check_polygraphy()
    assert polygraphy_row.ok and _Stream.made == 1
    assert doctor.check_tensorrt(polygraphy_row).ok
