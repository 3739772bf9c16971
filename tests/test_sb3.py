"""N:M layers in Stable-Baselines3's TD3 and SAC on a real MuJoCo env: learn, save, TD3.load, export."""

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch

from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.export.verify import inspect_model
from nmrl.sparsity import NMLinear, NMPattern, check_nm, nm_mask

sb3 = pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")
nmrl_sb3 = pytest.importorskip("nmrl.integrations.sb3")

ENV = "InvertedPendulum-v5"
TWO_FOUR = NMPattern(2, 4)
SMALL = {"net_arch": [32, 32]}


def layers(module: torch.nn.Module) -> list[tuple[str, NMLinear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, NMLinear)]


def assert_nm(policy: torch.nn.Module) -> None:
    found = layers(policy)
    assert found
    for name, layer in found:
        assert check_nm(layer.effective_weight(), TWO_FOUR) == [], name


def test_sb3_td3_trains_nm_saves_loads_and_exports(tmp_path, monkeypatch, caplog):
    from nmrl.sparsity import layers as layers_module

    # every optimizer SB3 steps is bound: not one layer goes 4 training passes without a counted step
    monkeypatch.setattr(layers_module, "UNSTEPPED_PASS_LIMIT", 4)
    monkeypatch.setattr(layers_module, "_warned_unstepped", False)
    caplog.set_level("WARNING", logger="nmrl.sparsity.layers")
    env = gym.make(ENV)
    model = sb3.TD3("MlpPolicy", env, learning_starts=50, batch_size=32, policy_kwargs=SMALL, seed=0, device="cpu")
    nmrl_sb3.sparsify(model, "2:4")
    policy = model.policy
    # actor, its target, two critics and their targets: every Linear is N:M
    assert len(layers(policy)) == 3 * 2 + 3 * 2 * 2
    before = {name: layer.mask.clone() for name, layer in layers(policy)}
    model.learn(150)
    assert_nm(policy)
    online = [name for name in before if "target" not in name]
    assert all(not torch.equal(before[n], dict(layers(policy))[n].mask) for n in online[:3])  # masks moved
    for name, layer in layers(policy):
        if name.startswith("actor."):  # the online actor's masks follow its trained weights
            assert torch.equal(layer.mask, nm_mask(layer.weight, TWO_FOUR)), name
    model.predict(env.observation_space.sample())
    for name, layer in layers(policy.critic_target):  # a target's masks follow its averaged weights
        assert torch.equal(layer.mask, nm_mask(layer.weight, TWO_FOUR)), name

    path = tmp_path / "td3.zip"
    model.save(path)
    loaded = sb3.TD3.load(path, env=env, device="cpu")
    assert type(loaded.policy) is nmrl_sb3.NMTD3Policy
    saved, back = policy.state_dict(), loaded.policy.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    actor_adam = loaded.actor.optimizer.state_dict()["state"]
    assert all(
        torch.equal(a["exp_avg"], b["exp_avg"])
        for a, b in zip(model.actor.optimizer.state_dict()["state"].values(), actor_adam.values(), strict=True)
    )
    # the loaded model keeps training N:M (its optimizers are bound again)
    first = next(layer for name, layer in layers(loaded.policy) if name.startswith("actor."))
    weights = first.weight.detach().clone()
    loaded.learn(60, reset_num_timesteps=False)
    assert not torch.equal(first.weight, weights)
    assert torch.equal(first.mask, nm_mask(first.weight, TWO_FOUR))
    assert_nm(loaded.policy)
    assert not [r for r in caplog.records if "without a counted optimizer step" in r.getMessage()]

    onnx_path = tmp_path / "actor.onnx"
    result = nmrl_sb3.export_actor(loaded, onnx_path, episodes=1)
    assert result.path == onnx_path
    check = inspect_model(onnx_path)
    assert str(check.claimed) == "2:4" and check.violations(TWO_FOUR) == {}
    obs = np.stack([env.observation_space.sample() for _ in range(8)]).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actions = session.run(None, {session.get_inputs()[0].name: obs})[0]
    expected, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    assert main(["inspect", str(onnx_path)]) == 0
    assert main(["deploy", "eval", str(onnx_path), "--episodes", "1"]) == 0
    bench = ["bench", str(onnx_path), "--backends", "ort", "--batch", "1", "--warmup", "2", "--calls", "10"]
    assert main([*bench, "--out", str(tmp_path / "bench")]) == 0
    assert (tmp_path / "bench" / "bench.csv").is_file()


def test_sb3_sac_built_with_the_nm_policy_saves_loads_and_exports(tmp_path):
    env = gym.make(ENV)
    model = sb3.SAC(
        nmrl_sb3.NMSACPolicy,
        env,
        learning_starts=50,
        batch_size=32,
        policy_kwargs={**SMALL, "sparsity": "2:4"},
        seed=0,
        device="cpu",
    )
    model.learn(100)
    assert_nm(model.policy)
    path = tmp_path / "sac.zip"
    model.save(path)
    loaded = sb3.SAC.load(path, device="cpu")
    saved, back = model.policy.state_dict(), loaded.policy.state_dict()
    assert all(torch.equal(saved[k], back[k]) for k in saved)
    onnx_path = tmp_path / "sac.onnx"
    nmrl_sb3.export_actor(loaded, onnx_path, env_id=ENV, episodes=1)
    obs = np.stack([env.observation_space.sample() for _ in range(4)]).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_allclose(session.run(None, {"obs": obs})[0], expected, atol=1e-5)


def test_sb3_td3_inside_vec_normalize_exports_a_file_on_raw_observations(tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from nmrl.policy_file import read_claims

    venv = VecNormalize(DummyVecEnv([lambda: gym.make(ENV)]), norm_obs=True, norm_reward=False, clip_obs=5.0)
    model = sb3.TD3(
        nmrl_sb3.NMTD3Policy,
        venv,
        learning_starts=50,
        batch_size=32,
        seed=0,
        device="cpu",
        policy_kwargs={**SMALL, "sparsity": "2:4"},
    )
    model.learn(150)
    # Raw observations, some far enough out that clip_obs acts.
    raw = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    raw = raw * np.sqrt(venv.obs_rms.var).astype(np.float32) * 8 + venv.obs_rms.mean.astype(np.float32)
    assert np.abs(venv.normalize_obs(raw)).max() == 5.0
    expected, _ = model.predict(venv.normalize_obs(raw), deterministic=True)  # what SB3 acts on raw inputs

    # The model's own wrapper is found.
    onnx_path = tmp_path / "actor.onnx"
    nmrl_sb3.export_actor(model, onnx_path, episodes=1)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"obs": raw})[0], expected, atol=1e-5)
    claims = read_claims(inspect_model(onnx_path).metadata)
    assert claims.obs_normalization == {"clip": 5.0, "count": venv.obs_rms.count}

    # Saved apart and loaded without an env: the statistics come as an argument.
    model.save(tmp_path / "td3.zip")
    venv.save(tmp_path / "vec_normalize.pkl")
    loaded = sb3.TD3.load(tmp_path / "td3.zip", device="cpu")
    stats = VecNormalize.load(str(tmp_path / "vec_normalize.pkl"), DummyVecEnv([lambda: gym.make(ENV)]))
    nmrl_sb3.export_actor(loaded, tmp_path / "loaded.onnx", env_id=ENV, episodes=1, vec_normalize=stats)
    session = ort.InferenceSession(str(tmp_path / "loaded.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"obs": raw})[0], expected, atol=1e-5)

    stats.clip_obs = np.inf
    with pytest.raises(NmrlError, match="finite positive VecNormalize clip_obs"):
        nmrl_sb3.export_actor(loaded, tmp_path / "inf.onnx", env_id=ENV, episodes=1, vec_normalize=stats)
    assert not (tmp_path / "inf.onnx").exists()


def test_sb3_integration_refuses_what_it_cannot_keep_nm():
    env = gym.make(ENV)
    td3 = sb3.TD3("MlpPolicy", env, policy_kwargs=SMALL, device="cpu")
    with pytest.raises(NmrlError, match="N:M sparsity"):
        nmrl_sb3.sparsify(td3, "0.9")
    nmrl_sb3.sparsify(td3, "2:4")
    with pytest.raises(NmrlError, match="already N:M"):
        nmrl_sb3.sparsify(td3, "2:4")
    with pytest.raises(NmrlError, match="TD3 and SAC"):
        nmrl_sb3.sparsify(sb3.PPO("MlpPolicy", env, device="cpu"), "2:4")
