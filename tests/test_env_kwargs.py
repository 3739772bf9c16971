"""--env-kwargs end to end on a user's own env (tests/point_mass.py): train, eval, export (its
closed-loop check), deploy eval; and the one-line errors for settings an env refuses."""

import json

import onnx
import pytest

from nmrl.cli import main
from nmrl.envs import make_env, parse_env_kwargs
from nmrl.errors import NmrlError

ENV = "point_mass:PointMass-v0"  # tests/ is on sys.path under pytest, as PYTHONPATH=tests puts it


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_own_env_with_settings_trains_exports_and_deploys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    settings = '{"length": 17, "gain": 2.0}'
    code, out, err = run(
        capsys,
        *("train", "--env", ENV, "--env-kwargs", settings, "--sparsity", "2:4", "--total-steps", "160"),
        *("--learning-starts", "64", "--batch-size", "32", "--hidden", "16", "16", "--eval-every", "80"),
        *("--eval-episodes", "2", "--run-name", "own", "--no-progress", "--threads", "1"),
    )
    assert code == 0, err
    run_dir = tmp_path / "runs" / "own"
    assert json.loads((run_dir / "config.json").read_text())["env_kwargs"] == {"length": 17, "gain": 2.0}

    # eval: the run's settings (length 17), or others given on the command line
    code, out, err = run(capsys, "eval", "runs/own", "--env", ENV, "--episodes", "2")
    assert code == 0, err
    assert f'{ENV} {{"gain": 2.0, "length": 17}}  td3 2:4' in out and "mean length 17" in out

    # export: its closed-loop check makes the env (length has no default: without the settings it fails)
    code, out, err = run(capsys, "export", "runs/own", "--env", ENV, "--check-episodes", "2")
    assert code == 0, err
    metadata = {p.key: p.value for p in onnx.load(str(run_dir / "actor.onnx")).metadata_props}
    assert json.loads(metadata["nmrl.env_kwargs"]) == {"length": 17, "gain": 2.0}
    # int8: calibrated on the policy's own episodes of the env made with the run's settings
    code, out, err = run(capsys, "export", "runs/own", "--dtype", "int8", "--check-episodes", "2")
    assert code == 0, err
    assert f'{ENV} {{"gain": 2.0, "length": 17}} episodes' in out, out

    code, out, err = run(capsys, "deploy", "eval", "runs/own/actor.onnx", "--env", ENV, "--episodes", "2")
    assert code == 0, err
    assert "on ONNX Runtime CPU" in out and "mean length 17" in out
    code, out, err = run(
        capsys,
        "deploy",
        "eval",
        "runs/own/actor.onnx",
        "--env",
        ENV,
        "--episodes",
        "2",
        "--env-kwargs",
        '{"length": 5}',
    )
    assert code == 0, err
    assert f'{ENV} {{"length": 5}}' in out and "mean length 5" in out


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('{"lenght": 5}', f"--env-kwargs: {ENV} has no setting 'lenght'; it takes gain, length"),
        ('{"length": -3}', f'{ENV} refused --env-kwargs {{"length": -3}}: ValueError: length must be a positive'),
        ('{"length": 5', "--env-kwargs is not valid JSON"),
        ("[5]", "--env-kwargs must be a JSON object"),
    ],
)
def test_a_refused_setting_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys, settings, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "--env", ENV, "--env-kwargs", settings, "--run-name", "bad", "--no-progress")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_bad_value_found_only_by_stepping_is_refused():
    """Hopper takes any ctrl_cost_weight at construction; a string fails at the first step."""
    with pytest.raises(
        NmrlError, match=r"Hopper-v5 refused --env-kwargs \{\"ctrl_cost_weight\": \"high\"\}: TypeError"
    ):
        make_env("Hopper-v5", kwargs=parse_env_kwargs('{"ctrl_cost_weight": "high"}'))
    env = make_env("Hopper-v5", kwargs=parse_env_kwargs('{"ctrl_cost_weight": 0.5}'))
    assert env.unwrapped._ctrl_cost_weight == 0.5
    env.close()


def test_compare_checks_the_settings_on_every_env_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "compare", "--env", ENV, "--env-kwargs", '{"lenght": 5}', "--methods", "dense")
    assert code == 1 and f"{ENV} has no setting 'lenght'" in err and not (tmp_path / "runs").exists()
