"""The deploy-registry entries of ``tensorrt`` and ``tensorrt-rtx``: load (never build) and build.

:func:`load_tensorrt_policy` runs an engine file, or for an exported ONNX the engine that
``nmrl deploy build`` made beside it (the rule is in :mod:`nmrl.deploy.tensorrt.engines`); when
there is none, or it is older than the ONNX, it fails with the build command and writes nothing.
:func:`build_engine` is the registry's explicit build step for callers that made the ONNX file
themselves (``nmrl bench``'s scratch models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmrl.deploy.tensorrt.build import build_engines
from nmrl.deploy.tensorrt.engines import default_plan_path, dense_kernels_path, engine_flavour, find_engine, source_onnx
from nmrl.deploy.tensorrt.runner import TensorRTPolicy
from nmrl.deploy.tensorrt.settings import BatchProfile
from nmrl.errors import NmrlError
from nmrl.policy_file import metadata_of, read_claims


def onnx_env(onnx_path: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The ``nmrl.env_id`` and ``nmrl.env_kwargs`` metadata of an ONNX file, as the file says them
    (callers check the id with :func:`nmrl.envs.env_id_from_file` before making anything); None
    where it names none."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError
        raise NmrlError(f"{onnx_path}: not an ONNX model ({error.__class__.__name__})") from error
    claims = read_claims(metadata_of(model), str(onnx_path))
    return claims.env_id, claims.env_kwargs


def onnx_env_id(onnx_path: Path) -> str | None:
    """The ``nmrl.env_id`` metadata of an ONNX file (see :func:`onnx_env`)."""
    return onnx_env(onnx_path)[0]


def load_tensorrt_policy(
    path: Path | str, flavour: str | None = None, dense: bool = False, **_common: Any
) -> TensorRTPolicy:
    """Backend loader for the deploy registry. ``path`` is an engine (``actor.plan``; ``dense=True``
    runs its ``.dense.plan`` twin) or an exported ONNX or run directory (runs the engine built from
    its ``actor.onnx``, see
    :func:`nmrl.deploy.tensorrt.engines.find_engine`). ``flavour`` picks TensorRT or TensorRT-RTX
    (default: from the engine's name; ``tensorrt`` for an ONNX). Settings meant for other
    backends (``threads``, ``max_batch``) are ignored: an engine's batch range is fixed at build."""
    path = Path(path)
    if path.is_dir():  # a run directory: its exported actor
        path = path / "actor.onnx"
        if not path.is_file():
            raise NmrlError(f"{path.parent}: no actor.onnx in this directory (run `nmrl export {path.parent}` first)")
    onnx_path: Path | None  # an engine's source ONNX may be gone (or newer than the engine)
    if path.suffix == ".onnx":
        flavour = flavour or "tensorrt"
        plan, onnx_path = find_engine(path, flavour, dense), path
    else:
        plan = dense_kernels_path(path) if dense and not path.name.endswith(".dense.plan") else path
        flavour = flavour or engine_flavour(plan)
        onnx_path = source_onnx(plan)
    env_id, env_kwargs = onnx_env(onnx_path) if onnx_path is not None else (None, None)
    return TensorRTPolicy(plan, flavour=flavour, env_id=env_id, env_kwargs=env_kwargs)


def load_tensorrt_rtx_policy(path: Path | str, **options: Any) -> TensorRTPolicy:
    """Backend loader for ``tensorrt-rtx``: as :func:`load_tensorrt_policy` with TensorRT-RTX."""
    options.pop("flavour", None)
    return load_tensorrt_policy(path, flavour="tensorrt-rtx", **options)


def build_engine(path: Path | str, flavour: str = "tensorrt", max_batch: int | None = None, **_common: Any) -> Path:
    """The explicit build step for an ONNX file the caller made itself: build its engine (no dense
    twin; batch profile up to ``max_batch``) where :func:`load_tensorrt_policy` looks for it, and
    return the engine's path."""
    path = Path(path)
    profile = BatchProfile.up_to(max_batch) if max_batch is not None else None
    build_engines(path, flavour, output=default_plan_path(path, flavour), dense_kernels=False, profile=profile)
    return default_plan_path(path, flavour)


def build_rtx_engine(path: Path | str, **options: Any) -> Path:
    """:func:`build_engine` with TensorRT-RTX."""
    options.pop("flavour", None)
    return build_engine(path, flavour="tensorrt-rtx", **options)
