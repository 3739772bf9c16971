"""Small configs and comparison helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmrl.train.config import TrainConfig


def tiny_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A seconds-long run on a real MuJoCo task (small networks, short warm-up)."""
    settings: dict[str, Any] = dict(
        env="InvertedPendulum-v5",
        sparsity="2:4",
        total_steps=400,
        learning_starts=200,
        batch_size=32,
        buffer_size=2_000,
        hidden=(16, 16),
        eval_every=200,
        eval_episodes=2,
        checkpoint_every=200,
        runs_dir=tmp_path / "runs",
        run_name="tiny",
        progress=False,
        threads=1,
    )
    settings.update(overrides)
    return TrainConfig.from_settings(**settings)


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Deep equality of nested checkpoint states (tensors exactly, floats bitwise, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
