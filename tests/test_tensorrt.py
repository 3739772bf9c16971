"""TensorRT deployment: builder settings per version, the ONNX the builder is fed, error paths, and
real engine builds with TensorRT-RTX (which builds without a GPU) for every kind of exported actor."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nmrl.cli import main
from nmrl.deploy import tensorrt as trt_deploy
from nmrl.deploy.onnx_gemms import read_graph_info
from nmrl.errors import NmrlError
from nmrl.sparsity import NMPattern, sparsify
from nmrl.train.networks import Actor

OBS_DIM, ACT_DIM = 27, 8
HAS_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13)")


def sparse_actor(kind: str, hidden=(256, 256)) -> tuple[Actor, NMPattern | None]:
    """A seeded actor in eval mode, dense, N:M (``"2:4"``...) or with half its weights zeroed at
    random (``"unstructured"``), and the N:M pattern it claims (None unless N:M)."""
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, ACT_DIM, [-1.0] * ACT_DIM, [2.0] * ACT_DIM, hidden=hidden)
    claimed = None
    if kind == "unstructured":
        with torch.no_grad():
            for layer in actor.net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(torch.rand_like(layer.weight) > 0.5)
    elif kind != "dense":
        claimed = NMPattern.parse(kind)
        sparsify(actor.net, claimed)
    return actor.eval(), claimed


@functools.cache
def _exported(kind: str, dtype: str, hidden: tuple[int, ...]) -> bytes:
    """One export per kind of actor for the whole file (nmrl's export takes seconds)."""
    from nmrl.export.onnx_export import export_policy

    actor, claimed = sparse_actor(kind, hidden)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "actor.onnx"
        export_policy(path, actor, OBS_DIM, ACT_DIM, claimed, {"env_id": "Ant-v5", "env_kwargs": SETTINGS}, dtype)
        return path.read_bytes()


SETTINGS = {"ctrl_cost_weight": 0.1}  # the env settings the exported file names (nmrl.env_kwargs)


def export_actor(path: Path, kind: str = "2:4", dtype: str = "fp32", hidden=(256, 256)) -> Path:
    """The actor through nmrl's own exporter (torch.export, verified N:M, metadata naming Ant-v5):
    what ``nmrl export`` writes, so what TensorRT's parser and builder must accept."""
    path.write_bytes(_exported(kind, dtype, tuple(hidden)))
    return path


# ---- builder settings per TensorRT version (pure logic) -------------------------------------------


def test_tensorrt10_fp32_graph_gets_fp16_flag():
    s = trt_deploy.build_settings("tensorrt", "10.13.3", "float32", sparse=True)
    assert (s.strongly_typed, s.fp16_flag, s.sparse_weights, s.sparse_possible) == (False, True, True, True)
    assert s.note == ""


def test_tensorrt10_fp16_graph_is_strongly_typed():
    s = trt_deploy.build_settings("tensorrt", "10.3.0", "float16", sparse=True)
    assert (s.strongly_typed, s.fp16_flag, s.sparse_possible) == (True, False, True)


@pytest.mark.parametrize(("flavour", "version"), [("tensorrt", "11.4.1"), ("tensorrt-rtx", "1.7.1.116")])
def test_strongly_typed_builders_take_precision_from_the_graph(flavour, version):
    fp16 = trt_deploy.build_settings(flavour, version, "float16", sparse=True)
    assert (fp16.strongly_typed, fp16.fp16_flag, fp16.sparse_possible, fp16.note) == (True, False, True, "")
    fp32 = trt_deploy.build_settings(flavour, version, "float32", sparse=True)
    assert fp32.strongly_typed and not fp32.fp16_flag and not fp32.sparse_possible
    assert "fp16" in fp32.note  # tells the user to build the fp16 export
    dense = trt_deploy.build_settings(flavour, version, "float32", sparse=False)
    assert not dense.sparse_weights and dense.note == ""


def test_old_tensorrt_is_refused():
    with pytest.raises(NmrlError, match="TensorRT 10 or newer"):
        trt_deploy.build_settings("tensorrt", "8.6.1", "float32", sparse=True)


def test_batch_profile_validation():
    with pytest.raises(NmrlError, match="min <= opt <= max"):
        trt_deploy.BatchProfile(8, 4, 16)


def test_sparsity_log_parsing():
    lines = [
        "INFO: Detected 1 inputs and 1 output network tensors.",
        "INFO: (Sparsity) Layers eligible for sparse math: /net/net.2/Gemm + /net/net.3/Relu, /net/net.4/Gemm",
        "INFO: (Sparsity) TRT inference plan picked sparse implementation for layers: /net/net.4/Gemm",
    ]
    eligible, picked = trt_deploy.parse_sparsity_log(lines)
    assert eligible == ["/net/net.2/Gemm + /net/net.3/Relu", "/net/net.4/Gemm"]
    assert picked == ["/net/net.4/Gemm"]
    empty = [
        "INFO: (Sparsity) Layers eligible for sparse math:",
        "INFO: (Sparsity) TRT inference plan picked sparse implementation for layers:",
    ]
    assert trt_deploy.parse_sparsity_log(empty) == ([], [])
    assert trt_deploy.parse_sparsity_log(lines[:1]) == (None, None)


def test_engine_file_names():
    onnx_path = Path("runs/x/actor.onnx")
    plan = trt_deploy.default_plan_path(onnx_path, "tensorrt")
    rtx = trt_deploy.default_plan_path(onnx_path, "tensorrt-rtx")
    assert plan == Path("runs/x/actor.plan") and rtx == Path("runs/x/actor.rtx.plan")
    assert trt_deploy.dense_kernels_path(plan) == Path("runs/x/actor.dense.plan")
    assert trt_deploy.dense_kernels_path(rtx) == Path("runs/x/actor.rtx.dense.plan")
    assert trt_deploy.report_path(plan) == Path("runs/x/actor.plan.json")


# ---- the ONNX fed to the builder ------------------------------------------------------------------


def test_graph_info_reads_gemm_weights_along_k(tmp_path):
    info = read_graph_info(export_actor(tmp_path / "a.onnx", "2:4"))
    assert (info.input_name, info.input_dim, info.input_dtype, info.output_name) == (
        "obs",
        OBS_DIM,
        "float32",
        "action",
    )
    shapes = [(g.k, g.n, g.fits_2of4) for g in info.gemms]
    # K = 27 is not a multiple of 4, so the first layer cannot use 2:4 kernels even though masked.
    assert shapes == [(27, 256, False), (256, 256, True), (256, ACT_DIM, True)]
    assert all(abs(g.density - 0.5) < 1e-6 for g in info.gemms[1:])
    assert not info.reduced_precision


@pytest.mark.parametrize(("kind", "fits"), [("dense", False), ("unstructured", False), ("1:4", True), ("4:8", False)])
def test_graph_info_per_kind(tmp_path, kind, fits):
    info = read_graph_info(export_actor(tmp_path / "a.onnx", kind))
    assert info.gemms[1].fits_2of4 is fits


def test_graph_info_fp16(tmp_path):
    info = read_graph_info(export_actor(tmp_path / "a.onnx", "2:4", "fp16"))
    assert info.compute_dtype == "float16" and info.reduced_precision
    assert {g.dtype for g in info.gemms} == {"float16"}


def test_not_onnx_is_a_user_error(tmp_path):
    bogus = tmp_path / "actor.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(NmrlError, match="not an ONNX model"):
        read_graph_info(bogus)


# ---- error paths ----------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TRT, reason="standard TensorRT is installed here")
def test_missing_tensorrt_is_one_clear_line(tmp_path, capsys):
    onnx_path = export_actor(tmp_path / "actor.onnx")
    assert main(["deploy", "build", str(onnx_path), "--backend", "tensorrt"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'tensorrt' is not installed" in err and "GPU" in err


def test_unknown_flavour_and_missing_file(tmp_path):
    with pytest.raises(NmrlError, match="unknown TensorRT backend"):
        trt_deploy.import_tensorrt("tensorflow")
    with pytest.raises(NmrlError, match="no such ONNX file"):
        trt_deploy.build_engines(tmp_path / "missing.onnx", flavour="tensorrt-rtx")
    with pytest.raises(NmrlError, match="no such engine file"):
        trt_deploy.TensorRTPolicy(tmp_path / "missing.plan")


# ---- real builds with TensorRT-RTX (no GPU needed) ------------------------------------------------


@needs_rtx
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["dense", "2:4", "unstructured"])
def test_rtx_builds_every_kind_of_actor(tmp_path, kind, dtype):
    """NVIDIA's parser and builder must accept every graph nmrl exports; a rejection fails CI."""
    onnx_path = export_actor(tmp_path / "actor.onnx", kind, dtype)
    report = trt_deploy.build_engines(onnx_path, flavour="tensorrt-rtx", profile=trt_deploy.BatchProfile(1, 32, 1024))

    plan, twin = Path(report.plan), Path(report.dense_plan)
    assert plan == tmp_path / "actor.rtx.plan" and twin == tmp_path / "actor.rtx.dense.plan"
    assert plan.stat().st_size > 10_000 and twin.stat().st_size > 10_000
    assert report.flags == {"SPARSE_WEIGHTS": True, "STRONGLY_TYPED": True}
    assert report.settings["sparse_possible"] is (dtype == "fp16")
    # The builder's own log shows the dynamic-batch profile it compiled for.
    log = (tmp_path / "actor.rtx.plan.log").read_text()
    assert f"MinShape: [1,{OBS_DIM}], OptShape: [32,{OBS_DIM}], MaxShape: [1024,{OBS_DIM}]" in log
    expected_dtype = "Half" if dtype == "fp16" else "Float"
    assert f"Name: obs, IOMode: Input, DataType: {expected_dtype}" in log
    saved = json.loads((tmp_path / "actor.rtx.plan.json").read_text())
    assert saved["flavour"] == "tensorrt-rtx" and saved["version"] == report.version
    assert [g["fits_2of4"] for g in saved["onnx_gemms"]] == [False, kind == "2:4", kind == "2:4"]
    assert saved["builder_picked"] is None  # RTX picks kernels on the target GPU, not here
    assert any("just in time" in note for note in saved["notes"])
    assert saved["env_id"] == "Ant-v5"  # from the export's metadata


@needs_rtx
def test_rtx_dense_kernel_engine_is_built_without_the_sparse_flag(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    trt = trt_deploy.import_tensorrt("tensorrt-rtx")
    info = read_graph_info(onnx_path)
    settings = trt_deploy.build_settings("tensorrt-rtx", trt.__version__, info.compute_dtype, sparse=False)
    built = trt_deploy.build_plan(trt, onnx_path, info, settings, trt_deploy.BatchProfile())
    assert built.flags["SPARSE_WEIGHTS"] is False and built.plan


@needs_rtx
def test_rtx_compute_capability_targets(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    report = trt_deploy.build_engines(onnx_path, "tensorrt-rtx", compute_capabilities=("8.6",), dense_kernels=False)
    assert report.dense_plan is None and Path(report.plan).is_file()
    with pytest.raises(NmrlError, match=r"no compute capability 9\.0 target.*--backend tensorrt"):
        trt_deploy.build_engines(onnx_path, "tensorrt-rtx", compute_capabilities=("9.0",))


@needs_rtx
def test_rtx_parser_rejection_is_a_user_error(tmp_path):
    # A graph TensorRT's ONNX parser cannot import: an op from a domain it does not know.
    node = onnx.helper.make_node("Frobnicate", ["obs"], ["action"], domain="com.example")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", OBS_DIM])],
        [onnx.helper.make_tensor_value_info("action", onnx.TensorProto.FLOAT, ["batch", ACT_DIM])],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(NmrlError, match="ONNX parser rejected"):
        trt_deploy.build_engines(path, "tensorrt-rtx")


@needs_rtx
def test_cli_deploy_build_prints_the_report(tmp_path, capsys):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    assert main(["deploy", "build", str(onnx_path), "--backend", "tensorrt-rtx", "--max-batch", "512"]) == 0
    out = capsys.readouterr().out
    assert "actor.rtx.plan" in out and "SPARSE_WEIGHTS" in out and "1/64/512" in out
    assert read_graph_info(onnx_path).gemms[1].node in out  # the per-layer 2:4 table


@needs_rtx
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_running_an_engine_without_a_gpu_is_one_clear_error(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    report = trt_deploy.build_engines(onnx_path, "tensorrt-rtx", dense_kernels=False)
    with pytest.raises(NmrlError, match="could not load the engine"):
        trt_deploy.load_tensorrt_policy(report.plan)


# ---- on an NVIDIA GPU with standard TensorRT ------------------------------------------------------


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_gpu_tensorrt_engine_matches_torch(tmp_path, dtype):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", dtype, hidden=(1024, 1024))
    report = trt_deploy.build_engines(onnx_path, "tensorrt", profile=trt_deploy.BatchProfile(1, 4096, 4096))
    assert report.builder_eligible is not None and report.builder_picked is not None
    if report.settings["sparse_possible"]:
        # A 1024-wide 2:4 actor in reduced precision at batch 4096 is where sparse kernels win:
        # the builder must have picked them for at least one layer, and the report says so.
        assert report.builder_eligible, report.format()
        assert report.builder_picked, report.format()
        assert report.builder_picked[0] in report.sparse_kernels
    policy = trt_deploy.load_tensorrt_policy(report.plan)
    assert (policy.obs_dim, policy.act_dim) == (OBS_DIM, ACT_DIM)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(0).standard_normal((300, OBS_DIM)).astype(np.float32)
    feed = obs.astype(np.float16) if dtype == "fp16" else obs
    expected = session.run(None, {"obs": feed})[0].astype(np.float32)
    np.testing.assert_allclose(policy.act(obs), expected, rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(policy.act(obs[0]), expected[0], rtol=3e-2, atol=3e-2)


# ---- backend probes and loaders for deploy eval / bench -------------------------------------------


def test_backend_probes_say_what_is_missing():
    reason = trt_deploy.tensorrt_unavailable_reason()
    if not HAS_TRT:
        assert "'tensorrt' is not installed" in reason
    if HAS_RTX and not torch.cuda.is_available():
        assert "CUDA" in trt_deploy.tensorrt_rtx_unavailable_reason()


def _files(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


@pytest.mark.parametrize("flavour", ["tensorrt", "tensorrt-rtx"])
def test_loading_an_onnx_never_builds_and_names_the_build_command(tmp_path, flavour):
    """Before: the loader quietly built and wrote engines beside the ONNX. Now it only finds them."""
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    before = _files(tmp_path)
    for dense in (False, True):
        with pytest.raises(NmrlError) as refusal:
            trt_deploy.load_tensorrt_policy(onnx_path, flavour=flavour, dense=dense)
        message = str(refusal.value)
        assert "\n" not in message and f"nmrl deploy build {onnx_path} --backend {flavour}" in message
    assert _files(tmp_path) == before  # nothing written


def test_engines_are_found_by_the_naming_rule_and_refused_when_stale(tmp_path, monkeypatch):
    """The loader runs the engine ``nmrl deploy build`` wrote beside the ONNX (flavour from the name,
    environment from the ONNX it was built from) and never reads the JSON report beside it."""
    from nmrl.deploy.tensorrt import loader

    opened = []
    monkeypatch.setattr(
        loader,
        "TensorRTPolicy",
        lambda plan, flavour, env_id, env_kwargs: opened.append((plan, flavour, env_id, env_kwargs)),
    )
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    for name in ("actor.rtx.plan", "actor.rtx.dense.plan", "actor.plan", "actor.dense.plan"):
        (tmp_path / name).write_bytes(b"engine")
    # A report that lies about everything must change nothing: the runner does not read it.
    (tmp_path / "actor.rtx.plan.json").write_text(json.dumps({"flavour": "tensorrt", "env_id": "evil:Env"}))
    trt_deploy.load_tensorrt_rtx_policy(onnx_path, dense=True)
    trt_deploy.load_tensorrt_policy(tmp_path / "actor.rtx.plan")
    trt_deploy.load_tensorrt_policy(tmp_path / "actor.plan", dense=True)
    trt_deploy.load_tensorrt_policy(tmp_path)  # a run directory: the engine of its actor.onnx
    assert opened == [
        (tmp_path / "actor.rtx.dense.plan", "tensorrt-rtx", "Ant-v5", SETTINGS),
        (tmp_path / "actor.rtx.plan", "tensorrt-rtx", "Ant-v5", SETTINGS),
        (tmp_path / "actor.dense.plan", "tensorrt", "Ant-v5", SETTINGS),
        (tmp_path / "actor.plan", "tensorrt", "Ant-v5", SETTINGS),
    ]
    assert trt_deploy.source_onnx(tmp_path / "actor.rtx.dense.plan") == onnx_path
    assert trt_deploy.engine_flavour(tmp_path / "actor.rtx.dense.plan") == "tensorrt-rtx"
    # An engine older than its ONNX was built from another file: refused, and names no environment.
    os.utime(tmp_path / "actor.rtx.plan", ns=(1, 1))
    with pytest.raises(NmrlError, match=r"actor\.rtx\.plan is older than .*rebuild it: nmrl deploy build"):
        trt_deploy.load_tensorrt_rtx_policy(onnx_path)
    assert trt_deploy.source_onnx(tmp_path / "actor.rtx.plan") is None
    trt_deploy.load_tensorrt_policy(tmp_path / "actor.rtx.plan")
    assert opened[-1] == (tmp_path / "actor.rtx.plan", "tensorrt-rtx", None, None)


@needs_rtx
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_built_engine_is_what_the_loader_runs(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    assert main(["deploy", "build", str(onnx_path), "--backend", "tensorrt-rtx", "--no-dense-kernels"]) == 0
    built = _files(tmp_path)
    with pytest.raises(NmrlError, match=r"actor\.rtx\.plan: tensorrt-rtx could not load the engine"):
        trt_deploy.load_tensorrt_rtx_policy(onnx_path)  # found it; only the GPU is missing
    with pytest.raises(NmrlError, match="no tensorrt-rtx dense-kernel engine"):
        trt_deploy.load_tensorrt_rtx_policy(onnx_path, dense=True)
    assert _files(tmp_path) == built


@needs_rtx
def test_bench_builds_only_its_own_scratch_models(tmp_path, monkeypatch):
    """bench writes the dense twin ONNX itself and builds its engine (explicitly, profile up to the
    largest batch timed); the user's ONNX gets no engine written beside it."""
    from dataclasses import replace

    from rich.console import Console

    from nmrl.deploy import benchmodels
    from nmrl.deploy.policy import BACKENDS

    monkeypatch.setitem(BACKENDS, "tensorrt-rtx", replace(BACKENDS["tensorrt-rtx"], probe=None))  # as on a GPU
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    models = benchmodels._onnx_file_models(
        onnx_path, ["tensorrt-rtx"], {"threads": 1, "max_batch": 256}, tmp_path / "models", Console(), ["fp16"]
    )
    sparse, dense = (model.loaders["tensorrt-rtx"] for model in models)
    with pytest.raises(NmrlError, match=r"no tensorrt-rtx engine.*build it first"):
        sparse()
    assert not (tmp_path / "actor.rtx.plan").exists()
    if not torch.cuda.is_available():
        with pytest.raises(NmrlError, match="could not load the engine"):
            dense()
    else:
        dense().close()
    report = trt_deploy.BuildReport.load(tmp_path / "models" / "actor.dense.rtx.plan.json")
    assert report.profile == {"min": 1, "opt": 64, "max": 256} and report.dense_plan is None


def _polygraphy() -> str | None:
    beside_python = Path(sys.executable).parent / "polygraphy"
    return shutil.which("polygraphy") or (str(beside_python) if beside_python.is_file() else None)


@pytest.mark.skipif(_polygraphy() is None, reason="polygraphy not installed")
@pytest.mark.parametrize("kind", ["2:4", "unstructured"])
def test_two_of_four_reading_agrees_with_polygraphy(tmp_path, kind):
    """nmrl's reading of the weights along K matches NVIDIA's own checker."""
    onnx_path = export_actor(tmp_path / "actor.onnx", kind)
    result = subprocess.run(
        [_polygraphy(), "inspect", "sparsity", str(onnx_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = set(re.findall(r"Found sparse tensor: (\S+)", result.stdout + result.stderr))
    ours = {gemm.weight for gemm in read_graph_info(onnx_path).gemms if gemm.fits_2of4}
    assert found == ours
    assert bool(ours) is (kind == "2:4")


class _FakeTensorRT10:
    """Records what nmrl asks of a TensorRT 10 builder (no TensorRT 10 can run here): the API calls
    of ``build_plan`` for a weakly typed network, which TensorRT-RTX cannot exercise."""

    __version__ = "10.13.3.9"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class BuilderFlag:
        FP16, SPARSE_WEIGHTS = "FP16", "SPARSE_WEIGHTS"

    class ProfilingVerbosity:
        DETAILED = "DETAILED"

    class ILogger:
        def __init__(self):
            pass

    def __init__(self):
        fake = self
        self.calls: list[tuple] = []

        class Config:
            def __init__(self):
                self.flags = set()

            def set_flag(self, flag):
                self.flags.add(flag)

            def get_flag(self, flag):
                return flag in self.flags

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", profile.shapes))

        class Network:  # what TensorRT 10 reports: the creation flags it was given
            def __init__(self, flags):
                self.flags = flags

            def get_flag(self, flag):
                return bool(self.flags & (1 << int(flag)))

        class Profile:
            def set_shape(self, name, low, opt, high):
                self.shapes = (name, low, opt, high)

        class Builder:
            def __init__(self, logger):
                logger.log("INFO", "(Sparsity) Layers eligible for sparse math: /net/net.2/Gemm")
                logger.log("INFO", "(Sparsity) TRT inference plan picked sparse implementation for layers: ")

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network(flags)

            def create_builder_config(self):
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", sorted(config.flags)))
                return b"plan-bytes"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_tensorrt10_builder_calls_for_an_fp32_graph(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp32")
    info = read_graph_info(onnx_path)
    fake = _FakeTensorRT10()
    settings = trt_deploy.build_settings("tensorrt", fake.__version__, info.compute_dtype, sparse=True)
    built = trt_deploy.build_plan(fake, onnx_path, info, settings, trt_deploy.BatchProfile(1, 64, 4096))
    assert fake.calls == [
        ("network", 0),  # weakly typed: TensorRT 10 picks fp16 kernels itself
        ("parse", str(onnx_path)),
        ("profile", ("obs", (1, OBS_DIM), (64, OBS_DIM), (4096, OBS_DIM))),
        ("build", ["FP16", "SPARSE_WEIGHTS"]),
    ]
    assert built.plan == b"plan-bytes" and built.flags == {
        "SPARSE_WEIGHTS": True,
        "FP16": True,
        "STRONGLY_TYPED": False,
    }
    assert trt_deploy.parse_sparsity_log(built.log) == (["/net/net.2/Gemm"], [])


def test_tensorrt10_builder_calls_for_an_fp16_graph(tmp_path):
    onnx_path = export_actor(tmp_path / "actor.onnx", "2:4", "fp16")
    info = read_graph_info(onnx_path)
    fake = _FakeTensorRT10()
    settings = trt_deploy.build_settings("tensorrt", fake.__version__, info.compute_dtype, sparse=True)
    trt_deploy.build_plan(fake, onnx_path, info, settings, trt_deploy.BatchProfile())
    assert ("network", 1 << 1) in fake.calls  # STRONGLY_TYPED, no precision flag
    assert ("build", ["SPARSE_WEIGHTS"]) in fake.calls


# ---- registered deploy backends -------------------------------------------------------------------


def test_backends_are_registered_with_probes():
    from nmrl.deploy.policy import BACKENDS, accepted_options, unavailable_reason

    for name in ("tensorrt", "tensorrt-rtx", "torch-2:4"):
        assert name in BACKENDS
        # bench passes its common settings (threads) to every backend's loader.
        assert accepted_options(name, {"threads": 1}) == {"threads": 1}
    if not HAS_TRT:
        assert "'tensorrt' is not installed" in unavailable_reason("tensorrt")
    if not torch.cuda.is_available():
        assert unavailable_reason("torch-2:4") is not None


@needs_rtx
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_deploy_eval_of_an_engine_says_what_is_missing(tmp_path, capsys):
    report = trt_deploy.build_engines(export_actor(tmp_path / "actor.onnx", "2:4", "fp16"), "tensorrt-rtx")
    # No --backend: an engine file runs on its own TensorRT flavour, not on ONNX Runtime.
    assert main(["deploy", "eval", report.plan, "--env", "Ant-v5"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'tensorrt-rtx' cannot run here" in err and "CUDA" in err


TORCH_BLOCKED = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch' (blocked: deploy-only install)")
sys.meta_path.insert(0, NoTorch())
from nmrl.cli import main
codes = [main(argv) for argv in {argvs!r}]
assert "torch" not in sys.modules
print("codes", codes)
"""


@needs_rtx
def test_deploy_verbs_run_without_pytorch(tmp_path):
    """The Jetson image has no PyTorch: doctor, deploy build and bench of an ONNX file must not need it."""
    onnx_path = str(export_actor(tmp_path / "actor.onnx", "2:4", "fp16"))
    argvs = [
        ["doctor"],
        ["deploy", "build", onnx_path, "--backend", "tensorrt-rtx", "--no-dense-kernels"],
        ["bench", onnx_path, "--backends", "ort", "--batch", "1", "--out", str(tmp_path / "bench")],
    ]
    result = subprocess.run(
        [sys.executable, "-c", TORCH_BLOCKED.format(argvs=argvs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "codes [0, 0, 0]" in result.stdout
    assert (tmp_path / "actor.rtx.plan").is_file() and (tmp_path / "bench" / "bench.csv").is_file()


# ---- which layers run sparse kernels, and whose word the report takes ------------------------------

INSPECTOR_LAYERS = [
    {"Name": "/net/net.0/Gemm", "LayerType": "CaskGemm", "TacticName": "sm90_xmma_gemm_f16f16_f32"},
    {"Name": "/net/net.2/Gemm", "LayerType": "CaskGemm", "TacticName": "sm90_xmma_sparse_gemm_f16f16_f32"},
    {"Name": "{ForeignNode[/net/net.4/Gemm.../net/net.5/Tanh]}", "LayerType": "Myelin", "TacticName": ""},
]


def test_fused_myelin_layers_are_not_reported_dense():
    sparse, opaque = trt_deploy.classify_inspector_layers(INSPECTOR_LAYERS)
    assert sparse == ["/net/net.2/Gemm"]
    assert opaque == ["{ForeignNode[/net/net.4/Gemm.../net/net.5/Tanh]}"]


def test_report_says_which_source_it_trusts_and_why():
    verdict = trt_deploy.sparse_kernels_verdict(
        ["/net/net.2/Gemm", "/net/net.4/Gemm"], trt_deploy.classify_inspector_layers(INSPECTOR_LAYERS)
    )
    assert verdict.startswith("/net/net.2/Gemm, /net/net.4/Gemm (trusted: the builder log")
    assert "fused layers included" in verdict
    assert "1 fused (Myelin) layer(s) whose kernels it cannot show" in verdict
    assert "none (trusted" in trt_deploy.sparse_kernels_verdict([], None)
    assert trt_deploy.sparse_kernels_verdict(None, None).startswith("unknown")
