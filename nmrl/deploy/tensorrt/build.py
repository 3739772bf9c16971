"""The explicit build step behind ``nmrl deploy build``: engine, dense-kernel engine, log and report on disk.

This is the only place in nmrl that writes engine files; loaders never call it (see
:mod:`nmrl.deploy.tensorrt.engines` for where the files go and how loaders find them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from nmrl.deploy.onnx_gemms import read_graph_info
from nmrl.deploy.tensorrt.builder import build_plan
from nmrl.deploy.tensorrt.buildlog import parse_sparsity_log
from nmrl.deploy.tensorrt.engines import default_plan_path, dense_kernels_path, log_path, report_path
from nmrl.deploy.tensorrt.flavours import FLAVOURS, import_tensorrt
from nmrl.deploy.tensorrt.inspector import inspect_engine_layers, sparse_kernels_verdict
from nmrl.deploy.tensorrt.report import BuildReport
from nmrl.deploy.tensorrt.settings import BatchProfile, build_settings
from nmrl.errors import NmrlError
from nmrl.files import atomic_write_bytes, atomic_write_text
from nmrl.policy_file import read_claims


def _notes(flavour: str, sparse: bool, settings_note: str, any_2of4: bool, eligible, picked) -> list[str]:
    notes = [settings_note] if settings_note else []
    if sparse and not any_2of4:
        notes.append("no weight matrix in this ONNX is 2:4 along K: the sparse flag has nothing to use")
    if flavour == "tensorrt-rtx":
        notes.append(
            "TensorRT-RTX chooses kernels just in time on the target GPU; its ahead-of-time build log "
            "does not say which layers will run sparse kernels"
        )
    elif sparse and eligible is not None and picked is not None and set(eligible) - set(picked):
        notes.append(
            "TensorRT timed sparse and dense kernels and kept dense where it was faster "
            "(usual below ~256 channels or at small batch)"
        )
    return notes


def refuse_int8_recipe_for_ort(onnx_path: Path, metadata: dict[str, str]) -> None:
    """An int8 export made for ONNX Runtime (``--int8-target ort``: unsigned activations, quantized
    hidden outputs) is a file TensorRT's parser rejects; say which export it needs instead."""
    if read_claims(metadata, str(onnx_path)).quantization_target == "ort":
        raise NmrlError(
            f"{onnx_path}: this int8 file is quantized for ONNX Runtime (unsigned activations, which TensorRT "
            "rejects); export one for TensorRT: nmrl export RUN --dtype int8 --int8-target tensorrt"
        )


def build_engines(
    onnx_path: Path,
    flavour: str = "tensorrt",
    output: Path | None = None,
    sparse: bool = True,
    dense_kernels: bool = True,
    profile: BatchProfile | None = None,
    compute_capabilities: Sequence[str] = (),
    workspace_mib: int | None = None,
) -> BuildReport:
    """Build the engine for ``onnx_path`` (with SPARSE_WEIGHTS unless ``sparse=False``) and its
    dense-kernel engine (same weights, sparse flag off); write both, the builder log and the JSON
    report; return the report."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise NmrlError(f"{onnx_path}: no such ONNX file")
    info = read_graph_info(onnx_path)
    refuse_int8_recipe_for_ort(onnx_path, info.metadata)
    trt = import_tensorrt(flavour)
    if compute_capabilities and flavour != "tensorrt-rtx":
        raise NmrlError(
            "compute capability targets are a TensorRT-RTX option; standard TensorRT builds for the GPU it runs on"
        )
    profile = profile or BatchProfile()
    settings = build_settings(flavour, trt.__version__, info.compute_dtype, sparse)
    plan_path = Path(output) if output else default_plan_path(onnx_path, flavour)
    plan_path.parent.mkdir(parents=True, exist_ok=True)

    built = build_plan(trt, onnx_path, info, settings, profile, compute_capabilities, workspace_mib)
    atomic_write_bytes(plan_path, built.plan)
    atomic_write_text(log_path(plan_path), "\n".join(built.log) + "\n")
    eligible, picked = parse_sparsity_log(built.log)

    twin_path = None
    if dense_kernels:
        dense_settings = build_settings(flavour, trt.__version__, info.compute_dtype, sparse=False)
        twin = build_plan(trt, onnx_path, info, dense_settings, profile, compute_capabilities, workspace_mib)
        twin_path = dense_kernels_path(plan_path)
        atomic_write_bytes(twin_path, twin.plan)

    notes = _notes(flavour, sparse, settings.note, any(g.fits_2of4 for g in info.gemms), eligible, picked)
    inspected = inspect_engine_layers(trt, built.plan) if not FLAVOURS[flavour].builds_without_gpu else None
    report = BuildReport(
        flavour=flavour,
        version=trt.__version__,
        onnx=str(onnx_path),
        plan=str(plan_path),
        dense_plan=str(twin_path) if twin_path else None,
        profile=asdict(profile),
        settings=asdict(settings),
        flags=built.flags,
        onnx_gemms=[gemm.to_dict() for gemm in info.gemms],
        builder_eligible=eligible,
        builder_picked=picked,
        inspector_sparse_tactics=None if inspected is None else inspected[0],
        notes=notes,
        inspector_fused_layers=None if inspected is None else inspected[1],
        sparse_kernels=sparse_kernels_verdict(picked, inspected) if sparse else "none (built without SPARSE_WEIGHTS)",
        env_id=read_claims(info.metadata, str(onnx_path)).env_id,
    )
    report.save(report_path(plan_path))
    return report
