"""nmrl.policy_file: the one schema of a policy file's metadata, its writer and its reader."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from deploy_support import HOPPER_OBS, small_actor

from nmrl.cli import main
from nmrl.deploy.policy import load_policy
from nmrl.errors import NmrlError
from nmrl.export.onnx_export import export_policy
from nmrl.export.twin import dense_twin_onnx
from nmrl.policy_file import FORMAT, KEYS, PolicyClaims, metadata_of, read_claims, write_claims
from nmrl.sparsity.pattern import NMPattern


def test_the_schema_module_imports_neither_torch_nor_onnx() -> None:
    code = "import sys, nmrl.policy_file; print(sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exported_file_reads_back_as_what_export_claims(tmp_path) -> None:
    path = tmp_path / "actor.onnx"
    bounds = {"action_low": [-1.0, -1.0, -1.0], "action_high": [1.0, 1.0, 1.0]}
    export_policy(
        path, small_actor("2:4", hidden=(32, 32)), HOPPER_OBS, 3, NMPattern(2, 4), {"env_id": "Hopper-v5", **bounds}
    )
    model = onnx.load(str(path))
    claims = read_claims(metadata_of(model), str(path))
    assert claims.is_nmrl and claims.format == FORMAT
    assert (claims.obs_dim, claims.act_dim, claims.dtype, claims.sparsity) == (HOPPER_OBS, 3, "fp32", "2:4")
    assert claims.env_id == "Hopper-v5" and claims.action_bounds == ([-1.0] * 3, [1.0] * 3)
    assert set(claims.layer_patterns().values()) == {"2:4"}
    # Every key export wrote is one the schema names, in the schema's order.
    keys = [prop.key for prop in model.metadata_props]
    assert keys == [key for key in KEYS if key in keys]
    twin = read_claims(metadata_of(dense_twin_onnx(model)))
    assert (twin.sparsity, twin.layers, twin.dense_twin) == ("none", [], True)


def test_writer_keeps_a_key_in_place_and_appends_new_ones() -> None:
    model = onnx.ModelProto()
    write_claims(model, PolicyClaims(format=FORMAT, obs_dim=3, sparsity="2:4"))
    write_claims(model, PolicyClaims(sparsity="none", pad_k=1))
    assert [(p.key, p.value) for p in model.metadata_props] == [
        ("nmrl.format", FORMAT),
        ("nmrl.obs_dim", "3"),
        ("nmrl.sparsity", "none"),
        ("nmrl.pad_k", "1"),
    ]


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("nmrl.obs_dim", "eleven", "nmrl.obs_dim must be a positive integer"),
        ("nmrl.act_dim", "-3", "nmrl.act_dim must be a positive integer"),
        ("nmrl.dtype", "int4", "nmrl.dtype must be fp32 or fp16 or int8"),
        ("nmrl.action_low", '[1, "x"]', "nmrl.action_low must be a JSON list of numbers"),
        ("nmrl.layers", '[{"pattern": "2:4"}]', "nmrl.layers must be a JSON list"),
        ("nmrl.quantization", "[]", "nmrl.quantization must be a JSON object"),
        ("nmrl.dense_twin", "yes", "nmrl.dense_twin must be true or false"),
        ("nmrl.env_kwargs", "[5]", "nmrl.env_kwargs must be a JSON object of env settings"),
    ],
)
def test_reader_refuses_a_bad_value_in_one_line(key, text, message) -> None:
    with pytest.raises(NmrlError, match=message) as error:
        read_claims({"nmrl.format": FORMAT, key: text}, "a.onnx")
    assert "\n" not in str(error.value) and str(error.value).startswith("a.onnx: ")


def test_reader_refuses_bounds_that_disagree() -> None:
    with pytest.raises(NmrlError, match="without the other"):
        read_claims({"nmrl.action_low": "[-1]"})
    with pytest.raises(NmrlError, match="disagree in size"):
        read_claims({"nmrl.action_low": "[-1]", "nmrl.action_high": "[1]", "nmrl.act_dim": "3"})


def test_ort_backend_refuses_a_file_whose_metadata_lies(tmp_path, capsys) -> None:
    # Before the schema, ORT loaded this file and crashed with a JSONDecodeError on its bounds.
    path = tmp_path / "actor.onnx"
    export_policy(path, small_actor("2:4", hidden=(32, 32)), HOPPER_OBS, 3, NMPattern(2, 4), {"env_id": "Hopper-v5"})
    model = onnx.load(str(path))
    model.metadata_props.add(key="nmrl.action_low", value="[-1, -1, oops")
    model.metadata_props.add(key="nmrl.action_high", value="[1, 1, 1]")
    onnx.save(model, str(path))
    with pytest.raises(NmrlError, match=r"nmrl\.action_low must be a JSON list of numbers"):
        load_policy(path, "ort")
    assert main(["deploy", "eval", str(path), "--backend", "ort", "--episodes", "1"]) == 1
    assert "nmrl.action_low" in capsys.readouterr().err
    # nmrl inspect describes the file instead of refusing it, and names what is wrong.
    main(["inspect", str(path)])
    assert "nmrl.action_low must be a JSON list of numbers" in capsys.readouterr().out
