"""A trained policy on its own: what it is (:class:`PolicySpec`) and its weights.

Every checkpoint carries a ``policy`` part, ``{"spec": PolicySpec.to_dict(), "actor": actor
weights}``, so export, evaluation and deployment rebuild the deterministic policy from it alone:
no critics, no target networks, no optimizers, no environment. Checkpoints written before the part
existed get it derived from their full algorithm state (``nmrl.train.run``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmrl.errors import NmrlError, gist
from nmrl.sparsity import sparsify
from nmrl.sparsity.spec import NMSparsity, Sparsity, UnstructuredSparsity, sparsity_from_dict, sparsity_to_dict
from nmrl.train.checkpoint import nonfinite_tensors
from nmrl.train.networks import ACTIVATIONS, Actor, DeterministicPolicy, GaussianActor
from nmrl.train.normalization import NormalizedPolicy, ObsNormalization
from nmrl.train.sparse import set_leaky_relu_slope, sparsify_unstructured_network

POLICY_KINDS = ("deterministic", "gaussian")
"""deterministic: TD3's tanh actor; gaussian: SAC's squashed Gaussian actor, evaluated at its mean."""


@dataclass(frozen=True)
class PolicySpec:
    """Everything that fixes a policy's shapes and meaning, short of its weights."""

    kind: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    hidden: tuple[int, ...]
    activation: str
    activation_slope: float
    sparsity: Sparsity

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in POLICY_KINDS:
            problems.append(f"kind {self.kind!r}")
        if not all(_is_int(d) and d > 0 for d in (self.obs_dim, self.act_dim)):
            problems.append(f"sizes obs={self.obs_dim!r} act={self.act_dim!r}")
        if not self.hidden or not all(_is_int(w) and w > 0 for w in self.hidden):
            problems.append(f"hidden {self.hidden!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r}")
        if not _is_finite(self.activation_slope):
            problems.append(f"activation slope {self.activation_slope!r}")
        bounds = (self.action_low, self.action_high)
        if not all(len(b) == self.act_dim and all(map(_is_finite, b)) for b in bounds):
            problems.append("action bounds")
        if problems:
            raise NmrlError(f"policy spec has an invalid {', '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "hidden": list(self.hidden),
            "activation": self.activation,
            "activation_slope": self.activation_slope,
            "sparsity": sparsity_to_dict(self.sparsity),
        }

    @classmethod
    def from_dict(cls, data: Any) -> PolicySpec:
        """The spec a saved dict describes; :class:`NmrlError` for anything else (untrusted input)."""
        if not isinstance(data, dict):
            raise NmrlError("policy spec is not a mapping")
        try:
            return cls(
                kind=data["kind"],
                obs_dim=data["obs_dim"],
                act_dim=data["act_dim"],
                action_low=tuple(data["action_low"]),
                action_high=tuple(data["action_high"]),
                hidden=tuple(data["hidden"]),
                activation=data["activation"],
                activation_slope=data["activation_slope"],
                sparsity=sparsity_from_dict(data["sparsity"]),
            )
        except (KeyError, TypeError) as error:
            raise NmrlError(f"policy spec is incomplete ({gist(error)})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_policy(spec: PolicySpec) -> tuple[nn.Module, nn.Module]:
    """``(policy, actor)`` as ``spec`` describes them, with untrained weights: ``policy`` maps an
    observation to an action in env units, ``actor`` is the network whose weights checkpoints save
    (the same module for TD3; SAC's policy wraps its Gaussian actor)."""
    args = (spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, spec.hidden, spec.activation)
    actor: nn.Module
    policy: nn.Module
    if spec.kind == "deterministic":
        actor = policy = Actor(*args)
    else:
        actor = GaussianActor(*args)
        policy = DeterministicPolicy(actor)
    set_leaky_relu_slope(actor, spec.activation_slope)
    if isinstance(spec.sparsity, NMSparsity):
        sparsify(actor, spec.sparsity.pattern)
    elif isinstance(spec.sparsity, UnstructuredSparsity):
        # A loaded policy's masks never move, so its layers are static (a moving topology's
        # schedule is a training setting). The random masks are overwritten by the saved ones; a
        # generator of its own keeps loading from moving torch's global random stream.
        frozen = dataclasses.replace(spec.sparsity, topology="static")
        sparsify_unstructured_network(actor, frozen, generator=torch.Generator().manual_seed(0))
    return policy, actor


def policy_part(spec: PolicySpec, actor_weights: dict[str, Any]) -> dict[str, Any]:
    """The ``policy`` part of a checkpoint: the spec and the actor's state dict."""
    return {"spec": spec.to_dict(), "actor": actor_weights}


def policy_from_part(part: Any) -> tuple[PolicySpec, nn.Module]:
    """The spec and the deterministic policy (CPU, eval mode) of a checkpoint's ``policy`` part;
    :class:`NmrlError` when it is malformed, does not fit its spec or holds NaN/inf weights.

    A part with ``obs_normalization`` (a ``--normalize-obs`` run) gives a policy on raw
    observations: the frozen normalisation, then the actor (:class:`~nmrl.train.normalization.NormalizedPolicy`)."""
    if not isinstance(part, dict) or not isinstance(part.get("actor"), dict):
        raise NmrlError("the checkpoint's policy part is malformed")
    spec = PolicySpec.from_dict(part.get("spec"))
    policy, actor = build_policy(spec)
    try:
        actor.load_state_dict(part["actor"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise NmrlError(f"the policy's weights do not fit its spec ({gist(error)})") from None
    broken = nonfinite_tensors(actor.state_dict())
    if broken:
        raise NmrlError(f"the policy holds NaN/inf weights ({', '.join(broken[:3])}); nothing to run")
    if "obs_normalization" in part:
        policy = NormalizedPolicy(ObsNormalization.from_part(part["obs_normalization"], spec.obs_dim), policy)
    return spec, policy.eval()
