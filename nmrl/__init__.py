"""nmrl: N:M semi-structured sparse deep reinforcement learning, from training to TensorRT.

The public names below load on first use (PEP 562): ``import nmrl`` stays torch-free, so the
ONNX Runtime policy and ``nmrl inspect`` run where PyTorch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nmrl.deploy.policy import load_policy
    from nmrl.errors import NmrlError
    from nmrl.export.pipeline import export_run
    from nmrl.sparsity.helpers import bind_optimizer, bind_target, sparsify
    from nmrl.sparsity.layers import dense_state_dict
    from nmrl.train.api import SAC, TD3
    from nmrl.train.callbacks import (
        BaseCallback,
        CallbackList,
        CheckpointCallback,
        EvalCallback,
        MetricsCallback,
        StopTrainingOnReturn,
    )
    from nmrl.train.progress import ProgressCallback

_LAZY = {
    # Training and deployment (docs/api.md).
    "TD3": "nmrl.train.api",
    "SAC": "nmrl.train.api",
    "BaseCallback": "nmrl.train.callbacks",
    "CallbackList": "nmrl.train.callbacks",
    "CheckpointCallback": "nmrl.train.callbacks",
    "EvalCallback": "nmrl.train.callbacks",
    "MetricsCallback": "nmrl.train.callbacks",
    "StopTrainingOnReturn": "nmrl.train.callbacks",
    "ProgressCallback": "nmrl.train.progress",
    "export_run": "nmrl.export.pipeline",
    "load_policy": "nmrl.deploy.policy",
    "NmrlError": "nmrl.errors",
    # Layers in your own models (docs/api.md).
    "sparsify": "nmrl.sparsity.helpers",
    "bind_optimizer": "nmrl.sparsity.helpers",
    "bind_target": "nmrl.sparsity.helpers",
    "dense_state_dict": "nmrl.sparsity.layers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nmrl' has no attribute {name!r}")


__all__ = [
    "SAC",
    "TD3",
    "BaseCallback",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "MetricsCallback",
    "NmrlError",
    "ProgressCallback",
    "StopTrainingOnReturn",
    "__version__",
    "bind_optimizer",
    "bind_target",
    "dense_state_dict",
    "export_run",
    "load_policy",
    "sparsify",
]
