"""--normalize-obs on real MuJoCo runs: SB3's statistics, counted on collected observations only,
saved and resumed exactly, frozen for evaluation, and carried into the exported graph so that the
file (ONNX Runtime, nm-packed, generated C, int8) takes raw observations as the torch policy does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_same, tiny_config
from stable_baselines3.common.running_mean_std import RunningMeanStd as SB3RunningMeanStd

import nmrl
from nmrl.cli import main
from nmrl.deploy.c_backend import compiled_policy
from nmrl.deploy.ort_backend import load_ort_policy
from nmrl.errors import NmrlError
from nmrl.export.c_source import generate_c_file
from nmrl.export.packed import load_packed
from nmrl.export.pipeline import export_run
from nmrl.export.quantize import equalize_input, first_layer_input
from nmrl.export.report import summary_lines
from nmrl.policy_file import metadata_of, read_claims
from nmrl.sparsity import NMPattern
from nmrl.train.checkpoint import load_checkpoint
from nmrl.train.loop import LAST_CHECKPOINT, train
from nmrl.train.normalization import COUNT_PRIOR, EPSILON, NormalizedPolicy, ObsNormalization, RunningMeanStd
from nmrl.train.run import load_trained_actor

ENV = "InvertedPendulum-v5"
TINY = dict(seed=1, learning_starts=200, batch_size=32, buffer_size=2_000, hidden=(16, 16), threads=1)


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    """A short normalised Hopper run (obs 11 wide, K % 4 != 0: --pad-k has work to do)."""
    tmp = tmp_path_factory.mktemp("norm")
    return train(tiny_config(tmp, env="Hopper-v5", normalize_obs=True, hidden=(32, 32), total_steps=400))


@pytest.fixture(scope="module")
def exported(hopper_run):
    """Its fp32 file, K padded (the export checks parity and the closed loop on raw observations)."""
    return export_run(hopper_run, episodes=1, allow_worse_return=True, pad_k=True)


def test_statistics_follow_sb3_and_count_each_collected_observation_once():
    model = nmrl.TD3(ENV, "2:4", normalize_obs=True, **TINY)
    model.learn(300)
    trainer = model.trainer
    stats = trainer.normalizer.stats
    # each observation the agent acted on (the buffer's obs rows; warm-up included) counted once
    assert stats.count == COUNT_PRIOR + 300
    collected = trainer.buffer.obs[:300].numpy()
    np.testing.assert_allclose(stats.mean, collected.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
    # the update rule is SB3's, bit for bit, on the same stream
    ours, sb3 = RunningMeanStd(collected.shape[1]), SB3RunningMeanStd(shape=(collected.shape[1],))
    for row in collected:
        ours.update(row[None])
        sb3.update(row[None])
    assert np.array_equal(ours.mean, sb3.mean) and np.array_equal(ours.var, sb3.var) and ours.count == sb3.count

    # sampled batches: raw rows from the buffer, normalised with the statistics of the moment
    generator_state = trainer.buffer.generator.get_state()
    raw = trainer.buffer.sample(32)
    trainer.buffer.generator.set_state(generator_state)
    batch = trainer.sample()
    mean32 = torch.from_numpy(stats.mean.astype(np.float32))
    std32 = torch.from_numpy(np.sqrt(stats.var + EPSILON).astype(np.float32))
    for normalised, source in ((batch.obs, raw.obs), (batch.next_obs, raw.next_obs)):
        assert torch.equal(normalised, torch.clamp((source - mean32) / std32, -10.0, 10.0))
    assert torch.equal(batch.action, raw.action)

    # evaluation acts on raw observations through the frozen statistics, and updates nothing
    before = (stats.mean.copy(), stats.var.copy(), stats.count)
    model.evaluate(n_eval_episodes=1)
    assert np.array_equal(before[0], stats.mean) and np.array_equal(before[1], stats.var) and before[2] == stats.count
    obs = trainer.buffer.obs[:5]
    expected = trainer.algo.policy()(torch.clamp((obs - mean32) / std32, -10.0, 10.0))
    assert np.array_equal(model.predict(obs.numpy())[0], expected.detach().numpy())


def test_checkpoint_round_trip(tmp_path):
    first = nmrl.TD3(ENV, "2:4", normalize_obs=True, clip_obs=5.0, **TINY)
    first.learn(300)
    cut = first.num_timesteps
    saved = first.save(tmp_path / "run")
    state = load_checkpoint(saved / LAST_CHECKPOINT)
    assert state["obs_normalization"]["count"] == COUNT_PRIOR + cut
    part = state["policy"]["obs_normalization"]
    assert part["clip"] == 5.0 and part["count"] == COUNT_PRIOR + cut

    continued = nmrl.TD3.load(saved)
    assert_same(first.trainer.checkpoint_state(), continued.trainer.checkpoint_state())

    # the saved policy alone (no trainer) acts on raw observations as the trainer's policy did
    loaded = load_trained_actor(saved)
    assert isinstance(loaded.policy, NormalizedPolicy) and loaded.policy.normalization.clip == 5.0
    obs = first.trainer.buffer.obs[:8]
    assert torch.equal(loaded.policy(obs), first.trainer.policy()(obs).detach())

    # a checkpoint without the statistics does not resume a normalised run
    del state["obs_normalization"]
    with pytest.raises(NmrlError, match="does not fit this run"):
        continued.trainer.restore(state, saved / LAST_CHECKPOINT)


def test_resume_at_an_episode_end_is_bit_for_bit(tmp_path):
    class Episodes(nmrl.BaseCallback):
        def __init__(self):
            super().__init__()
            self.ends: list[int] = []

        def _on_record(self, record):
            if record["kind"] == "episode":
                self.ends.append(record["step"])

    episodes = Episodes()
    uninterrupted = nmrl.TD3(ENV, "2:4", normalize_obs=True, **TINY)
    uninterrupted.learn(400, callback=episodes)
    cut = next(step for step in episodes.ends if step > 250)
    first = nmrl.TD3(ENV, "2:4", normalize_obs=True, **TINY).learn(cut)
    continued = nmrl.TD3.load(first.save(tmp_path / "run"))
    continued.learn(400 - cut)
    assert_same(uninterrupted.trainer.checkpoint_state(), continued.trainer.checkpoint_state())


def test_bad_settings_and_saved_statistics_are_refused(tmp_path, capsys):
    with pytest.raises(NmrlError, match="--clip-obs must be a positive finite number"):
        nmrl.TD3(ENV, "2:4", normalize_obs=True, clip_obs=0.0, **TINY)
    assert main(["train", "--env", ENV, "--normalize-obs", "--clip-obs", "inf", "--runs-dir", str(tmp_path)]) == 1
    assert "--clip-obs" in capsys.readouterr().err
    good = ObsNormalization(torch.zeros(3), torch.ones(3), 10.0, 5.0).part()
    assert isinstance(ObsNormalization.from_part(good, 3), ObsNormalization)
    for change, message in (
        ({"std": torch.tensor([1.0, 0.0, 1.0])}, "not positive"),
        ({"mean": torch.zeros(4)}, "width 3"),
        ({"clip": float("nan")}, "invalid clip"),
        ({"mean": [0.0, 0.0, 0.0]}, "lacks its mean"),
    ):
        with pytest.raises(NmrlError, match=message):
            ObsNormalization.from_part({**good, **change}, 3)
    with pytest.raises(NmrlError, match=r"nmrl\.obs_normalization must be"):
        read_claims({"nmrl.obs_normalization": '{"clip": -1, "count": 3}'})


def _ort(path, obs: np.ndarray) -> np.ndarray:
    policy = load_ort_policy(path)
    try:
        return policy.act(obs)
    finally:
        policy.close()


def _wide_observations(loaded, count: int = 64) -> np.ndarray:
    """Raw observations around the run's own, some far enough out that the clip acts."""
    norm = loaded.policy.normalization
    rng = np.random.default_rng(0)
    z = rng.normal(size=(count, loaded.obs_dim)) * 4.0  # beyond +-10 std for some features
    return (z * norm.obs_std.numpy() + norm.obs_mean.numpy()).astype(np.float32)


def test_export_carries_the_normalisation_into_the_graph(hopper_run, exported, tmp_path):
    loaded = load_trained_actor(hopper_run)
    obs = _wide_observations(loaded)
    norm = loaded.policy.normalization
    assert np.abs((obs - norm.obs_mean.numpy()) / norm.obs_std.numpy()).max() > 10  # the clip acts
    with torch.no_grad():
        expected = loaded.policy(torch.from_numpy(obs)).numpy()

    model = onnx.load(str(exported.path))
    ops = [node.op_type for node in model.graph.node]
    assert ops[:5] == ["Sub", "Div", "Clip", "Pad", "Gemm"]  # explicit ops, the first Gemm's N:M zeros kept
    assert ops[-1] == "Tanh"  # Hopper's unit action scaling dropped, as without normalisation
    claims = read_claims(metadata_of(model))
    assert claims.obs_normalization == {"clip": 10.0, "count": COUNT_PRIOR + 400} and claims.pad_k == 1
    assert claims.sparsity == "2:4" and not exported.check.violations(NMPattern(2, 4))
    actions = _ort(exported.path, obs)
    np.testing.assert_allclose(actions, expected, atol=1e-6)  # raw observations in, the torch policy's actions
    said = "\n".join(summary_lines(exported.check))  # what nmrl inspect prints of it
    assert f"running mean/variance of {COUNT_PRIOR + 400:g} observations" in said and "clipped to +-10" in said

    packed = export_run(hopper_run, episodes=1, allow_worse_return=True, fmt="nm-packed")
    unpacked = tmp_path / "unpacked.onnx"
    onnx.save(load_packed(packed.path), str(unpacked))
    assert np.array_equal(_ort(unpacked, obs), actions)  # the same graph, its weights restored bit for bit


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_generated_c_normalises_raw_observations(hopper_run, exported):
    loaded = load_trained_actor(hopper_run)
    obs = _wide_observations(loaded)
    source = generate_c_file(exported.path)
    assert [step.op for step in source.program.steps][:3] == ["sub", "div", "clip"]
    policy = compiled_policy(source)
    try:
        c_actions = policy.act(obs)
    finally:
        policy.close()
    np.testing.assert_allclose(c_actions, _ort(exported.path, obs), atol=1e-6)


def test_int8_calibration_sees_the_normalised_observations(hopper_run, exported):
    loaded = load_trained_actor(hopper_run)
    model = onnx.load(str(exported.path))
    assert first_layer_input(model.graph) == next(n for n in model.graph.node if n.op_type == "Clip").output[0]
    obs = _wide_observations(loaded, 256)
    scales = equalize_input(model, obs)
    with torch.no_grad():
        normalised = loaded.policy.normalization(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(scales, np.abs(normalised).max(axis=0), rtol=1e-6)  # not the raw ranges
    assert scales.max() <= 10.0
    # the equalized graph still computes the policy on raw observations
    path = hopper_run / "equalized.onnx"
    onnx.save(model, str(path))
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, obs), loaded.policy(torch.from_numpy(obs)).numpy(), atol=1e-5)
    int8 = export_run(hopper_run, dtype="int8", int8_target="tensorrt", episodes=1, allow_worse_return=True)
    ops = [node.op_type for node in onnx.load(str(int8.path)).graph.node]
    assert ops.index("Clip") < ops.index("Mul") < ops.index("Gemm")  # the equalization reads normalised features


def test_cli_flag_and_a_run_without_it(tmp_path):
    assert main(["train", "--env", ENV, "--normalize-obs", "--total-steps", "250", "--learning-starts", "200",
                 "--batch-size", "32", "--buffer-size", "1000", "--hidden", "16", "16", "--eval-every", "250",
                 "--eval-episodes", "1", "--checkpoint-every", "250", "--no-progress", "--threads", "1",
                 "--runs-dir", str(tmp_path), "--run-name", "flag"]) == 0  # fmt: skip
    config = json.loads((tmp_path / "flag" / "config.json").read_text())
    assert config["normalize_obs"] is True and config["clip_obs"] == 10.0
    plain = nmrl.TD3(ENV, "2:4", **TINY)
    assert plain.trainer.normalizer is None
    plain.learn(250)
    state = plain.trainer.checkpoint_state()
    assert "obs_normalization" not in state and "obs_normalization" not in state["policy"]
