"""The sparsity setting as a typed value: N:M, unstructured (fraction + topology) or dense.

A run's ``--sparsity`` is text on the command line and in ``config.json`` (``"2:4"``, ``"dense"``,
``"0.9"`` with ``--topology``); :func:`parse_sparsity` turns it into one of the three values below,
once, at the edge. Everything past the edge (sparsifying networks, cost accounting, the 2:4 fast
path, export's N:M claim) takes the value and branches on its type, never on the text.
Torch-free, like :mod:`nmrl.sparsity.pattern`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from nmrl.errors import NmrlError
from nmrl.sparsity.pattern import NMPattern

NM_GRADIENTS = ("ste", "active")
"""Which shadow weights of an N:M layer learn: ``ste`` every one (straight-through, SR-STE's decay on
the pruned ones), ``active`` only the kept ones."""
DEFAULT_NM_GRADIENT: Final = "active"
"""The default of every N:M layer and run: on HalfCheetah-v5 ``ste`` held 2:4 at 0.78 of dense and
``active`` reached 1.02 (docs/baselines.md, "Why 2:4 fell behind dense on HalfCheetah")."""

Topology = Literal["static", "set", "rigl"]
"""How an unstructured mask moves over training: static (SS), set (random regrowth, DS-TD3 /
DS-SAC), rigl (gradient regrowth)."""
Allocation = Literal["erdos_renyi", "uniform"]
SparseLayers = Literal["hidden", "all"]
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)


@dataclass(frozen=True)
class Dense:
    """No sparsity: every weight is kept."""

    def __str__(self) -> str:
        return "dense"


@dataclass(frozen=True)
class NMSparsity:
    """Every Linear of every network obeys ``pattern`` (never the dense pattern: that is :class:`Dense`)."""

    pattern: NMPattern

    def __post_init__(self) -> None:
        if self.pattern.is_dense:
            raise NmrlError(f"N:M sparsity needs a sparse pattern, got {self.pattern}")

    def __str__(self) -> str:
        return str(self.pattern)


@dataclass(frozen=True)
class UnstructuredSparsity:
    """A fraction of the sparse layers' weights pruned without structure.

    ``allocation`` splits the fraction over the layers; ``layers`` says which Linears are sparse
    (``hidden``: all but each network's output layer, as DS-TD3; ``all``).
    """

    fraction: float
    topology: Topology = "static"
    allocation: Allocation = "erdos_renyi"
    layers: SparseLayers = "hidden"

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise NmrlError(f"unstructured sparsity needs a number, got {self.fraction!r}")
        if not (math.isfinite(self.fraction) and 0.0 < self.fraction < 1.0):
            raise NmrlError(f"invalid --sparsity {self.fraction!r}: an unstructured sparsity is a fraction in (0, 1)")
        for name, value, choices in (
            ("topology", self.topology, TOPOLOGIES),
            ("density-allocation", self.allocation, ALLOCATIONS),
            ("sparse-layers", self.layers, get_args(SparseLayers)),
        ):
            if value not in choices:
                raise NmrlError(f"unknown --{name} {value!r}; choose from {', '.join(choices)}")

    def __str__(self) -> str:
        return repr(float(self.fraction))


Sparsity = Dense | NMSparsity | UnstructuredSparsity


def parse_sparsity(
    text: str,
    topology: str = "auto",
    allocation: str = "erdos_renyi",
    layers: str = "hidden",
) -> Sparsity:
    """The one parser of the sparsity setting: ``"2:4"`` -> NMSparsity, ``"dense"`` (or ``"1:1"``)
    -> Dense, ``"0.9"`` -> UnstructuredSparsity(0.9, topology); ``topology="auto"`` means static
    for a fraction. The unstructured options are refused for N:M and dense settings only when
    they ask for a moving topology (the others are harmless defaults there)."""
    if not isinstance(text, str):
        raise NmrlError(f"--sparsity must be text like '2:4', 'dense' or '0.9', got {text!r}")
    stripped = text.strip()
    if ":" in stripped or stripped.lower() == "dense":
        pattern = NMPattern.parse(stripped)
        if topology != "auto":
            raise NmrlError(
                f"--topology {topology} is for unstructured sparsity (--sparsity 0.9); N:M masks "
                "follow the weights' magnitude every --mask-interval steps"
            )
        return Dense() if pattern.is_dense else NMSparsity(pattern)
    try:
        fraction = float(stripped)
    except ValueError:
        raise NmrlError(
            f"invalid --sparsity {text!r}: expected an N:M pattern ('2:4'), 'dense', or a fraction of "
            "weights to prune for unstructured sparsity ('0.9')"
        ) from None
    if topology not in ("auto", *TOPOLOGIES):
        raise NmrlError(f"unknown --topology {topology!r}; choose from auto, {', '.join(TOPOLOGIES)}")
    chosen = "static" if topology == "auto" else topology
    return UnstructuredSparsity(fraction, chosen, allocation, layers)  # type: ignore[arg-type]


def nm_pattern(spec: Sparsity) -> NMPattern | None:
    """The N:M pattern a sparsity setting promises (None for dense and unstructured: no N:M claim)."""
    return spec.pattern if isinstance(spec, NMSparsity) else None


def sparsity_to_dict(spec: Sparsity) -> dict[str, Any]:
    """A JSON form of ``spec`` (checkpoints' policy part)."""
    if isinstance(spec, UnstructuredSparsity):
        return {
            "kind": "unstructured",
            "fraction": spec.fraction,
            "topology": spec.topology,
            "allocation": spec.allocation,
            "layers": spec.layers,
        }
    if isinstance(spec, NMSparsity):
        return {"kind": "nm", "pattern": str(spec.pattern)}
    return {"kind": "dense"}


def sparsity_from_dict(data: Any) -> Sparsity:
    """The inverse of :func:`sparsity_to_dict`; :class:`NmrlError` for anything else (files are
    untrusted input)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    try:
        if kind == "dense":
            return Dense()
        if kind == "nm":
            return NMSparsity(NMPattern.parse(data["pattern"]))
        if kind == "unstructured":
            return UnstructuredSparsity(data["fraction"], data["topology"], data["allocation"], data["layers"])
    except (KeyError, NmrlError) as error:
        raise NmrlError(f"malformed sparsity setting {data!r} ({error})") from None
    raise NmrlError(f"unknown sparsity setting {data!r}")
