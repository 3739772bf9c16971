"""SAC and the unstructured baselines, end to end on real MuJoCo envs through the shared loop."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nmrl.envs import env_dims, make_env
from nmrl.errors import NmrlError
from nmrl.sparsity import NMLinear, NMPattern, check_nm
from nmrl.sparsity.dynamic import UnstructuredLinear, unstructured_layers
from nmrl.sparsity.two_four import FOR_TENSORRT, STRUCTURE, verdict_of_weights
from nmrl.train.algorithm import get_algorithm
from nmrl.train.checkpoint import load_checkpoint
from nmrl.train.config import TrainConfig
from nmrl.train.loop import LAST_CHECKPOINT, resume, train
from nmrl.train.run import load_trained_actor
from nmrl.train.sac import SAC

pytestmark = pytest.mark.xdist_group("train")

TINY = {
    "total_steps": 400,
    "learning_starts": 200,
    "batch_size": 32,
    "hidden": (16, 16),
    "eval_every": 400,
    "eval_episodes": 1,
    "checkpoint_every": 400,
    "threads": 1,
    "progress": False,
}


def tiny_config(tmp_path, **settings) -> TrainConfig:
    return TrainConfig.from_settings(
        **{**TINY, "env": "InvertedPendulum-v5", "runs_dir": tmp_path, "run_name": "run", **settings}
    )


def build(config: TrainConfig):
    """The algorithm exactly as the loop builds it at the start of a run (same seed, same masks)."""
    env = make_env(config.env, seed=config.seed)
    dims = env_dims(env)
    env.close()
    torch.manual_seed(config.seed)
    return get_algorithm(config.algo)(*dims, config.algorithm_config(), torch.device("cpu"))


def trained(config: TrainConfig):
    run_dir = train(config)
    algo = build(config)
    algo.load_state_dict(load_checkpoint(run_dir / LAST_CHECKPOINT)["algorithm"])
    return run_dir, algo


def test_sac_is_registered_and_uses_the_standard_setup(tmp_path):
    config = tiny_config(tmp_path, algo="sac", sparsity="dense", hidden=(256, 256))
    algo = build(config)
    assert isinstance(algo, SAC)
    assert set(algo.networks()) == {"actor", "critic1", "critic2", "critic1_target", "critic2_target", "temperature"}
    assert [layer.out_features for layer in algo.actor.net if isinstance(layer, torch.nn.Linear)] == [256, 256, 2]
    assert algo.target_entropy == -1.0 and float(algo.temperature.alpha.detach()) == pytest.approx(1.0)
    obs = torch.randn(64, 4)
    sampled = algo.act(obs, explore=True)
    assert sampled.shape == (64, 1) and bool((sampled.abs() <= 3.0).all())  # InvertedPendulum: [-3, 3]
    assert not torch.equal(sampled, algo.act(obs, explore=True))  # stochastic when exploring
    assert torch.equal(algo.act(obs, explore=False), algo.policy()(obs))  # deterministic mean action


@pytest.mark.parametrize("sparsity", ["dense", "2:4"])
def test_sac_trains_on_mujoco_with_every_network_nm(tmp_path, sparsity):
    config = tiny_config(tmp_path, env="Hopper-v5", algo="sac", sparsity=sparsity)
    run_dir, algo = trained(config)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and r["step"] == 400 for r in evals)
    assert algo.updates == 400 - 200
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    assert set(state["algorithm"]["optimizers"]) == {"actor", "critic", "temperature"}
    # The temperature was learned away from its start.
    assert float(algo.temperature.alpha.detach()) != pytest.approx(1.0)
    layers = [
        layer for module in algo.networks().values() for layer in module.modules() if isinstance(layer, torch.nn.Linear)
    ]
    assert len(layers) == 5 * 3
    if sparsity == "2:4":
        assert all(isinstance(layer, NMLinear) for layer in layers)
        assert all(check_nm(layer.effective_weight(), NMPattern(2, 4)) == [] for layer in layers)
    costs = json.loads((run_dir / "costs.json").read_text())["networks"]
    assert costs["agent"]["training_ratio"] == (1.0 if sparsity == "dense" else pytest.approx(0.63, abs=0.05))


def test_sac_policy_exports_to_onnx_and_matches(tmp_path):
    config = tiny_config(tmp_path, algo="sac", sparsity="2:4")
    algo = build(config)
    policy = algo.policy().eval()
    obs = torch.randn(1, 4)
    path = tmp_path / "policy.onnx"
    torch.onnx.export(policy, (obs,), str(path), input_names=["obs"], output_names=["action"], dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [onnx_action] = session.run(None, {"obs": obs.numpy()})
    np.testing.assert_allclose(onnx_action, policy(obs).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("algo", "settings"),
    [
        ("td3", {"sparsity": "0.8", "topology": "static"}),
        ("td3", {"sparsity": "0.5", "topology": "set"}),
        ("td3", {"sparsity": "0.8", "topology": "rigl", "topology_end_step": 150}),
        (
            "sac",
            {
                "sparsity": "0.8",
                "topology": "set",
                "optimizer": "masked-adam",
                "activation": "leaky_relu",
                "activation_slope": 0.2,
            },
        ),
    ],
)
def test_unstructured_topologies_train_end_to_end(tmp_path, algo, settings):
    # 200 updates; interval 30, so the last step is not a topology update (masked Adam clears the
    # moments of just-dropped weights on the step after one).
    config = tiny_config(tmp_path, algo=algo, topology_interval=30, drop_fraction=0.2, **settings)
    initial = build(config)
    run_dir, final = trained(config)
    assert (run_dir / "checkpoints" / "best.pt").exists()
    for name, module in final.networks().items():
        if name == "temperature":
            continue
        start_layers = dict(unstructured_layers(initial.networks()[name]))
        layers = dict(unstructured_layers(module))
        # Hidden layers unstructured, the output layer dense (DS-TD3's choice, the default).
        assert len(layers) == 2, name
        moved = []
        for layer_name, layer in layers.items():
            start = start_layers[layer_name]
            assert layer.active == start.active  # exact sparsity kept through all updates
            assert bool((layer.weight[layer.mask == 0] == 0).all())
            moved.append(not torch.equal(layer.mask, start.mask))
            if name.endswith("_target"):
                online = dict(unstructured_layers(final.networks()[name.removesuffix("_target")]))[layer_name]
                assert layer.active == online.active
        # (A small layer can swap its inactive set back and forth, so look at the network.)
        if not name.endswith("_target"):
            assert any(moved) == (settings["topology"] != "static"), name
    if settings.get("optimizer") == "masked-adam":
        optimizer = final.actor_optimizer
        for _, layer in unstructured_layers(final.actor):
            assert bool((optimizer.state[layer.weight]["exp_avg_sq"][layer.mask == 0] == 0).all())
        assert all(m.negative_slope == 0.2 for m in final.actor.modules() if isinstance(m, torch.nn.LeakyReLU))
    # An unstructured actor loads as a deployable policy.
    loaded = load_trained_actor(run_dir)
    assert any(isinstance(m, UnstructuredLinear) for m in loaded.policy.modules())
    # The requested sparsity holds over each network's sparse layers; dense output layers dilute it.
    costs = json.loads((run_dir / "costs.json").read_text())
    for name in ("actor", "critic1"):
        sparse = [layer for layer in costs["layers"][name] if layer["sparsity_label"] == "unstructured"]
        dense_weights = sum(layer["shape"][0] * layer["shape"][1] for layer in sparse)
        kept = sum(layer["weights"] for layer in sparse) / dense_weights
        assert kept == pytest.approx(1 - float(settings["sparsity"]), abs=0.01)
        assert costs["networks"][name]["sparsity"] < float(settings["sparsity"])


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_resume_continues_the_topology_schedule(tmp_path, algo):
    config = tiny_config(
        tmp_path,
        algo=algo,
        sparsity="0.7",
        topology="set",
        topology_interval=20,
        total_steps=300,
        eval_every=300,
        checkpoint_every=300,
    )
    run_dir = train(config)
    at_interrupt = load_checkpoint(run_dir / LAST_CHECKPOINT)["algorithm"]["modules"]
    resume(run_dir, total_steps=400)
    final = load_checkpoint(run_dir / LAST_CHECKPOINT)["algorithm"]["modules"]
    # 200 critic updates in all (400 steps after 200 warm-up), counted across the resume; TD3's
    # actor steps once per policy_delay=2 updates.
    assert int(final["critic1"]["net.0.topology_steps"]) == 200
    assert int(final["actor"]["net.0.topology_steps"]) == (100 if algo == "td3" else 200)
    # The resumed run went on moving connections (5 topology updates after the resume) at the
    # same sparsity.
    for key in ("net.0.mask", "net.2.mask"):
        assert not torch.equal(final["critic1"][key], at_interrupt["critic1"][key])
        assert int(final["critic1"][key].sum()) == int(at_interrupt["critic1"][key].sum())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sparsity": "2:4", "topology": "set"}, "unstructured"),
        ({"sparsity": "1.5"}, "fraction"),
        ({"sparsity": "lots"}, "invalid --sparsity"),
        ({"sparsity": "2:4", "optimizer": "masked-adam"}, "masked-adam"),
        ({"sparsity": "0.9", "drop_fraction": 1.0}, "drop-fraction"),
    ],
)
def test_bad_sparsity_settings_are_user_errors(tmp_path, settings, message):
    with pytest.raises(NmrlError, match=message):
        tiny_config(tmp_path, **settings).validate()


def test_an_unstructured_actor_exports_and_is_reported_not_2of4_eligible(tmp_path):
    config = tiny_config(tmp_path, sparsity="0.9", topology="set", hidden=(64, 64))
    policy = build(config).policy().eval()
    obs = torch.randn(1, 4)
    path = tmp_path / "actor.onnx"
    torch.onnx.export(policy, (obs,), str(path), input_names=["obs"], output_names=["action"], dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    [onnx_action] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"obs": obs.numpy()})
    np.testing.assert_allclose(onnx_action, policy(obs).detach().numpy(), rtol=1e-5, atol=1e-6)
    # The masked weight of the 64x64 hidden layer reaches the file as an initializer with its exact zeros.
    hidden = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if tuple(t.dims) == (64, 64)]
    assert len(hidden) == 1
    assert np.mean(hidden[0] == 0) > 0.8
    verdict = verdict_of_weights(hidden[0], 1, "float16")  # Gemm transB: K is axis 1
    assert not verdict.fits((STRUCTURE,))
    assert "groups of 4 hold more than 2 nonzeros" in verdict.reasons(FOR_TENSORRT)[0]
    # The same layer trained 2:4 is eligible; a K that is not a multiple of 4 never is.
    nm = build(tiny_config(tmp_path, sparsity="2:4", hidden=(64, 64))).policy()
    assert verdict_of_weights(nm.net[2].effective_weight().detach().numpy(), 1, "float16").fits(FOR_TENSORRT)
    assert "multiple of 4" in verdict_of_weights(np.zeros((8, 11)), 1, "float16").reasons(FOR_TENSORRT)[0]
