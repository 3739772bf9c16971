"""Issue 22, items 7-12 and 13 (why a file was not loaded): hostile files and arguments end in one
line, never a traceback; checks cannot be switched off by a number; untrusted text is escaped in
every verb's output. Each test's docstring names the item it holds.

The verbs run in-process (``nmrl.cli.main``: a traceback is an exception escaping it), a few in a
real subprocess. Each test failed on the code before its fix. The fuzz tests draw ONNX metadata
values and calibration arrays with hypothesis (derandomized, a bounded number of examples).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from deploy_support import HOPPER_OBS, small_actor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from nmrl.cli import main
from nmrl.errors import NmrlError

ROOT = Path(__file__).resolve().parents[1]
CHEETAH_RUN = Path(__file__).parent / "fixtures" / "cheetah_int8_run"  # HalfCheetah: 17 observations
CHEETAH_OBS = 17
FUZZ = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    """A real 2:4 policy file (Hopper-v5 sizes, 32-32) as nmrl export writes it."""
    from nmrl.export.onnx_export import export_policy
    from nmrl.sparsity.pattern import NMPattern

    path = tmp_path_factory.mktemp("policy") / "actor.onnx"
    metadata = {"env_id": "Hopper-v5", "action_low": [-1.0] * 3, "action_high": [2.0] * 3}
    export_policy(path, small_actor("2:4", hidden=(32, 32)), HOPPER_OBS, 3, NMPattern(2, 4), metadata)
    return path


def _changed(path: Path, metadata: dict[str, str] | None = None, weight=None) -> onnx.ModelProto:
    """The model at ``path`` with metadata values replaced (or added) and ``weight(initializer)``
    applied to the second layer's weight."""
    model = onnx.load(path)
    for key, value in (metadata or {}).items():
        prop = next((p for p in model.metadata_props if p.key == key), None)
        if prop is None:
            prop = model.metadata_props.add(key=key)
        prop.value = value
    if weight is not None:
        weight(next(init for init in model.graph.initializer if init.name == "net.2.weight"))
    return model


def _verb_args(verb: str, path: Path, out: Path) -> list[str]:
    return {
        "inspect": ["inspect", str(path)],
        "deploy eval": ["deploy", "eval", str(path), "--episodes", "1"],
        "bench": [
            "bench",
            str(path),
            "--backends",
            "ort",
            "--batch",
            "1",
            "--warmup",
            "1",
            "--calls",
            "3",
            "--out",
            str(out),
        ],
    }[verb]


def run_verb(capsys, args: list[str]) -> tuple[int, str, str]:
    """``nmrl ARGS`` in-process: rc 0, or rc 1 with one error line on stderr (warnings before it
    allowed); never an exception. Returns (rc, stdout, stderr)."""
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc in (0, 1), (args, rc, err)
    errors = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    if rc == 0:
        assert not errors, err
    elif args[0] == "inspect" and not errors:  # inspect's rc 1 is also a failed claim, reported on stdout
        assert "claim " in out, out
    else:
        assert len(errors) == 1 and errors[0].startswith(
            f"nmrl {' '.join(args[:2]) if args[0] == 'deploy' else args[0]}: error: "
        ), err
    return rc, out, err


# ------------------------------------------------------------------------------------------
# Item 7: hostile ONNX metadata and initializers


def _no_data(init: TensorProto) -> None:
    del init.dims[:]
    init.dims.extend([2**20, 2**20])
    init.ClearField("raw_data")
    del init.float_data[:]


def _truncated(init: TensorProto) -> None:
    init.raw_data = numpy_helper.to_array(init).tobytes()[:100]


def _strings(init: TensorProto) -> None:
    init.CopyFrom(helper.make_tensor(init.name, TensorProto.STRING, [32, 32], [b"x"] * 1024))


HOSTILE_FILES = {
    "nmrl.layers nested 100,000 deep": ({"nmrl.layers": "[" * 100_000}, None),
    "nmrl.sparsity 1:99999999999999999999": ({"nmrl.sparsity": "1:99999999999999999999"}, None),
    "a 2^20 x 2^20 weight without data": ({}, _no_data),
    "a truncated raw_data": ({}, _truncated),
    "a STRING weight": ({}, _strings),
}


@pytest.mark.parametrize("case", HOSTILE_FILES)
def test_hostile_onnx_metadata_and_initializers_are_one_line_in_every_verb(policy_file, tmp_path, capsys, case):
    """Issue 22 item 7: RecursionError, TypeError pad_width, ValueError cannot reshape before."""
    metadata, weight = HOSTILE_FILES[case]
    path = tmp_path / "hostile.onnx"
    onnx.save(_changed(policy_file, metadata, weight), path)
    said = {}
    for verb in ("inspect", "deploy eval", "bench"):
        said[verb] = run_verb(capsys, _verb_args(verb, path, tmp_path / "bench"))
    if weight is _no_data or weight is _truncated:  # a broken file: refused, the tensor named
        assert all(rc == 1 for rc, _, _ in said.values())
        assert "constant 'net.2.weight' does not hold the values of its declared shape" in said["inspect"][2]
    if metadata:  # a claim that cannot be read cannot be verified: inspect fails it
        assert said["inspect"][0] == 1 and "claim UNVERIFIABLE" in said["inspect"][1]
    if "nmrl.layers" in metadata:  # a runtime refuses a file whose schema values do not parse
        assert said["deploy eval"][0] == 1 and "metadata nmrl.layers must be" in said["deploy eval"][2]
    if "nmrl.sparsity" in metadata:  # text to the schema: the runtime runs it, and warns
        assert said["deploy eval"][0] == 0 and "warning: running" in said["deploy eval"][2]


# ------------------------------------------------------------------------------------------
# Item 8: calibration files


def _npy_header_only(path: Path, shape: tuple[int, ...]) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.write_bytes(buffer.getvalue() + b"\0" * 64)


def test_calibration_files_that_are_not_real_observations_are_one_line(tmp_path, capsys):
    """Issue 22 item 8: TypeError isfinite, EOFError, _ArrayMemoryError, complex accepted, "pickled"."""
    files = {
        "strings.npy": "must be real numbers",
        "empty.npy": "empty (0 bytes)",
        "huge.npy": "the header declares [100000000000, 17]",
        "complex.npy": "complex (complex64): their imaginary part would be lost",
        "text.npy": "cannot be read as .npy observations",
    }
    np.save(tmp_path / "strings.npy", np.array([["a"] * CHEETAH_OBS] * 4))
    (tmp_path / "empty.npy").write_bytes(b"")
    _npy_header_only(tmp_path / "huge.npy", (10**11, CHEETAH_OBS))
    np.save(tmp_path / "complex.npy", (np.ones((4, CHEETAH_OBS)) + 1j).astype(np.complex64))
    (tmp_path / "text.npy").write_text("0.1, 0.2, 0.3\n")
    for name, message in files.items():
        args = ["export", str(CHEETAH_RUN), "--checkpoint", "best", "--dtype", "int8"]
        args += ["--calibration", str(tmp_path / name), "--output", str(tmp_path / "x.onnx")]
        rc, _, err = run_verb(capsys, args)
        assert rc == 1 and message in err, (name, err)
        assert "pickled" not in err
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------------
# Item 9: nm-packed files


def _hostile_packed_files(good: Path) -> dict[str, dict[str, np.ndarray]]:
    arrays = dict(np.load(good))
    meta = json.loads(arrays["meta"].tobytes())

    def encoded(value: object) -> np.ndarray:
        return np.frombuffer(json.dumps(value).encode(), np.uint8)

    def with_meta(**changes: object) -> np.ndarray:
        return encoded({**meta, **changes})

    def with_entry(**changes: object) -> np.ndarray:
        return encoded({**meta, "weights": [{**meta["weights"][0], **changes}, *meta["weights"][1:]]})

    def variant(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
        files = {**arrays, **{k: v for k, v in changes.items() if v is not None}}
        return {k: v for k, v in files.items() if not (k in changes and changes[k] is None)}

    return {
        "meta a JSON list": variant(meta=encoded([1, 2])),
        "no model entry": variant(model=None),
        "no meta entry": variant(meta=None),
        "meta not JSON": variant(meta=np.frombuffer(b"\xff\xfe{", np.uint8)),
        "meta nested 100,000 deep": variant(meta=np.frombuffer(b"[" * 100_000, np.uint8)),
        "meta of floats": variant(meta=np.zeros(3, np.float32)),
        "pattern 1:99999999999999999999": variant(meta=with_meta(pattern="1:99999999999999999999")),
        "weights not a list": variant(meta=with_meta(weights={"a": 1})),
        "a weight entry without its key": variant(meta=with_entry(key=None)),
        "k_axis out of range": variant(meta=with_entry(k_axis=5)),
        "a shape the values do not fill": variant(meta=with_entry(shape=[7, 3])),
        "values missing": variant(values_0=None),
        "values of strings": variant(values_0=np.array(["a"] * 10)),
        "too few in-group positions": variant(indices_0=np.zeros(1, np.uint8)),
        "model bytes not ONNX": variant(model=np.frombuffer(b"\x08\x99\x99\x99\xff", np.uint8)),
    }


def test_every_hostile_nm_packed_file_is_refused_in_one_line(policy_file, tmp_path, capsys):
    """Issue 22 item 9: AttributeError, KeyError and others escaped load_packed."""
    from nmrl.export.packed import load_packed, write_packed
    from nmrl.sparsity.pattern import NMPattern

    good = tmp_path / "good.nm.npz"
    write_packed(onnx.load(policy_file), good, NMPattern(2, 4))
    assert len(load_packed(good).graph.initializer) == len(onnx.load(policy_file).graph.initializer)
    escaped = []
    for name, arrays in _hostile_packed_files(good).items():
        bad = tmp_path / f"{len(escaped)}.nm.npz"
        np.savez(bad, **arrays)
        try:
            load_packed(bad)
            escaped.append(f"{name}: loaded")
        except NmrlError as error:
            assert "not an nm-packed file" in str(error), (name, error)
        except Exception as error:  # the defect: anything but NmrlError
            escaped.append(f"{name}: {type(error).__name__}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(NmrlError, match="a single numpy array"):
        load_packed(tmp_path / "single.npy")
    assert not escaped, escaped
    # export --format nm-packed over a tagged file with bad contents: refused, the file unchanged
    target = tmp_path / "X.nm.npz"
    np.savez(target, **_hostile_packed_files(good)["meta a JSON list"])
    before = target.read_bytes()
    args = ["export", str(CHEETAH_RUN), "--checkpoint", "best", "--format", "nm-packed", "--output", str(target)]
    rc, _, err = run_verb(capsys, args)
    assert rc == 1 and "refusing to overwrite" in err and target.read_bytes() == before


# ------------------------------------------------------------------------------------------
# Items 10 and 11: numbers that guard checks and sizes


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-seconds", "nan"], "--max-seconds must be a finite number"),
        (["--max-seconds", "inf"], "--max-seconds must be a finite number"),
        (["--calls", "0"], "--calls must be at least 1"),
        (["--batch", "100000000000"], "more than the"),
        (["--widths", "10000000"], "more than the"),
        (["--out", "FILE"], "is a file, not a folder"),
        (["--threads", "100000000"], "--threads must be 0"),
    ],
)
def test_bench_numbers_and_output_folder_out_of_range_are_one_line(tmp_path, capsys, flags, message):
    """Issue 22 item 10 (bench): MemoryError, alloc RuntimeError, ValueError, NotADirectoryError, --calls 0."""
    victim = tmp_path / "victim"  # stands for /etc/passwd: a file given as --out
    victim.write_text("DATA")
    flags = [str(victim) if flag == "FILE" else flag for flag in flags]
    if "--widths" not in flags:
        flags += ["--widths", "8"]
    if "--out" not in flags:
        flags += ["--out", str(tmp_path / "out")]
    rc, out, err = run_verb(capsys, ["bench", "--backends", "ort", "--batch", "1", "--warmup", "1", *flags])
    assert rc == 1 and message in err, err
    assert "latency per call" not in out and not (tmp_path / "out").exists() and victim.read_text() == "DATA"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "-1"], "--threads must be 0"),
        (["--threads", "100000000"], "--threads must be 0"),
        (["--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_deploy_eval_threads_and_seed_out_of_range_are_one_line(policy_file, capsys, flags, message):
    """Issue 22 item 10 (deploy): --threads -1 ran as "-1 threads", 100000000 hung, --seed -1 was
    Gymnasium's traceback."""
    rc, out, err = run_verb(capsys, ["deploy", "eval", str(policy_file), "--episodes", "1", *flags])
    assert rc == 1 and message in err and "return" not in out, err


@pytest.mark.parametrize("margin", ["nan", "inf", "-0.1", "1.5"])
def test_the_return_margin_must_be_a_finite_fraction_so_the_closed_loop_check_stays_on(tmp_path, capsys, margin):
    """Issue 22 item 11: --return-margin nan printed "refused below -nan (nan%) ... ok", rc 0."""
    args = ["export", str(CHEETAH_RUN), "--checkpoint", "best", "--output", str(tmp_path / "x.onnx")]
    rc, _, err = run_verb(capsys, [*args, f"--return-margin={margin}"])
    assert rc == 1 and "--return-margin must be a fraction between 0 and 1" in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_return_margin_of_nan_never_passes_a_worse_file() -> None:
    """Issue 22 item 11, at the library: verify_export refuses the margin that passes everything."""
    from nmrl.export.parity import ClosedLoopResult, check_closed_loop_settings

    # What nan did: every comparison with it is false, so a file scoring 0 against 1000 passed.
    assert ClosedLoopResult("Hopper-v5", 0, (1000.0,), (0.0,), "fp32", float("nan")).passed
    with pytest.raises(NmrlError, match="--return-margin"):
        check_closed_loop_settings(3, float("nan"))


# ------------------------------------------------------------------------------------------
# Item 12: untrusted text is escaped in every verb's output

SPOOF = "\x1b[2K\r[green]claim verified[/]\nfake line"


def _spoofing_file(policy_file: Path, path: Path) -> Path:
    """A file whose env id and second weight's name draw over the terminal and add lines; its
    nmrl.layers names the weight, which breaks the 2:4 claim (inspect must stay BROKEN, rc 1)."""
    model = _changed(policy_file, {"nmrl.env_id": "Hopper-v5" + SPOOF})
    init = next(init for init in model.graph.initializer if init.name == "net.2.weight")
    init.CopyFrom(numpy_helper.from_array(np.ones((32, 32), np.float32), "w" + SPOOF))
    for node in model.graph.node:
        node.input[:] = ["w" + SPOOF if name == "net.2.weight" else name for name in node.input]
    layers = json.loads(next(p.value for p in model.metadata_props if p.key == "nmrl.layers"))
    layers[1]["weight"] = "w" + SPOOF
    next(p for p in model.metadata_props if p.key == "nmrl.layers").value = json.dumps(layers)
    onnx.save(model, path)
    return path


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text, text
    assert not any(line.startswith("fake line") for line in text.splitlines()), text
    assert "claim verified" not in text or "[green]claim verified[/]" in text, text


def test_untrusted_text_is_escaped_in_every_verbs_output(policy_file, tmp_path, capsys):
    """Issue 22 item 12: a file drew "claim verified" over its own BROKEN line."""
    path = _spoofing_file(policy_file, tmp_path / "spoof.onnx")
    rc, out, err = run_verb(capsys, ["inspect", str(path)])
    assert rc == 1 and "claim BROKEN" in out and "\\x1b[2K\\r[green]claim verified[/]\\nfake line" in out
    _assert_escaped(out + err)
    rc, out, err = run_verb(capsys, ["deploy", "eval", str(path), "--episodes", "1"])
    _assert_escaped(out + err)
    assert "warning: running" in err and "\\x1b" in err  # the claim warning names the weight, escaped
    # bench names the model after the file: a file name can hold escape codes too
    named = tmp_path / "spoof\x1b[2K.onnx"
    named.write_bytes(path.read_bytes())
    rc, out, err = run_verb(capsys, _verb_args("bench", named, tmp_path / "bench"))
    assert rc == 0 and "spoof\\x1b[2K" in out
    _assert_escaped(out + err)
    # an error line quoting the file (a broken tensor's name) is escaped as well
    broken = _changed(path, weight=None)
    for init in broken.graph.initializer:
        if init.name.startswith("w"):
            init.raw_data = init.raw_data[:10]
    onnx.save(broken, tmp_path / "broken.onnx")
    rc, out, err = run_verb(capsys, ["inspect", str(tmp_path / "broken.onnx")])
    assert rc == 1 and "does not hold the values" in err
    _assert_escaped(out + err)


# ------------------------------------------------------------------------------------------
# Item 13: why an ONNX file was not loaded


def _external(policy_file: Path, folder: Path, location: str) -> Path:
    model = onnx.load(policy_file)
    init = next(init for init in model.graph.initializer if init.name == "net.2.weight")
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    init.external_data.add(key="location", value=location)
    folder.mkdir(exist_ok=True)
    path = folder / f"{len(list(folder.iterdir()))}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside.bin", "external data of tensor 'net.2.weight' refused: "),
        ("/etc/passwd", "external data of tensor 'net.2.weight' refused: "),
        ("missing.bin", "the external data file 'missing.bin' of tensor 'net.2.weight' is missing"),
    ],
)
def test_refused_or_missing_external_data_is_named_not_called_not_onnx(
    policy_file, tmp_path, capsys, location, message
):
    """Issue 22 item 13: "not an ONNX model (ValidationError)" for refused or missing external data."""
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    path = _external(policy_file, tmp_path / "model", location)
    rc, _, err = run_verb(capsys, ["inspect", str(path)])
    assert rc == 1 and message in err and "not an ONNX model" not in err, err


# ------------------------------------------------------------------------------------------
# Fuzz: ONNX metadata values and calibration arrays, through every verb

METADATA_KEYS = [
    "nmrl.format",
    "nmrl.sparsity",
    "nmrl.layers",
    "nmrl.env_id",
    "nmrl.obs_dim",
    "nmrl.dtype",
    "nmrl.config",
    "nmrl.action_low",
    "nmrl.quantization",
]
big_number = st.integers(min_value=-(10**30), max_value=10**30).map(str)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["weight", "pattern", "x"]), children)
    ),
    max_leaves=8,
).map(lambda value: json.dumps(value))
metadata_values = st.one_of(
    st.text(max_size=30),  # control characters, markup, anything
    st.tuples(big_number, big_number).map(":".join),  # N:M patterns of any size
    st.integers(min_value=1, max_value=200_000).map(lambda depth: "[" * depth),
    st.sampled_from(["Hopper-v5", "nmrl-policy-onnx-v1", "2:4", "dense", "0.9", "1e999", "9" * 5000]),
    json_values,
)
metadata_changes = st.dictionaries(st.sampled_from(METADATA_KEYS), metadata_values, min_size=1, max_size=3)


@FUZZ
@given(changes=metadata_changes)
def test_fuzzed_onnx_metadata_never_reaches_a_traceback_in_inspect_or_deploy_eval(
    policy_file, tmp_path, capsys, changes
):
    """Issue 22, the fuzz test: metadata values through inspect and deploy eval."""
    path = tmp_path / "fuzzed.onnx"
    onnx.save(_changed(policy_file, changes), path)
    for verb in ("inspect", "deploy eval"):
        run_verb(capsys, _verb_args(verb, path, tmp_path / "bench"))


@settings(FUZZ, max_examples=4)
@given(changes=metadata_changes)
def test_fuzzed_onnx_metadata_never_reaches_a_traceback_in_bench(policy_file, tmp_path, capsys, changes):
    """Issue 22, the fuzz test: metadata values through bench (fewer examples: each times a file)."""
    path = tmp_path / "fuzzed.onnx"
    onnx.save(_changed(policy_file, changes), path)
    run_verb(capsys, _verb_args("bench", path, tmp_path / "bench"))


CALIBRATION_DTYPES = ["float32", "float64", "float16", "int32", "bool", "complex64", "<U3", "f4,f4"]
calibration_shapes = st.sampled_from(
    [(0, CHEETAH_OBS), (5, CHEETAH_OBS), (5, 16), (CHEETAH_OBS,), (2, 3, CHEETAH_OBS), ()]
)
calibration_values = st.sampled_from([0.0, 1.0, -3.5, float("nan"), float("inf"), 1e30])


@FUZZ
@given(
    dtype=st.sampled_from(CALIBRATION_DTYPES),
    shape=calibration_shapes,
    value=calibration_values,
    cut=st.sampled_from([None, 0, 5, 60, -4]),
)
def test_fuzzed_calibration_arrays_never_reach_a_traceback_in_export(tmp_path, capsys, dtype, shape, value, cut):
    """Issue 22, the fuzz test: every array (any dtype, shape, values; whole or cut short) is
    refused in one line, or loaded as the finite float32 [count, 17] observations the quantizer
    needs. An accepted file's whole export is run by test_export_int8 (seconds per example here)."""
    from nmrl.export.observations import load_calibration

    path = tmp_path / "calibration.npy"
    with np.errstate(all="ignore"):
        array = np.full(shape, value).astype(np.dtype(dtype)) if "U" not in dtype else np.full(shape, "abc")
    np.save(path, array)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    try:
        loaded = load_calibration(path, CHEETAH_OBS)
    except NmrlError:
        args = ["export", str(CHEETAH_RUN), "--checkpoint", "best", "--dtype", "int8"]
        args += ["--calibration", str(path), "--output", str(tmp_path / "x.onnx")]
        rc, _, _ = run_verb(capsys, args)
        assert rc == 1 and not (tmp_path / "x.onnx").exists()
        return
    assert loaded.dtype == np.float32 and loaded.ndim == 2 and loaded.shape[1] == CHEETAH_OBS and len(loaded)
    assert np.isfinite(loaded).all() and np.array_equal(loaded, array.astype(np.float32))


# ------------------------------------------------------------------------------------------
# The same promises from a real process: one line on stderr, rc 1, no traceback


def test_a_hostile_file_is_one_line_from_a_real_process(policy_file, tmp_path):
    """Issue 22 item 7 from a real process: nested metadata and a truncated weight, one line on
    stderr, rc 1, no traceback (RecursionError reached the interpreter's own handler)."""
    hostile = tmp_path / "hostile.onnx"
    onnx.save(_changed(policy_file, {"nmrl.layers": "[" * 100_000}, _truncated), hostile)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "nmrl", "inspect", str(hostile)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
