"""The two TensorRT distributions nmrl builds with, and importing one of them lazily.

* ``tensorrt`` — standard TensorRT 10/11 for data-centre GPUs, Hopper and Jetson. Building needs
  the GPU the engine will run on.
* ``tensorrt-rtx`` — TensorRT for RTX (PyPI ``tensorrt-rtx-cu13``, module
  ``tensorrt_rtx_bindings``). Strongly typed; builds ahead of time on a machine without a GPU
  for compute capability 7.5/8.0/8.6/8.9/12.x (no Hopper, no Orin) and picks kernels just in time
  on the target GPU.

Their Python APIs agree on everything nmrl uses, so one builder and one runner serve both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from nmrl.errors import NmrlError


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its module, how to get it, where its engines run."""

    name: str
    module: str
    install_hint: str
    builds_without_gpu: bool
    plan_suffix: str


FLAVOURS: dict[str, Flavour] = {
    "tensorrt": Flavour(
        "tensorrt",
        "tensorrt",
        "pip install tensorrt-cu12, use docker/Dockerfile.gpu, or JetPack on Jetson; "
        "building needs the NVIDIA GPU the engine will run on",
        builds_without_gpu=False,
        plan_suffix=".plan",
    ),
    "tensorrt-rtx": Flavour(
        "tensorrt-rtx",
        "tensorrt_rtx_bindings",
        "pip install tensorrt-rtx-cu13",
        builds_without_gpu=True,
        plan_suffix=".rtx.plan",
    ),
}

# TensorRT-RTX compute capability targets by "major.minor".
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}


def import_tensorrt(flavour: str) -> ModuleType:
    """The TensorRT module of ``flavour``, or one clear NmrlError saying what is missing."""
    if flavour not in FLAVOURS:
        raise NmrlError(f"unknown TensorRT backend {flavour!r}; choose from {', '.join(FLAVOURS)}")
    spec = FLAVOURS[flavour]
    try:
        return importlib.import_module(spec.module)
    except ImportError as error:
        raise NmrlError(
            f"{flavour}: Python module {spec.module!r} is not installed here ({spec.install_hint})"
        ) from error
    except OSError as error:  # the bindings import but a shared library (CUDA, nvinfer) is missing
        raise NmrlError(f"{flavour}: {spec.module!r} is installed but cannot load: {error}") from error


def major_version(version: str) -> int:
    """The major number of a TensorRT version string (``"10.13.3.9"`` -> 10)."""
    try:
        return int(version.split(".")[0])
    except ValueError as error:
        raise NmrlError(f"cannot read a TensorRT version from {version!r}") from error
