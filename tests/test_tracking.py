"""What a run tells the tools RL users watch it with: its settings as TensorBoard hparams (read back
from the event file), beside the final and best evaluation returns."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from nmrl.cli import main

ENV = "point_mass:PointMass-v0"  # tests/ is on sys.path under pytest, as PYTHONPATH=tests puts it
TINY = (
    *("train", "--env", ENV, "--env-kwargs", '{"length": 20}', "--total-steps", "300", "--learning-starts", "100"),
    *("--batch-size", "32", "--buffer-size", "1000", "--hidden", "16", "16", "--eval-every", "100"),
    *("--eval-episodes", "2", "--checkpoint-every", "150", "--policy-delay", "3", "--seed", "4"),
    *("--no-progress", "--threads", "1"),
)


def hparams_plugin(run_dir) -> tuple[EventAccumulator, dict[str, HParamsPluginData]]:
    (events,) = run_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    return accumulator, {tag: HParamsPluginData.FromString(data) for tag, data in content.items()}


def test_tensorboard_holds_the_runs_settings_and_its_returns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--run-name", "hp"]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "hp"
    accumulator, plugin = hparams_plugin(run_dir)

    start = plugin[hparams_metadata.SESSION_START_INFO_TAG].session_start_info.hparams
    assert start["seed"].number_value == 4 and start["policy_delay"].number_value == 3
    assert start["sparsity"].string_value == "2:4" and start["hidden"].string_value == "16 16"
    assert start["env"].string_value == ENV and json.loads(start["env_kwargs"].string_value) == {"length": 20}
    assert start["stop_at_return"].string_value == "none"
    saved = json.loads((run_dir / "config.json").read_text())
    flat = {
        **saved,
        **{k: v for group in ("td3", "sac", "nm", "unstructured", "fast_path") for k, v in saved[group].items()},
    }
    assert set(start) == set(flat) - {"td3", "sac", "nm", "unstructured", "fast_path"}  # every setting

    experiment = plugin[hparams_metadata.EXPERIMENT_TAG].experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/return_mean", "eval/best_return"]
    assert {h.name for h in experiment.hparam_infos} == set(start)
    end = plugin[hparams_metadata.SESSION_END_INFO_TAG].session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS

    # the metrics are this run's own scalars: the last evaluation, and the best one so far
    returns = [
        r["return_mean"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "eval"
    ]
    assert len(returns) == 3
    assert [e.value for e in accumulator.Scalars("eval/return_mean")] == pytest.approx(returns, rel=1e-6)
    best = [e.value for e in accumulator.Scalars("eval/best_return")]
    assert best == pytest.approx([max(returns[: i + 1]) for i in range(3)], rel=1e-6)
