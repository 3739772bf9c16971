import numpy as np
import torch
from helpers import tiny_config

from nmrl.envs import env_dims, make_env
from nmrl.sparsity import NMLinear, NMPattern, check_nm, nm_layers, nm_mask
from nmrl.train.buffer import Batch, ReplayBuffer
from nmrl.train.td3 import TD3


def _agent(tmp_path, sparsity="2:4", **overrides):
    torch.manual_seed(0)
    config = tiny_config(tmp_path, sparsity=sparsity, hidden=(32, 32), **overrides)
    return TD3(11, 3, [-1.0] * 3, [1.0] * 3, config.algorithm_config(), torch.device("cpu"))


def _batch(size=64, obs_dim=11, act_dim=3, terminated=0.0):
    return Batch(
        torch.randn(size, obs_dim),
        torch.rand(size, act_dim) * 2 - 1,
        torch.randn(size),
        torch.randn(size, obs_dim),
        torch.full((size,), terminated),
    )


def _assert_all_nm(agent, pattern):
    for name, network in agent.networks().items():
        layers = nm_layers(network)
        assert len(layers) == 3, name  # every Linear of every network is N:M
        for layer_name, layer in layers:
            assert check_nm(layer.effective_weight(), pattern) == [], f"{name}.{layer_name}"
            assert torch.equal(layer.mask, nm_mask(layer.weight, pattern))  # mask_interval 1: fresh


def test_all_six_networks_stay_nm_through_updates(tmp_path):
    agent = _agent(tmp_path)
    assert set(agent.networks()) == {"actor", "critic1", "critic2", "actor_target", "critic1_target", "critic2_target"}
    _assert_all_nm(agent, NMPattern(2, 4))
    for _ in range(6):
        agent.update(_batch())
        # targets are N:M after every Polyak update, with masks of their own shadow weights
        _assert_all_nm(agent, NMPattern(2, 4))
    target_layer = nm_layers(agent.actor_target)[1][1]
    online_layer = nm_layers(agent.actor)[1][1]
    assert not torch.equal(target_layer.weight, online_layer.weight)  # averaged, not copied


def test_polyak_averages_shadow_weights(tmp_path):
    agent = _agent(tmp_path, policy_delay=1)
    target_before = [p.clone() for p in agent.critic1_target.parameters()]
    agent.update(_batch())
    tau = agent.config.tau
    for before, target, online in zip(
        target_before, agent.critic1_target.parameters(), agent.critic1.parameters(), strict=True
    ):
        assert torch.allclose(target, (1 - tau) * before + tau * online, atol=1e-7)


def test_dense_td3_has_plain_linears(tmp_path):
    agent = _agent(tmp_path, sparsity="dense")
    assert not any(isinstance(m, NMLinear) for net in agent.networks().values() for m in net.modules())
    metrics = agent.update(_batch())
    assert set(metrics) == {"critic_loss", "q"}
    metrics = agent.update(_batch())
    assert "actor_loss" in metrics  # policy delay 2


def test_termination_stops_bootstrapping_truncation_does_not(tmp_path):
    agent = _agent(tmp_path)
    batch = _batch(terminated=1.0)
    # With terminated=1 the TD target is the reward alone, so a critic that outputs exactly the
    # reward has zero loss; with terminated=0 the bootstrap term makes it non-zero.
    with torch.no_grad():
        for critic in (agent.critic1, agent.critic2):
            last = critic.net[-1]
            last.weight.zero_()
            last.bias.zero_()
    zero_reward = batch._replace(reward=torch.zeros(64))
    loss_terminal = agent.update(zero_reward)["critic_loss"]
    agent2 = _agent(tmp_path)
    with torch.no_grad():
        for critic in (agent2.critic1, agent2.critic2):
            critic.net[-1].weight.zero_()
            critic.net[-1].bias.fill_(0.0)
        for target in (agent2.critic1_target, agent2.critic2_target):
            target.net[-1].weight.zero_()
            target.net[-1].bias.fill_(5.0)
    loss_bootstrap = agent2.update(zero_reward._replace(terminated=torch.zeros(64)))["critic_loss"]
    assert float(loss_terminal) == 0.0
    assert float(loss_bootstrap) > 1.0  # target 0.99 * 5 per sample


def test_act_respects_bounds_and_explores(tmp_path):
    agent = _agent(tmp_path, exploration_noise=5.0)
    obs = torch.randn(100, 11)
    explored = agent.act(obs, explore=True)
    assert explored.min() >= -1 and explored.max() <= 1
    assert torch.equal(agent.act(obs, explore=False), agent.act(obs, explore=False))
    assert not torch.equal(explored, agent.act(obs, explore=False))


def test_replay_buffer_round_trip_and_sampling():
    env = make_env("InvertedPendulum-v5", seed=0)
    obs_dim, act_dim, _, _ = env_dims(env)
    buffer = ReplayBuffer(50, obs_dim, act_dim, torch.device("cpu"), seed=3)
    obs, _ = env.reset(seed=0)
    for _ in range(70):  # wraps around
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
    assert len(buffer) == 50 and buffer.position == 20
    state = buffer.state_dict()
    copy = ReplayBuffer(50, obs_dim, act_dim, torch.device("cpu"), seed=99)
    copy.load_state_dict(state)
    a, b = buffer.sample(16), copy.sample(16)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert np.isclose(float(buffer.terminated.sum()), float(copy.terminated.sum()))
