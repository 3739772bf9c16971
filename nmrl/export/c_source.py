"""A verified nmrl policy ONNX file -> one dependency-free C99 translation unit (``actor.c`` + ``actor.h``).

The generator reads the ONNX graph (never a checkpoint) and walks it node by node: the observation
``Pad`` of ``--pad-k``, each ``Gemm``, ``Relu``, ``Tanh`` and the action scaling's ``Mul``/``Add``,
so the C code computes what the file computes, in the same order. Any other op is refused in one
line (int8 Q/DQ graphs are not generated yet).

Weights are ``static const`` arrays in blocks of 16 output rows (one AVX-512 register, two AVX2
registers, four NEON registers). A layer runs one of two kernels:

- ``dense``: per block, for each input k, 16 weights (the block's rows) times the broadcast input;
  the portable loop keeps 16 independent row sums (vectorized by compilers without -ffast-math,
  since no sum is reordered) and two sets of them over even/odd k to hide the FMA latency.
- ``nm``: N:M values plus in-window indices (uint8). The input is read in windows of 8 floats
  (8/M groups of M); each of the window's ``8/M * N`` slots holds, for the block's 16 rows, one kept
  value and the position of its input inside the window. AVX2 selects those inputs with
  ``_mm256_permutevar8x32_ps`` from the window held in a register (no per-weight gather); the
  portable loop indexes the window. Patterns whose M does not divide 8 use windows of M inputs and
  the portable loop on every CPU.

A layer is N:M when its weights are (the file's per-layer pattern) and it has at least
:data:`NM_MIN_K` inputs and :data:`NM_MIN_ROWS` outputs; otherwise dense (the first layer of a MuJoCo
actor, K = 11-27, and the action head, 3-8 rows: there the windows' slots are mostly padding).

The kernel path is chosen at compile time from the compiler's predefined macros (``__AVX2__`` and
``__FMA__``); ``-DNMRL_PORTABLE`` forces the portable loops (the tests compare both).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from nmrl.errors import NmrlError
from nmrl.export.verify import claim_status, inspect_model
from nmrl.policy_file import PolicyClaims, read_claims
from nmrl.sparsity.pattern import NMPattern

BLOCK = 16
"""Output rows per weight block."""
WINDOW = 8
"""Inputs per window of the N:M kernel (one AVX2 register)."""
NM_MIN_K = 32
NM_MIN_ROWS = 16


@dataclass
class Layer:
    """One Gemm ``y = W x + b`` as the C code stores it."""

    index: int
    weight: np.ndarray
    """[rows, K] float32 (K already padded where the graph pads the input)."""
    bias: np.ndarray
    kernel: str
    """dense or nm"""
    pattern: NMPattern | None = None

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def k(self) -> int:
        return self.weight.shape[1]

    @property
    def rows_pad(self) -> int:
        return -(-self.rows // BLOCK) * BLOCK

    @property
    def window(self) -> int:
        assert self.pattern is not None
        return WINDOW if WINDOW % self.pattern.m == 0 else self.pattern.m

    @property
    def slots(self) -> int:
        assert self.pattern is not None
        return self.window // self.pattern.m * self.pattern.n

    @property
    def windows(self) -> int:
        return -(-self.k // self.window)

    @property
    def k_pad(self) -> int:
        """Inputs the kernel reads (the window multiple for nm, rounded to 8 for dense)."""
        return self.windows * self.window if self.kernel == "nm" else -(-self.k // WINDOW) * WINDOW

    def describe(self) -> str:
        what = f"nm {self.pattern}" if self.kernel == "nm" else "dense"
        return f"layer {self.index}: {self.k} -> {self.rows}, kernel {what}"


@dataclass
class Step:
    """One op of the program: ``gemm`` (``layer``) or an elementwise op on the current vector."""

    op: str
    layer: Layer | None = None
    constant: np.ndarray | None = None


@dataclass
class Program:
    obs_dim: int
    act_dim: int
    steps: list[Step]
    claims: PolicyClaims
    source_sha256: str

    @property
    def layers(self) -> list[Layer]:
        return [step.layer for step in self.steps if step.layer is not None]

    @property
    def scratch(self) -> int:
        """Floats of each of the two ping-pong buffers."""
        return max(max(layer.k_pad, layer.rows_pad) for layer in self.layers)


def _attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.i if attribute.type == onnx.AttributeProto.INT else attribute.f
    return default


def read_program(model: onnx.ModelProto, kernels: str = "auto", source_bytes: bytes | None = None) -> Program:
    """The C program of an nmrl policy graph. ``kernels``: ``auto`` (the rule of the module
    docstring) or ``dense`` (every layer dense, for comparison). Refuses, in one line, a graph nmrl
    did not write, one whose weights break what its metadata claims, and ops the generator lacks."""
    check = inspect_model(model)
    claims = read_claims(check.metadata)
    if not claims.is_nmrl:
        raise NmrlError("not an nmrl policy file (no nmrl.format metadata): the C generator reads only those")
    status = claim_status(check)
    if status.failed:
        raise NmrlError("refusing to generate C: the file's weights break the N:M pattern its metadata claims")
    if kernels not in ("auto", "dense"):
        raise NmrlError(f"unknown kernel choice {kernels!r}: auto or dense")
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise NmrlError("not a policy graph: expected one input and one output")
    obs_dim = int(graph.input[0].type.tensor_type.shape.dim[1].dim_value)
    if graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise NmrlError("the C generator needs fp32 input (export --dtype fp32)")
    patterns = {layer.weight_name: layer.finest for layer in check.layers}
    current, width, pad = graph.input[0].name, obs_dim, 0
    steps: list[Step] = []
    for node in graph.node:
        if current not in node.input:
            raise NmrlError(f"unsupported policy graph: node {node.name or node.op_type} is not on the action path")
        if node.op_type == "Pad":
            pads = constants.get(node.input[1]) if len(node.input) > 1 else None
            if pads is None or list(pads[:3]) != [0, 0, 0] or (len(node.input) > 2 and node.input[2]):
                raise NmrlError("unsupported Pad: only zero columns appended to the observations")
            pad += int(pads[3])
            width += int(pads[3])
        elif node.op_type == "Gemm":
            if node.input[0] != current or node.input[1] not in constants:
                raise NmrlError(f"unsupported Gemm {node.name}: its weight must be a constant initializer")
            if (
                _attribute(node, "alpha", 1.0) != 1.0
                or _attribute(node, "beta", 1.0) != 1.0
                or _attribute(node, "transA", 0)
            ):
                raise NmrlError(f"unsupported Gemm {node.name}: alpha/beta/transA")
            weight = constants[node.input[1]]
            if weight.dtype != np.float32:
                raise NmrlError(f"the C generator writes fp32 layers only; {node.input[1]} is {weight.dtype}")
            if not _attribute(node, "transB", 0):
                weight = weight.T
            rows = weight.shape[0]
            bias = constants.get(node.input[2]) if len(node.input) > 2 else None
            bias = np.zeros(rows, np.float32) if bias is None else np.broadcast_to(bias, (rows,)).astype(np.float32)
            if weight.shape[1] != width:
                raise NmrlError(f"Gemm {node.name}: weight K {weight.shape[1]} != input width {width}")
            pattern = patterns.get(node.input[1])
            sparse = (
                kernels == "auto"
                and pattern is not None
                and not pattern.is_dense
                and weight.shape[1] >= NM_MIN_K
                and rows >= NM_MIN_ROWS
            )
            kernel = "nm" if sparse else "dense"
            steps.append(Step("gemm", Layer(len(steps), np.ascontiguousarray(weight), bias, kernel, pattern)))
            width = rows
        elif node.op_type in ("Relu", "Tanh"):
            steps.append(Step(node.op_type.lower()))
        elif node.op_type in ("Mul", "Add"):
            other = node.input[1] if node.input[0] == current else node.input[0]
            if other not in constants:
                raise NmrlError(f"unsupported {node.op_type} {node.name}: its second operand must be a constant")
            value = np.broadcast_to(constants[other].astype(np.float32).reshape(-1), (width,))
            steps.append(Step(node.op_type.lower(), constant=np.ascontiguousarray(value)))
        else:
            raise NmrlError(
                f"the C generator does not support {node.op_type} (node {node.name}); fp32 graphs only for now"
            )
        current = node.output[0]
    if current != graph.output[0].name:
        raise NmrlError("unsupported policy graph: the walk did not end at the action output")
    for step in steps:
        if step.layer is not None:
            step.layer.index = sum(1 for s in steps[: steps.index(step)] if s.layer is not None)
    payload = source_bytes if source_bytes is not None else model.SerializeToString()
    return Program(obs_dim, width, steps, claims, hashlib.sha256(payload).hexdigest())


# ------------------------------------------------------------------------------------------
# Packing


def pack_dense(layer: Layer) -> np.ndarray:
    """[blocks, k_pad, 16]: for each input, the block's 16 row weights (zero rows/inputs padded)."""
    padded = np.zeros((layer.rows_pad, layer.k_pad), np.float32)
    padded[: layer.rows, : layer.k] = layer.weight
    return padded.reshape(-1, BLOCK, layer.k_pad).transpose(0, 2, 1).copy()


def pack_nm(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """values [blocks, windows, slots, 16] float32, indices (same shape) uint8: the position inside the
    window of each value's input. Groups with fewer than N nonzeros store zeros (index of a zero)."""
    assert layer.pattern is not None
    n, m = layer.pattern.n, layer.pattern.m
    window, windows = layer.window, layer.windows
    padded = np.zeros((layer.rows_pad, windows * window), np.float32)
    padded[: layer.rows, : layer.k] = layer.weight
    groups = padded.reshape(layer.rows_pad, -1, m)
    if (np.count_nonzero(groups, axis=-1) > n).any():
        raise NmrlError(f"layer {layer.index} is not {layer.pattern} along K")
    order = np.sort(np.argsort(groups == 0, axis=-1, kind="stable")[..., :n], axis=-1)
    values = np.take_along_axis(groups, order, axis=-1)  # [rows, groups, n]
    position = order + (np.arange(groups.shape[1]) % (window // m))[None, :, None] * m
    per_window = window // m * n
    values = values.reshape(layer.rows_pad, windows, per_window)
    position = position.reshape(layer.rows_pad, windows, per_window)

    def blocked(array: np.ndarray) -> np.ndarray:
        return array.reshape(-1, BLOCK, windows, per_window).transpose(0, 2, 3, 1).copy()

    return blocked(values), blocked(position).astype(np.uint8)


def weight_bytes(program: Program) -> int:
    """Bytes of the weights as the C file stores them (values, indices, biases excluded)."""
    total = 0
    for layer in program.layers:
        if layer.kernel == "dense":
            total += pack_dense(layer).nbytes
        else:
            values, indices = pack_nm(layer)
            total += values.nbytes + indices.nbytes
    return total


# ------------------------------------------------------------------------------------------
# Emitting C


def _floats(array: np.ndarray) -> str:
    flat = np.asarray(array, np.float32).reshape(-1)
    items = [f"{float(value):.9g}f" if np.isfinite(value) else "0.0f" for value in flat]
    items = [item if ("." in item or "e" in item or "inf" in item) else item.replace("f", ".0f") for item in items]
    return ",\n".join(", ".join(items[i : i + 8]) for i in range(0, len(items), 8))


def _bytes(array: np.ndarray) -> str:
    flat = np.asarray(array, np.uint8).reshape(-1)
    return ",\n".join(", ".join(str(int(v)) for v in flat[i : i + 32]) for i in range(0, len(flat), 32))


KERNEL_PATHS = r"""
/* Kernel path, chosen by the compiler's predefined macros; -DNMRL_PORTABLE forces plain C. */
#if !defined(NMRL_PORTABLE) && defined(__AVX512F__)
#include <immintrin.h>
#define NMRL_AVX512 1
#elif !defined(NMRL_PORTABLE) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NMRL_AVX2 1
#elif !defined(NMRL_PORTABLE) && defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define NMRL_NEON 1
#endif
"""

DENSE_KERNEL = r"""
/* y[0..rows_pad) = W x + b; w: [blocks][k][16]; k even (padded with zero weights). */
static void nmrl_dense16(int rows_pad, int k, const float *w, const float *b, const float *x, float *y)
{
    int r0, j;
    for (r0 = 0; r0 < rows_pad; r0 += 16) {
        const float *p = w + (size_t)r0 * (size_t)k;
#if defined(NMRL_AVX512)
        __m512 a = _mm512_loadu_ps(b + r0), c = _mm512_setzero_ps();
        for (j = 0; j < k; j += 2, p += 32) {
            a = _mm512_fmadd_ps(_mm512_loadu_ps(p), _mm512_set1_ps(x[j]), a);
            c = _mm512_fmadd_ps(_mm512_loadu_ps(p + 16), _mm512_set1_ps(x[j + 1]), c);
        }
        _mm512_storeu_ps(y + r0, _mm512_add_ps(a, c));
#elif defined(NMRL_AVX2)
        __m256 a0 = _mm256_loadu_ps(b + r0), a1 = _mm256_loadu_ps(b + r0 + 8);
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
        for (j = 0; j < k; j += 2, p += 32) {
            __m256 x0 = _mm256_broadcast_ss(x + j), x1 = _mm256_broadcast_ss(x + j + 1);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8), x0, a1);
            c0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 16), x1, c0);
            c1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 24), x1, c1);
        }
        _mm256_storeu_ps(y + r0, _mm256_add_ps(a0, c0));
        _mm256_storeu_ps(y + r0 + 8, _mm256_add_ps(a1, c1));
#elif defined(NMRL_NEON)
        float32x4_t a0 = vld1q_f32(b + r0), a1 = vld1q_f32(b + r0 + 4);
        float32x4_t a2 = vld1q_f32(b + r0 + 8), a3 = vld1q_f32(b + r0 + 12);
        for (j = 0; j < k; ++j, p += 16) {
            a0 = vfmaq_n_f32(a0, vld1q_f32(p), x[j]);
            a1 = vfmaq_n_f32(a1, vld1q_f32(p + 4), x[j]);
            a2 = vfmaq_n_f32(a2, vld1q_f32(p + 8), x[j]);
            a3 = vfmaq_n_f32(a3, vld1q_f32(p + 12), x[j]);
        }
        vst1q_f32(y + r0, a0);
        vst1q_f32(y + r0 + 4, a1);
        vst1q_f32(y + r0 + 8, a2);
        vst1q_f32(y + r0 + 12, a3);
#else
        /* 16 independent row sums, two sets over even/odd k: vectorizes without -ffast-math. */
        float a[16], c[16];
        int i;
        for (i = 0; i < 16; ++i) { a[i] = b[r0 + i]; c[i] = 0.0f; }
        for (j = 0; j < k; j += 2, p += 32)
            for (i = 0; i < 16; ++i) {
                a[i] += p[i] * x[j];
                c[i] += p[16 + i] * x[j + 1];
            }
        for (i = 0; i < 16; ++i) y[r0 + i] = a[i] + c[i];
#endif
    }
}
"""

NM_KERNEL = r"""
/* N:M: v/ix [blocks][windows][slots][16]; each value multiplies x[window start + its index].
 * The SIMD paths select the kept inputs from the window held in a register (window == 8). */
static void nmrl_nm16(int rows_pad, int windows, int window, int slots, const float *v, const uint8_t *ix,
                      const float *b, const float *x, float *y)
{
    int r0, w, s;
    const size_t per_block = (size_t)windows * (size_t)slots * 16;
    for (r0 = 0; r0 < rows_pad; r0 += 16) {
        const float *vb = v + (size_t)(r0 / 16) * per_block;
        const uint8_t *ib = ix + (size_t)(r0 / 16) * per_block;
#if defined(NMRL_AVX512)
        if (window == 8) {
            __m512 a = _mm512_loadu_ps(b + r0), c = _mm512_setzero_ps();
            for (w = 0; w < windows; ++w) {
                /* Lanes 8-15 are never selected (indices < 8). */
                const __m512 xw = _mm512_castps256_ps512(_mm256_loadu_ps(x + 8 * w));
                for (s = 0; s + 1 < slots; s += 2, vb += 32, ib += 32) {
                    __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)ib));
                    __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ib + 16)));
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(vb), _mm512_permutexvar_ps(i0, xw), a);
                    c = _mm512_fmadd_ps(_mm512_loadu_ps(vb + 16), _mm512_permutexvar_ps(i1, xw), c);
                }
                if (s < slots) {
                    __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)ib));
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(vb), _mm512_permutexvar_ps(i0, xw), a);
                    vb += 16;
                    ib += 16;
                }
            }
            _mm512_storeu_ps(y + r0, _mm512_add_ps(a, c));
            continue;
        }
#elif defined(NMRL_AVX2)
        if (window == 8) {
            __m256 a0 = _mm256_loadu_ps(b + r0), a1 = _mm256_loadu_ps(b + r0 + 8);
            __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
            for (w = 0; w < windows; ++w) {
                const __m256 xw = _mm256_loadu_ps(x + 8 * w);
                for (s = 0; s + 1 < slots; s += 2, vb += 32, ib += 32) {
                    __m256i i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)ib));
                    __m256i i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 8)));
                    __m256i i2 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 16)));
                    __m256i i3 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 24)));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb), _mm256_permutevar8x32_ps(xw, i0), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 8), _mm256_permutevar8x32_ps(xw, i1), a1);
                    c0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 16), _mm256_permutevar8x32_ps(xw, i2), c0);
                    c1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 24), _mm256_permutevar8x32_ps(xw, i3), c1);
                }
                if (s < slots) {
                    __m256i i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)ib));
                    __m256i i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 8)));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb), _mm256_permutevar8x32_ps(xw, i0), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 8), _mm256_permutevar8x32_ps(xw, i1), a1);
                    vb += 16;
                    ib += 16;
                }
            }
            _mm256_storeu_ps(y + r0, _mm256_add_ps(a0, c0));
            _mm256_storeu_ps(y + r0 + 8, _mm256_add_ps(a1, c1));
            continue;
        }
#elif defined(NMRL_NEON)
        if (window == 8) {
            /* tbl selects bytes: input index i becomes bytes 4i..4i+3 of the 32-byte window. */
            static const uint8_t spread[4][16] = {
                {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
                {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
                {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
            static const uint8_t lane[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
            const uint8x16_t lanes = vld1q_u8(lane), four = vdupq_n_u8(4);
            const uint8x16_t s0 = vld1q_u8(spread[0]), s1 = vld1q_u8(spread[1]);
            const uint8x16_t s2 = vld1q_u8(spread[2]), s3 = vld1q_u8(spread[3]);
            float32x4_t a0 = vld1q_f32(b + r0), a1 = vld1q_f32(b + r0 + 4);
            float32x4_t a2 = vld1q_f32(b + r0 + 8), a3 = vld1q_f32(b + r0 + 12);
            for (w = 0; w < windows; ++w) {
                uint8x16x2_t tab;
                tab.val[0] = vreinterpretq_u8_f32(vld1q_f32(x + 8 * w));
                tab.val[1] = vreinterpretq_u8_f32(vld1q_f32(x + 8 * w + 4));
                for (s = 0; s < slots; ++s, vb += 16, ib += 16) {
                    const uint8x16_t id = vld1q_u8(ib);
#define NMRL_SEL(q) vreinterpretq_f32_u8(vqtbl2q_u8(tab, vmlaq_u8(lanes, vqtbl1q_u8(id, q), four)))
                    a0 = vfmaq_f32(a0, vld1q_f32(vb), NMRL_SEL(s0));
                    a1 = vfmaq_f32(a1, vld1q_f32(vb + 4), NMRL_SEL(s1));
                    a2 = vfmaq_f32(a2, vld1q_f32(vb + 8), NMRL_SEL(s2));
                    a3 = vfmaq_f32(a3, vld1q_f32(vb + 12), NMRL_SEL(s3));
#undef NMRL_SEL
                }
            }
            vst1q_f32(y + r0, a0);
            vst1q_f32(y + r0 + 4, a1);
            vst1q_f32(y + r0 + 8, a2);
            vst1q_f32(y + r0 + 12, a3);
            continue;
        }
#endif
        {
            float a[16], c[16];
            int i;
            for (i = 0; i < 16; ++i) { a[i] = b[r0 + i]; c[i] = 0.0f; }
            for (w = 0; w < windows; ++w) {
                const float *xw = x + (size_t)w * (size_t)window;
                for (s = 0; s + 1 < slots; s += 2, vb += 32, ib += 32)
                    for (i = 0; i < 16; ++i) {
                        a[i] += vb[i] * xw[ib[i]];
                        c[i] += vb[16 + i] * xw[ib[16 + i]];
                    }
                if (s < slots) {
                    for (i = 0; i < 16; ++i) a[i] += vb[i] * xw[ib[i]];
                    vb += 16;
                    ib += 16;
                }
            }
            for (i = 0; i < 16; ++i) y[r0 + i] = a[i] + c[i];
        }
    }
}
"""


@dataclass(frozen=True)
class CSource:
    """The generated files' text and what they hold."""

    prefix: str
    header: str
    source: str
    program: Program

    def write(self, c_path: Path) -> tuple[Path, Path]:
        """Write ``<stem>.c`` and ``<stem>.h`` atomically."""
        from nmrl.files import atomic_write_bytes

        c_path = Path(c_path)
        h_path = c_path.with_suffix(".h")
        atomic_write_bytes(h_path, self.header.encode())
        atomic_write_bytes(c_path, self.source.replace('#include "actor.h"', f'#include "{h_path.name}"').encode())
        return c_path, h_path


def _check_prefix(prefix: str) -> str:
    if not prefix.isidentifier() or not prefix.isascii() or prefix.startswith("_"):
        raise NmrlError(f"--c-prefix {prefix!r} is not a C identifier (letters, digits, _; not starting with _)")
    return prefix


def generate_c(
    model: onnx.ModelProto, prefix: str = "nmrl_policy", kernels: str = "auto", source_bytes: bytes | None = None
) -> CSource:
    """The C source and header of ``model`` (an nmrl policy graph); entry points ``<prefix>_act`` and
    ``<prefix>_act_batch``."""
    prefix = _check_prefix(prefix)
    program = read_program(model, kernels, source_bytes)
    upper = prefix.upper()
    claims = program.claims

    def meta_text(key: str) -> str:
        value = getattr(claims, key)
        text = "unknown" if value is None else str(value)
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("*/", "* /")

    def bounds(values: list[float] | None) -> str:
        return "{ " + _floats(np.asarray(values, np.float32)).replace("\n", " ") + " }" if values else "{ 0 }"

    guard = f"{upper}_H"
    defines = [
        f"#define {upper}_OBS_DIM {program.obs_dim}",
        f"#define {upper}_ACT_DIM {program.act_dim}",
        f'#define {upper}_ENV_ID "{meta_text("env_id")}"',
        f'#define {upper}_SPARSITY "{meta_text("sparsity")}"',
        f'#define {upper}_DTYPE "{meta_text("dtype")}"',
        f'#define {upper}_NMRL_VERSION "{meta_text("version")}"',
        f'#define {upper}_SOURCE_SHA256 "{program.source_sha256}"',
        f"#define {upper}_HAS_ACTION_BOUNDS {int(claims.action_bounds is not None)}",
        f"#define {upper}_ACTION_LOW {bounds(claims.action_low)} /* initializer for float[ACT_DIM] */",
        f"#define {upper}_ACTION_HIGH {bounds(claims.action_high)}",
        f"#define {upper}_LAYERS {len(program.layers)}",
    ]
    for layer in program.layers:
        kind = f"NM_{layer.pattern.n}_{layer.pattern.m}" if layer.kernel == "nm" and layer.pattern else "DENSE"
        defines.append(f'#define {upper}_LAYER{layer.index}_KERNEL "{kind}" /* {layer.describe()} */')
    header = "\n".join(
        [
            f"/* Generated by nmrl {meta_text('version')} from an nmrl policy file",
            f" * (sha256 {program.source_sha256}).",
            f" * env {meta_text('env_id')}, sparsity {meta_text('sparsity')}, dtype {meta_text('dtype')};",
            *(f" * {layer.describe()}" for layer in program.layers),
            " * Reentrant: no globals but const weights, scratch on the stack. */",
            f"#ifndef {guard}",
            f"#define {guard}",
            *defines,
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            f"/* obs[{upper}_OBS_DIM] -> action[{upper}_ACT_DIM] */",
            f"void {prefix}_act(const float *obs, float *action);",
            "/* n observations (row-major [n][OBS_DIM]) -> n actions ([n][ACT_DIM]) */",
            f"void {prefix}_act_batch(int n, const float *obs, float *action);",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "#endif",
            "",
        ]
    )
    body = [
        f"/* Generated by nmrl from an nmrl policy ONNX file (sha256 {program.source_sha256}). */",
        "#include <math.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        '#include "actor.h"',
        KERNEL_PATHS,
    ]
    used = {layer.kernel for layer in program.layers}
    body += [text for kernel, text in (("dense", DENSE_KERNEL), ("nm", NM_KERNEL)) if kernel in used]
    for layer in program.layers:
        i = layer.index
        bias = np.zeros(layer.rows_pad, np.float32)
        bias[: layer.rows] = layer.bias
        body.append(f"static const float L{i}_b[{layer.rows_pad}] = {{\n{_floats(bias)}\n}};")
        if layer.kernel == "dense":
            packed = pack_dense(layer)
            body.append(f"static const float L{i}_w[{packed.size}] = {{\n{_floats(packed)}\n}};")
        else:
            values, indices = pack_nm(layer)
            body.append(f"static const float L{i}_v[{values.size}] = {{\n{_floats(values)}\n}};")
            body.append(f"static const uint8_t L{i}_ix[{indices.size}] = {{\n{_bytes(indices)}\n}};")
    for index, step in enumerate(program.steps):
        if step.constant is not None:
            body.append(f"static const float C{index}[{step.constant.size}] = {{\n{_floats(step.constant)}\n}};")
    scratch = program.scratch
    act = [
        f"void {prefix}_act(const float *obs, float *action)",
        "{",
        f"    float buf0[{scratch}], buf1[{scratch}];",
        "    float *x = buf0, *y = buf1, *t;",
        "    int i, n = " + str(program.obs_dim) + ";",
        "    (void)i;",
        "    memset(buf0, 0, sizeof buf0);",
        f"    memcpy(buf0, obs, sizeof(float) * {program.obs_dim});",
    ]
    for index, step in enumerate(program.steps):
        if step.layer is not None:
            layer = step.layer
            i = layer.index
            # The next kernel reads k_pad inputs: zero the tail so padded columns see finite zeros.
            act.append(f"    /* {layer.describe()} */")
            if layer.kernel == "dense":
                act.append(f"    nmrl_dense16({layer.rows_pad}, {layer.k_pad}, L{i}_w, L{i}_b, x, y);")
            else:
                act.append(
                    f"    nmrl_nm16({layer.rows_pad}, {layer.windows}, {layer.window}, {layer.slots}, "
                    f"L{i}_v, L{i}_ix, L{i}_b, x, y);"
                )
            act.append(f"    for (i = {layer.rows}; i < {scratch}; ++i) y[i] = 0.0f;")
            act.append(f"    n = {layer.rows}; t = x; x = y; y = t;")
        elif step.op == "relu":
            act.append("    for (i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;")
        elif step.op == "tanh":
            act.append("    for (i = 0; i < n; ++i) x[i] = tanhf(x[i]);")
        elif step.op == "mul":
            act.append(f"    for (i = 0; i < n; ++i) x[i] *= C{index}[i];")
        elif step.op == "add":
            act.append(f"    for (i = 0; i < n; ++i) x[i] += C{index}[i];")
    act += [
        "    (void)y;",
        f"    memcpy(action, x, sizeof(float) * {program.act_dim});",
        "}",
        "",
        f"void {prefix}_act_batch(int n, const float *obs, float *action)",
        "{",
        "    int b;",
        f"    for (b = 0; b < n; ++b) {prefix}_act(obs + (size_t)b * {program.obs_dim}, "
        f"action + (size_t)b * {program.act_dim});",
        "}",
        "",
    ]
    source = "\n".join(body + act)
    return CSource(prefix, header, source, program)


def read_policy_file(path: Path) -> tuple[onnx.ModelProto, bytes]:
    """The model of an nmrl policy file (``.onnx``, or an nm-packed ``.nm.npz`` rebuilt exactly) and
    the file's bytes (their hash goes into the header)."""
    from nmrl.export.packed import load_packed
    from nmrl.export.verify import load_onnx

    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such file")
    model = load_packed(path) if path.name.endswith(".npz") else load_onnx(path)
    return model, path.read_bytes()


def generate_c_file(path: Path, prefix: str = "nmrl_policy", kernels: str = "auto") -> CSource:
    """:func:`generate_c` of the policy file at ``path`` (ONNX or nm-packed)."""
    model, payload = read_policy_file(path)
    return generate_c(model, prefix, kernels, payload)


def c_weight_bytes(source: CSource) -> int:
    """Weight bytes stored by the generated file (kernel layout, padding included)."""
    return weight_bytes(source.program)


def nm_packed_bytes(program: Program) -> int:
    """What nm-packed stores for the same layers (values + bit-packed indices; dense layers dense)."""
    from nmrl.export.packed import index_bits

    total = 0
    for layer in program.layers:
        if layer.pattern is None or layer.pattern.is_dense:
            total += layer.weight.nbytes
        else:
            kept = layer.rows * math.ceil(layer.k / layer.pattern.m) * layer.pattern.n
            total += kept * 4 + math.ceil(kept * index_bits(layer.pattern.m) / 8)
    return total


def replay_harness(source: CSource, header_name: str = "actor.h") -> str:
    """A C program (stdio; not part of the policy) that replays recorded observations:
    ``replay OBS.bin ACTIONS.bin`` reads raw float32 ``[n][OBS_DIM]`` and writes ``[n][ACT_DIM]``
    through ``<prefix>_act`` one observation at a time, as a control loop would. Used to run the
    generated code where Python cannot load it (an aarch64 build under qemu)."""
    prefix, upper = source.prefix, source.prefix.upper()
    return f"""#include <stdio.h>
#include "{header_name}"
int main(int argc, char **argv)
{{
    float obs[{upper}_OBS_DIM], action[{upper}_ACT_DIM];
    FILE *in, *out;
    if (argc != 3 || !(in = fopen(argv[1], "rb")) || !(out = fopen(argv[2], "wb"))) return 2;
    while (fread(obs, sizeof obs, 1, in) == 1) {{
        {prefix}_act(obs, action);
        if (fwrite(action, sizeof action, 1, out) != 1) return 3;
    }}
    return fclose(out) == 0 && fclose(in) == 0 ? 0 : 4;
}}
"""
