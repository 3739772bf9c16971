"""The train/eval verbs end to end through the real command line."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nmrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "nmrl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_then_eval_through_the_cli(tmp_path):
    train = nmrl(
        "train",
        "--env",
        "Hopper-v5",
        "--sparsity",
        "1:4",
        "--total-steps",
        "300",
        "--learning-starts",
        "150",
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "32",
        "--eval-every",
        "150",
        "--eval-episodes",
        "2",
        "--run-name",
        "cli",
        "--no-progress",
        "--seed",
        "3",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    run_dir = tmp_path / "runs" / "cli"
    assert "run directory: runs/cli" in train.stdout
    assert {"config.json", "metrics.jsonl", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    assert "eval return" in train.stderr

    evaluation = nmrl("eval", "runs/cli", "--episodes", "3", "--checkpoint", "best", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Hopper-v5  td3 1:4  best checkpoint" in evaluation.stdout
    assert "over 3 episodes" in evaluation.stdout
    # deterministic: the same seeds give the same returns
    again = nmrl("eval", "runs/cli", "--episodes", "3", "--checkpoint", "best", cwd=tmp_path)
    assert again.stdout == evaluation.stdout


def test_user_mistakes_print_one_line_without_traceback(tmp_path):
    cases = [
        (["train", "--sparsity", "5:4"], "N must be between 1 and M"),
        (["train", "--sparsity", "2/4"], "invalid --sparsity"),
        (
            ["train", "--sparsity", "0.9", "--semi-structured"],
            "has no 2:4 fast path",
        ),
        (["train", "--env", "NoSuchEnv-v0"], "cannot make environment"),
        (["train", "--env", "CartPole-v1"], "Box action space"),
        (["eval", str(tmp_path)], "not an nmrl run directory"),
        (["train", "--resume", str(tmp_path)], "not an nmrl run directory"),
    ]
    for args, message in cases:
        result = nmrl(*args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_lists_commands(tmp_path):
    result = nmrl("--help", cwd=tmp_path)
    assert result.returncode == 0 and "train" in result.stdout and "eval" in result.stdout
    assert nmrl("frobnicate", cwd=tmp_path).returncode == 2
