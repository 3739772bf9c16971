"""The ort int8 recipe chooses the first layer's precision per policy, from measured speed and accuracy."""

from __future__ import annotations

import json

import onnx
import pytest
from deploy_support import HOPPER_OBS, small_actor

from nmrl.errors import NmrlError
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import build_policy_onnx
from nmrl.export.quantize import CHOICE_ERROR_BUDGET, pick_first_layer, quantize_int8
from nmrl.export.verify import inspect_model
from nmrl.policy_file import metadata_of, read_claims
from nmrl.sparsity.pattern import NMPattern


@pytest.fixture(scope="module")
def fp32_graph() -> onnx.ModelProto:
    return build_policy_onnx(small_actor("2:4", hidden=(32, 32)), HOPPER_OBS, 3, NMPattern(2, 4))[0]


def test_the_rule_keeps_int8_only_when_clearly_faster_and_as_accurate() -> None:
    accurate = {"first fp32": 0.010, "first int8": 0.012}
    # Ant-like: the 105-wide first layer is a quarter of the work, int8 there pays.
    assert pick_first_layer({"first fp32": 300.0, "first int8": 200.0}, accurate)[0] == "int8"
    # Hopper-like: int8's fixed cost of quantizing the input outweighs an 11-wide layer.
    assert pick_first_layer({"first fp32": 200.0, "first int8": 210.0}, accurate)[0] == "fp32"
    # Within the timing noise: fp32, which is never less accurate, stays.
    assert pick_first_layer({"first fp32": 200.0, "first int8": 190.0}, accurate)[0] == "fp32"
    fast = {"first fp32": 300.0, "first int8": 200.0}
    over_budget = {"first fp32": 0.010, "first int8": CHOICE_ERROR_BUDGET + 0.01}
    chosen, why = pick_first_layer(fast, over_budget)
    assert chosen == "fp32" and "over 0.05" in why
    assert pick_first_layer(fast, {"first fp32": 0.005, "first int8": 0.02})[0] == "fp32"  # 4x the error


def test_a_measured_export_says_what_it_measured_and_is_what_it_says(fp32_graph) -> None:
    observations = random_observations(HOPPER_OBS, 512, 1, scale=1.0)
    int8, report = quantize_int8(fp32_graph, observations, "test", "ort")
    choice = report.first_layer
    assert choice is not None and choice.chosen in ("fp32", "int8")
    assert set(choice.latency_us) == {"fp32", "first fp32", "first int8"} and min(choice.latency_us.values()) > 0
    assert all(0 < value < CHOICE_ERROR_BUDGET * 2 for value in choice.mean_error.values())
    assert pick_first_layer(choice.latency_us, choice.mean_error) == (choice.chosen, choice.reason)
    # The graph holds the choice, and the file's metadata (read through the schema) records it.
    first = inspect_model(int8).layers[0].dtype
    assert first == ("float32" if choice.chosen == "fp32" else "int8")
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    model.metadata_props.add(key="nmrl.quantization", value=json.dumps(report.to_metadata()))
    recorded = read_claims(metadata_of(model)).quantization or {}
    assert recorded["first layer"]["chosen"] == choice.chosen
    assert "measured for this policy" in recorded["int8 layers"]
    assert f"first layer {choice.chosen}" in str(report)


def test_the_first_layer_can_be_fixed_and_tensorrt_refuses_fp32(fp32_graph) -> None:
    observations = random_observations(HOPPER_OBS, 256, 1, scale=1.0)
    int8, report = quantize_int8(fp32_graph, observations, "test", "ort", "int8")
    assert [layer.dtype for layer in inspect_model(int8).layers] == ["int8"] * 3 and report.first_layer is None
    fp32_first, _ = quantize_int8(fp32_graph, observations, "test", "ort", "fp32")
    assert [layer.dtype for layer in inspect_model(fp32_first).layers] == ["float32", "int8", "int8"]
    with pytest.raises(NmrlError, match="quantizes every GEMM"):
        quantize_int8(fp32_graph, observations, "test", "tensorrt", "fp32")
    with pytest.raises(NmrlError, match="unknown first-layer precision"):
        quantize_int8(fp32_graph, observations, "test", "ort", "int4")  # type: ignore[arg-type]
