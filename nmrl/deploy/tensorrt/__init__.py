"""TensorRT engines from exported actors, in Polygraphy's shape: an explicit build step, a loader
that finds what was built, and a runner. Nothing here imports TensorRT until it is used.

Modules, one job each (public names in brackets):

* ``flavours``  — standard TensorRT vs TensorRT-RTX, lazy import [Flavour, FLAVOURS, RTX_TARGETS,
  import_tensorrt, major_version]
* ``settings``  — builder flags per TensorRT version, batch profile [BuildSettings, build_settings,
  BatchProfile]
* ``buildlog``  — capturing logger, the ``(Sparsity)`` log lines [capturing_logger, parse_sparsity_log]
* ``builder``   — one serialized engine in memory [BuiltPlan, build_plan]
* ``inspector`` — engine inspector and the sparse-kernel verdict [classify_inspector_layers,
  inspect_engine_layers, sparse_kernels_verdict]
* ``report``    — the build report (JSON + terminal text; output only) [BuildReport]
* ``engines``   — the file-naming rule and how loaders find an engine [default_plan_path,
  dense_kernels_path, report_path, log_path, engine_flavour, source_onnx, find_engine]
* ``build``     — ``nmrl deploy build``: writes engine, twin, log, report [build_engines]
* ``cuda``      — backend probes [cuda_unavailable_reason, tensorrt_unavailable_reason,
  tensorrt_rtx_unavailable_reason]
* ``runner``    — run one engine as a deploy Policy [TensorRTPolicy]
* ``loader``    — registry entries: load (never builds) and the explicit build hook
  [load_tensorrt_policy, load_tensorrt_rtx_policy, build_engine, build_rtx_engine, onnx_env_id]

A new builder setting (e.g. int8) goes in ``settings`` (decided) and ``builder`` (applied).
"""

from nmrl.deploy.tensorrt.build import build_engines
from nmrl.deploy.tensorrt.builder import BuiltPlan, build_plan
from nmrl.deploy.tensorrt.buildlog import capturing_logger, parse_sparsity_log
from nmrl.deploy.tensorrt.cuda import (
    cuda_unavailable_reason,
    tensorrt_rtx_unavailable_reason,
    tensorrt_unavailable_reason,
)
from nmrl.deploy.tensorrt.engines import (
    default_plan_path,
    dense_kernels_path,
    engine_flavour,
    find_engine,
    log_path,
    report_path,
    source_onnx,
)
from nmrl.deploy.tensorrt.flavours import FLAVOURS, RTX_TARGETS, Flavour, import_tensorrt, major_version
from nmrl.deploy.tensorrt.inspector import classify_inspector_layers, inspect_engine_layers, sparse_kernels_verdict
from nmrl.deploy.tensorrt.loader import (
    build_engine,
    build_rtx_engine,
    load_tensorrt_policy,
    load_tensorrt_rtx_policy,
    onnx_env_id,
)
from nmrl.deploy.tensorrt.report import BuildReport
from nmrl.deploy.tensorrt.runner import TensorRTPolicy
from nmrl.deploy.tensorrt.settings import BatchProfile, BuildSettings, build_settings

__all__ = [
    "FLAVOURS",
    "RTX_TARGETS",
    "BatchProfile",
    "BuildReport",
    "BuildSettings",
    "BuiltPlan",
    "Flavour",
    "TensorRTPolicy",
    "build_engine",
    "build_engines",
    "build_plan",
    "build_rtx_engine",
    "build_settings",
    "capturing_logger",
    "classify_inspector_layers",
    "cuda_unavailable_reason",
    "default_plan_path",
    "dense_kernels_path",
    "engine_flavour",
    "find_engine",
    "import_tensorrt",
    "inspect_engine_layers",
    "load_tensorrt_policy",
    "load_tensorrt_rtx_policy",
    "log_path",
    "major_version",
    "onnx_env_id",
    "parse_sparsity_log",
    "report_path",
    "source_onnx",
    "sparse_kernels_verdict",
    "tensorrt_rtx_unavailable_reason",
    "tensorrt_unavailable_reason",
]
