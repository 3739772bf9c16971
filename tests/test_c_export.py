"""Policies in C: the generated file, compiled by a real compiler, acts as ONNX Runtime does on the same ONNX file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from deploy_support import aarch64_actions, c_test_policy, gemm_model, needs_aarch64
from onnx import numpy_helper

from nmrl.deploy.c_backend import build_c_library, compile_c, load_c_policy
from nmrl.deploy.policy import load_policy
from nmrl.errors import NmrlError
from nmrl.export.c_source import generate_c, generate_c_file
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import save_onnx
from nmrl.sparsity.pattern import NMPattern

HIDDEN = (60, 40)
"""K = 60 for the N:M layer: not a multiple of the 8-wide window; 40 rows: not a multiple of 16."""
PATTERNS = ["2:4", "1:4", "1:8", "3:8", "2:16", "dense"]
SIMD = ("-O3", "-march=native")
PORTABLE = ("-O2", "-DNMRL_PORTABLE")
AVX2 = ("-O3", "-mavx2", "-mfma")
"""The AVX2 path, run on a CPU that has AVX-512 (whose path -march=native picks)."""
HAS_AVX2 = Path("/proc/cpuinfo").is_file() and {"avx2", "fma"} <= set(Path("/proc/cpuinfo").read_text().split())
TOLERANCE = 2e-6
"""fp32: the C sums in another order than ONNX Runtime's GEMM."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real policy ONNX files written by nmrl's exporter (fresh actors: tracing costs ~1 s each)."""
    folder = tmp_path_factory.mktemp("c_models")
    paths = {}
    for index, pattern in enumerate(PATTERNS):
        model = c_test_policy(pattern, HIDDEN, seed=index)
        paths[pattern] = folder / f"actor_{pattern.replace(':', '_')}.onnx"
        save_onnx(model, paths[pattern])
    return paths


def ort_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: obs})[0]


def library(tmp_path: Path, model: Path, flags: tuple[str, ...], name: str = "actor") -> Path:
    source = generate_c_file(model)
    c_path, _ = source.write(tmp_path / f"{name}.c")
    return compile_c([c_path], tmp_path / f"{name}.so", flags)


@pytest.mark.parametrize(
    "flags",
    [
        PORTABLE,
        SIMD,
        pytest.param(AVX2, marks=pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 and FMA")),
    ],
    ids=["portable", "simd", "avx2"],
)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_generated_c_acts_as_onnx_runtime(models, tmp_path, pattern: str, flags) -> None:
    from nmrl.deploy.c_backend import CPolicy

    so = library(tmp_path, models[pattern], flags)
    obs = random_observations(11, 64, seed=1)
    with CPolicy(so, 11, 3) as policy:
        np.testing.assert_allclose(policy.act(obs), ort_actions(models[pattern], obs), rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(policy.act(obs[0]), ort_actions(models[pattern], obs[:1])[0], atol=TOLERANCE)
    kernels = [layer.kernel for layer in generate_c_file(models[pattern]).program.layers]
    # The first layer (K = 11: one or two windows, the last partial) skips its zeros as the hidden layer
    # does; the 3-wide head stays dense.
    assert kernels == (["dense"] * 3 if pattern == "dense" else ["nm", "nm", "dense"])


def test_header_object_and_other_simd_paths(models, tmp_path) -> None:
    source = generate_c_file(models["2:4"])
    c_path, h_path = source.write(tmp_path / "actor.c")
    header = h_path.read_text()
    for line in ("#define NMRL_POLICY_OBS_DIM 11", "#define NMRL_POLICY_ACT_DIM 3", '"Hopper-v5"', '"2:4"', '"NM_2_4"'):
        assert line in header
    assert "#define NMRL_POLICY_ACTION_LOW { -1.0f, -1.0f, -1.0f }" in header
    obj = tmp_path / "actor.o"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-c", str(c_path), "-o", str(obj)], check=True)
    undefined = set(subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    undefined -= {"U"}
    assert undefined <= {"tanhf", "memcpy", "memset"}, undefined
    # No mutable globals: every data symbol is read-only (r), none in .data/.bss (d/b).
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert not [line for line in symbols if line.split()[1:2] in (["d"], ["D"], ["b"], ["B"])]
    # The AVX-512 path compiles (this CPU cannot run it: its parity is the lead's on an AVX-512 machine).
    subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Werror", "-O2", "-mavx512f", "-mfma", "-c", str(c_path), "-o", str(obj)],
        check=True,
    )


def test_several_prefixes_link_into_one_program(models, tmp_path) -> None:
    sources = []
    for prefix, pattern in (("hop_a", "2:4"), ("hop_b", "1:8")):
        sources.append(generate_c(onnx.load(models[pattern]), prefix).write(tmp_path / f"{prefix}.c")[0])
    main = tmp_path / "main.c"
    main.write_text(
        '#include <stdio.h>\n#include "hop_a.h"\n#include "hop_b.h"\n'
        "int main(void) { float o[HOP_A_OBS_DIM], a[HOP_A_ACT_DIM], b[HOP_B_ACT_DIM]; int i;\n"
        "  for (i = 0; i < HOP_A_OBS_DIM; ++i) o[i] = 0.25f * (float)i - 1.0f;\n"
        "  hop_a_act(o, a); hop_b_act(o, b);\n"
        '  for (i = 0; i < 3; ++i) printf("%.9g %.9g\\n", a[i], b[i]);\n'
        "  return 0; }\n"
    )
    program = compile_c([*sources, main], tmp_path / "both", ("-O2", "-I", str(tmp_path)), shared=False)
    printed = np.array(subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.split(), float)
    obs = (0.25 * np.arange(11) - 1.0).astype(np.float32)[None]
    np.testing.assert_allclose(printed[0::2], ort_actions(models["2:4"], obs)[0], atol=TOLERANCE)
    np.testing.assert_allclose(printed[1::2], ort_actions(models["1:8"], obs)[0], atol=TOLERANCE)


def test_refuses_foreign_and_tampered_files_in_one_line(models, tmp_path) -> None:
    foreign = gemm_model(np.ones((4, 8), np.float32), trans_b=1)
    with pytest.raises(NmrlError, match="not an nmrl policy file"):
        generate_c(foreign)
    model = onnx.load(models["2:4"])
    weight = next(init for init in model.graph.initializer if init.name.endswith("2.weight"))
    tampered = numpy_helper.to_array(weight).copy()
    tampered[tampered == 0] = 0.5  # dense values in a file that claims 2:4
    weight.CopyFrom(numpy_helper.from_array(tampered, weight.name))
    with pytest.raises(NmrlError, match="break the N:M pattern") as caught:
        generate_c(model)
    assert "\n" not in str(caught.value)
    with pytest.raises(NmrlError, match="not a C identifier"):
        generate_c(onnx.load(models["2:4"]), "2bad")


def test_nm_packed_file_gives_the_same_kernels(models, tmp_path) -> None:
    from nmrl.export.packed import write_packed

    packed = tmp_path / "actor.nm.npz"
    write_packed(onnx.load(models["1:4"]), packed, NMPattern(1, 4))
    from_packed, from_onnx = generate_c_file(packed), generate_c_file(models["1:4"])
    assert from_packed.source.replace(from_packed.program.source_sha256, "") == from_onnx.source.replace(
        from_onnx.program.source_sha256, ""
    )


def test_c_backend_builds_explicitly_and_refuses_what_it_cannot_run(models, tmp_path, monkeypatch) -> None:
    onnx_path = tmp_path / "actor.onnx"
    shutil.copyfile(models["2:4"], onnx_path)
    with pytest.raises(NmrlError, match=r"deploy build .* --backend c"):
        load_c_policy(onnx_path)
    build_c_library(onnx_path)
    obs = random_observations(11, 16, seed=2)
    with load_policy(onnx_path, "c") as policy:
        assert policy.env_id == "Hopper-v5"
        np.testing.assert_allclose(policy.act(obs), ort_actions(onnx_path, obs), atol=TOLERANCE)
    os.utime(onnx_path)  # a newer ONNX file: the library is stale
    os.utime(onnx_path.with_suffix(".so"), (0, 0))
    with pytest.raises(NmrlError, match="older than the ONNX"):
        load_c_policy(onnx_path)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(NmrlError, match=r"no C compiler .* install") as caught:
        build_c_library(onnx_path, tmp_path / "other.so")
    assert not (tmp_path / "other.so").exists()
    assert "\n" not in str(caught.value)


@needs_aarch64
@pytest.mark.parametrize("flags", [("-O2",), ("-O2", "-DNMRL_PORTABLE")], ids=["neon", "portable"])
def test_aarch64_build_under_qemu_acts_as_x86(models, tmp_path, flags) -> None:
    obs = random_observations(11, 32, seed=3)
    actions = aarch64_actions(generate_c_file(models["2:4"]), tmp_path, flags, obs)
    np.testing.assert_allclose(actions, ort_actions(models["2:4"], obs), atol=TOLERANCE)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "1:8"])
def test_object_stores_nm_packed_bytes_for_an_nm_layer_and_no_padding_for_dense(tmp_path, pattern: str) -> None:
    """In the compiled object, a 64x64 N:M layer's values and indices take what nm-packed stores
    (kept values + ceil(log2 M)-bit indices); the 3-row head, and the first layer of the same file run
    dense, exactly rows x K."""
    from nmrl.export.packed import index_bits

    source = generate_c(c_test_policy(pattern, (64, 64), seed=5))
    c_path, _ = source.write(tmp_path / "actor.c")
    obj = tmp_path / "actor.o"
    subprocess.run(["gcc", "-std=c99", "-O2", "-c", str(c_path), "-o", str(obj)], check=True)
    listing = subprocess.run(["nm", "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    sizes = {line.split()[3]: int(line.split()[1], 16) for line in listing.splitlines() if len(line.split()) == 4}
    first, hidden, head = source.program.layers
    assert (first.kernel, hidden.kernel, head.kernel) == ("nm", "nm", "dense")
    assert sizes["L0_v"] == 4 * first.rows_pad * first.windows * first.slots and sizes["L2_w"] == 4 * 64 * 3
    dense = generate_c(c_test_policy(pattern, (64, 64), seed=5), kernels="dense")
    dense.write(tmp_path / "dense.c")
    subprocess.run(["gcc", "-std=c99", "-O2", "-c", str(tmp_path / "dense.c"), "-o", str(obj)], check=True)
    listing = subprocess.run(["nm", "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    assert f"{4 * 11 * 64:016x} r L0_w" in listing
    n, m = NMPattern.parse(pattern).n, NMPattern.parse(pattern).m
    kept = 64 * (64 // m) * n
    assert sizes["L1_v"] == 4 * kept
    packed_index_bytes = -(-kept * index_bits(m) // 8)
    if pattern == "1:8":  # 3-bit indices, 10 to a 32-bit word: a row's 8 windows take one word
        assert sizes["L1_ix"] == 4 * 64 and packed_index_bytes == 3 * 64
    else:
        assert sizes["L1_ix"] == packed_index_bytes
