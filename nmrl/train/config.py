"""Training configuration: dataclasses, the CLI is generated from them (tyro).

A :class:`TrainConfig` is the settings every run shares (env, algorithm, network, optimization,
evaluation, run directory) plus one option group per algorithm or sparsity family
(:class:`TD3Options`, :class:`SACOptions`, :class:`NMOptions`, :class:`UnstructuredOptions`,
:class:`FastPathOptions`). The groups' flags carry no prefix (``--policy-delay``, not
``--td3.policy-delay``) and ``--help`` shows each group in its own panel. :class:`SharedConfig` is
a TrainConfig without the settings a grid of runs chooses per cell (sparsity, seed, run name).

``config.json`` holds the nested form; a flat one (nmrl before option groups) is converted on load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tyro
from tyro.constructors import PrimitiveConstructorSpec

from nmrl.errors import NmrlError
from nmrl.files import atomic_write_text
from nmrl.sparsity.nm_core import fits_2of4
from nmrl.sparsity.spec import DEFAULT_NM_GRADIENT, NMSparsity, Sparsity, UnstructuredSparsity, parse_sparsity
from nmrl.train.activations import ACTIVATION_NAMES

ALGORITHM_MODULES: dict[str, str] = {"td3": "nmrl.train.td3", "sac": "nmrl.train.sac"}
"""The algorithms --algo offers, each by the module whose ``@register`` makes it (imported only
when that algorithm runs: :func:`nmrl.train.algorithm.get_algorithm`)."""

# The choices --help shows and config.json is checked against, derived from the two registries.
if TYPE_CHECKING:
    AlgoName = str
    ActivationName = str
else:
    AlgoName = Literal[tuple(ALGORITHM_MODULES)]
    ActivationName = Literal[ACTIVATION_NAMES]


def _env_kwargs_from_text(args: list[str]) -> dict[str, Any]:
    # nmrl.envs imports Gymnasium, and a config must load without it (gpu_check's training step on
    # a GPU machine that has no MuJoCo; compare's workers before their env exists)
    from nmrl.envs import parse_env_kwargs

    return parse_env_kwargs(args[0])


EnvKwargs = Annotated[
    dict[str, Any],
    PrimitiveConstructorSpec(
        nargs=1,
        metavar="JSON",
        instance_from_str=_env_kwargs_from_text,
        is_instance=lambda value: isinstance(value, dict),
        str_from_instance=lambda value: [json.dumps(value)],
    ),
]
"""--env-kwargs on the command line: a JSON object; in config.json: that object."""


@dataclass
class TD3Options:
    """TD3's settings (ignored by SAC)."""

    policy_noise: float = 0.2
    """Target policy smoothing noise (fraction of the action range's half-width)."""
    noise_clip: float = 0.5
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    exploration_noise: float = 0.1


@dataclass
class SACOptions:
    """SAC's settings (ignored by TD3)."""

    alpha: float = 1.0
    """SAC: initial entropy temperature (kept fixed with --no-autotune-alpha)."""
    autotune_alpha: bool = True
    """SAC: learn the temperature towards the target entropy -act_dim."""


@dataclass
class NMOptions:
    """How N:M masks are trained (ignored by dense and unstructured runs)."""

    mask_interval: int = 1
    """Recompute N:M masks every this many optimizer steps."""
    srste_decay: float = 2e-4
    """SR-STE decay lambda_w of pruned weights (0 = plain straight-through)."""
    gradient: Literal["ste", "active"] = DEFAULT_NM_GRADIENT
    """Which shadow weights learn: active = only the kept ones (the default), ste = all
    (straight-through + SR-STE; --srste-decay applies to it only). docs/baselines.md, "Why 2:4 fell
    behind dense on HalfCheetah", has the ablation that chose the default."""
    nm_networks: Literal["all", "actor"] = "all"
    """Which networks are N:M: all (actor, critics and their targets, RNM-TD3), or the actor (and its
    target) only, the critics dense."""
    nm_layers: Literal["all", "hidden"] = "all"
    """Which Linears of an N:M network are N:M: all, or the hidden-to-hidden ones only (first and
    output layers dense)."""
    target_masks: Literal["remask", "copy"] = "remask"
    """Target networks' masks: re-selected from their own Polyak-averaged shadow weights (remask),
    or copied from their online networks after each update (copy)."""


@dataclass
class UnstructuredOptions:
    """Unstructured sparse baselines (--sparsity 0.9); ignored by N:M and dense runs."""

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


@dataclass
class FastPathOptions:
    """The 2:4 fast path on sparse tensor cores (CUDA, Ampere or newer)."""

    semi_structured: bool = False
    """Run 2:4-compatible layers on sparse tensor cores (CUDA, Ampere or newer) under autocast."""
    semi_structured_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Autocast dtype of --semi-structured (bf16 needs no loss scaling)."""


@dataclass(frozen=True)
class AlgorithmConfig:
    """What an algorithm and its :class:`~nmrl.train.sparse_training.SparseTraining` are built from:
    the networks, their optimization and their sparsity. Where a run is kept, how it is evaluated
    and shown (``runs_dir``, ``eval_every``, ``progress``, ...) never reaches an algorithm; a
    :class:`TrainConfig` gives this part with :meth:`TrainConfig.algorithm_config`."""

    sparsity: Sparsity
    """The typed sparsity setting every network of the algorithm gets."""
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    activation_slope: float = 0.01
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    """The update's batch (the 2:4 fast path measures its kernels at this size)."""
    planned_updates: int = 1
    """Gradient updates the run plans (RigL stops moving connections at 75% of them by default)."""
    td3: TD3Options = field(default_factory=TD3Options)
    sac: SACOptions = field(default_factory=SACOptions)
    nm: NMOptions = field(default_factory=NMOptions)
    unstructured: UnstructuredOptions = field(default_factory=UnstructuredOptions)
    fast_path: FastPathOptions = field(default_factory=FastPathOptions)


@dataclass
class SharedConfig:
    """Every training setting except sparsity, seed and run name (which a grid sets per cell).
    Defaults reproduce the published TD3 setup (Fujimoto et al. 2018, as in CleanRL/SB3)."""

    env: str = "Hopper-v5"
    """Gymnasium environment id (MuJoCo v5 tasks are the reference suite), or module:EnvId for your own."""
    env_kwargs: EnvKwargs = field(default_factory=dict)
    """Settings of the env, as a JSON object for gymnasium.make: '{"ctrl_cost_weight": 0.05}'."""
    algo: AlgoName = "td3"
    """Algorithm."""
    normalize_obs: bool = False
    """Normalise observations by their running mean and variance, as SB3's VecNormalize (carried into
    the exported ONNX graph, which then takes raw observations)."""
    clip_obs: float = 10.0
    """With --normalize-obs: clip normalised observations to [-clip, clip]."""
    total_steps: int = 1_000_000
    """Environment steps in all."""
    learning_starts: int = 25_000
    """Uniform-random warm-up steps before the first update."""
    batch_size: int = 256
    buffer_size: int = 1_000_000
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    activation: ActivationName = "relu"
    activation_slope: float = 0.01
    """Negative slope of --activation leaky_relu."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak factor of the target networks."""
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
    progress: bool = True
    """Show a progress bar (on a terminal)."""
    td3: Annotated[TD3Options, tyro.conf.OmitArgPrefixes] = field(default_factory=TD3Options)
    sac: Annotated[SACOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=SACOptions)
    nm: Annotated[NMOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=NMOptions)
    unstructured: Annotated[UnstructuredOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=UnstructuredOptions)
    fast_path: Annotated[FastPathOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=FastPathOptions)

    def setting(self, name: str) -> Any:
        """The value of the setting whose flag is ``--name`` (``policy_delay``), whichever group holds it."""
        group = GROUP_OF.get(name)
        return getattr(getattr(self, group), name) if group is not None else getattr(self, name)

    def with_settings(self, **settings: Any) -> typing.Self:
        """A copy with ``settings`` changed, each named as its flag is (``policy_delay=3``, not
        ``td3=...``): the one way to change a setting whichever group holds it."""
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name, value in settings.items():
            group = GROUP_OF.get(name)
            if group is not None:
                groups.setdefault(group, {})[name] = value
            elif name in {f.name for f in dataclasses.fields(self)} and name not in OPTION_GROUPS:
                top[name] = value
            else:
                raise NmrlError(f"unknown setting {name!r}")
        for group, values in groups.items():
            top[group] = dataclasses.replace(getattr(self, group), **values)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data, grouped as the dataclasses are (``config.json``)."""
        data = dataclasses.asdict(self)
        data["runs_dir"] = str(self.runs_dir)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The settings a saved dict describes (nested or flat); :class:`NmrlError` for unknown
        settings and values of the wrong type (a saved file is untrusted input)."""
        return _checked(cls, _nested(data))

    def flat_settings(self) -> dict[str, Any]:
        """Every setting by its flag name (``policy_delay``, not ``td3``), groups flattened."""
        data = self.to_dict()
        groups = {name: data.pop(name) for name in OPTION_GROUPS if name in data}
        return {**data, **{key: value for values in groups.values() for key, value in values.items()}}


@dataclass
class TrainConfig(SharedConfig):
    """One run's settings. Defaults reproduce the published TD3 setup with RNM-TD3's 2:4 sparsity
    in all six networks."""

    sparsity: str = "2:4"
    """N:M pattern for every Linear of every network ('2:4', '1:4', '1:8', ...), 'dense', or a
    fraction of weights to prune without structure ('0.9'; see --topology)."""
    seed: int = 1
    run_name: str = ""
    """Run directory name; empty = <env>__<algo>__<sparsity>__s<seed>__<time>."""

    @classmethod
    def from_settings(cls, **settings: Any) -> TrainConfig:
        """The default config with ``settings`` (flag names, whatever group holds them) changed."""
        return cls().with_settings(**settings)

    @classmethod
    def from_shared(cls, shared: SharedConfig, **settings: Any) -> TrainConfig:
        """A grid cell's config: ``shared`` with the cell's ``settings`` (sparsity, seed, run
        name, and whatever else its method sets, by flag name)."""
        values = {f.name: getattr(shared, f.name) for f in dataclasses.fields(SharedConfig)}
        return cls(**values).with_settings(**settings)

    def validate(self) -> None:
        """Raise :class:`NmrlError` for settings that cannot work."""
        self._validate_sparsity()
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
            if self.setting(name) < 1:
                raise NmrlError(f"--{name.replace('_', '-')} must be at least 1, got {self.setting(name)}")
        if self.learning_starts < self.batch_size:
            raise NmrlError(
                f"--learning-starts ({self.learning_starts}) must be at least --batch-size ({self.batch_size})"
            )
        if not self.hidden or any(width < 1 for width in self.hidden):
            raise NmrlError(f"--hidden needs positive widths, got {self.hidden}")
        if self.fast_path.semi_structured:
            self._validate_semi_structured()
        if not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise NmrlError("--tau must be in (0, 1] and --gamma in [0, 1]")
        for name in ("actor_lr", "critic_lr", "alpha"):
            value = self.setting(name)
            if not (math.isfinite(value) and value > 0):
                raise NmrlError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        for name in ("policy_noise", "noise_clip", "exploration_noise", "srste_decay", "activation_slope"):
            value = self.setting(name)
            if not (math.isfinite(value) and value >= 0):
                raise NmrlError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.clip_obs) and self.clip_obs > 0):
            raise NmrlError(f"--clip-obs must be a positive finite number, got {self.clip_obs}")
        if self.stop_at_return is not None and not math.isfinite(self.stop_at_return):
            raise NmrlError(f"--stop-at-return must be a finite number, got {self.stop_at_return}")
        if self.activation not in ACTIVATION_NAMES:
            raise NmrlError(f"unknown --activation {self.activation!r}; choose from {', '.join(ACTIVATION_NAMES)}")
        if self.threads < 0:
            raise NmrlError(f"--threads must be >= 0 (0 = torch's default), got {self.threads}")

    def _validate_sparsity(self) -> None:
        """Raise :class:`NmrlError` for sparsity settings that do not go together."""
        spec, options = self.spec, self.unstructured
        if not isinstance(spec, UnstructuredSparsity) and options.optimizer == "masked-adam":
            raise NmrlError(
                "--optimizer masked-adam is for unstructured sparsity: N:M training needs the "
                "straight-through gradients of pruned weights"
            )
        if options.optimizer not in ("adam", "masked-adam"):
            raise NmrlError(f"unknown --optimizer {options.optimizer!r}; choose adam or masked-adam")
        if options.topology_interval < 1 or options.topology_end_step < 0:
            raise NmrlError("--topology-interval must be >= 1 and --topology-end-step >= 0")
        if not 0.0 <= options.drop_fraction < 1.0:
            raise NmrlError(f"--drop-fraction must be in [0, 1), got {options.drop_fraction}")

    def _validate_semi_structured(self) -> None:
        """Fail before a run directory exists when the 2:4 fast path cannot run here."""
        from nmrl.sparsity.semi_structured import probe_semi_structured

        spec = self.spec
        if isinstance(spec, UnstructuredSparsity):
            raise NmrlError(
                f"--semi-structured: unstructured sparsity (--sparsity {self.sparsity}) has no 2:4 fast path; "
                "use an N:M pattern that fits 2:4 (2:4, 1:4, 2:8, ...)"
            )
        if not isinstance(spec, NMSparsity) or not fits_2of4(spec.pattern):
            raise NmrlError(
                f"--semi-structured needs a --sparsity that fits 2:4 (2:4, 1:4, 2:8, ...), not {self.sparsity!r}"
            )
        if self.device == "cpu":
            raise NmrlError("--semi-structured needs --device cuda (or auto on a GPU machine)")
        support = probe_semi_structured()
        if not support.available:
            raise NmrlError(f"--semi-structured: 2:4 kernels do not work here: {support.reason}")

    @property
    def spec(self) -> Sparsity:
        """The sparsity setting as a typed value (the one parser: :func:`nmrl.sparsity.spec.parse_sparsity`)."""
        options = self.unstructured
        return parse_sparsity(self.sparsity, options.topology, options.density_allocation, options.sparse_layers)

    def algorithm_config(self) -> AlgorithmConfig:
        """The part of this config an algorithm is built from (no run directory, evaluation or display)."""
        return AlgorithmConfig(
            sparsity=self.spec,
            hidden=tuple(self.hidden),
            activation=self.activation,
            activation_slope=self.activation_slope,
            actor_lr=self.actor_lr,
            critic_lr=self.critic_lr,
            gamma=self.gamma,
            tau=self.tau,
            batch_size=self.batch_size,
            planned_updates=max(self.total_steps - self.learning_starts, 1),
            td3=self.td3,
            sac=self.sac,
            nm=self.nm,
            unstructured=self.unstructured,
            fast_path=self.fast_path,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config a saved dict describes, nested or flat (nmrl before option groups);
        :class:`NmrlError` for unknown or missing settings and for values of the wrong type (a
        config file is untrusted input)."""
        # A default would silently change what the saved networks mean (a Hopper-v5 default for a
        # config that lost its env), so these must be present.
        missing = [name for name in ARCHITECTURE_FIELDS if name not in data]
        if missing:
            raise NmrlError(f"config lacks {', '.join(missing)}: not a complete nmrl config")
        return super().from_dict(_with_saved_gradient(data))

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


def _with_saved_gradient(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written before --gradient existed trained every shadow weight (``ste``): they resume
    and reload as they were trained, not with today's default."""
    nm = data.get("nm")
    if isinstance(nm, dict) and "gradient" not in nm:
        return {**data, "nm": {**nm, "gradient": "ste"}}
    if nm is None and "gradient" not in data:
        return {**data, "gradient": "ste"}
    return data


# Settings that fix the shapes and meaning of the saved networks: a checkpoint only loads into a
# run whose config agrees on all of them.
ARCHITECTURE_FIELDS = ("env", "algo", "sparsity", "hidden", "activation")


def check_compatible(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint whose networks were built from a different architecture."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise NmrlError(f"{path}: checkpoint has no config")
    current = config.to_dict()
    for name in ARCHITECTURE_FIELDS:
        if saved.get(name) != current.get(name):
            raise NmrlError(
                f"{path}: checkpoint was trained with {name}={saved.get(name)!r}, this run has {current.get(name)!r}"
            )


OPTION_GROUPS: dict[str, type] = {
    "td3": TD3Options,
    "sac": SACOptions,
    "nm": NMOptions,
    "unstructured": UnstructuredOptions,
    "fast_path": FastPathOptions,
}
# flat setting name (its flag) -> the option group that holds it
GROUP_OF: dict[str, str] = {f.name: group for group, cls in OPTION_GROUPS.items() for f in dataclasses.fields(cls)}


def _nested(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with flat settings of option groups (``policy_delay``) moved into their group."""
    nested = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for group in OPTION_GROUPS:
        if not isinstance(nested.setdefault(group, {}), dict):
            raise NmrlError(f"config setting {group}={nested[group]!r} is not a group of settings")
    for name in [key for key in nested if key in GROUP_OF]:
        nested[GROUP_OF[name]][name] = nested.pop(name)
    return nested


def _checked(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with option groups built from their dicts, after checking every name and type."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NmrlError(f"config has settings this nmrl does not know: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if name in OPTION_GROUPS:
            values[name] = _checked(OPTION_GROUPS[name], value)
            continue
        if not _fits_type(value, hints[name]):
            raise NmrlError(f"config setting {name}={value!r} is not a valid {_type_name(hints[name])}")
        values[name] = value
    if "runs_dir" in values:
        values["runs_dir"] = Path(values["runs_dir"])
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return cls(**values)


def _fits_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint`` (int, float, str, bool, Path,
    Literal[...], X | None, tuple[int, ...], dict[str, Any])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_fits_type(item, args[0]) for item in value)
    if origin is Annotated:
        return _fits_type(value, args[0])
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
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
