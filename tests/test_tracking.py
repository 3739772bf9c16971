"""What a run tells the tools RL users watch it with: its settings as TensorBoard hparams (read back
from the event file), beside the final and best evaluation returns; and ``--track`` to Weights &
Biases in offline mode (no network), read back from W&B's own offline run file."""

import json
import struct
import sys

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


def wandb_records(run_file) -> list:
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB's log format: 32 KiB blocks of chunks (CRC, length, type: full, first,
    middle, last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", data[:7]
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:  # zero padding up to the block's end
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full or last: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir, nth: int = 0):
    """(run id, records) of the nth (by time) offline W&B run in ``run_dir/wandb``, once W&B's
    service process has written all it holds (as it does when ``nmrl train`` exits)."""
    import wandb

    wandb.teardown()
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    (run_file,) = folders[nth].glob("run-*.wandb")
    return run_file.stem.removeprefix("run-"), wandb_records(run_file)


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the run's logged numbers."""
    logged: dict[str, list[tuple[int, float]]] = {}
    for entry in of_type(records, "history"):
        items = {item.key or "/".join(item.nested_key): item.value_json for item in entry.item}
        step = int(items["_step"])
        for tag, value in items.items():
            if not tag.startswith("_"):
                logged.setdefault(tag, []).append((step, json.loads(value)))
    return logged


def test_track_logs_the_runs_numbers_and_config_to_wandb_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing of W&B's in $HOME
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    code = main([*TINY, "--run-name", "tracked", "--track", "--wandb-project", "nm-tests"])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tracked"
    run_id, records = offline_run(run_dir)

    (run,) = of_type(records, "run")
    assert run.project == "nm-tests" and run.display_name == "tracked" and run.run_id == run_id
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == json.loads((run_dir / "config.json").read_text())

    # the TensorBoard numbers, under TensorBoard's tags and steps
    logged = history(records)
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert logged["eval/return_mean"] == [(r["step"], r["return_mean"]) for r in evals]
    assert [value for _, value in logged["eval/best_return"]] == [
        max(r["return_mean"] for r in evals[: i + 1]) for i in range(len(evals))
    ]
    assert len(logged["train/episode_return"]) == 300 // 20  # every episode (length 20)
    assert any(tag.startswith("sparsity/actor/") for tag in logged)
    summary = {
        item.key: json.loads(item.value_json) for s in of_type(records, "summary") for item in s.update if item.key
    }
    assert summary["costs"] == json.loads((run_dir / "costs.json").read_text())
    assert of_type(records, "exit")[-1].exit_code == 0

    # a resume with --track continues the same W&B run, from the checkpoint's step on
    code = main(["train", "--resume", "runs/tracked", "--total-steps", "400", "--env", ENV, "--track"])
    assert code == 0, capsys.readouterr().err
    resumed_id, records = offline_run(run_dir, 1)
    assert resumed_id == run_id
    assert [step for step, _ in history(records)["eval/return_mean"]] == [400]


def test_track_without_wandb_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert main([*TINY, "--run-name", "untracked", "--track"]) == 1
    err = capsys.readouterr().err
    assert err == "nmrl train: error: the Python module 'wandb' is not installed: pip install 'nmrl[track]'\n"
    assert not (tmp_path / "runs").exists()
