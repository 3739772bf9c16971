"""A checkpoint's policy part: the trained policy loads on its own, without its trainer."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import nmrl.train.networks as networks
import nmrl.train.sac as sac
import nmrl.train.td3 as td3
from nmrl.errors import NmrlError
from nmrl.sparsity.spec import parse_sparsity
from nmrl.train.algorithm import get_algorithm
from nmrl.train.checkpoint import load_checkpoint, save_checkpoint
from nmrl.train.loop import BEST_CHECKPOINT, LAST_CHECKPOINT, train
from nmrl.train.policy import PolicySpec
from nmrl.train.run import load_trained_actor


@pytest.fixture(scope="module", params=[("td3", "2:4", "auto"), ("sac", "0.5", "set")], ids=["td3-2of4", "sac-set"])
def run_dir(request, tmp_path_factory):
    algo, sparsity, topology = request.param
    config = tiny_config(tmp_path_factory.mktemp(algo), algo=algo, sparsity=sparsity, topology=topology)
    return train(config)


def full_algorithm_policy(run_dir, which="last"):
    """The policy as the whole algorithm would give it (what loading did before policy parts)."""
    from nmrl.train.config import TrainConfig

    config = TrainConfig.load(run_dir / "config.json")
    state = load_checkpoint(run_dir / (LAST_CHECKPOINT if which == "last" else BEST_CHECKPOINT))
    dims = state["policy"]["spec"]
    algo = get_algorithm(config.algo)(
        dims["obs_dim"],
        dims["act_dim"],
        dims["action_low"],
        dims["action_high"],
        config.algorithm_config(),
        torch.device("cpu"),
    )
    algo.load_state_dict(state["algorithm"], modules_only=True)
    return algo.policy().eval()


def forbid_trainer_parts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a policy constructed a trainer part")

    for owner, name in [
        (networks.Critic, "__init__"),
        (td3.TD3, "__init__"),
        (sac.SAC, "__init__"),
        (sac.Temperature, "__init__"),
        (torch.optim.Adam, "__init__"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    monkeypatch.setattr("nmrl.train.run.make_env", refuse)


@pytest.mark.parametrize("which", ["last", "best"])
def test_policy_loads_without_critics_optimizers_or_env(run_dir, which, monkeypatch):
    expected = full_algorithm_policy(run_dir, which)
    forbid_trainer_parts(monkeypatch)
    loaded = load_trained_actor(run_dir, which)
    obs = torch.randn(64, loaded.obs_dim, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        assert torch.equal(loaded.policy(obs), expected(obs))
    assert not loaded.policy.training and loaded.act_dim == 1 and loaded.action_high == [3.0]
    assert loaded.spec.sparsity == loaded.config.spec and loaded.spec.hidden == loaded.config.hidden


def test_checkpoint_from_before_policy_parts_still_loads(run_dir, tmp_path):
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    path = run_dir / LAST_CHECKPOINT
    new = load_trained_actor(run_dir)
    state = load_checkpoint(path)
    del state["policy"]  # as nmrl wrote checkpoints before policy parts
    save_checkpoint(path, state)
    old = load_trained_actor(run_dir)
    obs = torch.randn(16, new.obs_dim)
    with torch.no_grad():
        assert torch.equal(old.policy(obs), new.policy(obs))
    sizes = [(p.obs_dim, p.act_dim, p.action_low, p.action_high) for p in (old, new)]
    assert sizes[0] == sizes[1]
    del state["algorithm"]["modules"]["actor"]
    save_checkpoint(path, state)
    with pytest.raises(NmrlError, match="holds no policy and no actor weights"):
        load_trained_actor(run_dir)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda part: part["spec"].update(hidden=[8, 8]), "do not fit its spec"),
        (lambda part: part["spec"].update(kind="pickle"), "invalid kind"),
        (lambda part: part["spec"].pop("sparsity"), "incomplete"),
        (lambda part: part["spec"].update(sparsity={"kind": "nm", "pattern": "9:4"}), "malformed sparsity"),
        (lambda part: next(iter(part["actor"].values())).fill_(float("nan")), "NaN/inf"),
    ],
)
def test_a_broken_policy_part_is_one_line_error(tmp_path, tamper, message):
    run_dir = train(tiny_config(tmp_path, total_steps=200, learning_starts=100, eval_every=100))
    path = run_dir / LAST_CHECKPOINT
    state = load_checkpoint(path)
    tamper(state["policy"])
    save_checkpoint(path, state)
    with pytest.raises(NmrlError, match=message) as error:
        load_trained_actor(run_dir)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_policy_spec_round_trips():
    sparsity = parse_sparsity("0.8", "rigl")
    spec = PolicySpec("gaussian", 3, 2, (-1.0, -2.0), (1.0, 2.0), (8, 8), "leaky_relu", 0.1, sparsity)
    assert PolicySpec.from_dict(spec.to_dict()) == spec
