"""nmrl checkpoints.

A checkpoint is written atomically (``nmrl.files``): a crash or SIGKILL at any moment leaves either
the previous checkpoint or the new one, never a half-written file under the real name. Loading uses
``weights_only=True``: a checkpoint holds tensors, numbers, strings and containers of them, nothing
executable.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from nmrl.errors import NmrlError, gist
from nmrl.files import atomic_write_bytes

CHECKPOINT_FORMAT = "nmrl-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any], inside: Path | None = None) -> None:
    """Save ``state`` (tensors, numbers, strings, containers) atomically, tagged as ours;
    ``inside``: the run directory, below which no link is followed (``nmrl.files``)."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue(), inside)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; :class:`NmrlError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise NmrlError(f"{path}: not an nmrl checkpoint ({gist(error, 1, 120)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise NmrlError(f"{path}: not an nmrl checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    return state


def checkpoint_step(state: dict[str, Any], path: Path) -> int:
    """The env step a run checkpoint was taken at; :class:`NmrlError` when its counters are missing
    or malformed (a tagged file is still untrusted input)."""
    train_state = state.get("train_state")
    step = train_state.get("step") if isinstance(train_state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise NmrlError(f"{path}: not a complete nmrl checkpoint (no valid train_state.step)")
    return step


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested state that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items: Iterable[tuple[Any, Any]]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return []
    found = []
    for key, value in items:
        found += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found
