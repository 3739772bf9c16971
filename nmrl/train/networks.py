"""The networks of TD3-family agents: MLPs, deterministic and Gaussian actors, critics.

Sparsity is applied afterwards (:mod:`nmrl.train.sparse`); :mod:`nmrl.train.policy` rebuilds a
trained policy from its saved spec with these classes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from nmrl.train.activations import ACTIVATION_NAMES

ACTIVATIONS: dict[str, type[nn.Module]] = dict(zip(ACTIVATION_NAMES, (nn.ReLU, nn.LeakyReLU, nn.Tanh), strict=True))


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


def mlp_parameters(in_dim: int, out_dim: int, hidden: Sequence[int]) -> int:
    """Weights and biases of :func:`mlp` with these sizes, counted without building it."""
    widths = [in_dim, *hidden, out_dim]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in itertools.pairwise(widths))


# float32 bytes per weight of an actor-critic in training, at the least: the weight and its target
# copy, its gradient, Adam's two moments (masks and the 2:4 fast path's copies come on top).
TRAINING_BYTES_PER_WEIGHT = 5 * 4


def check_networks_fit(obs_dim: int, act_dim: int, hidden: Sequence[int], device: torch.device) -> None:
    """:class:`NmrlError` when an actor and two critics of these widths cannot be trained in the
    device's memory: checked before they are built, as the replay buffer is, because building them
    would end in the kernel's OOM kill (no message) or an allocator error."""
    from nmrl.errors import NmrlError
    from nmrl.files import format_bytes

    weights = mlp_parameters(obs_dim, 2 * act_dim, hidden) + 2 * mlp_parameters(obs_dim + act_dim, 1, hidden)
    needed = weights * TRAINING_BYTES_PER_WEIGHT
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise NmrlError(
            f"--hidden {' '.join(map(str, hidden))}: the actor and critics hold {weights:,} weights and need at "
            f"least {format_bytes(needed)} to train, more than the {format_bytes(available)} of {device.type} "
            "memory here"
        )


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


# The actor's log standard deviation is squashed into this range (as CleanRL and SpinningUp do):
# wide enough for near-deterministic and near-uniform policies, bounded so exp() stays finite.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianActor(nn.Module):
    """A tanh-squashed Gaussian policy: one MLP outputs the mean and log-std of each action
    dimension; actions are ``tanh(sample)`` rescaled to the action bounds."""

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
        self.act_dim = act_dim
        self.net = mlp(obs_dim, 2 * act_dim, hidden, activation)
        register_action_bounds(self, action_low, action_high)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-squash Gaussian."""
        mean, log_std = self.net(obs).split(self.act_dim, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action in env units and its log-probability [batch]."""
        mean, log_std = self(obs)
        std = log_std.exp()
        pre_squash = mean + std * torch.randn_like(mean)
        squashed = torch.tanh(pre_squash)
        # log N(pre_squash; mean, std) minus the log-determinant of the squash and rescale.
        gaussian = -0.5 * ((pre_squash - mean) / std).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        correction = torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6)
        log_prob = (gaussian - correction).sum(dim=-1)
        return squashed * self.action_scale + self.action_bias, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self(obs)
        return torch.tanh(mean) * self.action_scale + self.action_bias


class DeterministicPolicy(nn.Module):
    """The actor's mean action, ``tanh(mean)`` rescaled: SAC's evaluated and exported policy.

    It shares the actor's layers (no copy), so it always acts with the current weights; its only
    input is the observation and its only output the action, as ONNX export expects.
    """

    def __init__(self, actor: GaussianActor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.deterministic(obs)
