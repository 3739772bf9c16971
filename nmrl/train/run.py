"""Reading a run directory back: its config, its metrics and the policy of one of its checkpoints.

Everything in a run directory is treated as untrusted input: a config or checkpoint that is
incomplete, malformed or holds NaN weights gives one :class:`NmrlError`, and its env id never
imports a module the user did not name (:func:`nmrl.envs.env_id_from_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmrl.envs import env_dims, env_id_from_file, make_env
from nmrl.errors import NmrlError, gist
from nmrl.train.algorithm import get_algorithm
from nmrl.train.checkpoint import checkpoint_step, load_checkpoint, nonfinite_tensors
from nmrl.train.config import TrainConfig

CHECKPOINTS = {"last": "checkpoints/last.pt", "best": "checkpoints/best.pt"}


@dataclass
class LoadedPolicy:
    """A run's deterministic policy (CPU, eval mode) and what it was trained on."""

    policy: nn.Module
    config: TrainConfig
    env_id: str
    obs_dim: int
    act_dim: int
    action_low: list[float]
    action_high: list[float]
    step: int
    checkpoint: Path


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    run_dir = Path(run_dir)
    if which not in CHECKPOINTS:
        raise NmrlError(f"unknown checkpoint {which!r}: choose 'last' or 'best'")
    if not (run_dir / "config.json").is_file():
        raise NmrlError(f"{run_dir}: not an nmrl run directory (no config.json)")
    path = run_dir / CHECKPOINTS[which]
    if not path.is_file():
        raise NmrlError(f"{run_dir}: has no {which} checkpoint yet ({CHECKPOINTS[which]})")
    return path


def load_policy(run_dir: Path, which: str = "last") -> LoadedPolicy:
    """Load the policy of a run's ``last`` or ``best`` checkpoint."""
    from nmrl.train.loop import check_compatible

    path = checkpoint_path(run_dir, which)
    config = TrainConfig.load(Path(run_dir) / "config.json")
    state = load_checkpoint(path)
    check_compatible(state, config, path)
    step = checkpoint_step(state, path)
    env = make_env(env_id_from_file(config.env, Path(run_dir) / "config.json"))
    obs_dim, act_dim, low, high = env_dims(env)
    env.close()
    # The deployed policy is the plain N:M network: no 2:4 GPU fast path when loading on the CPU.
    cpu_config = replace(config, semi_structured=False)
    algo = get_algorithm(config.algo)(obs_dim, act_dim, low, high, cpu_config, torch.device("cpu"))
    try:
        algo.load_state_dict(state["algorithm"], modules_only=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise NmrlError(f"{path}: does not fit its run's config ({gist(error)})") from None
    broken = nonfinite_tensors({name: net.state_dict() for name, net in algo.networks().items()})
    if broken:
        raise NmrlError(f"{path}: the networks hold NaN/inf weights ({', '.join(broken[:3])}); nothing to run")
    policy = algo.policy().eval()
    _refuse_false_pattern(policy, path)
    return LoadedPolicy(policy, config, config.env, obs_dim, act_dim, low, high, step, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, skipping a line that a crash or a full disk tore
    (the file is appended to one line at a time, so only the last line can be incomplete)."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _refuse_false_pattern(policy: nn.Module, path: Path) -> None:
    """A policy labelled N:M whose layers break the pattern (a mask edited to all ones, say) would run
    and be reported as sparse: refuse it, naming the layers and how many groups along K break."""
    from nmrl.sparsity import nm_layers
    from nmrl.sparsity.mask import check_nm

    broken = {}
    for name, layer in nm_layers(policy):
        count = len(check_nm(layer.weight * layer.mask, layer.pattern))
        if count:
            broken[f"{name} ({layer.pattern})"] = count
    if broken:
        detail = ", ".join(f"{name}: {count} groups" for name, count in broken.items())
        raise NmrlError(f"{path}: the actor's weights break their N:M pattern along K ({detail}); refusing to run it")
