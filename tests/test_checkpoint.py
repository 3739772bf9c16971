import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_same, tiny_config

from nmrl.errors import NmrlError
from nmrl.train.api import TD3
from nmrl.train.checkpoint import load_checkpoint, save_checkpoint
from nmrl.train.loop import LAST_CHECKPOINT, TrainingDiverged, resume, run_callbacks, train
from nmrl.train.run import load_trained_actor

ROOT = Path(__file__).resolve().parents[1]


def _nmrl(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "nmrl", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_resume_restores_everything_and_continues(tmp_path):
    config = tiny_config(tmp_path, total_steps=400)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.json")
    interrupted = TD3.from_config(config)
    interrupted.learn(400, callback=run_callbacks(config, run_dir)[1])
    at_checkpoint = interrupted.trainer.checkpoint_state()

    resumed = TD3.load(run_dir)
    # networks (shadow weights and masks), optimizers, replay, RNG states, counters: all equal
    assert_same(at_checkpoint, resumed.trainer.checkpoint_state())
    assert resumed.num_timesteps == 400 and resumed.algorithm.updates == 200

    resume(run_dir, total_steps=600)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if line["kind"] == "eval"]
    assert steps == [200, 400, 600]
    final = load_checkpoint(run_dir / LAST_CHECKPOINT)
    assert final["train_state"]["step"] == 600 and final["algorithm"]["updates"] == 400


def test_not_a_checkpoint_gives_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(NmrlError, match="not an nmrl checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(NmrlError, match="not an nmrl checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(NmrlError, match="not an nmrl run directory"):
        load_trained_actor(tmp_path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    save_checkpoint(path, {"x": torch.arange(4)})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_incompatible_config_is_refused(tmp_path):
    config = tiny_config(tmp_path, total_steps=200, learning_starts=100, eval_every=100, checkpoint_every=100)
    run_dir = train(config)
    saved = json.loads((run_dir / "config.json").read_text())
    saved["hidden"] = [32, 32]
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(NmrlError, match="hidden"):
        resume(run_dir)
    with pytest.raises(NmrlError, match="hidden"):
        load_trained_actor(run_dir)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, total_steps=400, checkpoint_every=250)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.json")
    agent = TD3.from_config(config)
    trainer = agent.trainer
    real_update = trainer.algo.update

    def update_then_diverge(batch):
        metrics = real_update(batch)
        if trainer.state.step >= 300:
            metrics["critic_loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(trainer.algo, "update", update_then_diverge)
    with pytest.raises(TrainingDiverged, match="NaN"):
        agent.learn(400, callback=run_callbacks(config, run_dir)[1])
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["train_state"]["step"] == 250


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, how):
    runs = tmp_path / "runs"
    process = _nmrl(
        "train",
        "--env",
        "InvertedPendulum-v5",
        "--total-steps",
        "100000",
        "--learning-starts",
        "100",
        "--batch-size",
        "32",
        "--hidden",
        "16",
        "16",
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "150",
        "--runs-dir",
        str(runs),
        "--run-name",
        "victim",
        "--no-progress",
        "--threads",
        "1",
    )
    last = runs / "victim" / LAST_CHECKPOINT
    _wait_for(last, process)
    time.sleep(1.0)
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    if how == "SIGTERM":
        assert process.returncode == 128 + signal.SIGTERM and "checkpoint saved" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    step = load_checkpoint(last)["train_state"]["step"]
    assert step >= 150
    # leftover temp files (a write cut short by SIGKILL) are never read as checkpoints
    (last.parent / ".last.pt.half.tmp").write_bytes(b"half-written")
    resumed = _nmrl("train", "--resume", str(runs / "victim"), "--total-steps", str(step + 50))
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert load_checkpoint(last)["train_state"]["step"] == step + 50
