"""Does the 2:4 fast path work *here*? CUDA, compute capability, which kernels torch will use, and a
tiny real conversion + matmul per dtype (cached per device)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from nmrl.sparsity.pattern import NMPattern

FAST_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SemiStructuredSupport:
    """What the probe found on one device."""

    available: bool
    reason: str  # why not, or a one-line summary when available
    device: str | None = None
    compute_capability: tuple[int, int] | None = None
    backend: str | None = None  # "cusparselt" or "cutlass"
    cusparselt_version: int | None = None
    dtypes: tuple[str, ...] = ()  # fp16/bf16 names for which a real conversion + matmul worked


def semi_structured_backend(compute_capability: tuple[int, int]) -> tuple[str | None, str]:
    """The 2:4 kernels ``to_sparse_semi_structured`` will really use on a device of this compute
    capability, and why: (``"cusparselt"`` | ``"cutlass"`` | None, reason).

    PyTorch picks its subclass from one switch: cuSPARSELt unless
    ``SparseSemiStructuredTensor._FORCE_CUTLASS`` is set. It never falls back to CUTLASS when
    cuSPARSELt is missing, and the CUTLASS 2:4 kernels are built for compute capability 8.x only
    (Hopper and newer run 2:4 through cuSPARSELt alone).
    """
    from torch.sparse import SparseSemiStructuredTensor

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        if compute_capability[0] == 8:
            return "cutlass", "CUTLASS (forced by SparseSemiStructuredTensor._FORCE_CUTLASS)"
        major, minor = compute_capability
        return None, f"CUTLASS is forced, but its 2:4 kernels run on compute capability 8.x only (not {major}.{minor})"
    if not torch.backends.cusparselt.is_available():
        return None, "this PyTorch build has no cuSPARSELt, and PyTorch uses CUTLASS 2:4 kernels only when forced"
    return "cusparselt", f"cuSPARSELt {torch.backends.cusparselt.version()}"


def two_of_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """The magnitude 2:4 mask of ``weight`` (groups of 4 along its last dim)."""
    from nmrl.sparsity.mask import nm_mask

    return nm_mask(weight, NMPattern(2, 4))


def _tiny_check(dtype: torch.dtype, device: torch.device) -> str | None:
    """Convert a real 2:4 matrix and multiply; None when the result matches dense, else why not."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    try:  # the mask too: on a CPU it is the compiled numba kernel, which may fail to compile here
        weight = torch.randn(64, 128, generator=generator)
        weight = (weight * two_of_four_mask(weight)).to(device=device, dtype=dtype)
        inputs = torch.randn(32, 128, generator=generator).to(device=device, dtype=dtype)
        sparse = torch.sparse.to_sparse_semi_structured(weight)
        result = nn.functional.linear(inputs, sparse)
        torch.cuda.synchronize(device)
    except Exception as error:  # any failure means "not usable here"; keep the message
        return f"{error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    expected = nn.functional.linear(inputs.float(), weight.float())
    if not torch.allclose(result.float(), expected, rtol=2e-2, atol=2e-2):
        return "sparse matmul result differs from dense"
    return None


@functools.cache
def probe_semi_structured(device_index: int | None = None) -> SemiStructuredSupport:
    """Whether 2:4 semi-structured matmuls work on this machine's CUDA device (cached)."""
    if not torch.cuda.is_available():
        return SemiStructuredSupport(False, "no CUDA device (PyTorch sees none)")
    index = torch.cuda.current_device() if device_index is None else device_index
    device = torch.device("cuda", index)
    name = torch.cuda.get_device_name(index)
    capability = torch.cuda.get_device_capability(index)
    backend, backend_reason = semi_structured_backend(capability)
    version = torch.backends.cusparselt.version() if backend == "cusparselt" else None

    def found(available: bool, reason: str, dtypes: tuple[str, ...] = ()) -> SemiStructuredSupport:
        """The probe's answer with this device's facts filled in."""
        return SemiStructuredSupport(
            available,
            reason,
            device=name,
            compute_capability=capability,
            backend=backend,
            cusparselt_version=version,
            dtypes=dtypes,
        )

    if capability < (8, 0):
        return found(False, f"compute capability {capability[0]}.{capability[1]} < 8.0: no sparse tensor cores")
    if backend is None:
        return found(False, f"no 2:4 kernels will run: {backend_reason}")
    working, failures = [], []
    for dtype_name, dtype in FAST_DTYPES.items():
        failure = _tiny_check(dtype, device)
        if failure is None:
            working.append(dtype_name)
        else:
            failures.append(f"{dtype_name}: {failure}")
    if not working:
        return found(False, "; ".join(failures))
    return found(True, f"{backend} 2:4 matmul works for {', '.join(working)}", dtypes=tuple(working))


def device_support(device: torch.device) -> SemiStructuredSupport:
    """What the 2:4 fast path can do on the device a run trains on."""
    if device.type != "cuda":
        return SemiStructuredSupport(False, f"needs a CUDA device (training on {device})")
    return probe_semi_structured(device.index)
