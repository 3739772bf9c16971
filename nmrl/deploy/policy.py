"""The deployed-policy interface and the backend registry.

A backend is a loader (file -> :class:`Policy`) plus a probe (can this machine run it?), as in
Polygraphy's loader/runner split. Backends are named by import path and loaded lazily, so the
ONNX Runtime policy never imports PyTorch. To add one (e.g. TensorRT), implement a ``Policy``
subclass and a loader, then add one entry to :data:`BACKENDS` (or call :func:`register_backend`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmrl.errors import NmrlError


class Policy:
    """A deterministic policy ready to act: ``act(obs)`` maps observations to actions.

    ``obs`` is ``[batch, obs_dim]`` or ``[obs_dim]`` (float32, or anything numpy converts); the
    result has the same leading shape with ``act_dim`` actions, float32, on the host. Subclasses
    implement :meth:`_act_batch` for a 2-D float32 batch; ``act`` handles shapes and dtypes.
    """

    backend: str = "?"
    obs_dim: int
    act_dim: int
    env_id: str | None = None
    """The environment the policy was trained on, when the file says so."""
    env_kwargs: dict[str, Any] | None = None
    """That environment's settings (``--env-kwargs``), when the file says them."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"expected observations [batch, {self.obs_dim}] or [{self.obs_dim}], got shape {obs.shape}"
            )
        single = obs.ndim == 1
        actions = self._act_batch(np.ascontiguousarray(obs[None] if single else obs))
        actions = np.asarray(actions, dtype=np.float32)
        return actions[0] if single else actions

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        """One line: what runs this policy (backend, device, threads)."""
        return self.backend

    def close(self) -> None:
        """Release runtime resources (sessions, engines, GPU memory)."""

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class Backend:
    """A registry entry: ``loader``/``probe`` are ``"module:function"`` paths, imported on use.

    ``loader(path, **options) -> Policy``; ``probe() -> str | None`` returns why the backend
    cannot run here (None when it can). ``takes`` says what ``path`` is: ``"onnx"`` (an exported
    .onnx file) or ``"run"`` (a run directory; such loaders take ``dense=True`` for their
    dense-kernel variant: the same weights without sparse kernels).
    ``build``, for backends that run a compiled artefact (TensorRT engines), is the explicit build
    step ``build(onnx_path, **options)``: loaders never build, so a caller that made an ONNX file
    itself (bench's scratch models) calls :func:`build_for` before loading it.
    ``dtype``: the precision a ``"run"`` backend computes in (bench labels its rows with it; an
    ``"onnx"`` backend runs the file's own precision, and torch the one it is asked for).
    """

    loader: str
    probe: str | None
    help: str
    takes: str = "onnx"
    build: str | None = None
    dtype: str = "fp32"


BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        "nmrl.deploy.torch_backend:load_torch_policy",
        None,
        "PyTorch eager on a run directory's checkpoint (the reference)",
        takes="run",
    ),
    "ort": Backend(
        "nmrl.deploy.ort_backend:load_ort_policy",
        None,
        "ONNX Runtime, CPU execution provider (the embedded default)",
    ),
    "ort-cuda": Backend(
        "nmrl.deploy.ort_backend:load_ort_cuda_policy",
        "nmrl.deploy.ort_backend:ort_cuda_unavailable_reason",
        "ONNX Runtime, CUDA execution provider (needs onnxruntime-gpu and a GPU)",
    ),
    "tensorrt": Backend(
        "nmrl.deploy.tensorrt:load_tensorrt_policy",
        "nmrl.deploy.tensorrt:tensorrt_unavailable_reason",
        "TensorRT engine (2:4 sparse tactics): a .plan, or an .onnx whose engine nmrl deploy build made",
        build="nmrl.deploy.tensorrt:build_engine",
    ),
    "tensorrt-rtx": Backend(
        "nmrl.deploy.tensorrt:load_tensorrt_rtx_policy",
        "nmrl.deploy.tensorrt:tensorrt_rtx_unavailable_reason",
        "TensorRT for RTX engine (RTX-class GPU to run): a .plan, or an .onnx built with nmrl deploy build",
        build="nmrl.deploy.tensorrt:build_rtx_engine",
    ),
    "c": Backend(
        "nmrl.deploy.c_backend:load_c_policy",
        "nmrl.deploy.c_backend:c_unavailable_reason",
        "nmrl's generated C (N:M kernels), compiled by nmrl deploy build --backend c, called via ctypes",
        build="nmrl.deploy.c_backend:build_c_library",
    ),
    "torch-2:4": Backend(
        "nmrl.deploy.torch_semi_structured:load_torch_semi_structured_policy",
        "nmrl.deploy.torch_semi_structured:torch_semi_structured_unavailable_reason",
        "PyTorch fp16 on CUDA with 2:4 layers as semi-structured sparse tensors",
        takes="run",
        dtype="fp16",
    ),
}


def register_backend(
    name: str,
    loader: str,
    probe: str | None = None,
    help: str = "",
    takes: str = "onnx",
    build: str | None = None,
    dtype: str = "fp32",
) -> None:
    """Add or replace a backend (``loader``/``probe``/``build`` as ``"module:function"``)."""
    BACKENDS[name] = Backend(loader, probe, help, takes, build, dtype)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}"
    entry = BACKENDS[backend]
    return None if entry.probe is None else _resolve(entry.probe)()


def load_policy(path: Path | str, backend: str = "ort", **options: Any) -> Policy:
    """Load a deployed policy: ``path`` is an ONNX file (ort, ort-cuda, ...) or a run directory
    (torch); ``options`` go to the backend's loader (e.g. ``threads=1``)."""
    reason = unavailable_reason(backend)
    if reason is not None:
        raise NmrlError(f"backend {backend!r} cannot run here: {reason}")
    return _resolve(BACKENDS[backend].loader)(Path(path), **options)


def build_for(backend: str, path: Path | str, **options: Any) -> None:
    """Run ``backend``'s explicit build step for an ONNX file the caller made (nothing for backends
    that run the ONNX file itself); ``options`` are filtered as for its loader."""
    target = BACKENDS[backend].build
    if target is not None:
        build = _resolve(target)
        build(Path(path), **_accepted(build, options))


def _accepted(function: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in parameters}


def accepted_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``backend``'s loader takes (for callers such as ``bench``
    that pass common settings like ``threads`` to every backend)."""
    return _accepted(_resolve(BACKENDS[backend].loader), options)
