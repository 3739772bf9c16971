"""A replay buffer preallocated on the training device."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from nmrl.errors import NmrlError, gist
from nmrl.files import format_bytes, physical_memory


class Batch(NamedTuple):
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    """1.0 where the episode ended in a terminal state (no bootstrap); truncation is not terminal."""


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions, sampled uniformly with its own generator."""

    @classmethod
    def allocate(cls, capacity: int, obs_dim: int, act_dim: int, device: torch.device, seed: int = 0) -> ReplayBuffer:
        """A buffer, or :class:`NmrlError` when ``capacity`` transitions cannot fit in memory."""
        needed = capacity * (2 * obs_dim + act_dim + 2) * 4
        if device.type == "cuda":
            available = torch.cuda.get_device_properties(device).total_memory
        else:
            available = physical_memory()
        if needed > available:
            raise NmrlError(
                f"--buffer-size {capacity:,} needs {format_bytes(needed)} for this env, more than the "
                f"{format_bytes(available)} of {device.type} memory here"
            )
        try:
            return cls(capacity, obs_dim, act_dim, device, seed)
        except (MemoryError, RuntimeError) as error:
            reason = gist(error, 1)
            raise NmrlError(f"--buffer-size {capacity:,} ({format_bytes(needed)}) does not fit: {reason}") from None

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device, seed: int = 0) -> None:
        self.capacity, self.device = capacity, device
        # obs and next_obs, action, reward and terminal flag: float32 each
        self.obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.action = torch.zeros((capacity, act_dim), dtype=torch.float32, device=device)
        self.reward = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.next_obs = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=device)
        self.terminated = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.position = 0  # next slot to write
        self.size = 0
        # Sampling indices are drawn on the CPU so the stream is the same on every device.
        self.generator = torch.Generator().manual_seed(seed)
        # On the CPU, numpy views let `add` write a transition without building tensors.
        self._cpu_views = (
            [t.numpy() for t in (self.obs, self.action, self.reward, self.next_obs, self.terminated)]
            if device.type == "cpu"
            else None
        )

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.position
        if self._cpu_views is not None:
            obs_v, action_v, reward_v, next_obs_v, terminated_v = self._cpu_views
            obs_v[i], action_v[i], reward_v[i], next_obs_v[i], terminated_v[i] = (
                obs,
                action,
                reward,
                next_obs,
                float(terminated),
            )
        else:
            self.obs[i] = torch.as_tensor(obs, dtype=torch.float32)
            self.action[i] = torch.as_tensor(action, dtype=torch.float32)
            self.reward[i] = float(reward)
            self.next_obs[i] = torch.as_tensor(next_obs, dtype=torch.float32)
            self.terminated[i] = float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        index = torch.randint(0, self.size, (batch_size,), generator=self.generator).to(self.device)
        return Batch(
            self.obs[index], self.action[index], self.reward[index], self.next_obs[index], self.terminated[index]
        )

    def state_dict(self) -> dict[str, Any]:
        """The filled part only (a fresh run's buffer is mostly empty)."""
        filled = slice(0, self.size)
        return {
            "obs": self.obs[filled].cpu().clone(),
            "action": self.action[filled].cpu().clone(),
            "reward": self.reward[filled].cpu().clone(),
            "next_obs": self.next_obs[filled].cpu().clone(),
            "terminated": self.terminated[filled].cpu().clone(),
            "position": self.position,
            "size": self.size,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity or state["obs"].shape[1:] != self.obs.shape[1:]:
            raise ValueError("replay buffer shapes differ from the checkpoint's")
        size = state["size"]
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            getattr(self, name)[:size] = state[name].to(self.device)
        self.position, self.size = state["position"], size
        self.generator.set_state(state["generator"])
