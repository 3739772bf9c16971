"""The MLPs of TD3-family agents. Sparsity is applied afterwards by ``nmrl.sparsity.sparsify``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear-activation-...-Linear with the given hidden widths (no output activation)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    widths = [in_dim, *hidden]
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(widths[-1], out_dim))
    return nn.Sequential(*layers)


def register_action_bounds(module: nn.Module, action_low: Sequence[float], action_high: Sequence[float]) -> None:
    """Give a policy the buffers ``action_scale`` and ``action_bias`` that map tanh's (-1, 1) onto
    the env's action bounds (buffers, so they follow ``.to(device)`` and land in checkpoints)."""
    low = torch.as_tensor(action_low, dtype=torch.float32)
    high = torch.as_tensor(action_high, dtype=torch.float32)
    module.register_buffer("action_scale", (high - low) / 2)
    module.register_buffer("action_bias", (high + low) / 2)


class Actor(nn.Module):
    """Deterministic policy: ``tanh(mlp(obs))`` rescaled to the action bounds."""

    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation)
        register_action_bounds(self, action_low, action_high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_scale + self.action_bias


class Critic(nn.Module):
    """Q(obs, action): an MLP on the concatenated observation and action."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu"
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)
