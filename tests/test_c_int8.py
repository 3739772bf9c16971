"""int8 policies in C: the generated file computes nmrl's int8 Q/DQ ONNX file (int8 weights, int32 sums,
QuantizeLinear's rounding) on every kernel path, and acts as ONNX Runtime does on the same file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from deploy_support import aarch64_actions, c_test_policy, needs_aarch64

from nmrl.deploy.c_backend import CPolicy, compile_c
from nmrl.export.c_source import generate_c_file, weight_bytes
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import finish_graph, save_onnx
from nmrl.export.quantize import quantize_int8
from nmrl.sparsity.pattern import NMPattern

HIDDEN = (72, 40)
"""K = 72 for the N:M layer (4.5 of its 16-input windows, 2.25 of the 32-input ones of M = 8: an odd
count, the AVX-512 kernel takes two at a time), 40 rows (not a multiple of 16); the first layer's
K = 11 (not a multiple of the 4-input lane)."""
FILES = {
    # name: (pattern, int8 target, first layer)
    "2:4 first-int8": ("2:4", "ort", "int8"),
    "2:4 first-fp32": ("2:4", "ort", "fp32"),
    "1:4 first-int8": ("1:4", "ort", "int8"),
    "1:8 first-int8": ("1:8", "ort", "int8"),  # M = 8: windows of 32, 4-bit positions in their halves
    "3:8 first-int8": ("3:8", "ort", "int8"),  # ... 3 lanes a window
    "1:16 first-int8": ("1:16", "ort", "int8"),  # 4-bit positions in a window of 16, lanes 3/4 padding
    "2:4 tensorrt": ("2:4", "tensorrt", "int8"),  # signed symmetric activations, fp32 Gemm outputs
    "dense first-int8": ("dense", "ort", "int8"),
}
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
PATHS = {
    "portable": ("-O2", "-DNMRL_PORTABLE"),
    "native": ("-O3", "-march=native"),  # AVX-512 VNNI (and VBMI) where the CPU has it
    **({"avx2": ("-O2", "-mavx2", "-mfma")} if {"avx2", "fma"} <= CPU_FLAGS else {}),
    # takes the AVX2 int8 path
    **({"avx512 without vnni": ("-O2", "-mavx512f", "-mavx512bw", "-mfma")} if "avx512bw" in CPU_FLAGS else {}),
    # AVX-512 VNNI decoding 2-bit places without vpmultishiftqb (Cascade Lake has VNNI, not VBMI)
    **(
        {"avx512 vnni without vbmi": ("-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma")}
        if "avx512_vnni" in CPU_FLAGS
        else {}
    ),
}
RANGE = 3.0
"""The actors' action range ([-1, 2])."""
FUSED_MAX = 0.01 * RANGE
"""ONNX Runtime (default optimizations) fuses DequantizeLinear -> Gemm -> QuantizeLinear into an integer
QGemm: it quantizes the fp32 bias to int32 (round(b / (input scale x weight scale))) and requantizes the
int32 sum in one multiply, where the graph (and the C) dequantizes, adds the fp32 bias and quantizes. An
activation within that rounding of a half step lands one level apart, and one level of the pre-tanh
output moves an action by its scale x the action scale (0.0077 here): 1% of the range bounds it."""
FUSED_EXACT_SHARE = 0.95
"""... while nearly all actions agree to fp32 rounding (98-99% measured here)."""
GRAPH_TOLERANCE = 1e-6
"""Against the file's own ops (ONNX Runtime without graph optimizations): only the fp32 sums'
order differs (the C sums integers exactly), so actions agree to fp32 rounding ..."""
GRAPH_EXACT_SHARE = 0.99
"""... but for an activation whose fp32 sum lands within that rounding of a half step of the next
quantization, one level apart (1 of 1536 actions on the 1:4 actor, the same before and after the
2-bit indices: a property of the sums, not of a kernel)."""


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real int8 files written as nmrl's export writes them (quantize_int8, then the metadata)."""
    folder = tmp_path_factory.mktemp("c_int8")
    calibration = random_observations(11, 256, seed=0)
    paths = {}
    for index, (name, (pattern, target, first)) in enumerate(FILES.items()):
        model = c_test_policy(pattern, HIDDEN, seed=index)
        claimed = None if pattern == "dense" else NMPattern.parse(pattern)
        quantized, report = quantize_int8(model, calibration, "random states", target, first)  # type: ignore[arg-type]
        finish_graph(quantized, claimed, {"dtype": "int8", "io_dtype": "fp32", "quantization": report.to_metadata()})
        paths[name] = folder / f"actor_{index}.int8.onnx"
        save_onnx(quantized, paths[name])
    return paths


def ort_actions(path: Path, obs: np.ndarray, optimized: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: obs})[0]


@pytest.mark.parametrize("name", list(FILES))
def test_int8_c_is_the_same_on_every_path_and_acts_as_onnx_runtime(int8_files, tmp_path, name: str) -> None:
    source = generate_c_file(int8_files[name])
    c_path, _ = source.write(tmp_path / "actor.c")
    pattern, _, first = FILES[name]
    kinds = [(layer.kernel, layer.int8) for layer in source.program.layers]
    nm = "dense" if pattern == "dense" else "nm"
    assert kinds == [(nm, first == "int8"), (nm, True), ("dense", True)]
    obs = random_observations(11, 512, seed=1)
    actions = {}
    for path_name, flags in PATHS.items():
        with CPolicy(compile_c([c_path], tmp_path / f"{path_name.replace(' ', '_')}.so", flags), 11, 3) as policy:
            actions[path_name] = policy.act(obs)
            np.testing.assert_array_equal(policy.act(obs[0]), actions[path_name][0])
    for path_name in PATHS:  # integer sums and one shared float epilogue: bit-identical
        np.testing.assert_array_equal(actions[path_name], actions["portable"], err_msg=path_name)
    got = actions["native"]
    graph = np.abs(got - ort_actions(int8_files[name], obs, optimized=False))
    assert graph.max() <= FUSED_MAX and (graph <= GRAPH_TOLERANCE).mean() >= GRAPH_EXACT_SHARE, graph.max()
    fused = np.abs(got - ort_actions(int8_files[name], obs))
    assert fused.max() <= FUSED_MAX and (fused <= 1e-5).mean() >= FUSED_EXACT_SHARE, (fused.max(), fused.mean())


def test_int8_header_object_and_weight_bytes(int8_files, tmp_path) -> None:
    source = generate_c_file(int8_files["2:4 first-int8"])
    c_path, h_path = source.write(tmp_path / "actor.c")
    header = h_path.read_text()
    for line in ('#define NMRL_POLICY_DTYPE "int8"', '"NM_2_4_INT8"', '"DENSE_INT8"', "kernel nm 2:4, int8"):
        assert line in header
    obj = tmp_path / "actor.o"
    for flags in ((), ("-O3", "-march=native"), ("-O2", "-mavx2", "-mfma")):
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", *flags, "-c", str(c_path), "-o", str(obj)], check=True)
        undefined = set(
            subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
        )
        assert undefined - {"U"} <= {"tanhf", "memcpy", "memset"}, undefined
    # int8 values: one byte per weight (dense: no padded rows) or per kept value plus its index (N:M;
    # 2 bits for 2:4, a place in its group of 4, as nm-packed stores it; 4 bits for 1:8, whose windows
    # of 32 hold one group per byte of a lane, so no lane is padding).
    for name, (window, bits) in {"2:4 first-int8": (16, 2), "1:8 first-int8": (32, 4)}.items():
        program = generate_c_file(int8_files[name]).program
        layers = program.layers
        assert all(layer.weight.dtype == np.int8 for layer in layers)
        nm = layers[1]
        assert nm.kernel == "nm" and (nm.window, nm.index_bits) == (window, bits), name
        assert nm.pattern is not None and nm.slots == window // nm.pattern.m * nm.pattern.n, name
        assert weight_bytes(program) == sum(
            layer.rows * layer.k_pad
            if layer.kernel == "dense"
            else layer.rows_pad * layer.windows * layer.slots * (8 + layer.index_bits) // 8
            for layer in layers
        ), name


def test_int8_graph_the_generator_cannot_compute_is_refused_in_one_line(int8_files) -> None:
    from onnx import numpy_helper

    from nmrl.errors import NmrlError
    from nmrl.export.c_source import generate_c

    model = onnx.load(int8_files["dense first-int8"])  # no N:M claim for the zero point to break
    zero = next(init for init in model.graph.initializer if init.name == "net.0.weight_zero_point")
    zero.CopyFrom(numpy_helper.from_array(np.ones(numpy_helper.to_array(zero).shape, np.int8), zero.name))
    with pytest.raises(NmrlError, match="symmetric weights") as caught:
        generate_c(model)
    assert "\n" not in str(caught.value)


@needs_aarch64
@pytest.mark.parametrize(
    "flags",
    [("-O2",), ("-O2", "-march=armv8.2-a+dotprod"), ("-O2", "-DNMRL_PORTABLE")],
    ids=["neon", "neon-sdot", "portable"],
)
def test_int8_aarch64_build_under_qemu_is_the_x86_one(int8_files, tmp_path, flags) -> None:
    for name in ("2:4 first-int8", "1:8 first-int8", "1:16 first-int8"):  # 2-bit places, halves of 32, 16
        source, folder = generate_c_file(int8_files[name]), tmp_path / name.split()[0].replace(":", "of")
        folder.mkdir()
        obs = random_observations(11, 64, seed=3)
        actions = aarch64_actions(source, folder, flags, obs)
        c_path, _ = source.write(folder / "x86.c")
        with CPolicy(compile_c([c_path], folder / "x86.so", ("-O2", "-DNMRL_PORTABLE")), 11, 3) as policy:
            # The same integer sums and float ops: equal up to the two libms' tanhf.
            np.testing.assert_allclose(actions, policy.act(obs), rtol=0, atol=1e-6, err_msg=name)
