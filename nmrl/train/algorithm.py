"""The interface every training algorithm implements, and the registry the CLI picks from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nmrl.train.buffer import Batch
from nmrl.train.config import AlgorithmConfig
from nmrl.train.policy import PolicySpec, policy_part
from nmrl.train.sparse_training import SparseTraining


class Algorithm:
    """An off-policy actor-critic learner.

    Subclasses build their networks and optimizers in ``__init__`` through ``self.sparse`` (the
    :class:`~nmrl.train.sparse_training.SparseTraining` that keeps every sparse-training rule),
    list them in ``self.modules`` / ``self.optimizers`` (name -> object), call
    ``self.sparse.enable_fast_path(self.modules)`` last, and implement :meth:`train_step`;
    checkpointing and sparsity logging come from the two dicts. ``modules["actor"]`` is the
    network of the evaluated policy, saved on its own as the checkpoint's policy part, which
    :func:`nmrl.train.policy.build_policy` rebuilds as ``policy_kind`` says.
    """

    policy_kind: str = "deterministic"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        config: AlgorithmConfig,
        device: torch.device,
    ) -> None:
        self.obs_dim, self.act_dim, self.config, self.device = obs_dim, act_dim, config, device
        self.action_bounds = (tuple(map(float, action_low)), tuple(map(float, action_high)))
        self.action_low = torch.as_tensor(action_low, dtype=torch.float32, device=device)
        self.action_high = torch.as_tensor(action_high, dtype=torch.float32, device=device)
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.updates = 0  # gradient updates so far (critic steps)
        self.sparse = SparseTraining(config, device)

    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions for a batch of observations, in env units; ``explore`` adds exploration."""
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient update; returns losses as 0-d tensors (read them only when logging).
        (A whole run is :meth:`nmrl.TD3.learn`; this is one step of it.)"""
        with self.sparse.autocast():
            return self.train_step(batch)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The algorithm's update on one batch, as its paper writes it (:meth:`update` runs it in
        the fast path's precision)."""
        raise NotImplementedError

    def policy(self) -> nn.Module:
        """The deterministic policy (obs -> action in env units) that is evaluated and exported."""
        raise NotImplementedError

    def policy_spec(self) -> PolicySpec:
        """What :meth:`policy` is, short of its weights (saved beside them in every checkpoint)."""
        cfg = self.config
        low, high = self.action_bounds
        return PolicySpec(
            self.policy_kind,
            self.obs_dim,
            self.act_dim,
            low,
            high,
            tuple(cfg.hidden),
            cfg.activation,
            cfg.activation_slope,
            cfg.sparsity,
        )

    def policy_part(self) -> dict[str, Any]:
        """The checkpoint's ``policy`` part: the spec and the actor's weights."""
        return policy_part(self.policy_spec(), self.modules["actor"].state_dict())

    def networks(self) -> dict[str, nn.Module]:
        return dict(self.modules)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "updates": self.updates,
            # fp16 fast path only: the loss scale it has settled on (resumes without a warm-up)
            **({"grad_scaler": self.sparse.scaler.state_dict()} if self.sparse.scaler.is_enabled() else {}),
        }

    def load_state_dict(self, state: dict[str, Any], modules_only: bool = False) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        if not modules_only:
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.updates = int(state["updates"])
            if "grad_scaler" in state and self.sparse.scaler.is_enabled():
                self.sparse.scaler.load_state_dict(state["grad_scaler"])


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(name: str):
    """Class decorator: make an Algorithm available as ``--algo name``."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        ALGORITHMS[name] = cls
        return cls

    return decorate


def get_algorithm(name: str) -> type[Algorithm]:
    """The Algorithm registered as ``name``, importing the module :data:`ALGORITHM_MODULES` names for it."""
    import importlib

    from nmrl.errors import NmrlError
    from nmrl.train.config import ALGORITHM_MODULES

    if name not in ALGORITHM_MODULES:
        raise NmrlError(f"unknown --algo {name!r}; available: {', '.join(ALGORITHM_MODULES)}")
    importlib.import_module(ALGORITHM_MODULES[name])  # its @register fills ALGORITHMS
    if name not in ALGORITHMS:
        raise NmrlError(f"{ALGORITHM_MODULES[name]} registers no algorithm {name!r}")
    return ALGORITHMS[name]
