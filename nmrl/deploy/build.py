"""``nmrl deploy build``: compile an exported actor into an inference engine or a C library."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import tyro

from nmrl.deploy.tensorrt import BatchProfile, build_engines


def build(
    onnx: tyro.conf.Positional[Path],
    backend: Literal["tensorrt", "tensorrt-rtx", "c"] = "tensorrt",
    output: Path | None = None,
    sparse: bool = True,
    dense_kernels: bool = True,
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = 4096,
    compute_capability: tuple[str, ...] = (),
    workspace_mib: int | None = None,
) -> int:
    """Build a TensorRT engine from an exported actor, with 2:4 sparse weights enabled, plus its
    dense-kernel engine (same weights, sparse flag off) for comparison; or, with --backend c, nmrl's
    C of the actor (actor.c, actor.h) and its shared library actor.so, compiled by the system C
    compiler ($CC, else cc) with -O3 -march=native, which `deploy eval` and `bench` load.

    Writes actor.plan (TensorRT) or actor.rtx.plan (TensorRT-RTX) beside the ONNX, the dense-kernel engine
    (*.dense.plan), the full builder log (*.plan.log) and a JSON report (*.plan.json) saying which
    layers were 2:4 in the ONNX, which the builder found eligible for sparse math and which it
    picked sparse kernels for. TensorRT 10 builds the fp32 ONNX with the FP16 flag; TensorRT 11 and
    TensorRT-RTX are strongly typed and need the fp16 export for sparse kernels. This is the only
    command that builds engines: `deploy eval` and `bench` of the ONNX with this backend run the
    engine written here, and fail with this command when it is missing or older than the ONNX.

    Args:
        onnx: the exported actor (runs/<run>/actor.onnx).
        backend: tensorrt (builds on the target NVIDIA GPU), tensorrt-rtx (builds without a GPU,
            runs on RTX-class GPUs of compute capability 8.0/8.6/8.9/12.x), or c (this CPU; the
            options below but --output are TensorRT's).
        output: engine or library path (default: beside the ONNX).
        sparse: set the SPARSE_WEIGHTS builder flag.
        dense_kernels: also build the same graph without the sparse flag.
        min_batch: smallest batch of the dynamic-batch profile.
        opt_batch: batch the builder tunes for.
        max_batch: largest batch of the profile.
        compute_capability: TensorRT-RTX targets, e.g. 8.6 8.9 (default: its portable set).
        workspace_mib: builder workspace limit in MiB (default: TensorRT's).
    """
    if backend == "c":
        return _build_c(onnx, output)
    report = build_engines(
        onnx,
        flavour=backend,
        output=output,
        sparse=sparse,
        dense_kernels=dense_kernels,
        profile=BatchProfile(min_batch, opt_batch, max_batch),
        compute_capabilities=compute_capability,
        workspace_mib=workspace_mib,
    )
    print(report.format())
    return 0


def _build_c(onnx: Path, output: Path | None) -> int:
    from nmrl.deploy.c_backend import DEFAULT_FLAGS, build_c_library

    library, source = build_c_library(onnx, output)
    for layer in source.program.layers:
        print(f"C {layer.describe()}")
    flags = " ".join(DEFAULT_FLAGS)
    print(f"built {library} with {flags} from {library.with_suffix('.c')} and {library.with_suffix('.h')}")
    return 0
