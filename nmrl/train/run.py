"""Reading a run directory back: its config, its metrics and the trained policy of one of its checkpoints.

Everything in a run directory is treated as untrusted input: a config or checkpoint that is
incomplete, malformed or holds NaN weights gives one :class:`NmrlError`, and its env id never
imports a module the user did not name (:func:`nmrl.envs.env_id_from_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nmrl.envs import env_dims, env_id_from_file, make_env
from nmrl.errors import NmrlError
from nmrl.files import LOCK_FILE, TEMP_PREFIX, TEMP_SUFFIX
from nmrl.train.algorithm import get_algorithm
from nmrl.train.checkpoint import checkpoint_step, load_checkpoint
from nmrl.train.config import TrainConfig, check_compatible
from nmrl.train.events import EVENTS_PREFIX
from nmrl.train.policy import PolicySpec, policy_from_part, policy_part
from nmrl.train.sparse import COSTS_FILE

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
    spec: PolicySpec
    """What the policy is (its sparsity included), as its checkpoint says."""


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


def load_trained_actor(run_dir: Path, which: str = "last") -> LoadedPolicy:
    """The deterministic policy of a run's ``last`` or ``best`` checkpoint, built from the
    checkpoint's policy part alone: no critics, targets, optimizers or environment.

    A checkpoint from before policy parts existed gets its part derived from the full algorithm
    state (the actor's weights) and the environment's sizes and bounds.
    """
    path = checkpoint_path(run_dir, which)
    config = TrainConfig.load(Path(run_dir) / "config.json")
    state = load_checkpoint(path)
    check_compatible(state, config, path)
    step = checkpoint_step(state, path)
    env_id = env_id_from_file(config.env, Path(run_dir) / "config.json")
    part = state["policy"] if "policy" in state else _derived_policy_part(state, config, env_id, path)
    try:
        spec, policy = policy_from_part(part)
    except NmrlError as error:
        raise NmrlError(f"{path}: {error}") from None
    _refuse_false_pattern(policy, path)
    low, high = list(spec.action_low), list(spec.action_high)
    return LoadedPolicy(policy, config, config.env, spec.obs_dim, spec.act_dim, low, high, step, path, spec)


def _derived_policy_part(state: dict[str, Any], config: TrainConfig, env_id: str, path: Path) -> dict[str, Any]:
    """The policy part of a checkpoint written before checkpoints held one: the actor's weights
    from the algorithm state, its sizes and action bounds from the run's environment."""
    modules = state.get("algorithm", {}).get("modules") if isinstance(state.get("algorithm"), dict) else None
    if not isinstance(modules, dict) or not isinstance(modules.get("actor"), dict):
        raise NmrlError(f"{path}: holds no policy and no actor weights; not a complete nmrl checkpoint")
    env = make_env(env_id, kwargs=config.env_kwargs)
    obs_dim, act_dim, low, high = env_dims(env)
    env.close()
    spec = PolicySpec(
        get_algorithm(config.algo).policy_kind,  # a class attribute: nothing is constructed
        obs_dim,
        act_dim,
        tuple(low),
        tuple(high),
        tuple(config.hidden),
        config.activation,
        config.activation_slope,
        config.spec,
    )
    return policy_part(spec, modules["actor"])


# What a run writes before its first checkpoint (``nmrl.train.loop``): a folder holding only these
# (and an empty checkpoints/) is a start that was killed, and a new `nmrl train` may reuse it.
UNSTARTED_RUN_FILES = ("config.json", "metrics.jsonl", COSTS_FILE)
WANDB_FOLDER = "wandb"
"""The folder of a run directory that Weights & Biases writes (``--track``, :mod:`nmrl.train.tracking`):
W&B's own files and links, nothing nmrl writes, so the run-directory checks leave what is inside
to W&B (the folder itself being a link is still refused)."""


def unstarted_run_files(run_dir: Path) -> list[Path] | None:
    """What a run that never reached its first checkpoint left in ``run_dir`` ([] for an empty
    folder), or None when the folder holds anything else: a checkpoint, a foreign file or a link."""
    found = []
    for child in Path(run_dir).iterdir():
        if child.is_symlink():
            return None
        if child.name == LOCK_FILE:
            continue
        if child.name == "checkpoints" and child.is_dir():
            ours = all(_is_temp_file(grandchild) for grandchild in child.iterdir())  # no checkpoint yet
        elif child.name == WANDB_FOLDER:
            ours = child.is_dir()  # what W&B wrote for a --track start
        else:
            names = child.name in UNSTARTED_RUN_FILES or child.name.startswith(EVENTS_PREFIX)
            ours = child.is_file() and (names or _is_temp_file(child))
        if not ours:
            return None
        found.append(child)
    return found


def _is_temp_file(path: Path) -> bool:
    """A temp file of an atomic write (``nmrl.files``) that a kill interrupted."""
    name = path.name
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and path.is_file() and not path.is_symlink()


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
