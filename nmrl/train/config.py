"""Training configuration: one dataclass, the CLI is generated from it (tyro)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nmrl.errors import NmrlError
from nmrl.files import atomic_write_text
from nmrl.sparsity.pattern import NMPattern


@dataclass
class TrainConfig:
    """Defaults reproduce the published TD3 setup (Fujimoto et al. 2018, as in CleanRL/SB3), with
    RNM-TD3's 2:4 sparsity in all six networks."""

    env: str = "Hopper-v5"
    """Gymnasium environment id (MuJoCo v5 tasks are the reference suite)."""
    algo: str = "td3"
    """Algorithm (see nmrl.train.algorithm.ALGORITHMS)."""
    sparsity: str = "2:4"
    """N:M pattern for every Linear of every network ('2:4', '1:4', '1:8', ...), 'dense', or a
    fraction of weights to prune without structure ('0.9'; see --topology)."""
    seed: int = 1
    total_steps: int = 1_000_000
    """Environment steps in all."""
    learning_starts: int = 25_000
    """Uniform-random warm-up steps before the first update."""
    batch_size: int = 256
    buffer_size: int = 1_000_000
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    activation: str = "relu"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak factor of the target networks."""
    policy_noise: float = 0.2
    """Target policy smoothing noise (fraction of the action range's half-width)."""
    noise_clip: float = 0.5
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    exploration_noise: float = 0.1
    mask_interval: int = 1
    """Recompute N:M masks every this many optimizer steps."""
    srste_decay: float = 2e-4
    """SR-STE decay lambda_w of pruned weights (0 = plain straight-through)."""
    semi_structured: bool = False
    """Run 2:4-compatible layers on sparse tensor cores (CUDA, Ampere or newer) under autocast."""
    semi_structured_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Autocast dtype of --semi-structured (bf16 needs no loss scaling)."""
    # -- unstructured sparse baselines (nmrl.train.sparse); ignored by N:M and dense runs --
    topology: Literal["auto", "static", "set", "rigl"] = "auto"
    """Unstructured mask over training: static (SS), set (DS-TD3/DS-SAC random regrowth), rigl
    (gradient regrowth); auto = N:M masks for an N:M --sparsity, static for a fraction."""
    topology_interval: int = 1000
    """Gradient updates between topology updates (set, rigl)."""
    drop_fraction: float = 0.05
    """Fraction of each sparse layer's active weights dropped and regrown per topology update."""
    topology_end_step: int = 0
    """Gradient update after which the topology is frozen (0 = never for set, 75% of training for rigl)."""
    density_allocation: Literal["erdos_renyi", "uniform"] = "erdos_renyi"
    """How a global unstructured sparsity is split over the layers."""
    sparse_layers: Literal["hidden", "all"] = "hidden"
    """Unstructured layers: every Linear but each network's output layer (hidden, as DS-TD3), or all."""
    optimizer: Literal["adam", "masked-adam"] = "adam"
    """masked-adam (TowS) keeps gradient and Adam moments at zero where weights are inactive."""
    activation_slope: float = 0.01
    """Negative slope of --activation leaky_relu."""
    # -- SAC --
    alpha: float = 1.0
    """SAC: initial entropy temperature (kept fixed with --no-autotune-alpha)."""
    autotune_alpha: bool = True
    """SAC: learn the temperature towards the target entropy -act_dim."""
    eval_every: int = 5_000
    eval_episodes: int = 10
    stop_at_return: float | None = None
    """Stop early once an evaluation's mean return reaches this (None = run all steps)."""
    checkpoint_every: int = 50_000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""
    runs_dir: Path = Path("runs")
    """Parent folder of new run directories."""
    run_name: str = ""
    """Run directory name; empty = <env>__<algo>__<sparsity>__s<seed>__<time>."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""

    def validate(self) -> None:
        """Raise :class:`NmrlError` for settings that cannot work."""
        from nmrl.train.sparse import validate_sparsity

        validate_sparsity(self)
        positive = (
            "total_steps",
            "batch_size",
            "buffer_size",
            "policy_delay",
            "mask_interval",
            "eval_every",
            "eval_episodes",
            "checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise NmrlError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.learning_starts < self.batch_size:
            raise NmrlError(
                f"--learning-starts ({self.learning_starts}) must be at least --batch-size ({self.batch_size})"
            )
        if not self.hidden or any(width < 1 for width in self.hidden):
            raise NmrlError(f"--hidden needs positive widths, got {self.hidden}")
        if self.semi_structured:
            self._validate_semi_structured()
        if not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise NmrlError("--tau must be in (0, 1] and --gamma in [0, 1]")
        for name in ("actor_lr", "critic_lr", "alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise NmrlError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        for name in ("policy_noise", "noise_clip", "exploration_noise", "srste_decay", "activation_slope"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise NmrlError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.stop_at_return is not None and not math.isfinite(self.stop_at_return):
            raise NmrlError(f"--stop-at-return must be a finite number, got {self.stop_at_return}")
        from nmrl.train.networks import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise NmrlError(f"unknown --activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.threads < 0:
            raise NmrlError(f"--threads must be >= 0 (0 = torch's default), got {self.threads}")

    def _validate_semi_structured(self) -> None:
        """Fail before a run directory exists when the 2:4 fast path cannot run here."""
        from nmrl.sparsity.nm_core import fits_2of4
        from nmrl.sparsity.semi_structured import probe_semi_structured

        if self.pattern.is_dense or not fits_2of4(self.pattern):
            raise NmrlError(
                f"--semi-structured needs a --sparsity that fits 2:4 (2:4, 1:4, 2:8, ...), not {self.sparsity!r}"
            )
        if self.device == "cpu":
            raise NmrlError("--semi-structured needs --device cuda (or auto on a GPU machine)")
        support = probe_semi_structured()
        if not support.available:
            raise NmrlError(f"--semi-structured: 2:4 kernels do not work here: {support.reason}")

    @property
    def pattern(self) -> NMPattern:
        return NMPattern.parse(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["runs_dir"] = str(self.runs_dir)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config a saved dict describes; :class:`NmrlError` for unknown or missing settings and
        for values of the wrong type (a config file is untrusted input)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NmrlError(f"config has settings this nmrl does not know: {', '.join(unknown)}")
        # A default would silently change what the saved networks mean (a Hopper-v5 default for a
        # config that lost its env), so these must be present.
        missing = [name for name in ARCHITECTURE_FIELDS if name not in data]
        if missing:
            raise NmrlError(f"config lacks {', '.join(missing)}: not a complete nmrl config")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _fits_type(value, hints[name]):
                raise NmrlError(f"config setting {name}={value!r} is not a valid {_type_name(hints[name])}")
        values = dict(data)
        if "runs_dir" in values:
            values["runs_dir"] = Path(values["runs_dir"])
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise NmrlError(f"{path}: no such file (is this an nmrl run directory?)") from None
        except json.JSONDecodeError as error:
            raise NmrlError(f"{path}: not valid JSON ({error})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise NmrlError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
        if not isinstance(data, dict):
            raise NmrlError(f"{path}: not an nmrl config")
        try:
            return cls.from_dict(data)
        except NmrlError as error:
            raise NmrlError(f"{path}: {error}") from None


# Settings that fix the shapes and meaning of the saved networks: a checkpoint only loads into a
# run whose config agrees on all of them.
ARCHITECTURE_FIELDS = ("env", "algo", "sparsity", "hidden", "activation")


def _fits_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint`` (int, float, str, bool, Path,
    Literal[...], X | None, tuple[int, ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_fits_type(item, args[0]) for item in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, str)
    return True  # a type without a JSON rule here: the dataclass and validate() judge it


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "choice of " + ", ".join(map(repr, typing.get_args(hint)))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
