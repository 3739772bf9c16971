"""Build one serialized engine in memory: parse the ONNX, set the flags and profile, build.

Polygraphy's ``EngineFromNetwork`` does the same, but it picks TensorRT or TensorRT-RTX once per
process (an environment variable read at import) and routes the builder log to its global
logger; nmrl needs both flavours in one process and the ``(Sparsity)`` log lines themselves.
Nothing here writes a file: :mod:`nmrl.deploy.tensorrt.build` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from nmrl.deploy.onnx_gemms import OnnxGraphInfo
from nmrl.deploy.tensorrt.buildlog import capturing_logger
from nmrl.deploy.tensorrt.flavours import RTX_TARGETS
from nmrl.deploy.tensorrt.settings import BatchProfile, BuildSettings
from nmrl.errors import NmrlError


@dataclass
class BuiltPlan:
    """One serialized engine and what the builder said while making it."""

    plan: bytes
    log: list[str]
    flags: dict[str, bool]


def _compute_capabilities(trt: ModuleType, targets: Sequence[str]) -> list[Any]:
    chosen = []
    for target in targets:
        if target not in RTX_TARGETS or not hasattr(trt.ComputeCapability, RTX_TARGETS[target]):
            raise NmrlError(
                f"TensorRT-RTX has no compute capability {target} target (it has {', '.join(RTX_TARGETS)}); "
                "Hopper (9.0) and Jetson Orin (8.7) need --backend tensorrt"
            )
        chosen.append(getattr(trt.ComputeCapability, RTX_TARGETS[target]))
    return chosen


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    info: OnnxGraphInfo,
    settings: BuildSettings,
    profile: BatchProfile,
    compute_capabilities: Sequence[str] = (),
    workspace_mib: int | None = None,
) -> BuiltPlan:
    """Parse ``onnx_path`` and build one serialized engine with ``settings``."""
    logger = capturing_logger(trt)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as error:
        builder = None
        logger.lines.append(f"ERROR: {error}")
    if builder is None:
        last = (logger.errors() or ["no message"])[-1]
        raise NmrlError(f"{settings.flavour} could not start a builder (is there a usable NVIDIA GPU?): {last}")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise NmrlError(f"{settings.flavour}'s ONNX parser rejected {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if settings.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    # DETAILED keeps per-layer tactic names in the engine for the engine inspector.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if compute_capabilities:
        targets = _compute_capabilities(trt, compute_capabilities)
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(target, index)
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(
        info.input_name,
        (profile.min, info.input_dim),
        (profile.opt, info.input_dim),
        (profile.max, info.input_dim),
    )
    config.add_optimization_profile(optimization_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(logger.errors()) or "no error message"
        raise NmrlError(f"{settings.flavour}'s builder failed on {onnx_path}: {errors}")
    flag_names = ["SPARSE_WEIGHTS", "FP16"]
    read_back = {
        name: bool(config.get_flag(getattr(trt.BuilderFlag, name)))
        for name in flag_names
        if hasattr(trt.BuilderFlag, name)
    }
    # Read back from the network, not echoed from the request: TensorRT 11 ignores the creation
    # flag (every network is strongly typed) and reports what it really built.
    strongly_typed = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    read_back["STRONGLY_TYPED"] = bool(network.get_flag(strongly_typed))
    return BuiltPlan(bytes(serialized), logger.lines, read_back)
