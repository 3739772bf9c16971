"""``nmrl train --config runs/<run>/config.json``: a run repeated from its saved config (bit for bit),
flags beside it overriding, a new run directory every time, and one line for a file that is not one."""

import json

import torch
from helpers import assert_same

import nmrl.envs
from nmrl.cli import main
from nmrl.train.config import TrainConfig

ENV = "point_mass:PointMass-v0"  # tests/ is on sys.path under pytest, as PYTHONPATH=tests puts it
FIRST = (
    *("train", "--env", ENV, "--env-kwargs", '{"length": 20}', "--total-steps", "300", "--learning-starts", "100"),
    *("--batch-size", "32", "--buffer-size", "1000", "--hidden", "16", "16", "--eval-every", "150"),
    *("--eval-episodes", "2", "--checkpoint-every", "150", "--policy-delay", "3", "--run-name", "first"),
    *("--no-progress", "--threads", "1"),
)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evals(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == "eval"]


def actor(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["algorithm"]


def test_a_run_repeated_from_its_config_is_the_same_run_and_flags_override(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    code, _, err = run(capsys, *FIRST)
    assert code == 0, err
    saved = json.loads((runs / "first" / "config.json").read_text())

    code, _, err = run(capsys, "train", "--config", "runs/first/config.json", "--env", ENV, "--run-name", "again")
    assert code == 0, err
    again = json.loads((runs / "again" / "config.json").read_text())
    assert again == {**saved, "run_name": "again"}  # every setting the file's, grouped ones included
    assert evals(runs / "again") == evals(runs / "first") and len(evals(runs / "first")) == 2
    assert_same(actor(runs / "again"), actor(runs / "first"))

    # a flag beside --config overrides its setting (a run directory stands for its config.json)
    code, _, err = run(capsys, "train", "--config", "runs/first", "--env", ENV, "--seed", "2", "--run-name", "s2")
    assert code == 0, err
    assert json.loads((runs / "s2" / "config.json").read_text()) == {**saved, "seed": 2, "run_name": "s2"}
    assert evals(runs / "s2") != evals(runs / "first")

    # without --run-name the repeat gets its own default-named folder; the first run is untouched
    before = {path: path.read_bytes() for path in (runs / "first").rglob("*") if path.is_file()}
    code, _, err = run(capsys, "train", "--config", "runs/first", "--env", ENV, "--total-steps", "150")
    assert code == 0, err
    new = sorted(set(runs.iterdir()) - {runs / "first", runs / "again", runs / "s2"})
    assert len(new) == 1 and new[0].name.startswith("point_mass-PointMass-v0__td3__2of4__s1__"), new
    assert json.loads((new[0] / "config.json").read_text())["total_steps"] == 150
    assert {path: path.read_bytes() for path in (runs / "first").rglob("*") if path.is_file()} == before

    # the file's module:Env id is imported only when --env names it (as for --resume and eval);
    # a fresh process has confirmed no id yet
    monkeypatch.setattr(nmrl.envs, "_CONFIRMED_ENV_IDS", set())
    code, _, err = run(capsys, "train", "--config", "runs/first", "--run-name", "unconfirmed")
    assert code == 1 and "add --env point_mass:PointMass-v0" in err and len(err.splitlines()) == 1, err
    assert not (runs / "unconfirmed").exists()


def test_a_config_that_is_not_one_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "partial.json").write_text('{"env": "Hopper-v5"}')
    cases = {
        "missing.json": "missing.json: no such file",
        "broken.json": "broken.json: not valid JSON",
        "list.json": "list.json: not an nmrl config",
        "partial.json": "partial.json: config lacks algo, sparsity, hidden, activation",
    }
    for name, message in cases.items():
        code, _, err = run(capsys, "train", "--config", name)
        assert code == 1 and err.startswith(f"nmrl train: error: {message}") and len(err.splitlines()) == 1, err
    TrainConfig(env="InvertedPendulum-v5").save(tmp_path / "good.json")
    code, _, err = run(capsys, "train", "--config", "good.json", "--resume", "runs/x")
    assert code == 1 and "give one of them" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
