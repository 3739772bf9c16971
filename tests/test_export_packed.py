"""nm-packed: N:M values + in-group indices, exact round trip, sizes vs dense."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from deploy_support import TINY_RUN_GROUP, exported_run, gemm_model, nm_along, tiny_run
from onnx import numpy_helper

from nmrl.cli import main
from nmrl.errors import NmrlError
from nmrl.export.packed import index_bits, load_packed, pack_weight, unpack_weight, write_packed
from nmrl.sparsity.pattern import NMPattern

PATTERNS = [NMPattern(2, 4), NMPattern(1, 4), NMPattern(1, 8)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("k_axis", [0, 1])
def test_weight_round_trip_is_exact(pattern: NMPattern, dtype, k_axis: int) -> None:
    shape = (22, 10) if k_axis == 0 else (10, 22)  # K = 22: a short tail group
    weight = nm_along(shape, k_axis, pattern.n, pattern.m, seed=pattern.m, dtype=dtype)
    weight[0] = 0  # groups with fewer than N nonzeros still store N slots
    packed = pack_weight(weight, k_axis, pattern)
    assert packed.values.shape == (10, -(-22 // pattern.m), pattern.n) and packed.values.dtype == dtype
    assert packed.indices.max() < pattern.m
    restored = unpack_weight(packed)
    assert restored.dtype == weight.dtype
    np.testing.assert_array_equal(restored, weight)
    assert np.array_equal(np.signbit(restored), np.signbit(weight))


def test_packing_refuses_weights_that_are_not_n_m() -> None:
    weight = nm_along((4, 8), 1, 2, 4)
    with pytest.raises(NmrlError, match="not 1:4"):
        pack_weight(weight, 1, NMPattern(1, 4))


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_file_round_trip_and_size_ratio(tmp_path, pattern: NMPattern, dtype) -> None:
    weight = nm_along((64, 256), 1, pattern.n, pattern.m, dtype=dtype)
    model = gemm_model(weight, trans_b=1)
    report = write_packed(model, tmp_path / "w.nm.npz", pattern)
    rebuilt = load_packed(tmp_path / "w.nm.npz")
    (init,) = rebuilt.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(init), weight)
    # Stored per group of M: N values + N indices of ceil(log2 M) bits, vs M dense values.
    bits = np.dtype(dtype).itemsize * 8
    expected = pattern.n * (bits + index_bits(pattern.m)) / (pattern.m * bits)
    assert report.ratio == pytest.approx(expected, rel=1e-3)
    x = np.random.default_rng(0).standard_normal((5, 256)).astype(dtype)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(rebuilt), run(model))


def test_known_ratios() -> None:
    # 2:4 fp16: (2*16 + 2*2) / 64 bits = 0.5625; 1:8 fp32: (32 + 3) / 256 = 0.137
    for pattern, dtype, ratio in ((NMPattern(2, 4), np.float16, 0.5625), (NMPattern(1, 8), np.float32, 35 / 256)):
        packed = pack_weight(nm_along((16, 64), 1, pattern.n, pattern.m, dtype=dtype), 1, pattern)
        assert packed.nbytes / (16 * 64 * np.dtype(dtype).itemsize) == pytest.approx(ratio)


def test_foreign_files_are_rejected(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(NmrlError, match="not an nm-packed file"):
        load_packed(path)
    text = tmp_path / "y.npz"
    text.write_text("hello")
    with pytest.raises(NmrlError, match="not an nm-packed file"):
        load_packed(text)


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_export_verb_nm_packed_rebuilds_the_run_actor(tmp_path_factory, capsys) -> None:
    run_dir = exported_run(tmp_path_factory)
    assert main(["export", str(run_dir), "--format", "nm-packed"]) == 0
    assert "nm-packed 2:4 float32" in capsys.readouterr().out
    rebuilt = load_packed(run_dir / "actor.nm.npz")
    original = onnx.load(run_dir / "actor.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    for init in rebuilt.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), weights[init.name])
    obs = np.random.default_rng(1).standard_normal((9, 11)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString()).run(None, {"obs": obs})[0] for m in (rebuilt, original)]
    np.testing.assert_array_equal(*outputs)


@pytest.mark.xdist_group(TINY_RUN_GROUP)
def test_an_int8_policy_packs_its_int8_values_and_rebuilds_the_exact_file(tmp_path_factory, tmp_path, capsys) -> None:
    run_dir = tiny_run(tmp_path_factory)
    onnx_path, packed_path = tmp_path / "actor.int8.onnx", tmp_path / "actor.int8.nm.npz"
    common = ["--dtype", "int8", "--int8-target", "tensorrt", "--pad-k", "--check-episodes", "1"]
    assert main(["export", str(run_dir), *common, "--output", str(onnx_path)]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), *common, "--format", "nm-packed", "--output", str(packed_path)]) == 0
    out = capsys.readouterr().out
    # 2:4 int8: per 4 weights, 2 one-byte values + 2 two-bit indices = 2.5 bytes of 4 (int8) or 16 (fp32);
    # the padded first layer (K 11 -> 12) packs whole groups.
    assert "nm-packed 2:4 int8" in out and "(ratio 0.625)" in out and "dense fp32 (ratio 0.156)" in out, out
    rebuilt, original = load_packed(packed_path), onnx.load(onnx_path)
    stored = {i.name: i for i in original.graph.initializer}
    int8_weights = [i for i in rebuilt.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_weights) == 3
    for init in rebuilt.graph.initializer:
        assert init.data_type == stored[init.name].data_type
        np.testing.assert_array_equal(numpy_helper.to_array(init), numpy_helper.to_array(stored[init.name]))
    obs = np.random.default_rng(1).standard_normal((9, 11)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString()).run(None, {"obs": obs})[0] for m in (rebuilt, original)]
    np.testing.assert_array_equal(*outputs)
    # The ort recipe keeps its first layer fp32: packed as fp32, the report names both types.
    ort_recipe = ["--dtype", "int8", "--check-episodes", "1", "--format", "nm-packed"]
    assert main(["export", str(run_dir), *ort_recipe, "--output", str(tmp_path / "ort.nm.npz")]) == 0
    assert "nm-packed 2:4 float32+int8" in capsys.readouterr().out
