"""nm-packed: an N:M policy stored as sparse tensor cores store it, values plus in-group indices.

For every GEMM weight of an N:M ONNX graph, each group of M consecutive entries along K keeps N
values and, for each value, its position inside the group in ceil(log2 M) bits (2 bits for 2:4,
as the hardware's metadata). Everything else of the model (graph, biases, action scaling) is kept
as the ONNX model with those weights removed, so :func:`load_packed` gives back a runnable ONNX
model whose weights equal the original bit for bit.

Values keep the stored type of the weights: fp32, fp16, or int8 for an int8 Q/DQ policy (the int8
initializer behind each DequantizeLinear is packed; its per-channel scales stay in the model). An
int8 weight is packed only where its zero point is 0 (nmrl's symmetric weights), so that an int8
zero is a weight of 0.

File: a numpy ``.npz`` (no pickle) holding ``model`` (the stripped ONNX bytes), ``meta`` (JSON) and,
per weight ``i``, ``values_i`` [rows, groups, N] and ``indices_i`` (bit-packed uint8).
Imports onnx and numpy only.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nmrl.errors import NmrlError, gist, printable
from nmrl.export.verify import inspect_model
from nmrl.files import atomic_write_bytes, read_npy_header
from nmrl.policy_file import PACKED_FORMAT
from nmrl.sparsity.nm_core import grouped, nm_violations
from nmrl.sparsity.pattern import NMPattern


def index_bits(m: int) -> int:
    """Bits per in-group index: ceil(log2 M) (2 for M=4, 3 for M=8)."""
    return max(1, math.ceil(math.log2(m)))


@dataclass
class PackedWeight:
    """One weight in N:M form along K: ``values`` [rows, groups, N] and ``indices`` (same shape,
    position 0..M-1 inside the group). ``shape``/``k_axis`` restore the dense layout."""

    values: np.ndarray
    indices: np.ndarray
    shape: tuple[int, ...]
    k_axis: int
    pattern: NMPattern

    @property
    def nbytes(self) -> int:
        """Bytes as stored: values plus bit-packed indices."""
        return self.values.nbytes + math.ceil(self.indices.size * index_bits(self.pattern.m) / 8)


def pack_weight(weight: np.ndarray, k_axis: int, pattern: NMPattern) -> PackedWeight:
    """Split ``weight`` into N values and N in-group indices per group of M along ``k_axis``.

    Groups with fewer than N nonzeros also store zeros (at the lowest free positions), so every
    group has exactly N slots, as in the hardware format. Raises :class:`NmrlError` when a group
    holds more than N nonzeros.
    """
    if pattern.is_dense:
        raise NmrlError("nm-packed needs an N:M pattern, not dense")
    broken = nm_violations(weight, k_axis, pattern)
    if broken:
        raise NmrlError(
            f"weight of shape {weight.shape} is not {pattern} along axis {k_axis}: "
            f"{broken} groups hold more than {pattern.n} nonzeros"
        )
    groups = grouped(weight, k_axis, pattern.m)
    # Nonzeros first (stable, so lowest positions first), then zeros; keep N, in position order.
    order = np.argsort(groups == 0, axis=-1, kind="stable")[..., : pattern.n]
    indices = np.sort(order, axis=-1).astype(np.uint8)
    values = np.take_along_axis(groups, indices.astype(np.intp), axis=-1)
    return PackedWeight(values, indices, tuple(int(d) for d in weight.shape), k_axis, pattern)


def unpack_weight(packed: PackedWeight) -> np.ndarray:
    """The dense weight back, exactly."""
    rows, groups, _ = packed.values.shape
    dense = np.zeros((rows, groups, packed.pattern.m), dtype=packed.values.dtype)
    np.put_along_axis(dense, packed.indices.astype(np.intp), packed.values, axis=-1)
    moved_shape = list(packed.shape)
    k = moved_shape.pop(packed.k_axis)
    dense = dense.reshape(rows, -1)[:, :k].reshape(*moved_shape, k)
    return np.moveaxis(dense, -1, packed.k_axis)


def _pack_bits(indices: np.ndarray, bits: int) -> np.ndarray:
    as_bits = np.unpackbits(indices.reshape(-1, 1).astype(np.uint8), axis=1)[:, 8 - bits :]
    return np.packbits(as_bits.reshape(-1))


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    as_bits = np.unpackbits(packed)[: count * bits].reshape(count, bits)
    return np.packbits(np.pad(as_bits, ((0, 0), (8 - bits, 0))), axis=1).reshape(-1)


@dataclass(frozen=True)
class PackedReport:
    """Sizes of the GEMM weights, dense vs packed (bytes)."""

    pattern: NMPattern
    dtype: str
    """The values' type(s): float32, float16, int8, or e.g. float32+int8 for mixed layers."""
    dense_bytes: int
    """The packed weights stored dense in their own type."""
    packed_bytes: int
    file_bytes: int
    dense_fp32_bytes: int
    """The same weights dense in fp32 (what an fp32 policy file holds)."""

    @property
    def ratio(self) -> float:
        return self.packed_bytes / self.dense_bytes

    @property
    def ratio_to_fp32(self) -> float:
        return self.packed_bytes / self.dense_fp32_bytes


def write_packed(model: onnx.ModelProto, path: Path, pattern: NMPattern) -> PackedReport:
    """Write ``model`` in nm-packed form: every GEMM weight initializer packed as ``pattern``
    (int8 ones: the initializer behind the DequantizeLinear, see the module docstring)."""
    check = inspect_model(model)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    initializers = {init.name: init for init in stripped.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    entries = []
    dense_bytes = packed_bytes = fp32_bytes = 0
    for index, layer in enumerate(check.layers):
        init = initializers.get(layer.stored_name) if layer.stored_name is not None else None
        if init is None:  # behind a Transpose, a nonzero zero point or in a Constant node: left in the graph
            continue
        weight = numpy_helper.to_array(init)
        packed = pack_weight(weight, layer.k_axis, pattern)
        arrays[f"values_{index}"] = packed.values
        arrays[f"indices_{index}"] = _pack_bits(packed.indices, index_bits(pattern.m))
        entries.append(
            {
                "name": init.name,
                "key": index,
                "shape": list(packed.shape),
                "k_axis": packed.k_axis,
                "count": int(packed.indices.size),
            }
        )
        dense_bytes += weight.nbytes
        fp32_bytes += weight.size * 4
        packed_bytes += packed.nbytes
        stripped.graph.initializer.remove(init)
    if not entries:
        raise NmrlError("no GEMM weight initializers to pack")
    meta = {"format": PACKED_FORMAT, "pattern": str(pattern), "weights": entries}
    arrays["model"] = np.frombuffer(stripped.SerializeToString(), dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = Path(path)
    buffer = io.BytesIO()  # np.savez on a path would append .npz to other suffixes
    np.savez(buffer, allow_pickle=False, **arrays)  # numeric arrays only
    atomic_write_bytes(path, buffer.getvalue())  # a deploy never reads a half-written file
    # One type, or several in layer order (an ort-recipe int8 policy: "float32+int8").
    dtype = "+".join(dict.fromkeys(str(arrays[key].dtype) for key in arrays if key.startswith("values_")))
    return PackedReport(pattern, dtype, dense_bytes, packed_bytes, path.stat().st_size, fp32_bytes)


def load_packed(path: Path) -> onnx.ModelProto:
    """Rebuild the ONNX model of an nm-packed file, with its exact weights.

    The file is untrusted: every entry is checked against the others (sizes, types, positions
    inside the group) before it is used, and each way it can be wrong is one :class:`NmrlError`."""
    path = Path(path)

    def refuse(reason: str) -> NmrlError:
        return NmrlError(f"{path}: not an nm-packed file ({reason})")

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise refuse(type(error).__name__) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise refuse("a single numpy array, not an .npz archive")
    with archive:
        meta = _packed_meta(archive, refuse)
        pattern, entries = meta["pattern"], meta["weights"]
        model, model_bytes = onnx.ModelProto(), _member(archive, "model", refuse, np.uint8).tobytes()
        try:
            model.ParseFromString(model_bytes)
        except Exception:  # protobuf's DecodeError (and friends) for bytes that are not a model
            raise refuse("its model entry is not an ONNX model") from None
        for entry in entries:
            packed = _packed_weight(archive, entry, pattern, refuse)
            model.graph.initializer.append(numpy_helper.from_array(unpack_weight(packed), entry["name"]))
    return model


def _member(
    archive: np.lib.npyio.NpzFile,
    name: str,
    refuse: Callable[[str], NmrlError],
    dtype: type | None = None,
) -> np.ndarray:
    """One array of the archive, its header checked before numpy allocates what it declares
    (:func:`nmrl.files.read_npy_header`): real numbers, of ``dtype`` when given."""
    if name not in archive.files:
        raise refuse(f"no {name} entry")
    assert archive.zip is not None  # open until the `with archive` block of load_packed ends
    info = archive.zip.getinfo(f"{name}.npy")
    try:
        with archive.zip.open(info) as member:
            _, declared = read_npy_header(member, info.file_size)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise refuse(f"entry {name}: {gist(error, 1, 160)}") from None
    if declared.kind not in "biuf" or declared.fields is not None or (dtype is not None and declared != dtype):
        raise refuse(f"entry {name} holds {declared} values")
    try:
        return archive[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise refuse(f"entry {name}: {gist(error, 1, 100)}") from None


def _packed_meta(archive: np.lib.npyio.NpzFile, refuse: Callable[[str], NmrlError]) -> dict[str, Any]:
    """The archive's ``meta`` entry, checked: format tag, an N:M pattern, a list of weight entries."""
    try:
        meta = json.loads(_member(archive, "meta", refuse, np.uint8).tobytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise refuse("its meta entry is not JSON") from None
    if not isinstance(meta, dict):
        raise refuse("its meta entry is not a JSON object")
    if meta.get("format") != PACKED_FORMAT:
        raise refuse(f"format {printable(meta.get('format'), 80)!r}")
    try:
        pattern = NMPattern.parse(meta.get("pattern"))  # type: ignore[arg-type]
    except NmrlError as error:
        raise refuse(f"pattern: {error}") from None
    if pattern.is_dense:
        raise refuse("a dense pattern")
    weights = meta.get("weights")
    if not isinstance(weights, list) or not weights:
        raise refuse("no list of packed weights")
    for entry in weights:
        shape = entry.get("shape") if isinstance(entry, dict) else None
        valid = (
            isinstance(shape, list)
            and len(shape) >= 2
            and all(_whole(d) and d >= 1 for d in shape)
            and isinstance(entry.get("name"), str)
            and all(_whole(entry.get(field)) for field in ("key", "k_axis", "count"))
            and 0 <= entry["k_axis"] < len(shape)
        )
        if not valid:
            raise refuse(f"a weight entry without name, key, shape, k_axis and count: {printable(entry, 120)}")
    return {"pattern": pattern, "weights": weights}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _packed_weight(
    archive: np.lib.npyio.NpzFile, entry: dict[str, Any], pattern: NMPattern, refuse: Callable[[str], NmrlError]
) -> PackedWeight:
    """One weight entry's values and in-group positions, checked against its shape and the pattern."""
    shape, k_axis, key = tuple(entry["shape"]), entry["k_axis"], entry["key"]
    values = _member(archive, f"values_{key}", refuse)
    k = shape[k_axis]
    rows, groups = math.prod(shape) // k, -(-k // pattern.m)
    if values.shape != (rows, groups, pattern.n) or entry["count"] != values.size:
        raise refuse(
            f"weight {printable(entry['name'], 80)!r}: values of shape {list(values.shape)} do not fit "
            f"{list(shape)} as {pattern} along axis {k_axis}"
        )
    bits = index_bits(pattern.m)
    packed_indices = _member(archive, f"indices_{key}", refuse, np.uint8)
    if packed_indices.ndim != 1 or packed_indices.size * 8 < values.size * bits:
        raise refuse(f"weight {printable(entry['name'], 80)!r}: too few in-group positions")
    indices = _unpack_bits(packed_indices, bits, values.size).reshape(values.shape)
    if indices.size and int(indices.max()) >= pattern.m:
        raise refuse(f"weight {printable(entry['name'], 80)!r}: an in-group position past M = {pattern.m}")
    return PackedWeight(values, indices, shape, k_axis, pattern)
