"""A verified nmrl policy ONNX file -> one dependency-free C99 translation unit (``actor.c`` + ``actor.h``).

The generator reads the ONNX graph (never a checkpoint) and walks it node by node: the observation
normalisation's ``Sub``/``Div``/``Clip`` (``--normalize-obs``), the observation ``Pad`` of
``--pad-k``, each ``Gemm``, ``Relu``, ``Tanh`` and the action scaling's ``Mul``/``Add``,
so the C code computes what the file computes, in the same order. Any other op is refused in one
line.

int8 files (nmrl's Q/DQ graphs, :mod:`nmrl.export.quantize`, either recipe): a Gemm whose weight is
the DequantizeLinear of a constant int8 initializer (symmetric, per output channel) and whose input is
a QuantizeLinear/DequantizeLinear pair (per tensor, uint8 or int8) is an int8 layer. The C quantizes its
input exactly as QuantizeLinear does (``x / scale``, a division as ONNX Runtime's kernel does, rounded
half to even, plus the zero point, saturated), stored as u8 (an int8 value plus 128) so that every
kernel multiplies u8 inputs by s8 weights; sums the products in int32 (exact: no int16 step that could
saturate); subtracts the input's zero point times the row's weight sum; then, in fp32 as the graph's
DequantizeLinear -> Gemm does, multiplies by input scale x weight scale and adds the fp32 bias. A
Q/DQ pair that feeds no int8 layer (the pre-tanh action of the ``ort`` recipe) is applied to the fp32
vector (quantize, then ``(q - zero point) * scale``). Layers the file keeps fp32 (``--int8-first-layer
fp32``) stay fp32. Integer sums are exact and the float epilogue is one shared scalar loop, so every
int8 path gives bit-identical actions, equal (to fp32 rounding) to the file's own ops under ONNX
Runtime without graph optimizations; ONNX Runtime's default session fuses DQ -> Gemm -> Q into an
integer QGemm that quantizes the bias to int32 and requantizes in one step, so a few activations
land one level apart (tests/test_c_int8.py states the bound).

Weights are ``static const`` arrays in blocks of 16 output rows (one AVX-512 register, two AVX2
registers, four NEON registers). A layer runs one of two kernels:

- ``dense``: per block, for each input k, 16 weights (the block's rows) times the broadcast input;
  the portable loop keeps 16 independent row sums (vectorized by compilers without -ffast-math,
  since no sum is reordered) and two sets of them over even/odd k to hide the FMA latency. Rows past
  the last whole block (an action head's 3-8) are stored row by row and run as dot products, so a
  dense layer stores exactly its rows x K weights (int8: K rounded up to 4).
- ``nm``: N:M values plus, per value, its input's place in its group of M in ``ceil(log2 M)`` bits
  (2 for M = 4, 3 for M = 8: what nm-packed stores). The input is read in windows of 8 floats (8/M
  groups of M); each of the window's ``8/M * N`` slots holds, for the block's 16 rows, one kept
  value. Each row's indices follow one another in 32-bit words (a window's slots, then the next
  window's), so an index is the low bits of a word held in a register, shifted down after each slot.
  AVX-512 and AVX2 select the inputs with ``vpermps`` from a table holding the group's M inputs
  repeated across the register: the permute reads only the low 4/3 bits of each lane and the table
  repeats with period M, so the bits above the index need no masking; NEON masks and selects with
  ``tbl``; no per-weight gather. 1:M patterns alternate two sums across groups and windows (one
  kept value per group would otherwise chain every FMA). Patterns whose M does not divide 8 use
  windows of M inputs and the portable loop on every CPU (a window's indices must fit one word;
  others run dense).

A layer is N:M when its weights are (the file's per-layer pattern) and it has at least
:data:`NM_MIN_K` inputs and :data:`NM_MIN_ROWS` outputs; otherwise dense (the action head, 3-8 rows:
a block's 16 rows would be mostly padding). The first layer of a MuJoCo actor (K = 11-27, its last
window partial) runs N:M: timed against the dense kernel in one interleaved run (256-wide Hopper and
HalfCheetah actors, batch 1, AVX-512), as fast at 2:4 and 8-20% faster at 1:4 and 1:8, with fewer
bytes.

int8 layers store their weights in lanes of 4 (one 32-bit lane of ``vpdpbusd``/``sdot``): dense as
[blocks][K/4][16 rows][4]; N:M as windows of :data:`INT8_WINDOW` = 16 inputs (:data:`INT8_WIDE_WINDOW`
= 32 for M = 8) whose kept values, padded to whole lanes of 4 with zero weights, are stored with an
index each. For M = 4 and 8 a window holds 4 groups and byte j of each lane holds group j's value (no
lane is padding): M = 4, the input is 4 j + the value's 2-bit place in its group (as nm-packed stores
it; one byte per row and lane, widened with AVX-512 VBMI's ``vpmultishiftqb`` or shifts and ORs);
M = 8, bytes 0-1 select from the window's first 16 inputs and bytes 2-3 from its second 16, each by a
4-bit position in its half. Other M: a 4-bit position in the window of 16. 4-bit indices go two to a
byte, widened with one shift, or and and. AVX-512 (with VNNI) selects each lane's 4 inputs with one
``vpshufb`` of the window (M = 8: one of each half, the second masked to bytes 2-3) and multiplies
with ``vpdpbusd`` (u8 inputs first, s8 weights second); AVX2 selects the same way (a blend for M = 8)
and multiplies widened 16-bit values with ``vpmaddwd``; NEON selects with ``tbl`` (``tbl`` of two
registers for M = 8) and uses ``sdot`` when ``__ARM_FEATURE_DOTPROD`` (inputs shifted to s8 and
corrected), else widening multiply-adds. Patterns whose M does not divide 16 run dense.

The kernel path is chosen at compile time from the compiler's predefined macros (fp32: ``__AVX512F__``,
``__AVX2__`` and ``__FMA__``, ``__ARM_NEON``; int8: ``__AVX512VNNI__`` with ``__AVX512BW__``, else
``__AVX2__``, else ``__ARM_NEON``); ``-DNMRL_PORTABLE`` forces the portable loops (the tests compare
them).
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
from nmrl.export.packed import index_bits
from nmrl.export.verify import claim_status, inspect_model
from nmrl.policy_file import PolicyClaims, read_claims
from nmrl.sparsity.pattern import NMPattern

BLOCK = 16
"""Output rows per weight block."""
WINDOW = 8
"""Inputs per window of the N:M kernel (one AVX2 register)."""
GENERATED_MARK = b"/* Generated by nmrl "
"""How every generated .c and .h begins (an existing file is overwritten only if it begins so)."""
NM_MIN_K = 8
"""Fewer inputs than one fp32 window: dense (not measured; no MuJoCo observation is that small)."""
NM_MIN_ROWS = 16
"""Fewer rows than one block (an action head): dense, stored exactly rows x K."""
INT8_WINDOW = 16
"""Inputs per window of the int8 N:M kernel (one byte shuffle: ``vpshufb``/``tbl`` index 16 bytes) ..."""
INT8_WIDE_WINDOW = 32
"""... and for M = 8: two halves of 16, so that a window holds one group per byte of a lane (two byte
shuffles, blended: bytes 0-1 of each lane from the first half, 2-3 from the second)."""
INT8_LANE = 4
"""int8 values per 32-bit lane: the inputs one ``vpdpbusd``/``sdot`` lane sums."""
INT8_INDEX_BITS = 4
"""Bits of an int8 N:M value's index when M != 4: its input's position in the window of 16 inputs."""
INT8_PLACE_BITS = 2
"""... and when M = 4 (a window's 4 groups, one to each byte of a lane): its place in its group."""


@dataclass(frozen=True)
class QParams:
    """One activation QuantizeLinear/DequantizeLinear pair (per tensor): ``q = saturate(round(x / scale)
    + zero_point)``, ``x' = (q - zero_point) * scale``. The C stores every quantized activation as u8:
    an int8 ``q`` as ``q + 128``, so ``x' = (u - offset) * scale``."""

    scale: np.float32
    zero_point: int
    signed: bool

    @property
    def offset(self) -> int:
        return self.zero_point + (128 if self.signed else 0)

    @property
    def low(self) -> int:
        """The type's least value minus the zero point (what ``x / scale`` is clamped to)."""
        return (-128 if self.signed else 0) - self.zero_point

    @property
    def high(self) -> int:
        return (127 if self.signed else 255) - self.zero_point


@dataclass
class Layer:
    """One Gemm ``y = W x + b`` as the C code stores it."""

    index: int
    weight: np.ndarray
    """[rows, K] float32, or int8 for a quantized Gemm (K already padded where the graph pads the input)."""
    bias: np.ndarray
    kernel: str
    """dense or nm"""
    pattern: NMPattern | None = None
    weight_scale: np.ndarray | None = None
    """int8: the per-row (output channel) scale of the symmetric weights."""
    quant: QParams | None = None
    """int8: the quantization of the layer's input (its DequantizeLinear)."""

    @property
    def int8(self) -> bool:
        return self.weight.dtype == np.int8

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
        if self.int8:
            return INT8_WIDE_WINDOW if self.pattern.m * INT8_LANE == INT8_WIDE_WINDOW else INT8_WINDOW
        return WINDOW if WINDOW % self.pattern.m == 0 else self.pattern.m

    @property
    def slots(self) -> int:
        """Kept values per row and window (int8: padded to whole lanes of 4, the padding weight 0)."""
        assert self.pattern is not None
        kept = self.window // self.pattern.m * self.pattern.n
        return -(-kept // INT8_LANE) * INT8_LANE if self.int8 else kept

    @property
    def windows(self) -> int:
        return -(-self.k // self.window)

    @property
    def index_bits(self) -> int:
        """N:M: bits of each value's index. fp32: its input's place in its group of M (as nm-packed
        stores it: 2 for M = 4, 3 for M = 8). int8: the place (:data:`INT8_PLACE_BITS`) when M = 4, whose
        window of 16 holds one group per byte of a lane; else the position in the window of 16 or, for
        M = 8, in the half of the window of 32 (:data:`INT8_INDEX_BITS`)."""
        assert self.pattern is not None
        if self.int8:
            return INT8_PLACE_BITS if self.pattern.m * INT8_LANE == INT8_WINDOW else INT8_INDEX_BITS
        return index_bits(self.pattern.m)

    @property
    def windows_per_word(self) -> int:
        """fp32 N:M: windows whose indices share one 32-bit index word per row."""
        return 32 // (self.index_bits * self.slots)

    @property
    def index_words(self) -> int:
        return -(-self.windows // self.windows_per_word)

    @property
    def full_rows(self) -> int:
        """Rows in whole blocks of 16; a dense layer stores the rest (an action head's 3-8) row by row."""
        return self.rows // BLOCK * BLOCK if self.kernel == "dense" else self.rows_pad

    @property
    def k_pad(self) -> int:
        """Inputs the kernel reads (the window multiple for nm; dense: K, int8 rounded to 4)."""
        if self.kernel == "nm":
            return self.windows * self.window
        return -(-self.k // INT8_LANE) * INT8_LANE if self.int8 else self.k

    def describe(self) -> str:
        what = f"nm {self.pattern}" if self.kernel == "nm" else "dense"
        return f"layer {self.index}: {self.k} -> {self.rows}, kernel {what}{', int8' if self.int8 else ''}"


@dataclass
class Step:
    """One op of the program: ``gemm`` (``layer``) or an elementwise op on the current vector."""

    op: str
    layer: Layer | None = None
    constant: np.ndarray | None = None
    quant: QParams | None = None
    """``quantize`` (into the layer's u8 input) and ``fakequant`` (Q then DQ of the fp32 vector)."""


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


def _scalar(constants: dict[str, np.ndarray], node: onnx.NodeProto, index: int) -> np.ndarray | None:
    name = node.input[index] if len(node.input) > index else ""
    if not name:
        return None
    if name not in constants or constants[name].size != 1:
        raise NmrlError(f"unsupported {node.op_type} {node.name}: per-tensor constant scale and zero point only")
    return constants[name].reshape(())


def _activation_qparams(constants: dict[str, np.ndarray], node: onnx.NodeProto) -> QParams:
    """The per-tensor quantization of a QuantizeLinear/DequantizeLinear node on an activation."""
    scale, zero = _scalar(constants, node, 1), _scalar(constants, node, 2)
    if scale is None or scale.dtype != np.float32 or not float(scale) > 0:
        raise NmrlError(f"unsupported {node.op_type} {node.name}: its scale must be a positive fp32 constant")
    if zero is not None and zero.dtype not in (np.uint8, np.int8):
        raise NmrlError(f"unsupported {node.op_type} {node.name}: uint8 or int8 activations only")
    if any(a.name not in ("axis",) for a in node.attribute):  # saturate/block_size: other types
        raise NmrlError(f"unsupported {node.op_type} {node.name}: attributes {[a.name for a in node.attribute]}")
    signed = zero is not None and zero.dtype == np.int8
    return QParams(np.float32(scale), 0 if zero is None else int(zero), signed)


def _quantized_weights(
    graph: onnx.GraphProto, constants: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """DequantizeLinear outputs of constant int8 weights: name -> (int8 [out, in] as stored, per-row
    scale). Symmetric only (zero points 0), per output channel (axis 0 of the stored [out, in])."""
    found = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            continue
        values = constants[node.input[0]]
        scale = constants.get(node.input[1])
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = int(_attribute(node, "axis", 1))
        if values.dtype != np.int8 or values.ndim != 2 or scale is None or scale.dtype != np.float32:
            raise NmrlError(f"unsupported weight DequantizeLinear {node.name}: int8 [out, in] with fp32 scales")
        if zero is not None and np.any(zero != 0):
            raise NmrlError(f"unsupported weight DequantizeLinear {node.name}: symmetric weights (zero point 0) only")
        if scale.size not in (1, values.shape[0]) or (scale.size > 1 and axis != 0):
            raise NmrlError(f"unsupported weight DequantizeLinear {node.name}: per-tensor or per-output-channel scales")
        found[node.output[0]] = (values, np.broadcast_to(scale.reshape(-1), (values.shape[0],)).astype(np.float32))
    return found


def _indexable(pattern: NMPattern, int8: bool) -> bool:
    """Whether the N:M kernels can run the pattern: int8, M divides 16 (byte shuffles of windows of
    16 inputs); fp32, a window's indices fit one 32-bit index word per row."""
    if int8:
        return INT8_WINDOW % pattern.m == 0
    window = WINDOW if WINDOW % pattern.m == 0 else pattern.m
    return window // pattern.m * pattern.n * index_bits(pattern.m) <= 32


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
    quantized = _quantized_weights(graph, constants)
    current, width, pad = graph.input[0].name, obs_dim, 0
    steps: list[Step] = []
    pending: QParams | None = None  # the current tensor is the output of this QuantizeLinear
    layer_input: QParams | None = None  # ... of this DequantizeLinear, read by an int8 Gemm next
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] in quantized:
            continue  # a constant weight's: read with its Gemm
        if current not in node.input:
            raise NmrlError(f"unsupported policy graph: node {node.name or node.op_type} is not on the action path")
        if node.op_type == "Pad":
            pads = constants.get(node.input[1]) if len(node.input) > 1 else None
            if pads is None or list(pads[:3]) != [0, 0, 0] or (len(node.input) > 2 and node.input[2]):
                raise NmrlError("unsupported Pad: only zero columns appended to the observations")
            pad += int(pads[3])
            width += int(pads[3])
        elif node.op_type == "QuantizeLinear":
            if pending is not None or layer_input is not None or node.input[0] != current:
                raise NmrlError(f"unsupported QuantizeLinear {node.name}: of a quantized tensor")
            pending = _activation_qparams(constants, node)
        elif node.op_type == "DequantizeLinear":
            if pending is None or _activation_qparams(constants, node) != pending:
                raise NmrlError(f"unsupported DequantizeLinear {node.name}: not the QuantizeLinear's pair")
            readers = [other for other in graph.node if node.output[0] in other.input]
            int8_gemm = (
                len(readers) == 1
                and readers[0].op_type == "Gemm"
                and readers[0].input[0] == node.output[0]
                and readers[0].input[1] in quantized
            )
            if int8_gemm:
                layer_input = pending
            else:
                steps.append(Step("fakequant", quant=pending))
            pending = None
        elif pending is not None:
            raise NmrlError(f"unsupported graph: {node.op_type} {node.name} reads a quantized tensor")
        elif node.op_type == "Gemm":
            int8 = node.input[1] in quantized  # its weight is the DequantizeLinear of int8 values
            if node.input[0] != current or not (int8 or node.input[1] in constants):
                raise NmrlError(f"unsupported Gemm {node.name}: its weight must be a constant initializer")
            if int8 and layer_input is None:
                raise NmrlError(f"unsupported Gemm {node.name}: int8 weights with an fp32 input (weight-only int8)")
            if (
                _attribute(node, "alpha", 1.0) != 1.0
                or _attribute(node, "beta", 1.0) != 1.0
                or _attribute(node, "transA", 0)
            ):
                raise NmrlError(f"unsupported Gemm {node.name}: alpha/beta/transA")
            weight_scale = None
            if int8:
                if not _attribute(node, "transB", 0):
                    raise NmrlError(f"unsupported Gemm {node.name}: int8 weights not stored [out, in]")
                weight, weight_scale = quantized[node.input[1]]
            else:
                weight = constants[node.input[1]]
                if weight.dtype != np.float32:
                    raise NmrlError(f"the C generator writes fp32 or int8 layers; {node.input[1]} is {weight.dtype}")
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
                and _indexable(pattern, int8)
                and weight.shape[1] >= NM_MIN_K
                and rows >= NM_MIN_ROWS
            )
            kernel = "nm" if sparse else "dense"
            layer = Layer(len(steps), np.ascontiguousarray(weight), bias, kernel, pattern, weight_scale, layer_input)
            if int8:
                steps.append(Step("quantize", quant=layer_input))
            steps.append(Step("gemm", layer))
            layer_input, width = None, rows
        elif node.op_type in ("Relu", "Tanh"):
            steps.append(Step(node.op_type.lower()))
        elif node.op_type in ("Mul", "Add", "Sub", "Div"):
            commutes = node.op_type in ("Mul", "Add")
            other = node.input[1] if node.input[0] == current else node.input[0]
            if other not in constants or (not commutes and node.input[0] != current):
                raise NmrlError(f"unsupported {node.op_type} {node.name}: its second operand must be a constant")
            value = np.broadcast_to(constants[other].astype(np.float32).reshape(-1), (width,))
            steps.append(Step(node.op_type.lower(), constant=np.ascontiguousarray(value)))
        elif node.op_type == "Clip":  # --normalize-obs: the bound of the normalised observations
            bounds = [constants[name] for name in node.input[1:3] if name in constants]
            if node.input[0] != current or len(bounds) != 2 or any(bound.size != 1 for bound in bounds):
                raise NmrlError(f"unsupported Clip {node.name}: its min and max must be constant scalars")
            steps.append(Step("clip", constant=np.array([bound.reshape(-1)[0] for bound in bounds], np.float32)))
        else:
            raise NmrlError(f"the C generator does not support {node.op_type} (node {node.name})")
        current = node.output[0]
    if pending is not None or layer_input is not None:
        raise NmrlError("unsupported policy graph: it ends on a quantized tensor")
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
    """Flat: the whole blocks of 16 rows as [blocks, K, 16] (for each input, the block's 16 row weights),
    then the remaining rows row-major [rows % 16, K]. Nothing padded."""
    full = layer.full_rows
    blocks = layer.weight[:full].reshape(-1, BLOCK, layer.k).transpose(0, 2, 1)
    return np.concatenate([blocks.reshape(-1), layer.weight[full:].reshape(-1)]).astype(np.float32)


def _kept(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The N:M layer's kept values and the position of each one's input inside its window, per row
    and window: [rows_pad, windows, slots] (in the weight's dtype; padding slots: value 0, index 0).
    Groups with fewer than N nonzeros store zeros (index of a zero)."""
    assert layer.pattern is not None
    n, m = layer.pattern.n, layer.pattern.m
    window, windows = layer.window, layer.windows
    padded = np.zeros((layer.rows_pad, windows * window), layer.weight.dtype)
    padded[: layer.rows, : layer.k] = layer.weight
    groups = padded.reshape(layer.rows_pad, -1, m)
    if (np.count_nonzero(groups, axis=-1) > n).any():
        raise NmrlError(f"layer {layer.index} is not {layer.pattern} along K")
    order = np.sort(np.argsort(groups == 0, axis=-1, kind="stable")[..., :n], axis=-1)
    values = np.take_along_axis(groups, order, axis=-1)  # [rows, groups, n]
    position = order + (np.arange(groups.shape[1]) % (window // m))[None, :, None] * m
    per_window = window // m * n
    shape = (layer.rows_pad, windows, layer.slots)
    values_out, position_out = np.zeros(shape, layer.weight.dtype), np.zeros(shape, np.uint8)
    values_out[..., :per_window] = values.reshape(layer.rows_pad, windows, per_window)
    position_out[..., :per_window] = position.reshape(layer.rows_pad, windows, per_window)
    return values_out, position_out


def pack_nm(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """values [blocks, windows, slots, 16] float32; index words [blocks, words, 16] uint32: per row, the
    :attr:`Layer.index_bits`-bit place in its group of each value's input, slot after slot and window
    after window, low bits first, :attr:`Layer.windows_per_word` windows to a word."""
    assert layer.pattern is not None
    values, position = _kept(layer)
    per_word, words, slots = layer.windows_per_word, layer.index_words, layer.slots
    fields = np.zeros((layer.rows_pad, words * per_word, slots), np.uint64)
    fields[:, : layer.windows] = position % layer.pattern.m
    shifts = (layer.index_bits * np.arange(per_word * slots, dtype=np.uint64)).reshape(per_word, slots)
    code = (fields.reshape(layer.rows_pad, words, per_word, slots) << shifts).sum(axis=(2, 3)).astype(np.uint32)
    blocked_values = values.reshape(-1, BLOCK, layer.windows, slots).transpose(0, 2, 3, 1).copy()
    return blocked_values, code.reshape(-1, BLOCK, words).transpose(0, 2, 1).copy()


def pack_dense_int8(layer: Layer) -> np.ndarray:
    """Flat int8: the whole blocks of 16 rows as [blocks, k_pad / 4, 16, 4] (per group of 4 inputs, each
    row's 4 weights: one 32-bit lane of ``vpdpbusd``/``sdot``), then the remaining rows row-major
    [rows % 16, k_pad]."""
    padded = np.zeros((layer.rows, layer.k_pad), np.int8)
    padded[:, : layer.k] = layer.weight
    full = layer.full_rows
    blocks = padded[:full].reshape(-1, BLOCK, layer.k_pad // INT8_LANE, INT8_LANE).transpose(0, 2, 1, 3)
    return np.concatenate([blocks.reshape(-1), padded[full:].reshape(-1)])


def pack_nm_int8(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """values [blocks, windows, slots / 4, 16, 4] int8: per window (:attr:`Layer.window` inputs), lanes
    of 4 kept values of one row, the first kept value of each group, then the second, ... (so byte j of
    a lane holds group j's for M = 4 and 8); indices [blocks, windows, slots / 4, 16, index_bits / 2]
    uint8: per lane, the 4 values' :attr:`Layer.index_bits`-bit indices, low bits first (M = 4: their
    places, one byte; else their positions in the window of 16, or in the half of the window of 32
    that byte j selects from (j // 2), two nibbles to a byte)."""
    assert layer.pattern is not None
    values, position = _kept(layer)
    groups, n = layer.window // layer.pattern.m, layer.pattern.n
    rank_major = np.arange(groups * n).reshape(groups, n).T.reshape(-1)  # slot of (rank, group), group-major
    order = np.concatenate([rank_major, np.arange(groups * n, layer.slots)])
    values, position = values[..., order], position[..., order]

    def blocked(array: np.ndarray) -> np.ndarray:
        shape = (-1, BLOCK, layer.windows, layer.slots // INT8_LANE, INT8_LANE)
        return array.reshape(shape).transpose(0, 2, 3, 1, 4).copy()

    lanes = blocked(position) % INT8_WINDOW  # M = 8: the position in its half (byte j's half: j // 2)
    if layer.index_bits == INT8_PLACE_BITS:
        places = lanes % layer.pattern.m
        index = sum(places[..., j].astype(np.uint8) << (INT8_PLACE_BITS * j) for j in range(INT8_LANE))
        return blocked(values), np.asarray(index, np.uint8)
    return blocked(values), (lanes[..., 0::2] | (lanes[..., 1::2] << INT8_INDEX_BITS)).astype(np.uint8)


def int8_epilogue(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """An int8 layer's per-row constants: the sums of its integer weights (int32; the input's zero
    point times them is subtracted from the integer sum) and input scale x weight scale (fp32)."""
    assert layer.quant is not None and layer.weight_scale is not None
    rowsum = np.zeros(layer.rows_pad, np.int32)
    rowsum[: layer.rows] = layer.weight.astype(np.int32).sum(axis=1)
    scale = np.zeros(layer.rows_pad, np.float32)
    scale[: layer.rows] = layer.quant.scale * layer.weight_scale  # fp32 x fp32, as the C would
    return rowsum, scale


def packed_weights(layer: Layer) -> list[np.ndarray]:
    """The arrays the C stores for the layer's weights: dense, or N:M values and index words/bytes."""
    if layer.kernel == "dense":
        return [pack_dense_int8(layer) if layer.int8 else pack_dense(layer)]
    return list(pack_nm_int8(layer) if layer.int8 else pack_nm(layer))


def weight_bytes(program: Program) -> int:
    """Bytes of the weights as the C file stores them (values, indices; biases and scales excluded)."""
    return sum(array.nbytes for layer in program.layers for array in packed_weights(layer))


# ------------------------------------------------------------------------------------------
# Emitting C


def _floats(array: np.ndarray) -> str:
    flat = np.asarray(array, np.float32).reshape(-1)
    items = [f"{float(value):.9g}f" if np.isfinite(value) else "0.0f" for value in flat]
    items = [item if ("." in item or "e" in item or "inf" in item) else item.replace("f", ".0f") for item in items]
    return ",\n".join(", ".join(items[i : i + 8]) for i in range(0, len(items), 8))


def _bytes(array: np.ndarray) -> str:
    """Integers (uint8, int8, int32, uint32) as a C initializer list."""
    flat = np.asarray(array).reshape(-1)
    suffix = "u" if flat.dtype == np.uint32 else ""  # 2^31 and above: unsigned, not a long constant
    return ",\n".join(", ".join(f"{int(v)}{suffix}" for v in flat[i : i + 32]) for i in range(0, len(flat), 32))


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
/* y[0..rows) = W x + b; w: the whole blocks of 16 rows as [k][16], then the other rows row-major. */
static void nmrl_dense16(int rows, int k, const float *w, const float *b, const float *x, float *y)
{
    const int full = rows - rows % 16;
    int r0, r, j;
    for (r0 = 0; r0 < full; r0 += 16) {
        const float *p = w + (size_t)r0 * (size_t)k;
#if defined(NMRL_AVX512)
        __m512 a = _mm512_loadu_ps(b + r0), c = _mm512_setzero_ps();
        for (j = 0; j + 1 < k; j += 2, p += 32) {
            a = _mm512_fmadd_ps(_mm512_loadu_ps(p), _mm512_set1_ps(x[j]), a);
            c = _mm512_fmadd_ps(_mm512_loadu_ps(p + 16), _mm512_set1_ps(x[j + 1]), c);
        }
        if (j < k) a = _mm512_fmadd_ps(_mm512_loadu_ps(p), _mm512_set1_ps(x[j]), a);
        _mm512_storeu_ps(y + r0, _mm512_add_ps(a, c));
#elif defined(NMRL_AVX2)
        __m256 a0 = _mm256_loadu_ps(b + r0), a1 = _mm256_loadu_ps(b + r0 + 8);
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
        for (j = 0; j + 1 < k; j += 2, p += 32) {
            __m256 x0 = _mm256_broadcast_ss(x + j), x1 = _mm256_broadcast_ss(x + j + 1);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8), x0, a1);
            c0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 16), x1, c0);
            c1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 24), x1, c1);
        }
        if (j < k) {
            __m256 x0 = _mm256_broadcast_ss(x + j);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8), x0, a1);
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
        for (j = 0; j + 1 < k; j += 2, p += 32)
            for (i = 0; i < 16; ++i) {
                a[i] += p[i] * x[j];
                c[i] += p[16 + i] * x[j + 1];
            }
        if (j < k)
            for (i = 0; i < 16; ++i) a[i] += p[i] * x[j];
        for (i = 0; i < 16; ++i) y[r0 + i] = a[i] + c[i];
#endif
    }
    /* The rows past the last whole block (an action head's 3-8): a dot product each, in 32 partial
     * sums (vectors the compiler keeps without -ffast-math; 8 made one FMA chain, and a 6-8-row head
     * ran slower than the padded 16-row block it replaced), added as a tree. */
    w += (size_t)full * (size_t)k;
    for (r = full; r < rows; ++r, w += k) {
        float s[32], t = 0.0f;
        int i, h;
        for (i = 0; i < 32; ++i) s[i] = 0.0f;
        for (j = 0; j + 32 <= k; j += 32)
            for (i = 0; i < 32; ++i) s[i] += w[j + i] * x[j + i];
        for (; j < k; ++j) t += w[j] * x[j];
        for (h = 16; h > 0; h /= 2)
            for (i = 0; i < h; ++i) s[i] += s[i + h];
        y[r] = b[r] + (s[0] + t);
    }
}
"""

NM_KERNEL = r"""
/* N:M: v [blocks][windows][slots][16], the kept values (a window's groups of m in order, n each);
 * ix [blocks][words][16]: per row, the place in its group (bits wide) of each value's input, slot after
 * slot, low bits first, per_word windows to a 32-bit word. The SIMD paths (window == 8) select inputs
 * with a permute from a table of the group's m inputs repeated across the register: the permute reads
 * only an index word's low bits, and the table repeats with period m, so the word needs no masking,
 * only a shift by bits after each slot. */
#if defined(NMRL_AVX512)
static inline __m512 nmrl_table512(const float *g, int m)
{
    if (m == 8) {
        const __m512 t = _mm512_castps256_ps512(_mm256_loadu_ps(g));
        return _mm512_shuffle_f32x4(t, t, 0x44);
    }
    if (m == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(g));
    return _mm512_castsi512_ps(_mm512_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)g)));
}
#elif defined(NMRL_AVX2)
static inline __m256 nmrl_table256(const float *g, int m)
{
    if (m == 8) return _mm256_loadu_ps(g);
    if (m == 4) return _mm256_broadcast_ps((const __m128 *)g);
    return _mm256_castsi256_ps(_mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)g)));
}
#endif
static void nmrl_nm16(int rows_pad, int windows, int n, int m, int bits, const float *v, const uint32_t *ix,
                      const float *b, const float *x, float *y)
{
    const int window = 8 % m == 0 ? 8 : m, groups = window / m, slots = groups * n;
    const int per_word = 32 / (bits * slots), words = (windows + per_word - 1) / per_word;
    const size_t per_block = (size_t)windows * (size_t)slots * 16;
    int r0, w, g, j, left;
    for (r0 = 0; r0 < rows_pad; r0 += 16) {
        const float *vb = v + (size_t)(r0 / 16) * per_block;
        const uint32_t *ib = ix + (size_t)(r0 / 16) * (size_t)words * 16;
        left = 0;
#if defined(NMRL_AVX512)
        if (window == 8) {
            __m512 a = _mm512_loadu_ps(b + r0), c = _mm512_setzero_ps();
            __m512i code = _mm512_setzero_si512();
            for (w = 0; w < windows; ++w, --left) {
                if (left == 0) {
                    code = _mm512_loadu_si512((const void *)ib);
                    ib += 16;
                    left = per_word;
                }
                for (g = 0; n == 1 && g + 1 < groups; g += 2, vb += 32) { /* 1:M: two groups, two sums */
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(vb),
                                        _mm512_permutexvar_ps(code, nmrl_table512(x + 8 * w + m * g, m)), a);
                    code = _mm512_srl_epi32(code, _mm_cvtsi32_si128(bits));
                    c = _mm512_fmadd_ps(_mm512_loadu_ps(vb + 16),
                                        _mm512_permutexvar_ps(code, nmrl_table512(x + 8 * w + m * (g + 1), m)), c);
                    code = _mm512_srl_epi32(code, _mm_cvtsi32_si128(bits));
                }
                for (; g < groups; ++g) {
                    const __m512 t = nmrl_table512(x + 8 * w + m * g, m);
                    for (j = 0; j + 1 < n; j += 2, vb += 32) {
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(vb), _mm512_permutexvar_ps(code, t), a);
                        code = _mm512_srl_epi32(code, _mm_cvtsi32_si128(bits));
                        c = _mm512_fmadd_ps(_mm512_loadu_ps(vb + 16), _mm512_permutexvar_ps(code, t), c);
                        code = _mm512_srl_epi32(code, _mm_cvtsi32_si128(bits));
                    }
                    if (j < n) {
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(vb), _mm512_permutexvar_ps(code, t), a);
                        code = _mm512_srl_epi32(code, _mm_cvtsi32_si128(bits));
                        vb += 16;
                    }
                }
                if (slots & 1) { /* the next window's first slot sums into the other accumulator */
                    const __m512 t = a;
                    a = c;
                    c = t;
                }
            }
            _mm512_storeu_ps(y + r0, _mm512_add_ps(a, c));
            continue;
        }
#elif defined(NMRL_AVX2)
        if (window == 8) {
            __m256 a0 = _mm256_loadu_ps(b + r0), a1 = _mm256_loadu_ps(b + r0 + 8);
            __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
            __m256i k0 = _mm256_setzero_si256(), k1 = k0;
            const __m128i shift = _mm_cvtsi32_si128(bits);
            for (w = 0; w < windows; ++w, --left) {
                if (left == 0) {
                    k0 = _mm256_loadu_si256((const __m256i *)ib);
                    k1 = _mm256_loadu_si256((const __m256i *)(ib + 8));
                    ib += 16;
                    left = per_word;
                }
                for (g = 0; n == 1 && g + 1 < groups; g += 2, vb += 32) { /* 1:M: two groups, two sums */
                    const __m256 t = nmrl_table256(x + 8 * w + m * g, m), u = nmrl_table256(x + 8 * w + m * g + m, m);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb), _mm256_permutevar8x32_ps(t, k0), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 8), _mm256_permutevar8x32_ps(t, k1), a1);
                    k0 = _mm256_srl_epi32(k0, shift);
                    k1 = _mm256_srl_epi32(k1, shift);
                    c0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 16), _mm256_permutevar8x32_ps(u, k0), c0);
                    c1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 24), _mm256_permutevar8x32_ps(u, k1), c1);
                    k0 = _mm256_srl_epi32(k0, shift);
                    k1 = _mm256_srl_epi32(k1, shift);
                }
                for (; g < groups; ++g) {
                    const __m256 t = nmrl_table256(x + 8 * w + m * g, m);
                    for (j = 0; j + 1 < n; j += 2, vb += 32) {
                        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb), _mm256_permutevar8x32_ps(t, k0), a0);
                        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 8), _mm256_permutevar8x32_ps(t, k1), a1);
                        k0 = _mm256_srl_epi32(k0, shift);
                        k1 = _mm256_srl_epi32(k1, shift);
                        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 16), _mm256_permutevar8x32_ps(t, k0), c0);
                        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 24), _mm256_permutevar8x32_ps(t, k1), c1);
                        k0 = _mm256_srl_epi32(k0, shift);
                        k1 = _mm256_srl_epi32(k1, shift);
                    }
                    if (j < n) {
                        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vb), _mm256_permutevar8x32_ps(t, k0), a0);
                        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vb + 8), _mm256_permutevar8x32_ps(t, k1), a1);
                        k0 = _mm256_srl_epi32(k0, shift);
                        k1 = _mm256_srl_epi32(k1, shift);
                        vb += 16;
                    }
                }
                if (slots & 1) { /* the next window's first slot sums into the other accumulators */
                    __m256 t = a0;
                    a0 = c0;
                    c0 = t;
                    t = a1;
                    a1 = c1;
                    c1 = t;
                }
            }
            _mm256_storeu_ps(y + r0, _mm256_add_ps(a0, c0));
            _mm256_storeu_ps(y + r0 + 8, _mm256_add_ps(a1, c1));
            continue;
        }
#elif defined(NMRL_NEON)
        if (window == 8) {
            /* tbl selects bytes: place p becomes bytes 4p..4p+3 of the group's inputs (m <= 4: 16 bytes,
             * a pair repeated for m = 2; m = 8: the 32-byte window). */
            const uint32x4_t mask = vdupq_n_u32((uint32_t)(m - 1)), spread = vdupq_n_u32(0x04040404u);
            const uint32x4_t lanes = vdupq_n_u32(0x03020100u);
            const int32x4_t shift = vdupq_n_s32(-bits);
            float32x4_t a0 = vld1q_f32(b + r0), a1 = vld1q_f32(b + r0 + 4);
            float32x4_t a2 = vld1q_f32(b + r0 + 8), a3 = vld1q_f32(b + r0 + 12);
            uint32x4_t k0 = vdupq_n_u32(0), k1 = k0, k2 = k0, k3 = k0;
            for (w = 0; w < windows; ++w, --left) {
                if (left == 0) {
                    k0 = vld1q_u32(ib);
                    k1 = vld1q_u32(ib + 4);
                    k2 = vld1q_u32(ib + 8);
                    k3 = vld1q_u32(ib + 12);
                    ib += 16;
                    left = per_word;
                }
                for (g = 0; g < groups; ++g) {
                    const float *xg = x + 8 * w + m * g;
                    uint8x16x2_t tab;
                    if (m == 8) {
                        tab.val[0] = vreinterpretq_u8_f32(vld1q_f32(xg));
                        tab.val[1] = vreinterpretq_u8_f32(vld1q_f32(xg + 4));
                    } else {
                        tab.val[0] = m == 4 ? vreinterpretq_u8_f32(vld1q_f32(xg))
                                            : vreinterpretq_u8_f32(vcombine_f32(vld1_f32(xg), vld1_f32(xg)));
                        tab.val[1] = tab.val[0];
                    }
                    for (j = 0; j < n; ++j, vb += 16) {
#define NMRL_SEL(k) \
    vreinterpretq_f32_u8(vqtbl2q_u8(tab, vreinterpretq_u8_u32(vmlaq_u32(lanes, vandq_u32(k, mask), spread))))
                        a0 = vfmaq_f32(a0, vld1q_f32(vb), NMRL_SEL(k0));
                        a1 = vfmaq_f32(a1, vld1q_f32(vb + 4), NMRL_SEL(k1));
                        a2 = vfmaq_f32(a2, vld1q_f32(vb + 8), NMRL_SEL(k2));
                        a3 = vfmaq_f32(a3, vld1q_f32(vb + 12), NMRL_SEL(k3));
#undef NMRL_SEL
                        k0 = vshlq_u32(k0, shift);
                        k1 = vshlq_u32(k1, shift);
                        k2 = vshlq_u32(k2, shift);
                        k3 = vshlq_u32(k3, shift);
                    }
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
            const uint32_t mask = (1u << bits) - 1u;
            float a[16], c[16];
            uint32_t code[16];
            int i;
            for (i = 0; i < 16; ++i) { a[i] = b[r0 + i]; c[i] = 0.0f; code[i] = 0; }
            for (w = 0; w < windows; ++w, --left) {
                if (left == 0) {
                    for (i = 0; i < 16; ++i) code[i] = ib[i];
                    ib += 16;
                    left = per_word;
                }
                for (g = 0; g < groups; ++g) {
                    const float *xg = x + (size_t)w * (size_t)window + m * g;
                    for (j = 0; j + 1 < n; j += 2, vb += 32)
                        for (i = 0; i < 16; ++i) {
                            a[i] += vb[i] * xg[code[i] & mask];
                            c[i] += vb[16 + i] * xg[(code[i] >> bits) & mask];
                            code[i] >>= 2 * bits;
                        }
                    if (j < n) {
                        for (i = 0; i < 16; ++i) {
                            a[i] += vb[i] * xg[code[i] & mask];
                            code[i] >>= bits;
                        }
                        vb += 16;
                    }
                }
            }
            for (i = 0; i < 16; ++i) y[r0 + i] = a[i] + c[i];
        }
    }
}
"""

INT8_PATHS = r"""
/* int8 kernel path: AVX-512 with VNNI (vpdpbusd: u8 x s8 sums of 4 into int32), else AVX2
 * (vpmaddwd on widened 16-bit values: no int16 saturation, unlike vpmaddubsw), else NEON (sdot when
 * the CPU has the dot-product extension), else plain C. All give the same int32 sums; the float
 * epilogue is shared, so every path computes bit-identical actions. */
#if !defined(NMRL_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define NMRL_I8_AVX512 1
#elif !defined(NMRL_PORTABLE) && defined(__AVX2__)
#include <immintrin.h>
#define NMRL_I8_AVX2 1
#elif !defined(NMRL_PORTABLE) && defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define NMRL_I8_NEON 1
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define NMRL_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define NMRL_NO_UNROLL
#endif
"""

QUANTIZE_KERNEL = r"""
/* round(v) to nearest, ties to even (QuantizeLinear's rounding) for |v| < 2^23, without libm. */
static int32_t nmrl_rne(float v)
{
    int32_t t = (int32_t)v;
    float r = v - (float)t; /* exact */
    if (r > 0.5f || (r == 0.5f && (t & 1))) ++t;
    else if (r < -0.5f || (r == -0.5f && (t & 1))) --t;
    return t;
}

/* ONNX QuantizeLinear of x[0..n): q = saturate(round_half_even(x / s) + zero_point), stored as
 * u = q + 128 for int8 (so every kernel reads u8); lo/hi = the type's range minus the zero point
 * (clamping before rounding saturates alike); offset = zero_point (+128 for int8). */
static void nmrl_quantize(int n, const float *x, float s, float lo, float hi, int32_t offset, uint8_t *u)
{
    int i = 0;
#if defined(NMRL_I8_AVX512)
    const __m512 vs = _mm512_set1_ps(s), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    const __m512i vo = _mm512_set1_epi32(offset);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), vs), vlo), vhi);
        __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vo); /* MXCSR default: ties to even */
        _mm_storeu_si128((__m128i *)(u + i), _mm512_cvtepi32_epi8(q));
    }
#elif defined(NMRL_I8_AVX2)
    const __m256 vs = _mm256_set1_ps(s), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    const __m256i vo = _mm256_set1_epi32(offset);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), vs), vlo), vhi);
        __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(v), vo);
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(u + i), _mm_packus_epi16(w, w));
    }
#elif defined(NMRL_I8_NEON)
    const float32x4_t vs = vdupq_n_f32(s), vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    const int32x4_t vo = vdupq_n_s32(offset);
    for (; i + 8 <= n; i += 8) {
        float32x4_t v0 = vminq_f32(vmaxq_f32(vdivq_f32(vld1q_f32(x + i), vs), vlo), vhi);
        float32x4_t v1 = vminq_f32(vmaxq_f32(vdivq_f32(vld1q_f32(x + i + 4), vs), vlo), vhi);
        int32x4_t q0 = vaddq_s32(vcvtnq_s32_f32(v0), vo), q1 = vaddq_s32(vcvtnq_s32_f32(v1), vo);
        vst1_u8(u + i, vqmovn_u16(vcombine_u16(vqmovun_s32(q0), vqmovun_s32(q1))));
    }
#endif
    for (; i < n; ++i) {
        float v = x[i] / s;
        v = v < lo ? lo : (v > hi ? hi : v);
        u[i] = (uint8_t)(nmrl_rne(v) + offset);
    }
}

"""

INT8_EPILOGUE = r"""
/* y = (float)(int32 sum - offset * rowsum) * scale + b: the int8 Gemm's dequantization (scale =
 * input scale x the row's weight scale) and its fp32 bias, after the exact integer sum. */
static void nmrl_i8_epilogue(int n, const int32_t *acc, const int32_t *rowsum, int32_t offset, const float *scale,
                             const float *b, float *y)
{
    int i;
    for (i = 0; i < n; ++i) y[i] = (float)(acc[i] - offset * rowsum[i]) * scale[i] + b[i];
}
"""

DENSE_I8_KERNEL = r"""
/* int8 dense: w: the whole blocks of 16 rows as [k/4][16][4] (row r's 4 consecutive inputs in one 32-bit
 * lane), then the other rows row-major [k]; u: u8 inputs. */
static void nmrl_dense16_i8(int rows, int groups, const int8_t *w, const int32_t *rowsum, int32_t offset,
                            const float *scale, const float *b, const uint8_t *u, float *y)
{
    const int full = rows - rows % 16;
    int r0, g;
    for (r0 = 0; r0 < full; r0 += 16) {
        const int8_t *p = w + (size_t)r0 * (size_t)groups * 4;
        int32_t acc[16];
#if defined(NMRL_I8_AVX512)
        __m512i a = _mm512_setzero_si512(), c = _mm512_setzero_si512();
        int32_t x0, x1;
        for (g = 0; g + 1 < groups; g += 2, p += 128) {
            memcpy(&x0, u + 4 * g, 4);
            memcpy(&x1, u + 4 * g + 4, 4);
            /* vpdpbusd: the first operand is the unsigned one (inputs), the second signed (weights). */
            a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(x0), _mm512_loadu_si512((const void *)p));
            c = _mm512_dpbusd_epi32(c, _mm512_set1_epi32(x1), _mm512_loadu_si512((const void *)(p + 64)));
        }
        if (g < groups) {
            memcpy(&x0, u + 4 * g, 4);
            a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(x0), _mm512_loadu_si512((const void *)p));
        }
        _mm512_storeu_si512((void *)acc, _mm512_add_epi32(a, c));
#elif defined(NMRL_I8_AVX2)
        /* Each 32-bit lane holds the sum of 2 products of one row; pairs are added at the end. */
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        int32_t x0;
        for (g = 0; g < groups; ++g, p += 64) {
            __m256i xv;
            memcpy(&x0, u + 4 * g, 4);
            xv = _mm256_cvtepu8_epi16(_mm_set1_epi32(x0));
#define NMRL_W(o) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + (o))))
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(NMRL_W(0), xv));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(NMRL_W(16), xv));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(NMRL_W(32), xv));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(NMRL_W(48), xv));
#undef NMRL_W
        }
        nmrl_i8_pairs(a0, a1, a2, a3, acc);
#elif defined(NMRL_I8_NEON)
        int32_t x0;
        NMRL_I8_NEON_BEGIN
        for (g = 0; g < groups; ++g, p += 64) {
            uint8x16_t xv;
            memcpy(&x0, u + 4 * g, 4);
            xv = vreinterpretq_u8_s32(vdupq_n_s32(x0));
            NMRL_I8_NEON_STEP(xv, xv, xv, xv, p)
        }
        NMRL_I8_NEON_END
#else
        int i;
        for (i = 0; i < 16; ++i) acc[i] = 0;
        for (g = 0; g < groups; ++g, p += 64) {
            const uint8_t *x = u + 4 * g;
            for (i = 0; i < 16; ++i)
                acc[i] += x[0] * p[4 * i] + x[1] * p[4 * i + 1] + x[2] * p[4 * i + 2] + x[3] * p[4 * i + 3];
        }
#endif
        nmrl_i8_epilogue(16, acc, rowsum + r0, offset, scale + r0, b + r0, y + r0);
    }
    /* The rows past the last whole block (an action head's 3-8): an exact int32 dot product each. */
    for (r0 = full; r0 < rows; ++r0) {
        const int8_t *p = w + (size_t)r0 * (size_t)groups * 4;
        int32_t acc = 0;
        for (g = 0; g < 4 * groups; ++g) acc += (int32_t)u[g] * p[g];
        nmrl_i8_epilogue(1, &acc, rowsum + r0, offset, scale + r0, b + r0, y + r0);
    }
}
"""

NM_I8_KERNEL = r"""
/* int8 N:M: v [blocks][windows][groups][16][4]: the input window is span (16 or 32) u8 values; each
 * 32-bit lane holds 4 kept weights of one row (padding slots: weight 0); ix [blocks][windows][groups][16]
 * [bits / 2]: their indices, low bits first. bits = 2 (M = 4): byte j of a lane takes group j's value, so
 * its input is 4 j + the 2-bit place; bits = 4: the input's position in the window of 16, or (span 32,
 * M = 8: byte j takes group j's value) in the half j / 2 of the window. The SIMD paths widen the
 * indices into one byte each (nmrl_i8_positions*) and select each lane's 4 inputs with one byte
 * shuffle of the window, or one of each half blended (nmrl_i8_select*). */
static void nmrl_nm16_i8(int rows_pad, int windows, int span, int groups, int bits, const int8_t *v,
                         const uint8_t *ix, const int32_t *rowsum, int32_t offset, const float *scale,
                         const float *b, const uint8_t *u, float *y)
{
    int r0, w, g;
    const size_t per_block = (size_t)windows * (size_t)groups * 64;
    for (r0 = 0; r0 < rows_pad; r0 += 16) {
        const int8_t *vb = v + (size_t)(r0 / 16) * per_block;
        const uint8_t *ib = ix + (size_t)(r0 / 16) * per_block * (size_t)bits / 8;
        int32_t acc[16];
#if defined(NMRL_I8_AVX512)
        /* Two windows per step into four independent sums (a, c: the first; d, e: the second). */
        __m512i a = _mm512_setzero_si512(), c = a, d = a, e = a;
        const size_t step = (size_t)groups * 64;
/* A window's 16 inputs (its first half when span = 32) in each 128-bit lane, and its second half. */
#define NMRL_WINDOW(i) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(u + span * (i))))
#define NMRL_HALF(x, i) (span == 32 ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(u + 32 * (i) + 16))) : x)
#define NMRL_POSITIONS(o) nmrl_i8_positions512(ib + (o) * (size_t)bits / 8, bits)
#define NMRL_DP(s, x, h, o) \
    s = _mm512_dpbusd_epi32(s, nmrl_i8_select512(x, h, span, NMRL_POSITIONS(o)), \
                            _mm512_loadu_si512((const void *)(vb + (o))))
        NMRL_NO_UNROLL /* gcc unrolls a short window loop whole, then spills its registers */
        for (w = 0; w + 1 < windows; w += 2, vb += 2 * step, ib += 2 * step * (size_t)bits / 8) {
            const __m512i x0 = NMRL_WINDOW(w), x1 = NMRL_WINDOW(w + 1);
            const __m512i h0 = NMRL_HALF(x0, w), h1 = NMRL_HALF(x1, w + 1);
            for (g = 0; g + 1 < groups; g += 2) {
                NMRL_DP(a, x0, h0, 64 * g);
                NMRL_DP(c, x0, h0, 64 * g + 64);
                NMRL_DP(d, x1, h1, step + 64 * g);
                NMRL_DP(e, x1, h1, step + 64 * g + 64);
            }
            if (g < groups) {
                NMRL_DP(a, x0, h0, 64 * g);
                NMRL_DP(d, x1, h1, step + 64 * g);
            }
        }
        if (w < windows) {
            const __m512i x0 = NMRL_WINDOW(w), h0 = NMRL_HALF(x0, w);
            for (g = 0; g < groups; ++g) NMRL_DP(a, x0, h0, 64 * g);
        }
#undef NMRL_WINDOW
#undef NMRL_HALF
#undef NMRL_POSITIONS
#undef NMRL_DP
        _mm512_storeu_si512((void *)acc, _mm512_add_epi32(_mm512_add_epi32(a, c), _mm512_add_epi32(d, e)));
#elif defined(NMRL_I8_AVX2)
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        NMRL_NO_UNROLL
        for (w = 0; w < windows; ++w) {
            const __m128i xw = _mm_loadu_si128((const __m128i *)(u + span * w));
            const __m128i hw = span == 32 ? _mm_loadu_si128((const __m128i *)(u + span * w + 16)) : xw;
            for (g = 0; g < groups; ++g, vb += 64, ib += 8 * bits) {
#define NMRL_SEL(o) \
    _mm256_cvtepu8_epi16(nmrl_i8_select128(xw, hw, span, nmrl_i8_positions128(ib + (o) * bits / 8, bits)))
#define NMRL_W(o) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(vb + (o))))
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(NMRL_W(0), NMRL_SEL(0)));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(NMRL_W(16), NMRL_SEL(16)));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(NMRL_W(32), NMRL_SEL(32)));
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(NMRL_W(48), NMRL_SEL(48)));
#undef NMRL_SEL
#undef NMRL_W
            }
        }
        nmrl_i8_pairs(a0, a1, a2, a3, acc);
#elif defined(NMRL_I8_NEON)
        NMRL_I8_NEON_BEGIN
        NMRL_NO_UNROLL
        for (w = 0; w < windows; ++w) {
            uint8x16x2_t xw;
            xw.val[0] = vld1q_u8(u + span * w);
            xw.val[1] = span == 32 ? vld1q_u8(u + span * w + 16) : xw.val[0];
            for (g = 0; g < groups; ++g, vb += 64, ib += 8 * bits) {
#define NMRL_SEL(q) nmrl_i8_select_neon(xw, span, nmrl_i8_positions_neon(ib + 2 * bits * (q), bits))
                NMRL_I8_NEON_STEP(NMRL_SEL(0), NMRL_SEL(1), NMRL_SEL(2), NMRL_SEL(3), vb)
#undef NMRL_SEL
            }
        }
        NMRL_I8_NEON_END
#else
        int i, j;
        for (i = 0; i < 16; ++i) acc[i] = 0;
        for (w = 0; w < windows; ++w) {
            const uint8_t *xw = u + span * w;
            for (g = 0; g < groups; ++g, vb += 64, ib += 8 * bits)
                for (i = 0; i < 16; ++i)
                    for (j = 0; j < 4; ++j) {
                        const int at = bits == 2 ? 4 * j + ((ib[i] >> (2 * j)) & 3)
                                                 : (span == 32 ? 8 * (j & 2) : 0) +
                                                       ((ib[2 * i + j / 2] >> (4 * (j & 1))) & 15);
                        acc[i] += xw[at] * vb[4 * i + j];
                    }
        }
#endif
        nmrl_i8_epilogue(16, acc, rowsum + r0, offset, scale + r0, b + r0, y + r0);
    }
}
"""

INT8_HELPERS = r"""
/* Packed indices -> one position byte each, for 16 rows x 4 (AVX-512) or 4 rows x 4 (AVX2, NEON).
 * bits = 4: the widened byte b | b << 4, masked to 0x0F0F, holds b's low nibble in its first byte and
 * its high nibble in the second. bits = 2 (one byte b per row): byte j of the row's lane becomes
 * ((b >> 2 j) & 3) | 4 j (group j's place). VBMI's vpmultishiftqb takes each byte's bits at
 * 2 j; without it, with b in each 32-bit lane, b | b << 12 | b << 6 | b << 18 has field j at bit 8 j
 * (an OR: no carries). */
#define NMRL_I8_PLACES 0x03030303
#define NMRL_I8_GROUPS 0x0C080400
#if defined(NMRL_I8_AVX512)
static inline __m512i nmrl_i8_positions512(const uint8_t *packed, int bits)
{
    if (bits == 2) {
#if defined(__AVX512VBMI__)
        const __m512i rows = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)packed)); /* 2 rows a qword */
        const __m512i fields = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x0E0C0A0806040200LL), rows);
#else
        const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)packed));
        const __m512i pair = _mm512_or_si512(wide, _mm512_slli_epi32(wide, 12));
        const __m512i fields = _mm512_or_si512(pair, _mm512_slli_epi32(pair, 6));
#endif
        /* (fields & places) | groups */
        return _mm512_ternarylogic_epi32(fields, _mm512_set1_epi32(NMRL_I8_PLACES), _mm512_set1_epi32(NMRL_I8_GROUPS),
                                         0xEA);
    } else {
        const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)packed));
        return _mm512_and_si512(_mm512_or_si512(wide, _mm512_slli_epi16(wide, 4)), _mm512_set1_epi16(0x0F0F));
    }
}
#elif defined(NMRL_I8_AVX2)
static inline __m128i nmrl_i8_positions128(const uint8_t *packed, int bits)
{
    if (bits == 2) {
        int32_t four;
        __m128i wide, pair, fields;
        memcpy(&four, packed, 4);
        wide = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(four));
        pair = _mm_or_si128(wide, _mm_slli_epi32(wide, 12));
        fields = _mm_or_si128(pair, _mm_slli_epi32(pair, 6));
        return _mm_or_si128(_mm_and_si128(fields, _mm_set1_epi32(NMRL_I8_PLACES)), _mm_set1_epi32(NMRL_I8_GROUPS));
    } else {
        const __m128i wide = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)packed));
        return _mm_and_si128(_mm_or_si128(wide, _mm_slli_epi16(wide, 4)), _mm_set1_epi16(0x0F0F));
    }
}
#elif defined(NMRL_I8_NEON)
static inline uint8x16_t nmrl_i8_positions_neon(const uint8_t *packed, int bits)
{
    if (bits == 2) {
        static const uint8_t spread[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
        static const int8_t down[16] = {0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6};
        uint32_t four;
        uint8x16_t rows;
        memcpy(&four, packed, 4);
        rows = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(four)), vld1q_u8(spread));
        return vorrq_u8(vandq_u8(vshlq_u8(rows, vld1q_s8(down)), vdupq_n_u8(3)),
                        vreinterpretq_u8_u32(vdupq_n_u32(NMRL_I8_GROUPS)));
    } else {
        const uint8x8_t bytes = vld1_u8(packed);
        const uint8x8_t low = vand_u8(bytes, vdup_n_u8(15)), high = vshr_n_u8(bytes, 4);
        return vcombine_u8(vzip1_u8(low, high), vzip2_u8(low, high));
    }
}
#endif
/* The selected inputs: the positions' bytes of the window (span 16), or bytes 0-1 of each lane from
 * the window's first half and bytes 2-3 from its second (span 32). */
#if defined(NMRL_I8_AVX512)
static inline __m512i nmrl_i8_select512(__m512i first, __m512i second, int span, __m512i positions)
{
    const __m512i x = _mm512_shuffle_epi8(first, positions);
    return span == 32 ? _mm512_mask_shuffle_epi8(x, (__mmask64)0xCCCCCCCCCCCCCCCCULL, second, positions) : x;
}
#elif defined(NMRL_I8_AVX2)
static inline __m128i nmrl_i8_select128(__m128i first, __m128i second, int span, __m128i positions)
{
    const __m128i x = _mm_shuffle_epi8(first, positions);
    return span == 32 ? _mm_blend_epi16(x, _mm_shuffle_epi8(second, positions), 0xAA) : x;
}
#elif defined(NMRL_I8_NEON)
static inline uint8x16_t nmrl_i8_select_neon(uint8x16x2_t window, int span, uint8x16_t positions)
{
    /* tbl over both halves: bytes 2-3 of each lane index the second (+16) */
    return span == 32 ? vqtbl2q_u8(window, vorrq_u8(positions, vreinterpretq_u8_u32(vdupq_n_u32(0x10100000u))))
                      : vqtbl1q_u8(window.val[0], positions);
}
#endif
#if defined(NMRL_I8_AVX2)
/* a0..a3: rows 0-3, 4-7, 8-11, 12-15, each row's sum split over 2 adjacent lanes: add the pairs. */
static void nmrl_i8_pairs(__m256i a0, __m256i a1, __m256i a2, __m256i a3, int32_t *acc)
{
    _mm256_storeu_si256((__m256i *)acc, _mm256_permute4x64_epi64(_mm256_hadd_epi32(a0, a1), 0xD8));
    _mm256_storeu_si256((__m256i *)(acc + 8), _mm256_permute4x64_epi64(_mm256_hadd_epi32(a2, a3), 0xD8));
}
#elif defined(NMRL_I8_NEON) && defined(__ARM_FEATURE_DOTPROD)
/* sdot multiplies s8 x s8: the u8 inputs enter as u - 128 (top bit flipped), 128 x rowsum is added back.
 * STEP(x0..x3, p): x_q holds the inputs of rows 4q..4q+3 (4 each), p their 64 weights. */
#define NMRL_I8_NEON_BEGIN \
    int32x4_t n0 = vdupq_n_s32(0), n1 = n0, n2 = n0, n3 = n0; \
    const uint8x16_t nflip = vdupq_n_u8(0x80);
#define NMRL_I8_NEON_DOT(n, x, p) n = vdotq_s32(n, vld1q_s8(p), vreinterpretq_s8_u8(veorq_u8(x, nflip)))
#define NMRL_I8_NEON_STEP(x0, x1, x2, x3, p) \
    NMRL_I8_NEON_DOT(n0, x0, p); NMRL_I8_NEON_DOT(n1, x1, p + 16); \
    NMRL_I8_NEON_DOT(n2, x2, p + 32); NMRL_I8_NEON_DOT(n3, x3, p + 48);
#define NMRL_I8_NEON_END \
    { int i; vst1q_s32(acc, n0); vst1q_s32(acc + 4, n1); vst1q_s32(acc + 8, n2); vst1q_s32(acc + 12, n3); \
      for (i = 0; i < 16; ++i) acc[i] += 128 * rowsum[r0 + i]; }
#elif defined(NMRL_I8_NEON)
/* Without sdot: widen to 16 bits and multiply-accumulate into one int32x4 per row. */
static void nmrl_i8_neon_mla(int32x4_t *n, uint8x16_t x0, uint8x16_t x1, uint8x16_t x2, uint8x16_t x3, const int8_t *p)
{
    const uint8x16_t xs[4] = {x0, x1, x2, x3};
    int q;
    for (q = 0; q < 4; ++q) {
        const int8x16_t wq = vld1q_s8(p + 16 * q);
        const int16x8_t wl = vmovl_s8(vget_low_s8(wq)), wh = vmovl_high_s8(wq);
        const int16x8_t xl = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xs[q])));
        const int16x8_t xh = vreinterpretq_s16_u16(vmovl_high_u8(xs[q]));
        n[4 * q] = vmlal_s16(n[4 * q], vget_low_s16(wl), vget_low_s16(xl));
        n[4 * q + 1] = vmlal_high_s16(n[4 * q + 1], wl, xl);
        n[4 * q + 2] = vmlal_s16(n[4 * q + 2], vget_low_s16(wh), vget_low_s16(xh));
        n[4 * q + 3] = vmlal_high_s16(n[4 * q + 3], wh, xh);
    }
}
#define NMRL_I8_NEON_BEGIN int32x4_t n[16]; { int i; for (i = 0; i < 16; ++i) n[i] = vdupq_n_s32(0); }
#define NMRL_I8_NEON_STEP(x0, x1, x2, x3, p) nmrl_i8_neon_mla(n, x0, x1, x2, x3, p);
#define NMRL_I8_NEON_END { int i; for (i = 0; i < 16; ++i) acc[i] = vaddvq_s32(n[i]); }
#endif
"""


@dataclass(frozen=True)
class CSource:
    """The generated files' text and what they hold."""

    prefix: str
    header: str
    source: str
    program: Program

    def write(self, c_path: Path) -> tuple[Path, Path]:
        """Write ``<stem>.c`` and ``<stem>.h`` atomically (never over a file nmrl did not generate)."""
        from nmrl.files import atomic_write_bytes

        c_path = Path(c_path)
        refuse_foreign_c(c_path)
        h_path = c_path.with_suffix(".h")
        atomic_write_bytes(h_path, self.header.encode())
        atomic_write_bytes(c_path, self.source.replace('#include "actor.h"', f'#include "{h_path.name}"').encode())
        return c_path, h_path


def refuse_foreign_c(c_path: Path) -> None:
    """:class:`NmrlError` unless ``c_path`` is a ``.c`` path whose ``.c`` and ``.h`` are absent or
    were generated by nmrl: a user's own source is never lost to a mistyped --output."""
    c_path = Path(c_path)
    if c_path.suffix != ".c":
        raise NmrlError(f"{c_path}: the generated C goes to a .c file (and its .h beside it)")
    for each in (c_path, c_path.with_suffix(".h")):
        if not each.exists() and not each.is_symlink():
            continue
        if each.is_symlink() or not each.is_file():
            raise NmrlError(f"{each} exists and is not a regular file: refusing to overwrite it")
        with each.open("rb") as file:
            if not file.read(len(GENERATED_MARK)).startswith(GENERATED_MARK):
                raise NmrlError(f"{each} exists and was not generated by nmrl: refusing to overwrite it")


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
        kind += "_INT8" if layer.int8 else ""
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
    used = {(layer.kernel, layer.int8) for layer in program.layers}
    quantizes = any(step.quant is not None for step in program.steps)
    kernel_texts = (
        (("dense", False), DENSE_KERNEL),
        (("nm", False), NM_KERNEL),
        (("dense", True), DENSE_I8_KERNEL),
        (("nm", True), NM_I8_KERNEL),
    )
    if quantizes:
        body += [INT8_PATHS, QUANTIZE_KERNEL]
    if any(int8 for _, int8 in used):
        body += [INT8_EPILOGUE, INT8_HELPERS]
    body += [text for key, text in kernel_texts if key in used]
    for layer in program.layers:
        i = layer.index
        bias = np.zeros(layer.rows_pad, np.float32)
        bias[: layer.rows] = layer.bias
        body.append(f"static const float L{i}_b[{layer.rows_pad}] = {{\n{_floats(bias)}\n}};")
        if layer.int8:
            rowsum, scale = int8_epilogue(layer)
            body.append(f"static const int32_t L{i}_rs[{rowsum.size}] = {{\n{_bytes(rowsum)}\n}};")
            body.append(f"static const float L{i}_s[{scale.size}] = {{\n{_floats(scale)}\n}};")
        arrays = packed_weights(layer)
        names = ["w"] if layer.kernel == "dense" else ["v", "ix"]
        for name, array in zip(names, arrays, strict=True):
            ctype = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "uint32": "uint32_t"}[array.dtype.name]
            text = _floats(array) if array.dtype == np.float32 else _bytes(array)
            body.append(f"static const {ctype} L{i}_{name}[{array.size}] = {{\n{text}\n}};")
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
    if quantizes:  # the u8 inputs of int8 layers (kernels read up to k_pad: zeros, weight 0 there)
        act[3:3] = [f"    uint8_t q[{scratch}];"]
        act.append("    memset(q, 0, sizeof q);")

    def quantize(quant: QParams) -> str:
        bounds = f"{quant.low}.0f, {quant.high}.0f"
        return f"nmrl_quantize(n, x, {_floats(np.array([quant.scale], np.float32))}, {bounds}, {quant.offset}, q);"

    for index, step in enumerate(program.steps):
        if step.layer is not None:
            layer = step.layer
            i = layer.index
            # The next kernel reads k_pad inputs: zero the tail so padded columns see finite zeros.
            act.append(f"    /* {layer.describe()} */")
            if layer.int8:
                assert layer.quant is not None
                epilogue = f"L{i}_rs, {layer.quant.offset}, L{i}_s, L{i}_b, q, y"
                if layer.kernel == "dense":
                    groups = layer.k_pad // INT8_LANE
                    act.append(f"    nmrl_dense16_i8({layer.rows}, {groups}, L{i}_w, {epilogue});")
                else:
                    groups = layer.slots // INT8_LANE
                    act.append(
                        f"    nmrl_nm16_i8({layer.rows_pad}, {layer.windows}, {layer.window}, {groups}, "
                        f"{layer.index_bits}, "
                        f"L{i}_v, L{i}_ix, {epilogue});"
                    )
            elif layer.kernel == "dense":
                act.append(f"    nmrl_dense16({layer.rows}, {layer.k}, L{i}_w, L{i}_b, x, y);")
            else:
                assert layer.pattern is not None
                act.append(
                    f"    nmrl_nm16({layer.rows_pad}, {layer.windows}, {layer.pattern.n}, {layer.pattern.m}, "
                    f"{layer.index_bits}, "
                    f"L{i}_v, L{i}_ix, L{i}_b, x, y);"
                )
            act.append(f"    for (i = {layer.rows}; i < {scratch}; ++i) y[i] = 0.0f;")
            act.append(f"    n = {layer.rows}; t = x; x = y; y = t;")
        elif step.op == "quantize":  # the next int8 layer's input
            assert step.quant is not None
            act.append(f"    {quantize(step.quant)}")
        elif step.op == "fakequant":  # QuantizeLinear then DequantizeLinear of an fp32 vector
            assert step.quant is not None
            act.append(f"    {quantize(step.quant)}")
            act.append(
                f"    for (i = 0; i < n; ++i) x[i] = (float)((int32_t)q[i] - {step.quant.offset}) * "
                f"{_floats(np.array([step.quant.scale], np.float32))};"
            )
        elif step.op == "relu":
            act.append("    for (i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;")
        elif step.op == "tanh":
            act.append("    for (i = 0; i < n; ++i) x[i] = tanhf(x[i]);")
        elif step.op == "mul":
            act.append(f"    for (i = 0; i < n; ++i) x[i] *= C{index}[i];")
        elif step.op == "add":
            act.append(f"    for (i = 0; i < n; ++i) x[i] += C{index}[i];")
        elif step.op == "sub":
            act.append(f"    for (i = 0; i < n; ++i) x[i] -= C{index}[i];")
        elif step.op == "div":
            act.append(f"    for (i = 0; i < n; ++i) x[i] /= C{index}[i];")
        elif step.op == "clip":  # C0 = [min, max]
            act.append(
                f"    for (i = 0; i < n; ++i) x[i] = x[i] < C{index}[0] ? C{index}[0] : "
                f"(x[i] > C{index}[1] ? C{index}[1] : x[i]);"
            )
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
    """Weight bytes stored by the generated file (kernel layout: N:M rows padded to blocks of 16, int8
    N:M kept values to lanes of 4)."""
    return weight_bytes(source.program)


def nm_packed_bytes(program: Program) -> int:
    """What nm-packed stores for the same layers (values, fp32 or int8, + bit-packed indices; dense
    layers dense)."""
    total = 0
    for layer in program.layers:
        if layer.pattern is None or layer.pattern.is_dense:
            total += layer.weight.nbytes
        else:
            kept = layer.rows * math.ceil(layer.k / layer.pattern.m) * layer.pattern.n
            total += kept * layer.weight.itemsize + math.ceil(kept * index_bits(layer.pattern.m) / 8)
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
