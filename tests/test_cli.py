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
    assert "over 3 episodes (seeds 0..2), mean length " in evaluation.stdout  # as deploy eval prints it
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
    unknown = nmrl("tain", cwd=tmp_path)
    assert unknown.returncode == 1 and unknown.stderr.strip().splitlines() == [
        "nmrl: error: unknown command 'tain' (did you mean 'train'?); nmrl --help lists the commands"
    ]


def test_version_is_the_package_version(tmp_path):
    from importlib import metadata

    import nmrl as package

    for flag in ("--version", "-V"):
        result = nmrl(flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"nmrl {package.__version__}"
    assert metadata.version("nmrl") == package.__version__  # pyproject reads it from nmrl/__init__.py


# A command line tyro rejects, for every verb: a bad choice, an unknown flag, a bad value, a missing
# positional. Each must end as every other user mistake: one line "nmrl VERB: error: ...", rc 1.
REJECTED = [
    (["export", "run", "--int8-target", "foo"], "invalid choice 'foo' for argument '--int8-target'"),
    (["train", "--algo", "ppo"], "Expected one of ('td3', 'sac')"),
    (["train", "--activation", "gelu"], "Expected one of ('relu', 'leaky_relu', 'tanh')"),
    (["train", "--total-steps", "many"], "Error parsing --total-steps"),
    (["eval", "run", "--checkpoint", "middle"], "Expected one of ('last', 'best')"),
    (["deploy", "eval", "a.onnx", "--backend", "nope"], "invalid choice 'nope' for argument '--backend'"),
    (
        ["deploy", "eval", "a.onnx", "--epsodes", "3"],
        "Unrecognized options: --epsodes, 3 (perhaps you meant --episodes)",
    ),
    (["deploy", "build", "a.onnx", "--backend", "onnx"], "Expected one of ('tensorrt', 'tensorrt-rtx')"),
    (["inspect"], "Missing from nmrl inspect: PATH"),
    (["bench", "--calls", "1.5"], "Error parsing --calls"),
    (["compare", "--engine", "slurm"], "Expected one of ('local', 'ray')"),
    (["doctor", "--verbose"], "Unrecognized options: --verbose"),
]


def test_rejected_command_lines_print_one_line_and_exit_1(capsys):
    from nmrl.cli import COMMANDS, main

    assert {" ".join(args[:2]) if args[0] == "deploy" else args[0] for args, _ in REJECTED} == set(COMMANDS)
    for args, message in REJECTED:
        assert main(args) == 1, args
        captured = capsys.readouterr()
        verb = " ".join(args[:2]) if args[0] == "deploy" else args[0]
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"nmrl {verb}: error: "), (args, captured.err)
        assert message in lines[0] and lines[0].endswith(f"(see nmrl {verb} --help)"), (args, lines[0])
        assert "╭" not in captured.err and captured.out == ""


def test_help_shows_every_closed_set_from_its_registry(capsys):
    import pytest

    from nmrl.cli import main
    from nmrl.deploy.policy import BACKENDS
    from nmrl.train.compare import ENGINES
    from nmrl.train.config import ALGORITHM_MODULES
    from nmrl.train.networks import ACTIVATIONS

    def help_of(*verb: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            main([*verb, "--help"])
        assert exit_.value.code in (0, None)
        return capsys.readouterr().out

    train = help_of("train")
    assert "--algo {" + ",".join(ALGORITHM_MODULES) + "}" in train
    assert "--activation {" + ",".join(ACTIVATIONS) + "}" in train
    assert "--optimizer {adam,masked-adam}" in train  # the option groups' Literal fields too
    assert "--backend {" + ",".join(BACKENDS) + "}" in help_of("deploy", "eval")
    assert "--engine {" + ",".join(ENGINES) + "}" in help_of("compare")


def test_halfcheetah_is_quiet_and_leaves_no_mujoco_log(tmp_path):
    """Gymnasium's HalfCheetah XML uses MuJoCo's deprecated settotalmass: MuJoCo printed a warning per
    env and appended it to MUJOCO_LOG.TXT in the working folder. Other MuJoCo warnings are logged."""
    code = (
        "import logging, numpy as np, mujoco\n"
        "logging.basicConfig(format='%(name)s %(message)s')\n"
        "from nmrl.envs import make_env\n"
        "for _ in range(2):\n"
        "    env = make_env('HalfCheetah-v5', seed=0)\n"
        "env.unwrapped.data.qpos[0] = np.nan\n"
        "mujoco.mj_step(env.unwrapped.model, env.unwrapped.data)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "settotalmass" not in result.stdout + result.stderr
    assert "nmrl.envs MuJoCo: Nan, Inf or huge value in QPOS" in result.stderr
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
