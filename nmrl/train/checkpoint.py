"""nmrl checkpoints.

A checkpoint is written atomically (``nmrl.files``): a crash or SIGKILL at any moment leaves either
the previous checkpoint or the new one, never a half-written file under the real name. Loading uses
``weights_only=True``: a checkpoint holds tensors, numbers, strings and containers of them, nothing
executable.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from nmrl.errors import NmrlError
from nmrl.files import atomic_write_bytes

CHECKPOINT_FORMAT = "nmrl-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, containers) atomically, tagged as ours."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; :class:`NmrlError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NmrlError(f"{path}: not an nmrl checkpoint ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise NmrlError(f"{path}: not an nmrl checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    return state
