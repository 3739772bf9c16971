"""nmrl.export.verify / `nmrl inspect` on hand-built ONNX graphs: K axis per layout, N:M, 2:4 eligibility."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from deploy_support import gemm_model, matmul_model, nm_along

from nmrl.cli import main
from nmrl.export.verify import inspect_model
from nmrl.sparsity.nm_core import nm_violations
from nmrl.sparsity.pattern import NMPattern


def test_gemm_trans_b_1_groups_along_axis_1() -> None:
    weight = nm_along((16, 32), axis=1, n=2, m=4)  # torch Linear layout [out, in]
    assert nm_violations(weight, 0, NMPattern(2, 4)) > 0  # the other axis is not 2:4: the axis matters
    check = inspect_model(gemm_model(weight, trans_b=1))
    (layer,) = check.layers
    assert (layer.op, layer.weight_name, layer.k_axis, layer.k) == ("Gemm", "W", 1, 32)
    assert layer.finest == NMPattern(2, 4) and layer.pattern_2of4
    assert layer.density == pytest.approx(0.5)


def test_gemm_trans_b_0_groups_along_axis_0() -> None:
    weight = nm_along((32, 16), axis=0, n=1, m=4)  # B [K, N]
    assert nm_violations(weight, 1, NMPattern(2, 4)) > 0
    (layer,) = inspect_model(gemm_model(weight, trans_b=0)).layers
    assert (layer.k_axis, layer.k) == (0, 32)
    assert layer.finest == NMPattern(1, 4) and layer.pattern_2of4


def test_same_weight_read_with_the_other_layout_is_not_2of4() -> None:
    weight = nm_along((16, 32), axis=1, n=2, m=4)
    (layer,) = inspect_model(gemm_model(np.ascontiguousarray(weight), trans_b=0)).layers  # K now axis 0
    assert layer.k_axis == 0 and not layer.pattern_2of4
    assert layer.reasons[0].startswith("not 2:4 along K") and not layer.eligible_2of4


def test_matmul_constant_b_groups_along_axis_0_and_transpose_is_followed() -> None:
    weight = nm_along((24, 8), axis=0, n=1, m=8)  # [K, N]
    (layer,) = inspect_model(matmul_model(weight)).layers
    assert (layer.op, layer.k_axis, layer.k, layer.finest) == ("MatMul", 0, 24, NMPattern(1, 8))
    # The same weight stored as [N, K] behind a Transpose: K is still the GEMM's reduction axis.
    (through,) = inspect_model(matmul_model(weight, transpose_perm=[1, 0])).layers
    assert (through.k_axis, through.finest, through.shape) == (0, NMPattern(1, 8), (24, 8))


def test_constant_node_weights_are_found() -> None:
    weight = nm_along((8, 16), axis=1, n=2, m=4)
    (layer,) = inspect_model(gemm_model(weight, trans_b=1, as_constant_node=True)).layers
    assert layer.finest == NMPattern(2, 4)


def test_eligibility_needs_reduced_precision_and_k_multiple_of_4() -> None:
    fp16 = nm_along((16, 32), axis=1, n=2, m=4, dtype=np.float16)
    (layer,) = inspect_model(gemm_model(fp16, trans_b=1)).layers
    assert layer.dtype == "float16" and layer.eligible_2of4 and layer.reasons == ()
    assert layer.notes  # a 16x32 GEMM is far below the size where sparse kernels win
    fp32 = fp16.astype(np.float32)
    (layer32,) = inspect_model(gemm_model(fp32, trans_b=1)).layers
    assert layer32.pattern_2of4 and not layer32.eligible_2of4
    assert any("float32" in reason for reason in layer32.reasons)
    odd_k = nm_along((16, 11), axis=1, n=2, m=4, dtype=np.float16)
    (layer_odd,) = inspect_model(gemm_model(odd_k, trans_b=1)).layers
    assert layer_odd.pattern_2of4 and not layer_odd.eligible_2of4
    assert layer_odd.reasons == ("K=11 not a multiple of 4",)


def test_violating_layer_is_counted_and_finest_is_coarser() -> None:
    weight = nm_along((8, 16), axis=1, n=2, m=4)
    weight[3, 4:8] = 1.0  # one group of 4 fully dense
    check = inspect_model(
        gemm_model(weight, trans_b=1, metadata={"nmrl.format": "nmrl-policy-onnx-v1", "nmrl.sparsity": "2:4"})
    )
    assert check.is_nmrl and check.claimed == NMPattern(2, 4)
    assert check.violations(NMPattern(2, 4)) == {"W": 1}
    (layer,) = check.layers
    # groups of 16 hold at most 2+4+2+2 = 10 nonzeros: 10:16 (0.625) is the sparsest pattern left
    assert not layer.pattern_2of4 and layer.finest == NMPattern(10, 16)


def test_non_nmrl_model_has_no_claim() -> None:
    check = inspect_model(gemm_model(np.ones((4, 8), np.float32), trans_b=1))
    assert not check.is_nmrl and check.claimed is None
    (layer,) = check.layers
    assert layer.finest is None and layer.density == 1.0


def test_inspect_cli_reports_and_fails_on_a_broken_claim(tmp_path, capsys) -> None:
    good = tmp_path / "good.onnx"
    onnx.save(
        gemm_model(
            nm_along((8, 16), axis=1, n=2, m=4),
            trans_b=1,
            metadata={"nmrl.format": "nmrl-policy-onnx-v1", "nmrl.sparsity": "2:4"},
        ),
        good,
    )
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    assert "claim verified" in out and "2:4" in out
    broken_weight = nm_along((8, 16), axis=1, n=2, m=4)
    broken_weight[0, :4] = 1.0
    broken = tmp_path / "broken.onnx"
    onnx.save(
        gemm_model(broken_weight, trans_b=1, metadata={"nmrl.format": "nmrl-policy-onnx-v1", "nmrl.sparsity": "2:4"}),
        broken,
    )
    assert main(["inspect", str(broken)]) == 1
    assert "claim BROKEN" in capsys.readouterr().out
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"\xff\x00 definitely not protobuf" * 10)
    assert main(["inspect", str(not_onnx)]) == 1
    assert "not an ONNX model" in capsys.readouterr().err


def test_inspect_and_the_ort_policy_never_load_torch(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(gemm_model(nm_along((8, 16), axis=1, n=2, m=4), trans_b=1), path)
    code = (
        "import sys, numpy as np\n"
        "from nmrl.cli import main\n"
        f"assert main(['inspect', {str(path)!r}]) == 0\n"
        "from nmrl.deploy.ort_backend import OrtPolicy\n"
        f"assert OrtPolicy(__import__('pathlib').Path({str(path)!r})).act(np.zeros(16)).shape == (8,)\n"
        "import nmrl.export.packed, nmrl.export.twin\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_agrees_with_polygraphy_on_the_k_axis(tmp_path) -> None:
    """NVIDIA's own offline checker (`polygraphy inspect sparsity`) as an independent oracle."""
    import shutil
    from pathlib import Path

    pytest.importorskip("polygraphy")
    tool = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    if not Path(tool).exists():
        pytest.skip("polygraphy command not found")
    along_k = nm_along((16, 32), axis=1, n=2, m=4, dtype=np.float16)
    cases = {
        "trans_b1_k_axis1": (gemm_model(along_k, trans_b=1), True),
        "trans_b0_k_axis0": (gemm_model(np.ascontiguousarray(along_k.T), trans_b=0), True),
        "trans_b0_wrong_axis": (gemm_model(along_k, trans_b=0), False),
        "matmul_k_axis0": (matmul_model(nm_along((32, 16), axis=0, n=2, m=4)), True),
    }
    for name, (model, sparse) in cases.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        result = subprocess.run([tool, "inspect", "sparsity", str(path)], capture_output=True, text=True, timeout=120)
        polygraphy_says = "Found sparse tensor: W" in result.stdout + result.stderr
        (layer,) = inspect_model(path).layers
        assert layer.pattern_2of4 == sparse == polygraphy_says, (name, result.stdout[-500:])


def test_int8_weights_behind_dequantize_linear_are_eligible() -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = nm_along((16, 32), axis=1, n=2, m=4).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["W_q", "scale"], ["W"]),
            helper.make_node("Gemm", ["x", "W"], ["y"], transB=1),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(weight, "W_q"), numpy_helper.from_array(np.array(0.1, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    (layer,) = inspect_model(model).layers
    assert (layer.weight_name, layer.dtype, layer.k_axis) == ("W", "int8", 1)
    assert layer.eligible_2of4 and layer.finest == NMPattern(2, 4)
