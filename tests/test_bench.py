"""nmrl bench: honest per-call timing, sparse vs dense twins, table/CSV/PNG."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from deploy_support import HOPPER_OBS, TINY_RUN_GROUP, exported_run, small_actor

from nmrl.cli import main
from nmrl.deploy.bench import BenchModel, plot, ratios, read_csv, run_bench, time_policies, write_csv
from nmrl.deploy.policy import Policy, load_policy
from nmrl.export.onnx_export import dense_twin_module, export_policy, materialize
from nmrl.export.twin import dense_twin_onnx
from nmrl.export.verify import inspect_model
from nmrl.sparsity.pattern import NMPattern


class SleepyPolicy(Policy):
    """Takes ``delay`` seconds per call and records the inputs it saw."""

    backend = "sleepy"

    def __init__(self, delay: float) -> None:
        self.obs_dim, self.act_dim, self.delay, self.seen = 4, 2, delay, []

    def _act_batch(self, obs: np.ndarray) -> np.ndarray:
        self.seen.append(obs[0, 0])
        time.sleep(self.delay)
        return np.zeros((len(obs), 2), np.float32)


def test_each_call_is_timed_with_rotating_inputs_and_interleaved_variants() -> None:
    fast, slow = SleepyPolicy(0.0005), SleepyPolicy(0.002)
    latencies = time_policies({"sparse": fast, "dense": slow}, batch=3, warmup=2, calls=30, max_seconds=5)
    assert len(latencies["sparse"]) == len(latencies["dense"]) == 30
    assert np.median(latencies["sparse"]) >= 0.5e6 and np.median(latencies["dense"]) >= 2e6  # ns
    assert np.median(latencies["dense"]) > np.median(latencies["sparse"])
    assert len(set(fast.seen)) > 4  # not one cached input replayed
    # The calls budget shrinks to fit max_seconds, but never below min_calls.
    few = time_policies({"x": SleepyPolicy(0.01)}, batch=1, warmup=2, calls=1000, max_seconds=0.05, min_calls=3)
    assert 3 <= len(few["x"]) <= 10


def test_dense_twins_have_no_zeros_and_the_same_graph(tmp_path) -> None:
    actor = small_actor("2:4", hidden=(16, 16))
    result = export_policy(tmp_path / "a.onnx", actor, HOPPER_OBS, 3, NMPattern(2, 4))
    twin = dense_twin_onnx(result.model)
    assert [n.op_type for n in twin.graph.node] == [n.op_type for n in result.model.graph.node]
    check = inspect_model(twin)
    assert all(layer.density == 1.0 for layer in check.layers) and check.claimed is None
    module_twin = dense_twin_module(actor)
    for sparse_layer, dense_layer in zip(
        (m for m in materialize(actor).modules() if isinstance(m, torch.nn.Linear)),
        (m for m in module_twin.modules() if isinstance(m, torch.nn.Linear)),
        strict=True,
    ):
        assert (dense_layer.weight != 0).all()
        kept = sparse_layer.weight != 0
        assert torch.equal(dense_layer.weight[kept], sparse_layer.weight[kept])


def test_run_bench_csv_and_plot(tmp_path) -> None:
    actor = small_actor("2:4", hidden=(16, 16))
    sparse = export_policy(tmp_path / "s.onnx", actor, HOPPER_OBS, 3, NMPattern(2, 4))
    onnx.save(dense_twin_onnx(sparse.model), tmp_path / "d.onnx")
    models = [
        BenchModel("m", variant, "fp32", {"ort": (lambda p=path: load_policy(p, "ort"))})
        for variant, path in (("sparse", tmp_path / "s.onnx"), ("dense", tmp_path / "d.onnx"))
    ]
    timings, described = run_bench(models, ["ort"], [1, 8], warmup=3, calls=20, max_seconds=1)
    assert {(t.variant, t.batch) for t in timings} == {("sparse", 1), ("dense", 1), ("sparse", 8), ("dense", 8)}
    assert all(t.p50_us <= t.p90_us <= t.p99_us and t.calls == 20 for t in timings)
    assert "ONNX Runtime CPU" in described["ort"]
    found = ratios(timings)
    assert len(found) == 2 and all(r.speedup > 0 for r in found)
    write_csv(timings, tmp_path / "bench.csv")
    assert read_csv(tmp_path / "bench.csv") == timings
    plot(timings, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_verb_on_an_onnx_file(tmp_path, capsys) -> None:
    actor = small_actor("2:4", hidden=(16, 16))
    export_policy(tmp_path / "actor.onnx", actor, HOPPER_OBS, 3, NMPattern(2, 4))
    out = tmp_path / "out"
    assert (
        main(
            [
                "bench",
                str(tmp_path / "actor.onnx"),
                "--backends",
                "torch,ort,ort-cuda",
                "--batch",
                "1,4",
                "--calls",
                "10",
                "--warmup",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "torch skipped for an .onnx target" in text and "dense/sparse" in text and "expected" in text
    rows = read_csv(out / "bench.csv")
    assert {(r.backend, r.variant, r.batch) for r in rows} == {
        ("ort", v, b) for v in ("sparse", "dense") for b in (1, 4)
    }
    assert (out / "bench.png").is_file()
    assert main(["bench", "--batch", "0"]) == 1


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_bench_verb_on_a_run_with_a_synthetic_width(tmp_path_factory, capsys) -> None:
    from nmrl.deploy.policy import BACKENDS, register_backend

    run_dir = exported_run(tmp_path_factory)
    # A backend that loads run directories itself (as torch-2:4 does on a GPU) gets the run for the
    # sparse actor and dense=True for the twin, and is skipped for synthetic actors. It computes in
    # its own precision (fp32: it runs the run's actor.onnx), timed once whatever --dtype asks.
    register_backend("run-backed", "deploy_support:load_run_backed_policy", takes="run")
    argv = [
        "--dtype",
        "fp16,fp32",
        "--backends",
        "torch,ort,run-backed,tensorrt",
        "--batch",
        "1,16",
        "--widths",
        "64",
        "--calls",
        "10",
        "--warmup",
        "2",
    ]
    try:
        assert main(["bench", str(run_dir), *argv]) == 0
    finally:
        del BACKENDS["run-backed"]
    rows = read_csv(run_dir / "bench" / "bench.csv")
    run_model, synthetic = "Hopper-v5 64-64 2:4", "synthetic 11-64-64-3 2:4"
    assert {(r.model, r.backend, r.dtype) for r in rows} == {
        *(
            (model, backend, dtype)
            for model in (run_model, synthetic)
            for backend in ("torch", "ort")
            for dtype in ("fp16", "fp32")
        ),
        (run_model, "run-backed", "fp32"),
    }
    assert len(rows) == 9 * 2 * 2  # (model, backend, dtype) x variant x batch
    dense_run_backed = [r for r in rows if r.backend == "run-backed" and r.variant == "dense"]
    assert len(dense_run_backed) == 2
    out = capsys.readouterr().out
    assert "PyTorch" in out and "skipping backend tensorrt" in out and "run-backed skipped for synthetic" in out
    assert "run-backed runs fp32 only" in out


@pytest.fixture
def fp32_first_layer(monkeypatch):
    """The ``ort`` recipe's first layer kept fp32: measured, a small actor's two candidates run within
    the timing noise of a loaded machine and either may win (the choice: test_int8_first_layer.py)."""
    import nmrl.export.quantize

    monkeypatch.setattr(nmrl.export.quantize, "CHOICE_SPEEDUP", float("inf"))


def test_bench_int8_rows_time_quantized_sparse_and_dense_twin_files(tmp_path, capsys, fp32_first_layer) -> None:
    import csv

    from nmrl.export.verify import inspect_model

    out = tmp_path / "bench"
    args = ["bench", "--widths", "64", "--dtype", "int8", "--backends", "torch,ort", "--batch", "1,8"]
    assert main([*args, "--warmup", "2", "--calls", "10", "--out", str(out)]) == 0
    with open(out / "bench.csv") as file:
        rows = list(csv.DictReader(file))
    assert {(row["variant"], row["backend"], row["batch"]) for row in rows} == {
        (variant, "ort", batch) for variant in ("sparse", "dense") for batch in ("1", "8")
    }
    sparse = sorted(out.glob("models/*.sparse.int8-ort.onnx"))
    dense = sorted(out.glob("models/*.dense.int8-ort.onnx"))
    assert len(sparse) == len(dense) == 1
    # the ort recipe: the first layer fp32 (the observations unquantized), the others int8
    int8_layers = ["float32", "int8", "int8"]
    assert [layer.dtype for layer in inspect_model(sparse[0]).layers] == int8_layers
    assert all(layer.pattern_2of4 for layer in inspect_model(sparse[0]).layers)
    # a few small twin weights round to int8 zero; the twin stays dense
    assert [layer.dtype for layer in inspect_model(dense[0]).layers] == int8_layers
    assert all(layer.density > 0.9 for layer in inspect_model(dense[0]).layers)


def test_int8_bench_gives_each_backend_the_recipe_it_runs(tmp_path) -> None:
    """TensorRT rejects the ONNX Runtime recipe's unsigned activations: a TensorRT row must time the
    file `nmrl export --dtype int8 --int8-target tensorrt` writes, an ORT row the ORT recipe's."""
    from nmrl.deploy.benchmodels import _module_models

    def activation_types(path) -> set[int]:
        model = onnx.load(path)
        initializers = {init.name: init.data_type for init in model.graph.initializer}
        return {initializers[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"}

    options = {"threads": 1, "max_batch": 8}
    backends = ["ort", "tensorrt-rtx"]
    models = _module_models(
        "w32", small_actor(), HOPPER_OBS, 3, NMPattern(2, 4), ["int8"], 1, tmp_path, backends, {}, options
    )
    assert [(m.variant, sorted(m.loaders)) for m in models] == [("sparse", backends), ("dense", backends)]
    for variant in ("sparse", "dense"):
        assert activation_types(tmp_path / f"w32.{variant}.int8-ort.onnx") == {onnx.TensorProto.UINT8}
        assert activation_types(tmp_path / f"w32.{variant}.int8-tensorrt.onnx") == {onnx.TensorProto.INT8}
    for model in models:  # each backend's loader reads its own recipe's file (nothing is loaded here)
        for backend, target in (("ort", "ort"), ("tensorrt-rtx", "tensorrt")):
            path, loaded_on = model.loaders[backend].args[:2]
            assert (path.name, loaded_on) == (f"w32.{model.variant}.int8-{target}.onnx", backend)


def int8_weight_types(path) -> set[int]:
    """Element types of the initializers that feed DequantizeLinear nodes as their quantized input."""
    model = onnx.load(path)
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    return {
        initializers[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    }


def test_bench_times_fp32_fp16_and_int8_side_by_side_in_one_run(tmp_path, capsys, fp32_first_layer) -> None:
    import csv

    out = tmp_path / "bench"
    args = ["bench", "--widths", "64", "--dtype", "fp32,fp16,int8", "--backends", "torch,ort", "--batch", "1,8"]
    assert main([*args, "--warmup", "2", "--calls", "10", "--max-seconds", "0.2", "--out", str(out)]) == 0
    with open(out / "bench.csv") as file:
        rows = list(csv.DictReader(file))
    cells = {(r["dtype"], r["variant"], r["backend"], r["batch"]) for r in rows}
    expected = {
        (dtype, variant, backend, batch)
        for dtype in ("fp32", "fp16", "int8")
        for variant in ("sparse", "dense")
        for backend in ("torch", "ort")
        for batch in ("1", "8")
        if (dtype, backend) != ("int8", "torch")
    }
    assert cells == expected and len(rows) == len(expected)
    for row in rows:
        p50 = float(row["p50_us"])
        # dense/sparse on sparse rows, per dtype; speed relative to fp32 on every non-fp32 row
        if row["variant"] == "sparse":
            dense = next(
                r
                for r in rows
                if (r["variant"], r["dtype"], r["backend"], r["batch"])
                == ("dense", *[row[k] for k in ("dtype", "backend", "batch")])
            )
            assert float(row["dense_over_sparse_p50"]) == pytest.approx(float(dense["p50_us"]) / p50, rel=1e-3)
        else:
            assert row["dense_over_sparse_p50"] == ""
        if row["dtype"] == "fp32":
            assert row["fp32_p50_over_p50"] == ""
        else:
            fp32 = next(
                r
                for r in rows
                if (r["dtype"], r["variant"], r["backend"], r["batch"])
                == ("fp32", *[row[k] for k in ("variant", "backend", "batch")])
            )
            assert float(row["fp32_p50_over_p50"]) == pytest.approx(float(fp32["p50_us"]) / p50, rel=1e-3)
    # int8 ORT rows time the ort recipe (the only int8 files bench wrote): int8 weights behind
    # DequantizeLinear.
    assert sorted(p.name.split(".", 1)[1] for p in out.glob("models/*int8*")) == [
        "dense.int8-ort.onnx",
        "sparse.int8-ort.onnx",
    ]
    for variant in ("sparse", "dense"):
        (path,) = out.glob(f"models/*.{variant}.int8-ort.onnx")
        assert onnx.TensorProto.INT8 in int8_weight_types(path)
        assert [layer.dtype for layer in inspect_model(path).layers] == ["float32", "int8", "int8"]
        (fp16,) = out.glob(f"models/*.{variant}.fp16.onnx")
        assert {layer.dtype for layer in inspect_model(fp16).layers} == {"float16"}
    text = capsys.readouterr().out
    assert "torch skipped at int8" in text
    assert "speed relative to fp32" in text and "int8 sparse" in text and "fp16 dense" in text
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_dtype_in_one_line(capsys) -> None:
    assert main(["bench", "--widths", "64", "--dtype", "fp32,fp64"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--dtype takes fp32, fp16, int8" in error and "fp64" in error


def test_an_onnx_target_is_timed_in_its_own_precision(tmp_path, capsys) -> None:
    actor = small_actor("2:4", hidden=(16, 16))
    export_policy(tmp_path / "actor.fp16.onnx", actor, HOPPER_OBS, 3, NMPattern(2, 4), dtype="fp16")
    out = tmp_path / "out"
    args = ["bench", str(tmp_path / "actor.fp16.onnx"), "--backends", "ort", "--batch", "2", "--dtype", "fp32,int8"]
    assert main([*args, "--warmup", "2", "--calls", "10", "--out", str(out)]) == 0
    assert {(r.variant, r.dtype) for r in read_csv(out / "bench.csv")} == {("sparse", "fp16"), ("dense", "fp16")}
    assert "timed in its own precision (fp16)" in capsys.readouterr().out


def test_all_dtypes_of_a_cell_are_timed_in_the_same_rounds(tmp_path) -> None:
    """run_bench loads every variant and dtype of a model on a backend together and interleaves
    them; a loader refusing with NmrlError is skipped with a reason, the rest still timed."""
    from nmrl.errors import NmrlError

    order: list[str] = []

    class Recorded(SleepyPolicy):
        def __init__(self, label: str) -> None:
            super().__init__(0.0)
            self.label = label

        def _act_batch(self, obs: np.ndarray) -> np.ndarray:
            order.append(self.label)
            return super()._act_batch(obs)

    def refuse() -> Policy:
        raise NmrlError("no int8 here")

    models = [
        BenchModel("m", variant, dtype, {"b": (lambda label=f"{variant} {dtype}": Recorded(label))})
        for dtype in ("fp32", "fp16")
        for variant in ("sparse", "dense")
    ] + [BenchModel("m", "sparse", "int8", {"b": refuse})]
    skipped: list[str] = []
    timings, _ = run_bench(models, ["b"], [1], warmup=1, calls=10, max_seconds=5, on_skip=skipped.append)
    assert {(t.variant, t.dtype) for t in timings} == {(v, d) for v in ("sparse", "dense") for d in ("fp32", "fp16")}
    assert skipped == ["m sparse int8 skipped on b: no int8 here"]
    timed = order[4:]  # after one warm-up call each: 5 rounds of 2 calls per policy, alternating
    assert timed[:8] == ["sparse fp32"] * 2 + ["dense fp32"] * 2 + ["sparse fp16"] * 2 + ["dense fp16"] * 2
    assert len(timed) == 40 and timed[-8:] == timed[:8]


def test_an_int8_file_is_timed_as_int8_though_its_first_layer_is_fp32(tmp_path, capsys) -> None:
    # The ort recipe keeps the first layer fp32: the file is still an int8 policy, as export says.
    import onnx

    from nmrl.export.observations import random_observations
    from nmrl.export.onnx_export import build_policy_onnx
    from nmrl.export.quantize import quantize_int8

    actor = small_actor("2:4", hidden=(16, 16))
    fp32, _ = build_policy_onnx(actor, HOPPER_OBS, 3, NMPattern(2, 4))
    int8, _ = quantize_int8(fp32, random_observations(HOPPER_OBS, 256, 0, scale=1.0), "test", "ort")
    onnx.save(int8, str(tmp_path / "actor.int8.onnx"))
    out = tmp_path / "out"
    args = ["bench", str(tmp_path / "actor.int8.onnx"), "--backends", "ort", "--batch", "2", "--dtype", "int8"]
    assert main([*args, "--warmup", "2", "--calls", "10", "--out", str(out)]) == 0
    assert {(r.variant, r.dtype) for r in read_csv(out / "bench.csv")} == {("sparse", "int8"), ("dense", "int8")}
    assert "own precision" not in capsys.readouterr().out
