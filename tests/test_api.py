"""The public training API (nmrl.TD3 / nmrl.SAC) on real MuJoCo runs: the same run as the CLI,
exact continuation through save/load, callbacks that stop training, env objects, threads."""

from __future__ import annotations

import math
import threading

import gymnasium as gym
import numpy as np
import pytest
from helpers import assert_same, tiny_config

import nmrl
import nmrl.train.trainer as trainer_module
from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.sparsity import NMPattern
from nmrl.sparsity.spec import Dense, NMSparsity, UnstructuredSparsity
from nmrl.train.checkpoint import load_checkpoint
from nmrl.train.loop import LAST_CHECKPOINT, train
from nmrl.train.run import load_trained_actor, read_metrics

ENV = "InvertedPendulum-v5"
# tiny_config's run, as API arguments
TINY = dict(seed=1, learning_starts=200, batch_size=32, buffer_size=2_000, hidden=(16, 16), threads=1)


class Records(nmrl.BaseCallback):
    """Keeps every metrics record a run hands its callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def _on_record(self, record: dict) -> None:
        self.records.append(record)

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in records]


def test_sparsity_as_text_number_or_spec():
    small = dict(learning_starts=10, batch_size=8, buffer_size=100, hidden=(8, 8))
    assert nmrl.TD3(ENV, "2:4", **small).config.spec == NMSparsity(NMPattern(2, 4))
    assert nmrl.TD3(ENV, "dense", **small).config.spec == Dense()
    spec = nmrl.SAC(ENV, 0.9, topology="set", **small).config.spec
    assert isinstance(spec, UnstructuredSparsity) and spec.fraction == 0.9 and spec.topology == "set"
    given = UnstructuredSparsity(0.8, topology="rigl")
    assert nmrl.TD3(ENV, given, **small).config.spec == given
    assert nmrl.TD3(ENV, NMSparsity(NMPattern(1, 4)), **small).config.sparsity == "1:4"
    with pytest.raises(NmrlError, match="3:2"):
        nmrl.TD3(ENV, "3:2", **small)
    with pytest.raises(NmrlError, match="sparsity must be"):
        nmrl.TD3(ENV, [2, 4], **small)  # type: ignore[arg-type]


def test_api_and_cli_give_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "LOG_INTERVAL", 100)  # train records (losses) every 100 steps
    run_dir = train(tiny_config(tmp_path, total_steps=400))
    cli = load_checkpoint(run_dir / LAST_CHECKPOINT)
    cli_records = read_metrics(run_dir / "metrics.jsonl")

    records = Records()
    model = nmrl.TD3(ENV, "2:4", **TINY)
    model.learn(400, callback=[records, nmrl.EvalCallback(eval_freq=200, n_eval_episodes=2)])
    api = model.trainer.checkpoint_state()
    # networks, optimizers, buffer, RNG states, counters (best and last eval return): bit for bit
    for part in ("algorithm", "policy", "buffer", "rng", "train_state"):
        assert_same(cli[part], api[part], part)
    for kind in ("train", "eval"):
        cli_kind = [r for r in cli_records if r["kind"] == kind]
        assert cli_kind and _without_timing(cli_kind) == _without_timing(records.of(kind)), kind


def test_save_then_load_continues_exactly(tmp_path, capsys):
    records = Records()
    uninterrupted = nmrl.TD3(ENV, "2:4", **TINY)
    uninterrupted.learn(400, callback=records)
    # stop where an episode has just ended, past the warm-up (updates running)
    cut = next(r["step"] for r in records.of("episode") if r["step"] > 250)
    assert cut < 400

    first = nmrl.TD3(ENV, "2:4", **TINY).learn(cut)
    saved = first.save(tmp_path / "run")
    continued = nmrl.TD3.load(saved)
    assert continued.num_timesteps == cut
    continued.learn(400 - cut)
    assert_same(uninterrupted.trainer.checkpoint_state(), continued.trainer.checkpoint_state())
    assert capsys.readouterr() == ("", "")  # library code logs (the cost table too); it never prints

    # the saved folder is a run directory the verbs read
    assert load_trained_actor(saved).step == cut
    assert main(["eval", str(saved), "--episodes", "1"]) == 0
    with pytest.raises(NmrlError, match="holds a td3 run"):
        nmrl.SAC.load(saved)


class StopAt(nmrl.BaseCallback):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        return self.num_timesteps < self.step


def test_a_callback_stops_training():
    model = nmrl.TD3(ENV, "2:4", learning_starts=1_000, batch_size=8, buffer_size=1_000, hidden=(8, 8))
    model.learn(300, callback=StopAt(120))
    assert model.num_timesteps == 120
    # an evaluation's return past the threshold stops at that evaluation
    solved = nmrl.StopTrainingOnReturn(-math.inf)
    model.learn(300, callback=nmrl.EvalCallback(eval_freq=30, n_eval_episodes=1, callback_after_eval=solved))
    assert model.num_timesteps == 150


def test_env_object_and_predict():
    changed = gym.make(ENV, reset_noise_scale=0.05)  # not what the id alone makes
    model = nmrl.TD3(changed, "2:4", learning_starts=50, batch_size=8, buffer_size=200, hidden=(8, 8))
    assert model.env is changed
    with pytest.raises(NmrlError, match="pass eval_env"):
        model.evaluate(n_eval_episodes=1)
    with pytest.raises(NmrlError, match="pass eval_env"):
        model.learn(10, callback=nmrl.EvalCallback(eval_freq=5))
    model = nmrl.TD3(changed, "2:4", learning_starts=50, batch_size=8, buffer_size=200, hidden=(8, 8), eval_env=ENV)
    assert len(model.evaluate(n_eval_episodes=2).returns) == 2
    obs, _ = changed.reset(seed=0)
    action, state = model.predict(obs)
    assert action.shape == (1,) and state is None
    assert model.predict(np.stack([obs, obs]))[0].shape == (2, 1)
    with pytest.raises(NmrlError, match=r"Gymnasium id or a gymnasium\.Env"):
        nmrl.TD3(object(), "2:4")  # type: ignore[arg-type]


def test_training_from_a_thread(tmp_path):
    """Python lets only the main thread set signal handlers: a run in a thread must not try."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            train(tiny_config(tmp_path, total_steps=120, learning_starts=100, eval_every=120, checkpoint_every=120))
            nmrl.TD3(ENV, "2:4", learning_starts=100, batch_size=8, buffer_size=200, hidden=(8, 8)).learn(120)
        except BaseException as error:  # handed to the main thread
            errors.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert errors == []
    assert (tmp_path / "runs" / "tiny" / LAST_CHECKPOINT).exists()


def test_env_kwargs_reach_training_evaluation_and_the_saved_run(tmp_path):
    # tests/point_mass.py: its episode length has no default, so an env made without them fails
    own = "point_mass:PointMass-v0"
    model = nmrl.TD3(own, "2:4", env_kwargs={"length": 9}, learning_starts=32, batch_size=8, buffer_size=200)
    records = Records()
    model.learn(64, callback=[records, nmrl.EvalCallback(eval_freq=64, n_eval_episodes=1)])
    assert {r["length"] for r in records.of("episode")} == {9}
    assert records.of("eval")[0]["episode_length_mean"] == 9
    assert model.evaluate(n_eval_episodes=1).lengths == [9]
    saved = model.save(tmp_path / "own")
    assert load_checkpoint(saved / LAST_CHECKPOINT)["config"]["env_kwargs"] == {"length": 9}
    with pytest.raises(NmrlError, match="make the env object with them"):
        nmrl.TD3(gym.make(ENV), "2:4", env_kwargs={"reset_noise_scale": 0.05})


def test_the_api_docs_training_snippets_run(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    section = text.split("## Training from Python", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippets) == 4  # the training snippet, export_run's, AlgorithmConfig's, the callbacks'
    for snippet in snippets:
        exec(compile(snippet, "docs/api.md", "exec"), {})


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### Use nmrl from Python", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(snippet, "README.md", "exec"), {})
    assert load_checkpoint(tmp_path / "runs" / "pendulum" / LAST_CHECKPOINT)["train_state"]["step"] == 2_000
    assert main(["eval", "runs/pendulum", "--episodes", "1"]) == 0
