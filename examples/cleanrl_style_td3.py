"""TD3 in one file, CleanRL's layout, with nmrl's 2:4 layers: the three calls a loop of your own needs.

    python examples/cleanrl_style_td3.py --total-timesteps 50000

1. ``nmrl.sparsify(net, "2:4")`` after building each network, before its optimizer;
2. ``nmrl.bind_optimizer(optimizer, net)``: masks refreshed after every ``optimizer.step()``
   (and an optimizer that does not hold the sparse weights is refused);
3. ``nmrl.bind_target(target)``: a target's masks follow its Polyak-averaged weights.
"""

import argparse
import copy
import random
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import nmrl
from nmrl.sparsity import NMPattern, check_nm, nm_layers


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="InvertedPendulum-v5")
    p.add_argument("--sparsity", default="2:4")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=50_000)
    p.add_argument("--learning-starts", type=int, default=5_000)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--policy-noise", type=float, default=0.2)
    p.add_argument("--noise-clip", type=float, default=0.5)
    p.add_argument("--exploration-noise", type=float, default=0.1)
    p.add_argument("--policy-frequency", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    return p.parse_args()


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], 1))


class Actor(nn.Module):
    def __init__(self, env: gym.Env, hidden: int) -> None:
        super().__init__()
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, act_dim)
        )
        high, low = torch.as_tensor(env.action_space.high), torch.as_tensor(env.action_space.low)
        self.register_buffer("action_scale", ((high - low) / 2).float())
        self.register_buffer("action_bias", ((high + low) / 2).float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_scale + self.action_bias


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]

    actor, qf1, qf2 = (
        Actor(env, args.hidden),
        QNetwork(obs_dim, act_dim, args.hidden),
        QNetwork(obs_dim, act_dim, args.hidden),
    )
    for net in (actor, qf1, qf2):
        nmrl.sparsify(net, args.sparsity)  # (1) before the optimizers: they must hold the sparse weights
    targets = [copy.deepcopy(net).requires_grad_(False) for net in (actor, qf1, qf2)]
    for target in targets:
        nmrl.bind_target(target)  # (3)
    target_actor, qf1_target, qf2_target = targets
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.learning_rate)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    nmrl.bind_optimizer(q_optimizer, [qf1, qf2])  # (2)
    nmrl.bind_optimizer(actor_optimizer, actor)

    buffer = {
        "obs": np.zeros((args.buffer_size, obs_dim), np.float32),
        "next_obs": np.zeros((args.buffer_size, obs_dim), np.float32),
        "actions": np.zeros((args.buffer_size, act_dim), np.float32),
        "rewards": np.zeros(args.buffer_size, np.float32),
        "dones": np.zeros(args.buffer_size, np.float32),
    }
    scale = actor.action_scale.numpy()
    obs, _ = env.reset(seed=args.seed)
    episode_return, start = 0.0, time.time()
    for global_step in range(args.total_timesteps):
        if global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            action = (action + np.random.normal(0, scale * args.exploration_noise)).clip(
                env.action_space.low, env.action_space.high
            )
        next_obs, reward, terminated, truncated, _ = env.step(action)
        i = global_step % args.buffer_size
        for key, value in (("obs", obs), ("next_obs", next_obs), ("actions", action), ("rewards", reward)):
            buffer[key][i] = value
        buffer["dones"][i] = float(terminated)
        episode_return += float(reward)
        obs = next_obs
        if terminated or truncated:
            print(f"global_step={global_step}, episodic_return={episode_return:.1f}")
            obs, _ = env.reset()
            episode_return = 0.0

        if global_step < args.learning_starts:
            continue
        idx = np.random.randint(0, min(global_step + 1, args.buffer_size), args.batch_size)
        b = {key: torch.as_tensor(value[idx]) for key, value in buffer.items()}
        with torch.no_grad():
            clipped_noise = (torch.randn_like(b["actions"]) * args.policy_noise).clamp(
                -args.noise_clip, args.noise_clip
            ) * target_actor.action_scale
            next_actions = (target_actor(b["next_obs"]) + clipped_noise).clamp(
                torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
            )
            next_q = torch.min(qf1_target(b["next_obs"], next_actions), qf2_target(b["next_obs"], next_actions))
            target_q = b["rewards"] + (1 - b["dones"]) * args.gamma * next_q.view(-1)
        qf_loss = F.mse_loss(qf1(b["obs"], b["actions"]).view(-1), target_q) + F.mse_loss(
            qf2(b["obs"], b["actions"]).view(-1), target_q
        )
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()  # the bound hook refreshes qf1's and qf2's masks

        if global_step % args.policy_frequency == 0:
            actor_loss = -qf1(b["obs"], actor(b["obs"])).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            with torch.no_grad():  # CleanRL's Polyak update, unchanged: bind_target re-masks the targets
                for net, target in zip((actor, qf1, qf2), targets, strict=True):
                    for param, target_param in zip(net.parameters(), target.parameters(), strict=True):
                        target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)

    pattern = NMPattern.parse(args.sparsity) if ":" in args.sparsity else None
    if pattern is not None:
        broken = [name for name, layer in nm_layers(actor) if check_nm(layer.effective_weight(), pattern)]
        print(f"actor layers breaking {pattern}: {broken or 'none'}")
    print(f"{args.total_timesteps} steps in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
