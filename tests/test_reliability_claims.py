"""Issue 9, item 11: a claim holds only if there was something to check. `nmrl inspect` fails on
nothing to check and on per-layer claims the weights break, says what it checked; `deploy eval` and
`bench` warn before running a file whose claim inspect fails; no backend runs a false N:M label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from deploy_support import HOPPER_OBS, small_actor
from onnx import TensorProto, helper

from nmrl.cli import main
from nmrl.export.onnx_export import export_policy
from nmrl.sparsity.pattern import NMPattern

FIXTURE = Path(__file__).parent / "fixtures" / "cheetah_fp16_run"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("claims") / "actor.onnx"
    export_policy(path, small_actor("2:4", hidden=(32, 32)), HOPPER_OBS, 3, NMPattern(2, 4), {"env_id": "Hopper-v5"})
    return path


def _with_metadata_of(model: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    for prop in source.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def test_a_claim_over_a_graph_without_gemms_is_unverifiable(exported, tmp_path, capsys) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["obs"], ["action"])],
        "relu",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", HOPPER_OBS])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", HOPPER_OBS])],
    )
    relu = _with_metadata_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), onnx.load(exported))
    path = tmp_path / "relu.onnx"
    onnx.save(relu, path)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "claim UNVERIFIABLE: the graph has no Gemm/MatMul with a constant weight" in out
    assert "claim verified" not in out


def test_an_ort_quantized_file_is_read_through_matmulinteger(exported, tmp_path, capsys) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(exported), str(quantized), weight_type=QuantType.QInt8)
    assert "MatMulInteger" in {node.op_type for node in onnx.load(quantized).graph.node}
    assert main(["inspect", str(quantized)]) == 1  # the quantizer renamed the weights nmrl.layers names
    out = capsys.readouterr().out
    assert "checked and held: 3 of 3 GEMM weights" in out and "hold 2:4 along K" in out
    assert "int8 layers" in out
    assert "claim UNVERIFIABLE: nmrl.layers names net.0.weight, net.2.weight, net.4.weight" in out


def test_a_per_layer_claim_the_weights_break_fails(exported, tmp_path, capsys) -> None:
    model = onnx.load(exported)
    prop = next(p for p in model.metadata_props if p.key == "nmrl.layers")
    layers = json.loads(prop.value)
    layers[1]["pattern"] = "1:4"
    prop.value = json.dumps(layers)
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 1
    assert "claim BROKEN: nmrl.layers says net.2.weight is 1:4, but" in capsys.readouterr().out


def _broken_claim_file(exported: Path, tmp_path: Path) -> Path:
    model = onnx.load(exported)
    weight = next(init for init in model.graph.initializer if init.name == "net.2.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[values == 0] = 0.01  # dense weights under a 2:4 label
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    return path


def test_deploy_eval_and_bench_warn_before_running_a_broken_claim(exported, tmp_path, capsys) -> None:
    broken = _broken_claim_file(exported, tmp_path)
    assert main(["inspect", str(broken)]) == 1
    capsys.readouterr()
    assert main(["deploy", "eval", str(broken), "--episodes", "1"]) == 0
    captured = capsys.readouterr()
    assert f"warning: running {broken} although `nmrl inspect` fails it: claim BROKEN" in captured.err
    assert "return" in captured.out
    args = ["bench", str(broken), "--backends", "ort", "--batch", "1", "--warmup", "2", "--calls", "10"]
    assert main([*args, "--out", str(tmp_path / "bench")]) == 0
    assert "although `nmrl inspect` fails it: claim BROKEN" in capsys.readouterr().out
    # A file whose claim holds runs without a warning.
    assert main(["deploy", "eval", str(exported), "--episodes", "1"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_no_backend_runs_an_all_ones_mask_labelled_2of4(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    actor = state["algorithm"]["modules"]["actor"]
    masks = [key for key in actor if key.endswith(".mask")]
    assert masks
    actor[masks[1]] = torch.ones_like(actor[masks[1]])
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    for command in (["eval", str(run_dir), "--episodes", "1"], ["deploy", "eval", str(run_dir), "--backend", "torch"]):
        assert main(command) == 1
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert "break their N:M pattern along K (net.2 (2:4):" in line and "refusing to run it" in line
