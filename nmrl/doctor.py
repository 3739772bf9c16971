"""``nmrl doctor``: what this machine can run — CUDA, 2:4 sparse kernels, TensorRT, ONNX Runtime.

Every check is a probe, not an assumption: the 2:4 row converts and multiplies a real matrix on
the GPU; the TensorRT runner's row creates a real CUDA stream through Polygraphy's CUDA wrapper,
which is what running an engine loads (a module that imports is not a runner that runs). Nothing
here fails on a machine that has none of it: each row then says what is missing, and the command still exits 0.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json as json_module
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    ok: bool
    detail: str


def _module_version(module_name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or OSError from a missing shared library
        missing = isinstance(error, ImportError)
        return False, "not installed" if missing else f"installed but fails to load: {error}"
    return True, str(getattr(module, "__version__", "unknown version"))


def _torch():
    """PyTorch, or None in a deploy-only install (the Jetson image has none)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def check_cuda() -> Check:
    torch = _torch()
    if torch is None:  # ask libcudart directly
        from nmrl.deploy.tensorrt import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        return Check("CUDA", reason is None, reason or "a CUDA device is visible (PyTorch not installed)")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return Check("CUDA", False, f"no CUDA device visible to PyTorch {torch.__version__} ({build})")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    return Check(
        "CUDA",
        True,
        f"{name}, compute capability {major}.{minor}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)",
    )


def check_semi_structured() -> Check:
    if _torch() is None:
        return Check("2:4 semi-structured (torch)", False, "PyTorch not installed")
    from nmrl.sparsity.semi_structured import probe_semi_structured

    support = probe_semi_structured()
    if not support.available:
        return Check("2:4 semi-structured (torch)", False, support.reason)
    backend = support.backend or "?"
    if support.cusparselt_version is not None:
        backend = f"cuSPARSELt {support.cusparselt_version}"
    elif backend == "cutlass":
        backend = "CUTLASS (forced; SM 8.x)"
    return Check("2:4 semi-structured (torch)", True, f"{backend}: real matmul works for {', '.join(support.dtypes)}")


def check_cpu_mask_kernel() -> Check:
    """The compiled mask kernels that keep N:4 and 1:M training fast on a CPU: compiled, run on a
    small weight and compared with the tensor code."""
    name = "CPU mask kernel (numba)"
    torch = _torch()
    if torch is None:
        return Check(name, False, "PyTorch not installed (deploy-only install)")
    ok, version = _module_version("numba")
    if not ok:
        return Check(name, False, f"numba {version}: N:M masks fall back to the slower tensor code")
    from nmrl.sparsity.cpu_kernel import cpu_mask
    from nmrl.sparsity.mask import tensor_nm_mask
    from nmrl.sparsity.pattern import NMPattern

    weight = torch.randn(8, 14, generator=torch.Generator().manual_seed(0))
    for pattern in (NMPattern(2, 4), NMPattern(1, 8)):
        kernel_mask = cpu_mask(weight, pattern.n, pattern.m)
        if kernel_mask is None or not torch.equal(kernel_mask, tensor_nm_mask(weight, pattern)):
            return Check(name, False, f"numba {version}: the kernel's {pattern} mask differs from the tensor code's")
    return Check(name, True, f"numba {version}: N:4 and 1:M masks compiled for CPU training")


def check_tensorrt(runner_cuda: Check | None = None) -> Check:
    """TensorRT imports, and (``runner_cuda``, the Polygraphy row) its runner can create a CUDA stream."""
    ok, version = _module_version("tensorrt")
    if not ok:
        return Check("TensorRT", False, version)
    runner_cuda = runner_cuda or check_polygraphy()
    if not runner_cuda.ok:
        return Check("TensorRT", False, f"TensorRT {version} imports, but engines cannot run: {runner_cuda.detail}")
    return Check("TensorRT", True, f"TensorRT {version} (engines build and run on this machine's GPU)")


def check_tensorrt_rtx() -> Check:
    ok, version = _module_version("tensorrt_rtx_bindings")
    detail = (
        f"TensorRT-RTX {version} (builds engines without a GPU; they run on SM 8.0/8.6/8.9/12.x)" if ok else version
    )
    return Check("TensorRT-RTX", ok, detail)


def check_onnxruntime() -> Check:
    try:
        import onnxruntime
    except ImportError:
        return Check("ONNX Runtime", False, "not installed")
    providers = onnxruntime.get_available_providers()
    return Check("ONNX Runtime", True, f"{onnxruntime.__version__}; providers: {', '.join(providers)}")


def check_polygraphy() -> Check:
    """Create, synchronize and free a CUDA stream through Polygraphy's CUDA wrapper, as the
    TensorRT runner does. The wrapper finds libcudart by its own search (not PyTorch's): CUDA 13
    pip wheels keep it under ``site-packages/nvidia/cu13/lib``, where it looks only through
    ``LD_LIBRARY_PATH``."""
    ok, version = _module_version("polygraphy")
    if not ok:
        return Check("Polygraphy", False, version)
    try:
        # Polygraphy prints its own error line before raising; the row says it once.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from polygraphy import cuda

            stream = cuda.Stream()
            stream.synchronize()
            stream.free()
    except Exception as error:  # Polygraphy raises its own exception type when libcudart is absent
        message = (str(error).strip().splitlines() or [error.__class__.__name__])[0].split(". To figure")[0]
        hint = ""
        if "cuda error" not in message.lower():  # libcudart itself was not found
            hint = "; with CUDA 13 pip wheels put site-packages/nvidia/cu13/lib on LD_LIBRARY_PATH"
        return Check("Polygraphy", False, f"{version}, but no CUDA stream for the TensorRT runner ({message}){hint}")
    return Check("Polygraphy", True, f"{version}: created a CUDA stream (the TensorRT runner's buffers and stream)")


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """One check, whatever it raises: a probe that crashes (a numba that cannot compile, a CUDA
    driver that fails mid-probe) is a row saying so, and the other rows still run."""
    try:
        return check()
    except Exception as error:  # fail-soft: the doctor's job is to report, never to stop
        message = (str(error).strip().splitlines() or [""])[0]
        return Check(name, False, f"the check itself failed: {error.__class__.__name__}: {message}")


def collect() -> list[Check]:
    """Every check, in the order the table shows them; a check that raises becomes a failed row."""
    torch = _torch()
    python = Check(
        "Python / PyTorch",
        torch is not None,
        f"Python {platform.python_version()}, "
        + (f"torch {torch.__version__}" if torch else "PyTorch not installed (deploy-only install)"),
    )
    runner_cuda = _guarded("Polygraphy", check_polygraphy)
    return [
        python,
        _guarded("CPU mask kernel (numba)", check_cpu_mask_kernel),
        _guarded("CUDA", check_cuda),
        _guarded("2:4 semi-structured (torch)", check_semi_structured),
        _guarded("TensorRT", lambda: check_tensorrt(runner_cuda)),
        _guarded("TensorRT-RTX", check_tensorrt_rtx),
        _guarded("ONNX Runtime", check_onnxruntime),
        runner_cuda,
    ]


def doctor(json: bool = False) -> int:
    """Print what this machine can run: the CPU mask kernel, CUDA device and compute capability, whether PyTorch's 2:4
    semi-structured matmul works here (fp16/bf16, cuSPARSELt or CUTLASS), TensorRT and TensorRT-RTX
    versions, ONNX Runtime providers. Always exits 0.

    Args:
        json: print the checks as JSON instead of a table.
    """
    checks = collect()
    if json:
        print(json_module.dumps([asdict(check) for check in checks], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="nmrl doctor")
    table.add_column("check")
    table.add_column("", justify="center")
    table.add_column("detail", overflow="fold")
    for check in checks:
        table.add_row(check.name, "[green]yes[/]" if check.ok else "[red]no[/]", check.detail)
    Console().print(table)
    return 0
