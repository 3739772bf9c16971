"""Where engines live: the naming rule that ties an exported ONNX file to the engines built from it.

``nmrl deploy build runs/x/actor.onnx --backend B`` writes, beside the ONNX::

    actor.plan        (B = tensorrt)   or  actor.rtx.plan        (B = tensorrt-rtx)   the engine
    actor.dense.plan                   or  actor.rtx.dense.plan                        its dense-kernel engine
    <engine>.log, <engine>.json        the builder log and the build report (for people and CI)

The dense-kernel engine is the same ONNX weights built without ``SPARSE_WEIGHTS`` (not the
dense twin, the zero-filled ONNX of ``nmrl.export.twin``). Loading ``actor.onnx`` with backend B
runs the engine at that path, and only when it is at least as new as the ONNX; otherwise the loader fails with
the build command (:func:`find_engine`). Nothing here builds. An engine's flavour is read from its
name (``.rtx.`` -> TensorRT-RTX), and the ONNX an engine came from is the one its name points
back to (:func:`source_onnx`): engines carry no metadata of their own, and the JSON report beside
them is never read back to decide anything.
"""

from __future__ import annotations

from pathlib import Path

from nmrl.deploy.tensorrt.flavours import FLAVOURS
from nmrl.errors import NmrlError


def default_plan_path(onnx_path: Path, flavour: str) -> Path:
    """``runs/x/actor.onnx`` -> ``runs/x/actor.plan`` (``actor.rtx.plan`` for TensorRT-RTX)."""
    return onnx_path.with_suffix(FLAVOURS[flavour].plan_suffix)


def dense_kernels_path(plan_path: Path) -> Path:
    """``actor.plan`` -> ``actor.dense.plan``; ``actor.rtx.plan`` -> ``actor.rtx.dense.plan``."""
    return plan_path.with_name(plan_path.name.removesuffix(".plan") + ".dense.plan")


def report_path(plan_path: Path) -> Path:
    """The JSON report beside an engine: ``actor.plan`` -> ``actor.plan.json``."""
    return plan_path.with_name(plan_path.name + ".json")


def log_path(plan_path: Path) -> Path:
    """The full builder log beside an engine: ``actor.plan`` -> ``actor.plan.log``."""
    return plan_path.with_name(plan_path.name + ".log")


def _stem(plan_path: Path) -> tuple[str, bool]:
    """(the name without ``.dense``/``.plan``, whether the name says TensorRT-RTX)."""
    stem = plan_path.name.removesuffix(".plan").removesuffix(".dense")
    rtx = stem.endswith(".rtx")
    return stem.removesuffix(".rtx"), rtx


def engine_flavour(plan_path: Path) -> str:
    """The TensorRT flavour an engine file is named for: ``*.rtx.plan`` / ``*.rtx.dense.plan`` are
    TensorRT-RTX, every other ``.plan`` standard TensorRT."""
    return "tensorrt-rtx" if _stem(Path(plan_path))[1] else "tensorrt"


def _is_stale(plan_path: Path, onnx_path: Path) -> bool:
    return plan_path.stat().st_mtime < onnx_path.stat().st_mtime


def source_onnx(plan_path: Path) -> Path | None:
    """The ONNX file beside ``plan_path`` that its name says it was built from (``actor.rtx.dense.plan``
    -> ``actor.onnx``), or None when there is none or it is newer than the engine (then the
    engine was not built from the file now there)."""
    plan_path = Path(plan_path)
    onnx_path = plan_path.with_name(_stem(plan_path)[0] + ".onnx")
    if not onnx_path.is_file() or not plan_path.is_file() or _is_stale(plan_path, onnx_path):
        return None
    return onnx_path


def find_engine(onnx_path: Path, flavour: str, dense: bool = False) -> Path:
    """The engine ``nmrl deploy build`` made for ``onnx_path`` (its dense-kernel engine when ``dense``),
    or one NmrlError with the command that builds it (missing, or older than the ONNX)."""
    plan = default_plan_path(onnx_path, flavour)
    wanted = dense_kernels_path(plan) if dense else plan
    command = f"nmrl deploy build {onnx_path} --backend {flavour}"
    what = f"{flavour} {'dense-kernel engine' if dense else 'engine'}"
    if not wanted.is_file():
        raise NmrlError(f"{onnx_path}: no {what} at {wanted}; build it first: {command}")
    if _is_stale(wanted, onnx_path):
        raise NmrlError(f"{wanted} is older than {onnx_path}; rebuild it: {command}")
    return wanted
