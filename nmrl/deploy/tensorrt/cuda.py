"""Can this machine run an engine? The backend probes for ``tensorrt`` and ``tensorrt-rtx``."""

from __future__ import annotations

import ctypes

from nmrl.deploy.tensorrt.flavours import import_tensorrt
from nmrl.errors import NmrlError


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA device can run an engine here (None when one can), asked of libcudart through
    Polygraphy's ctypes wrapper so that it needs no PyTorch."""
    try:
        from polygraphy import cuda

        handle = cuda.wrapper().handle
    except Exception as error:  # Polygraphy raises its own exception type when libcudart is absent
        return f"the CUDA runtime library cannot be loaded ({error.__class__.__name__})"
    count = ctypes.c_int(0)
    status = handle.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        reasons = {35: "the NVIDIA driver is missing or older than the CUDA runtime", 100: "no CUDA device"}
        return f"no usable CUDA device ({reasons.get(status, f'cudaGetDeviceCount error {status}')})"
    return None if count.value > 0 else "no CUDA device"


def _unavailable_reason(flavour: str) -> str | None:
    try:
        import_tensorrt(flavour)
    except NmrlError as error:
        return str(error)
    return cuda_unavailable_reason()


def tensorrt_unavailable_reason() -> str | None:
    """Backend probe for ``tensorrt``: None when TensorRT imports and a CUDA GPU is visible."""
    return _unavailable_reason("tensorrt")


def tensorrt_rtx_unavailable_reason() -> str | None:
    """Backend probe for ``tensorrt-rtx`` (running its engines needs an RTX-class GPU)."""
    return _unavailable_reason("tensorrt-rtx")
