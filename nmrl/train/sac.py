"""SAC (Haarnoja et al., 2018, with the learned temperature of the 2018 "applications" paper),
dense, N:M (RNM-SAC) or unstructured (SS-SAC, DS-SAC, TowS-SAC).

Standard settings: 256-256 MLPs, twin critics with Polyak-averaged targets (no actor target), a
tanh-squashed Gaussian actor, the entropy temperature learned towards ``-act_dim``, one actor
and one temperature update per critic update (``policy_delay`` is TD3's and is not used). The
sparsity of every network follows the config exactly as for TD3 (nmrl.train.sparse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.train.algorithm import Algorithm, register
from nmrl.train.buffer import Batch
from nmrl.train.config import AlgorithmConfig
from nmrl.train.networks import Critic, DeterministicPolicy, GaussianActor
from nmrl.train.td3 import frozen


class Temperature(nn.Module):
    """The entropy temperature, learned in log space (a module, so checkpoints carry it)."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial)))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()


@register("sac")
class SAC(Algorithm):
    policy_kind = "gaussian"

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
        if config.sac.alpha <= 0:
            raise NmrlError(f"--alpha must be positive, got {config.sac.alpha}")
        sparse = self.sparse
        actor = GaussianActor(obs_dim, act_dim, action_low, action_high, config.hidden, config.activation)
        critic1 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        critic2 = Critic(obs_dim, act_dim, config.hidden, config.activation)
        self.actor = sparse.sparsify(actor)
        self.critic1, self.critic2 = sparse.sparsify(critic1), sparse.sparsify(critic2)
        self.critic1_target = sparse.target(self.critic1)
        self.critic2_target = sparse.target(self.critic2)
        self.temperature = Temperature(config.sac.alpha).to(device)
        self.target_entropy = -float(act_dim)
        self.actor_optimizer = sparse.optimizer(self.actor, config.actor_lr)
        self.critic_optimizer = sparse.optimizer([self.critic1, self.critic2], config.critic_lr)
        self.modules = {
            "actor": self.actor,
            "critic1": self.critic1,
            "critic2": self.critic2,
            "critic1_target": self.critic1_target,
            "critic2_target": self.critic2_target,
            "temperature": self.temperature,
        }
        self.optimizers = {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
        if config.sac.autotune_alpha:
            self.alpha_optimizer = torch.optim.Adam(self.temperature.parameters(), lr=config.critic_lr)
            self.optimizers["temperature"] = self.alpha_optimizer
        sparse.enable_fast_path(self.modules)
        self._policy = DeterministicPolicy(self.actor)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        if explore:
            return self.actor.sample(obs)[0]
        return self.actor.deterministic(obs)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        alpha = self.temperature.alpha.detach()
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(batch.next_obs)
            next_q = (
                torch.min(
                    self.critic1_target(batch.next_obs, next_action),
                    self.critic2_target(batch.next_obs, next_action),
                )
                - alpha * next_log_prob
            )
            # Only true terminations stop bootstrapping; time-limit truncations do not.
            target_q = batch.reward + cfg.gamma * (1.0 - batch.terminated) * next_q

        q1 = self.critic1(batch.obs, batch.action)
        q2 = self.critic2(batch.obs, batch.action)
        critic_loss = nn.functional.mse_loss(q1, target_q) + nn.functional.mse_loss(q2, target_q)
        self.sparse.minimize(critic_loss, self.critic_optimizer)
        self.updates += 1

        with frozen(self.critic1), frozen(self.critic2):
            action, log_prob = self.actor.sample(batch.obs)
            q = torch.min(self.critic1(batch.obs, action), self.critic2(batch.obs, action))
            actor_loss = (alpha * log_prob - q).mean()
        self.sparse.minimize(actor_loss, self.actor_optimizer)

        metrics = {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q": q1.detach().mean(),
            "alpha": alpha,
            "entropy": -log_prob.detach().mean(),
        }
        if cfg.sac.autotune_alpha:
            alpha_loss = -(self.temperature.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.sparse.minimize(alpha_loss, self.alpha_optimizer)
            metrics["alpha_loss"] = alpha_loss.detach()

        self.sparse.soft_update()
        return metrics

    def policy(self) -> nn.Module:
        return self._policy
