"""The N:M ablation settings of issue 23 (docs/baselines.md): which networks and which layers are
N:M, and how the target networks get their masks."""

import torch
from helpers import tiny_config
from test_td3 import _batch

from nmrl.sparsity import nm_layers
from nmrl.train.td3 import TD3


def _agent(tmp_path, **overrides) -> TD3:
    torch.manual_seed(0)
    config = tiny_config(tmp_path, sparsity="2:4", hidden=(32, 32), **overrides)
    return TD3(11, 3, [-1.0] * 3, [1.0] * 3, config.algorithm_config(), torch.device("cpu"))


def _nm_names(agent: TD3) -> dict[str, list[str]]:
    return {name: [layer for layer, _ in nm_layers(network)] for name, network in agent.networks().items()}


def test_the_default_makes_every_linear_of_all_six_networks_nm(tmp_path):
    assert all(names == ["net.0", "net.2", "net.4"] for names in _nm_names(_agent(tmp_path)).values())


def test_nm_networks_actor_keeps_the_critics_and_their_targets_dense(tmp_path):
    names = _nm_names(_agent(tmp_path, nm_networks="actor"))
    assert names["actor"] == names["actor_target"] == ["net.0", "net.2", "net.4"]
    assert names["critic1"] == names["critic2"] == names["critic1_target"] == names["critic2_target"] == []


def test_nm_layers_hidden_keeps_first_and_output_layers_dense(tmp_path):
    assert all(names == ["net.2"] for names in _nm_names(_agent(tmp_path, nm_layers="hidden")).values())


def _target_and_online_masks(agent: TD3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    networks = agent.networks()
    pairs = []
    for online in ("actor", "critic1", "critic2"):
        targets = dict(nm_layers(networks[f"{online}_target"]))
        pairs += [(targets[name].mask, layer.mask) for name, layer in nm_layers(networks[online])]
    return pairs


def test_target_masks_copy_follows_the_online_masks_and_remask_selects_its_own(tmp_path):
    copied, remasked = _agent(tmp_path / "copy", target_masks="copy"), _agent(tmp_path / "remask")
    for agent in (copied, remasked):
        for _ in range(40):  # with lr raised, online and averaged weights soon rank differently
            agent.train_step(_batch())
    assert all(torch.equal(target, online) for target, online in _target_and_online_masks(copied))
    assert not all(torch.equal(target, online) for target, online in _target_and_online_masks(remasked))
