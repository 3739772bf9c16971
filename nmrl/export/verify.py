"""Read an ONNX file and say, per GEMM layer, which N:M pattern its weights obey along K.

This module imports only ``onnx`` and ``numpy`` (never PyTorch): it is what ``nmrl inspect`` runs,
and it judges the file a deployment tool will read, not the checkpoint it came from.

A layer is a ``Gemm`` or ``MatMul`` node with one constant operand (an initializer or a ``Constant``
node, possibly behind ``Identity``/``Cast``/``Transpose``/``DequantizeLinear``). Its reduction
axis K is where N:M groups must lie for sparse tensor cores:

- ``Gemm(A, B)`` computes ``op(A) @ op(B)``; for a constant B, K is axis 0, or axis 1 with
  ``transB=1`` (torch's Linear: ``W[out, in]``); for a constant A, K is axis 1, or 0 with ``transA=1``.
- ``MatMul(X, B)`` with constant B ``[..., K, N]``: K is axis -2; a constant A ``[..., M, K]``: axis -1.

N:M counting is :mod:`nmrl.sparsity.nm_core` and the 2:4 verdict :mod:`nmrl.sparsity.two_four`
(both numpy only); this module finds the weights and their K axis, and asks the verdict's
TensorRT layers (structure along K, K % 4, dtype).

Just over 400 lines: finding constant weights behind the node patterns real exporters and
quantizers write (Identity, Cast, Transpose, DequantizeLinear with zero points, MatMulInteger,
QLinearMatMul) is most of it, and each pattern is small.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from nmrl.errors import NmrlError, gist, printable
from nmrl.policy_file import FORMAT, read_value
from nmrl.sparsity.nm_core import finest_nm, nm_violations
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.two_four import FOR_TENSORRT, STRUCTURE, TwoFourVerdict, verdict_of_weights

# Below this many rows or columns TensorRT times sparse tactics but usually keeps dense ones
# (NVIDIA's guidance: sparsity pays on large, compute-bound GEMMs).
SMALL_GEMM = 256
# Ops between a constant and the GEMM that keep the weight's values in place (axis-preserving).
_PASS_THROUGH = {"Identity", "Cast", "DequantizeLinear"}
# Matrix products nmrl reads weights of: Gemm, MatMul, and ONNX Runtime's quantized forms.
GEMM_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
# Ops that multiply by weights too, whose weights nmrl does not judge: a claim over a graph holding
# them (with a constant weight) cannot be verified.
_UNJUDGED_WEIGHTED_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Einsum"}


# ------------------------------------------------------------------------------------------
# Finding the GEMM layers of a graph


@dataclass(frozen=True)
class LayerCheck:
    """One GEMM with a constant weight, as a sparse-tensor-core deployment sees it."""

    node: str
    op: str
    weight_name: str
    shape: tuple[int, ...]
    k_axis: int
    dtype: str
    density: float
    finest: NMPattern | None
    verdict: TwoFourVerdict
    """The 2:4 verdict on the stored weights, every layer of it judged."""
    notes: tuple[str, ...] = ()
    """Hints that do not block eligibility (e.g. small GEMMs where dense usually wins)."""
    stored_name: str | None = None
    """The initializer that holds exactly these values (none when a Transpose or a nonzero
    quantization zero point lies between it and the GEMM): what nm-packed replaces."""

    @property
    def k(self) -> int:
        return self.shape[self.k_axis]

    @property
    def pattern_2of4(self) -> bool:
        """The stored weights hold at most 2 nonzeros in every group of 4 along K."""
        return self.verdict.fits((STRUCTURE,))

    @property
    def eligible_2of4(self) -> bool:
        """The verdict's TensorRT layers hold (:data:`nmrl.sparsity.two_four.FOR_TENSORRT`): 2:4
        along K, K % 4 == 0, reduced precision. TensorRT still times sparse against dense and keeps
        the faster."""
        return self.verdict.fits(FOR_TENSORRT)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why not eligible: the verdict's reasons for its TensorRT layers (empty when eligible)."""
        return self.verdict.reasons(FOR_TENSORRT)


@dataclass
class ModelCheck:
    """What ``inspect_model`` found in one ONNX graph."""

    layers: list[LayerCheck]
    weights: dict[str, np.ndarray] = field(repr=False)
    """Weight arrays by ``LayerCheck.weight_name`` (as the GEMM reads them, before op transposes)."""
    metadata: dict[str, str]
    opset: int
    path: Path | None = None
    unjudged: list[str] = field(default_factory=list)
    """Weighted nodes (convolutions, ...) whose weights nmrl does not judge."""

    @property
    def is_nmrl(self) -> bool:
        return read_value(self.metadata, "format") == FORMAT

    @property
    def claimed(self) -> NMPattern | None:
        """The N:M pattern the exporting run claims (None: no N:M claim, or not an nmrl file)."""
        return claimed_pattern(read_value(self.metadata, "sparsity", self.source) or "")

    @property
    def source(self) -> str:
        """How errors name this model: its path, or "model"."""
        return str(self.path) if self.path is not None else "model"

    def violations(self, pattern: NMPattern) -> dict[str, int]:
        """Layer weight name -> groups breaking ``pattern`` along K, for layers that break it."""
        counts = {
            layer.weight_name: nm_violations(self.weights[layer.weight_name], layer.k_axis, pattern)
            for layer in self.layers
        }
        return {name: count for name, count in counts.items() if count}


@dataclass(frozen=True)
class ClaimStatus:
    """Whether an nmrl file's sparsity claims hold, and what was checked to say so.

    ``verdict``: ``verified`` (something was checked and everything held), ``broken`` (a weight
    breaks a claim), ``unverifiable`` (a claim with nothing, or not everything, to check it on) or
    ``none`` (the file makes no N:M claim).
    """

    verdict: str
    lines: tuple[str, ...]

    @property
    def failed(self) -> bool:
        return self.verdict in ("broken", "unverifiable")


def claim_status(check: ModelCheck) -> ClaimStatus:
    """Judge the file's claims: the run's pattern (``nmrl.sparsity``) over every GEMM weight, and each
    per-layer entry of ``nmrl.layers`` against the weight it names. A claim holds only if there was
    something to check: a claim over a graph with no readable GEMM weight is unverifiable."""
    try:
        claimed = check.claimed
    except NmrlError as error:  # a file's nmrl.sparsity that is no sparsity setting claims nothing checkable
        return ClaimStatus("unverifiable", (f"claim UNVERIFIABLE: nmrl.sparsity is not a sparsity setting ({error})",))
    layer_claims = _layer_claims(check)
    if claimed is None and not any(pattern for pattern in layer_claims.values()):
        return ClaimStatus("none", ("no N:M claim to verify",))
    names = [layer.weight_name for layer in check.layers]
    problems: list[str] = []
    unverifiable: list[str] = []
    checked: list[str] = []
    if not check.layers:
        unverifiable.append("the graph has no Gemm/MatMul with a constant weight to check the claim on")
    if check.unjudged:
        unverifiable.append(f"weights nmrl cannot judge: {', '.join(check.unjudged)}")
    if claimed is not None and check.layers:
        broken = check.violations(claimed)
        if broken:
            problems.append(
                f"{', '.join(f'{k} ({v} groups)' for k, v in broken.items())} violate the claimed {claimed} along K"
            )
        else:
            checked.append(f"{len(names)} of {len(names)} GEMM weights ({', '.join(names)}) hold {claimed} along K")
    missing = [name for name in layer_claims if name not in check.weights]
    if missing:
        unverifiable.append(
            f"nmrl.layers names {', '.join(missing)}, not GEMM weights of this graph (changed after export?)"
        )
    per_layer = 0
    for layer in check.layers:
        pattern = layer_claims.get(layer.weight_name)
        if pattern is None:
            continue
        count = nm_violations(check.weights[layer.weight_name], layer.k_axis, pattern)
        if count:
            problems.append(f"nmrl.layers says {layer.weight_name} is {pattern}, but {count} groups along K break it")
        else:
            per_layer += 1
    if per_layer:
        checked.append(f"nmrl.layers' per-layer patterns hold for {per_layer} weights")
    verdict = "broken" if problems else "unverifiable" if unverifiable else "verified"
    failures = [f"claim BROKEN: {problem}" for problem in problems]
    failures += [f"claim UNVERIFIABLE: {reason}" for reason in unverifiable]
    held = [f"{'claim verified' if verdict == 'verified' else 'checked and held'}: {'; '.join(checked)}"]
    return ClaimStatus(verdict, tuple(failures + (held if checked else [])))


def claim_warning(path: Path) -> str | None:
    """One line to print before running ``path`` (an .onnx file, or a run directory's actor.onnx)
    when ``nmrl inspect`` would fail its claim; None when it holds, or there is no ONNX file to judge."""
    path = Path(path)
    if path.is_dir():
        path = path / "actor.onnx"
    if path.suffix != ".onnx" or not path.is_file():
        return None
    status = claim_status(inspect_model(path))
    if not status.failed:
        return None
    failures = [line for line in status.lines if line.startswith("claim ")]
    return printable(f"warning: running {path} although `nmrl inspect` fails it: {'; '.join(failures)}", None)


def _layer_claims(check: ModelCheck) -> dict[str, NMPattern | None]:
    """Weight name -> N:M pattern from ``nmrl.layers`` (None for dense entries); {} when absent."""
    try:
        claims = {}
        for entry in read_value(check.metadata, "layers", check.source) or []:
            pattern = str(entry.get("pattern", "dense"))
            claims[str(entry["weight"])] = claimed_pattern(pattern) if ":" in pattern else None
        return claims
    except NmrlError:
        return {"<nmrl.layers>": None}  # unreadable metadata: reported as naming no weight of the graph


def claimed_pattern(sparsity: str) -> NMPattern | None:
    """The N:M pattern a run's ``sparsity`` setting promises; None for dense, for unstructured
    settings (e.g. ``"0.9"``) and for empty text: those make no N:M claim to verify."""
    from nmrl.sparsity.spec import nm_pattern, parse_sparsity

    text = sparsity.strip()
    if ":" not in text:  # 'dense', an unstructured fraction, or nothing: no N:M claim
        return None
    return nm_pattern(parse_sparsity(text))


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: _constant_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = _constant_array(attr.t)
    return {name: array for name, array in values.items() if array is not None}


def _constant_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A constant's values; None for one that holds no numbers (strings: no weight of a GEMM).
    :class:`NmrlError` when its data do not fill the shape it declares (truncated, or no data at
    all behind a huge shape): such a file is broken, and numpy's reshape error would be a traceback."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as error:  # a short/long buffer, an unknown data type
        shape = "x".join(map(str, tensor.dims)) or "scalar"
        raise NmrlError(
            f"constant {printable(tensor.name, 80)!r} does not hold the values of its declared shape "
            f"{printable(shape, 80)} ({gist(error, 1, 120)})"
        ) from None


def _dtype_name(array: np.ndarray) -> str:
    # onnx's bfloat16/float8 arrive from numpy_helper as ml_dtypes types whose names match ours.
    return str(array.dtype)


def _minus_zero_point(quantized: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """Quantized values relative to their zero point (a weight is zero where ``q == zero_point``);
    ``zero_point`` is a scalar or per-channel along ``axis`` (DequantizeLinear's convention)."""
    if zero_point is None or not np.any(zero_point):
        return quantized
    shifted = quantized.astype(np.int32)
    if zero_point.ndim == 1 and zero_point.size > 1:
        shape = [1] * quantized.ndim
        shape[axis % quantized.ndim] = zero_point.size
        return shifted - zero_point.astype(np.int32).reshape(shape)
    return shifted - zero_point.astype(np.int32)


def _resolve_constant(
    name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> tuple[np.ndarray, str, str | None] | None:
    """Follow ``name`` back through value-preserving ops to a constant.

    Returns (the array as the consumer sees it, Transposes applied, quantized values relative to a
    DequantizeLinear zero point; the dtype the consumer computes in; the constant's name when it
    stores exactly that array, else None) or None when ``name`` is not a constant.
    """
    dtype: str | None = None
    perm_chain: list[list[int]] = []
    dequantize: onnx.NodeProto | None = None
    current = name
    for _ in range(32):  # a bounded walk: graphs with longer chains are not ours to judge
        if current in constants:
            stored = constants[current]
            array = stored
            if dequantize is not None and len(dequantize.input) > 2:
                axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
                array = _minus_zero_point(stored, constants.get(dequantize.input[2]), axis)
            for axes in reversed(perm_chain):
                array = np.transpose(array, axes or None)  # no perm: reverse the axes
            as_stored = not perm_chain and array is stored
            return array, dtype or _dtype_name(stored), current if as_stored else None
        node = producers.get(current)
        if node is None:
            return None
        if node.op_type == "Cast" and dtype is None:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to not in onnx.helper.get_all_tensor_dtypes() or to == onnx.TensorProto.STRING:
                return None  # a Cast without a numeric target type: nothing a GEMM multiplies
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to)).name
        elif node.op_type == "DequantizeLinear" and dtype is None:
            # A Q/DQ weight: the kernel runs in the quantized type of the stored constant.
            source = constants.get(node.input[0])
            if source is not None:
                dtype = _dtype_name(source)
                dequantize = node
        elif node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            perm_chain.append(perm if perm is not None else [])
        elif node.op_type not in _PASS_THROUGH:
            return None
        current = node.input[0]
    return None


def _gemm_weight_operands(node: onnx.NodeProto) -> list[tuple[int, int, int | None]]:
    """(input index, K axis of that operand as the op reads it, input index of its zero point)
    candidates for a GEMM node."""
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if node.op_type == "Gemm":
        trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
        # op(A) is [M, K]: K is A's axis 1, or axis 0 when A is transposed; op(B) is [K, N].
        return [(1, 1 if trans_b else 0, None), (0, 0 if trans_a else 1, None)]
    if node.op_type == "MatMulInteger":  # (A, B, a_zero_point, b_zero_point)
        return [(1, -2, 3), (0, -1, 2)]
    if node.op_type == "QLinearMatMul":  # (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)
        return [(3, -2, 5), (0, -1, 2)]
    # MatMul: A [..., M, K] @ B [..., K, N]
    return [(1, -2, None), (0, -1, None)]


def inspect_model(model: onnx.ModelProto | str | Path) -> ModelCheck:
    """Find every Gemm/MatMul with a constant weight and check its weights along K."""
    path: Path | None = None
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        model = load_onnx(path)
    graph = model.graph
    try:
        constants = _constants(graph)
    except NmrlError as error:
        raise NmrlError(f"{path}: {error}" if path is not None else str(error)) from None
    producers = {out: node for node in graph.node for out in node.output}
    layers: list[LayerCheck] = []
    weights: dict[str, np.ndarray] = {}
    unjudged: list[str] = []
    for index, node in enumerate(graph.node):
        if node.op_type in _UNJUDGED_WEIGHTED_OPS and any(
            _resolve_constant(name, producers, constants) is not None for name in node.input[1:2]
        ):
            unjudged.append(f"{node.name or node.op_type + '_' + str(index)} ({node.op_type})")
        if node.op_type not in GEMM_OPS:
            continue
        for input_index, k_axis, zero_point_index in _gemm_weight_operands(node):
            if input_index >= len(node.input):
                continue
            resolved = _resolve_constant(node.input[input_index], producers, constants)
            if resolved is None:
                continue
            array, dtype, stored_name = resolved
            if array.ndim < 2:
                continue
            if zero_point_index is not None and zero_point_index < len(node.input):
                # per-column zero points of B [K, N] (or per-row of A [M, K]) broadcast along the last axis
                relative = _minus_zero_point(array, constants.get(node.input[zero_point_index]), -1)
                stored_name = stored_name if relative is array else None
                array = relative
            k_axis = k_axis % array.ndim
            weight_name = node.input[input_index]
            weights[weight_name] = array
            name = node.name or f"{node.op_type}_{index}"
            layers.append(_check_layer(name, node.op_type, weight_name, array, k_axis, dtype, stored_name))
            break  # one constant operand per GEMM is the weight
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelCheck(layers, weights, metadata, opset, path, unjudged)


def _check_layer(
    node: str, op: str, weight_name: str, weight: np.ndarray, k_axis: int, dtype: str, stored_name: str | None = None
) -> LayerCheck:
    k = weight.shape[k_axis]
    rows = weight.size // k if k else 0
    density = float(np.count_nonzero(weight) / weight.size) if weight.size else 0.0
    notes: list[str] = []
    if min(k, rows) < SMALL_GEMM:
        notes.append(f"small (<{SMALL_GEMM}): dense usually wins")
    return LayerCheck(
        node=node,
        op=op,
        weight_name=weight_name,
        shape=tuple(int(d) for d in weight.shape),
        k_axis=k_axis,
        dtype=dtype,
        density=density,
        finest=finest_nm(weight, k_axis),
        verdict=verdict_of_weights(weight, k_axis, dtype),
        notes=tuple(notes),
        stored_name=stored_name,
    )


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file; :class:`NmrlError` when it is missing, not ONNX, or its external data is
    refused (outside the model's folder, an absolute path, not a regular file) or missing: each says which."""
    path = Path(path)
    if not path.is_file():
        raise NmrlError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and friends for foreign files
        raise NmrlError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    folder = str(path.parent)
    for tensor in _all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            # onnx's own loader, one tensor at a time: it refuses locations outside the folder,
            # absolute paths, symlinks and files that are not regular, and bounds offsets and lengths
            external_data_helper.load_external_data_for_tensor(tensor, folder)
        except Exception as error:  # onnx raises ValidationError (paths) or ValueError (bounds)
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            name = printable(tensor.name, 80)
            candidate = Path(folder, location)
            inside = not Path(location).is_absolute() and ".." not in Path(location).parts
            if location and inside and not candidate.exists() and not candidate.is_symlink():
                raise NmrlError(
                    f"{path}: the external data file {printable(location, 120)!r} of tensor {name!r} is missing "
                    f"(it must lie in {folder} beside the model)"
                ) from None
            raise NmrlError(f"{path}: external data of tensor {name!r} refused: {gist(error, 1, 200)}") from None
    return model


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that can hold external data: initializers and node attributes,
    in subgraphs and functions too (as onnx.load looks for them)."""

    def in_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for graph in [attr.g] if attr.HasField("g") else []:
                    yield from in_graph(graph)
                for graph in attr.graphs:
                    yield from in_graph(graph)

    def in_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)
