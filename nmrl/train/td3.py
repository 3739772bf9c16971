"""TD3 (Fujimoto et al., 2018) and RNM-TD3: the same algorithm with all six networks N:M.

With ``--sparsity N:M`` every Linear of the actor, both critics and their three targets is an
NMLinear: the forward pass uses the masked weight, gradients reach the dense shadow weights
(SR-STE), masks are refreshed after optimizer steps, and targets Polyak-average the shadow
weights and then re-mask, so they are N:M after every update too.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nmrl.sparsity import masked_layers, refresh_masks
from nmrl.train.algorithm import Algorithm, register
from nmrl.train.buffer import Batch
from nmrl.train.config import TrainConfig
from nmrl.train.networks import Actor, Critic
from nmrl.train.sparse import make_optimizer, sparsify_network


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Skip weight gradients of ``module`` (the actor loss differentiates through a critic
    but must not compute, or touch, the critic's own gradients)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, over all parameters (shadow weights included)."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


@register("td3")
class TD3(Algorithm):
    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        config: TrainConfig,
        device: torch.device,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, config, device)
        self.actor = Actor(obs_dim, act_dim, action_low, action_high, config.hidden, config.activation)
        self.critic1 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        self.critic2 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        # The actor steps once per policy_delay updates; topology schedules count updates.
        sparsify_network(self.actor, config, update_every=config.policy_delay)
        sparsify_network(self.critic1, config)
        sparsify_network(self.critic2, config)
        for online in (self.actor, self.critic1, self.critic2):
            online.to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic1_target = copy.deepcopy(self.critic1).requires_grad_(False)
        self.critic2_target = copy.deepcopy(self.critic2).requires_grad_(False)
        self.actor_optimizer = make_optimizer(self.actor, config.actor_lr, config, fused=device.type != "mps")
        self.critic_optimizer = make_optimizer(
            [self.critic1, self.critic2], config.critic_lr, config, fused=device.type != "mps"
        )
        self.modules = {
            "actor": self.actor,
            "critic1": self.critic1,
            "critic2": self.critic2,
            "actor_target": self.actor_target,
            "critic1_target": self.critic1_target,
            "critic2_target": self.critic2_target,
        }
        self.optimizers = {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
        self.precision = contextlib.nullcontext
        if config.semi_structured:  # 2:4 layers on sparse tensor cores, updates under autocast
            from nmrl.sparsity.semi_structured import SemiStructuredTraining

            fast_path = SemiStructuredTraining(
                self.modules, config.semi_structured_dtype, device, measure_batch=config.batch_size
            )
            print(f"2:4 semi-structured layers ({config.semi_structured_dtype}):\n{fast_path.report()}")
            self.precision = fast_path.autocast
        self.action_scale = self.actor.action_scale
        # The sparse layers (N:M or unstructured) refreshed after each update, listed once
        # (walking modules every step costs).
        self.critic_nm_layers = [layer for net in (self.critic1, self.critic2) for _, layer in masked_layers(net)]
        self.actor_nm_layers = [layer for _, layer in masked_layers(self.actor)]
        self.target_nm_layers = [
            layer
            for net in (self.actor_target, self.critic1_target, self.critic2_target)
            for _, layer in masked_layers(net)
        ]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        action = self.actor(obs)
        if explore:
            noise = torch.randn_like(action) * (self.config.exploration_noise * self.action_scale)
            action = torch.max(torch.min(action + noise, self.action_high), self.action_low)
        return action

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        with self.precision():
            return self._update(batch)

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            # Target policy smoothing: clipped noise on the target action.
            noise = (torch.randn_like(batch.action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = self.actor_target(batch.next_obs) + noise * self.action_scale
            next_action = torch.max(torch.min(next_action, self.action_high), self.action_low)
            next_q = torch.min(
                self.critic1_target(batch.next_obs, next_action),
                self.critic2_target(batch.next_obs, next_action),
            )
            # Only true terminations stop bootstrapping; time-limit truncations do not.
            target_q = batch.reward + cfg.gamma * (1.0 - batch.terminated) * next_q

        q1 = self.critic1(batch.obs, batch.action)
        q2 = self.critic2(batch.obs, batch.action)
        critic_loss = nn.functional.mse_loss(q1, target_q) + nn.functional.mse_loss(q2, target_q)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        refresh_masks(self.critic_nm_layers)
        self.updates += 1
        metrics = {"critic_loss": critic_loss.detach(), "q": q1.detach().mean()}

        if self.updates % cfg.policy_delay == 0:
            with frozen(self.critic1):
                actor_loss = -self.critic1(batch.obs, self.actor(batch.obs)).mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            refresh_masks(self.actor_nm_layers)
            for target, online in (
                (self.actor_target, self.actor),
                (self.critic1_target, self.critic1),
                (self.critic2_target, self.critic2),
            ):
                polyak_update(target, online, cfg.tau)
            refresh_masks(self.target_nm_layers, now=True)
            metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def policy(self) -> nn.Module:
        return self.actor
