"""TD3 (Fujimoto et al., 2018) and RNM-TD3: the same algorithm with all six networks N:M.

With ``--sparsity N:M`` every Linear of the actor, both critics and their three targets is an
NMLinear: the forward pass uses the masked weight and gradients reach the dense shadow weights
(SR-STE). Keeping them sparse is not this file's business: ``self.sparse``
(:class:`nmrl.train.sparse_training.SparseTraining`) refreshes masks after every optimizer step,
re-masks the targets after each soft update and runs the 2:4 fast path, so the update below is
the paper's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nmrl.train.algorithm import Algorithm, register
from nmrl.train.buffer import Batch
from nmrl.train.config import AlgorithmConfig
from nmrl.train.networks import Actor, Critic


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


@register("td3")
class TD3(Algorithm):
    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        config: AlgorithmConfig,
        device: torch.device,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, config, device)
        sparse = self.sparse
        actor = Actor(obs_dim, act_dim, action_low, action_high, config.hidden, config.activation)
        critic1 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        critic2 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        # The actor steps once per policy_delay updates; topology schedules count updates.
        self.actor = sparse.sparsify(actor, update_every=config.td3.policy_delay)
        self.critic1, self.critic2 = sparse.sparsify(critic1), sparse.sparsify(critic2)
        self.actor_target = sparse.target(self.actor)
        self.critic1_target = sparse.target(self.critic1)
        self.critic2_target = sparse.target(self.critic2)
        self.actor_optimizer = sparse.optimizer(self.actor, config.actor_lr)
        self.critic_optimizer = sparse.optimizer([self.critic1, self.critic2], config.critic_lr)
        self.modules = {
            "actor": self.actor,
            "critic1": self.critic1,
            "critic2": self.critic2,
            "actor_target": self.actor_target,
            "critic1_target": self.critic1_target,
            "critic2_target": self.critic2_target,
        }
        self.optimizers = {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
        sparse.enable_fast_path(self.modules)
        self.action_scale = self.actor.action_scale

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        action = self.actor(obs)
        if explore:
            noise = torch.randn_like(action) * (self.config.td3.exploration_noise * self.action_scale)
            action = torch.max(torch.min(action + noise, self.action_high), self.action_low)
        return action

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, options = self.config, self.config.td3
        with torch.no_grad():
            # Target policy smoothing: clipped noise on the target action.
            noise = torch.randn_like(batch.action) * options.policy_noise
            noise = noise.clamp(-options.noise_clip, options.noise_clip)
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
        self.sparse.minimize(critic_loss, self.critic_optimizer)
        self.updates += 1
        metrics = {"critic_loss": critic_loss.detach(), "q": q1.detach().mean()}

        if self.updates % options.policy_delay == 0:  # delayed policy and target updates
            with frozen(self.critic1):
                actor_loss = -self.critic1(batch.obs, self.actor(batch.obs)).mean()
            self.sparse.minimize(actor_loss, self.actor_optimizer)
            self.sparse.soft_update()
            metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def policy(self) -> nn.Module:
        return self.actor
