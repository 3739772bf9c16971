"""The config's option groups: flat (pre-group) config.json files load, nested ones round-trip."""

import dataclasses
import json

import pytest
from helpers import tiny_config

from nmrl.errors import NmrlError
from nmrl.train.checkpoint import load_checkpoint, save_checkpoint
from nmrl.train.config import OPTION_GROUPS, SharedConfig, TrainConfig
from nmrl.train.loop import LAST_CHECKPOINT, resume, train
from nmrl.train.run import load_trained_actor

# config.json as nmrl wrote it before option groups (one flat mapping), for a TowS-SAC run.
FLAT = {
    "env": "Hopper-v5", "algo": "sac", "sparsity": "0.9", "seed": 4, "total_steps": 5000,
    "learning_starts": 1000, "batch_size": 64, "buffer_size": 5000, "hidden": [32, 32],
    "activation": "leaky_relu", "actor_lr": 0.001, "critic_lr": 0.001, "gamma": 0.98, "tau": 0.01,
    "policy_noise": 0.3, "noise_clip": 0.4, "policy_delay": 3, "exploration_noise": 0.2,
    "mask_interval": 5, "srste_decay": 0.0, "semi_structured": False, "semi_structured_dtype": "float16",
    "topology": "set", "topology_interval": 500, "drop_fraction": 0.1, "topology_end_step": 2000,
    "density_allocation": "uniform", "sparse_layers": "all", "optimizer": "masked-adam",
    "activation_slope": 0.2, "alpha": 0.3, "autotune_alpha": False, "eval_every": 1000,
    "eval_episodes": 3, "stop_at_return": 900.0, "checkpoint_every": 1000, "device": "cpu",
    "threads": 1, "runs_dir": "elsewhere", "run_name": "old", "progress": False,
}  # fmt: skip


def flat(config: TrainConfig) -> dict:
    data = config.to_dict()
    for group in OPTION_GROUPS:
        data.update(data.pop(group))
    return data


def test_a_flat_config_json_loads_into_the_groups(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FLAT))
    config = TrainConfig.load(path)
    assert config == TrainConfig.from_settings(
        **{**FLAT, "hidden": (32, 32), "runs_dir": tmp_path.__class__("elsewhere"), "gradient": "ste"}
    )
    assert config.td3.policy_delay == 3 and config.sac.alpha == 0.3 and config.nm.mask_interval == 5
    assert config.unstructured.optimizer == "masked-adam" and config.fast_path.semi_structured_dtype == "float16"
    # settings newer than the file: their defaults, except the gradient, which a run saved before it
    # existed trained with (ste)
    newer = {"gradient": "ste", "env_kwargs": {}, "normalize_obs": False, "clip_obs": 10.0}
    newer |= {"nm_networks": "all", "nm_layers": "all", "target_masks": "remask"}
    assert flat(config) == {**FLAT, **newer}
    config.save(path)  # written back nested, and read back the same
    assert set(json.loads(path.read_text())) >= set(OPTION_GROUPS)
    assert TrainConfig.load(path) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policy_delay": "3"}, "policy_delay='3' is not a valid int"),
        ({"wobble": 1}, "does not know: wobble"),
        ({"td3": 3}, "td3=3 is not a group of settings"),
        ({"td3": {"policy_delay": 2, "alpha": 1.0}}, "does not know: alpha"),
        ({"topology": "sometimes"}, "topology='sometimes' is not a valid choice"),
    ],
)
def test_a_malformed_config_is_one_line_error(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**FLAT, **change}))
    with pytest.raises(NmrlError, match=message) as error:
        TrainConfig.load(path)
    assert "\n" not in str(error.value)


def test_unknown_setting_names_are_refused():
    with pytest.raises(NmrlError, match="unknown setting 'td3'"):
        TrainConfig().with_settings(td3=None)
    with pytest.raises(NmrlError, match="unknown setting 'policydelay'"):
        TrainConfig().with_settings(policydelay=3)


def test_a_grid_base_has_no_per_cell_settings():
    shared = {f.name for f in dataclasses.fields(SharedConfig)}
    assert not shared & {"sparsity", "seed", "run_name"}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - shared == {"sparsity", "seed", "run_name"}


def test_a_cell_config_is_the_shared_one_plus_its_settings():
    shared = SharedConfig(env="Walker2d-v5", total_steps=9000).with_settings(policy_delay=4)
    cell = TrainConfig.from_shared(shared, sparsity="0.9", seed=7, run_name="ds", topology="set")
    assert cell == TrainConfig.from_settings(
        env="Walker2d-v5", total_steps=9000, policy_delay=4, sparsity="0.9", seed=7, run_name="ds", topology="set"
    )


def test_a_run_from_before_option_groups_evaluates_and_resumes(tmp_path):
    """config.json and checkpoint as nmrl wrote them before groups and policy parts."""
    run_dir = train(tiny_config(tmp_path, total_steps=200, learning_starts=100, eval_every=100, algo="sac"))
    expected = load_trained_actor(run_dir)
    config = TrainConfig.load(run_dir / "config.json")
    (run_dir / "config.json").write_text(json.dumps(flat(config)))
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    del state["policy"]
    state["config"] = flat(config)
    save_checkpoint(run_dir / LAST_CHECKPOINT, state)
    loaded = load_trained_actor(run_dir)
    assert loaded.config == config and loaded.step == expected.step
    resume(run_dir, total_steps=300)
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["train_state"]["step"] == 300
