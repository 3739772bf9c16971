"""Which matrix multiplies of an ONNX graph carry constant weights that 2:4 sparse kernels could use.

TensorRT considers a ``Gemm`` or ``MatMul`` for sparse math when its weight operand is a constant
whose groups of 4 along K (the reduction dim) hold at most 2 nonzeros, K is a multiple of 4, and
the layer runs in reduced precision. This module reads the weights straight from the ONNX
initializers so that ``nmrl deploy build`` can say, before and independently of the builder,
which layers were candidates; the builder's own log then says which of them it picked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from nmrl.errors import NmrlError

# ONNX element types that sparse tensor cores can run (fp32 has no sparse kernels).
REDUCED_PRECISION = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


@dataclass(frozen=True)
class GemmWeight:
    """One constant weight matrix of the graph, oriented as [K, N]."""

    node: str
    op: str
    weight: str  # the initializer (or Constant output) holding it
    k: int
    n: int
    dtype: str
    fits_2of4: bool  # every group of 4 along K holds at most 2 nonzeros, and K % 4 == 0
    density: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What the TensorRT builder needs to know about an exported actor."""

    input_name: str
    input_dim: int
    input_dtype: str
    output_name: str
    gemms: list[GemmWeight]
    metadata: dict[str, str] = field(default_factory=dict)  # the model's metadata_props

    @property
    def compute_dtype(self) -> str:
        """The dtype the GEMMs compute in: their weights' dtype (an fp16 export may keep fp32
        inputs and cast inside), else the input's."""
        weight_dtypes = {gemm.dtype for gemm in self.gemms}
        return weight_dtypes.pop() if len(weight_dtypes) == 1 else self.input_dtype

    @property
    def reduced_precision(self) -> bool:
        return self.compute_dtype in REDUCED_PRECISION.values()


def _kn_2of4(weight_kn: np.ndarray) -> bool:
    k = weight_kn.shape[0]
    if k % 4:
        return False
    groups = (weight_kn != 0).reshape(k // 4, 4, -1).sum(axis=1)
    return bool((groups <= 2).all())


def _dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def read_graph_info(onnx_path: Path) -> OnnxGraphInfo:
    """The input/output of the graph and every Gemm/MatMul with a constant 2-D weight."""
    try:
        model = onnx.load(str(onnx_path))
    except Exception as error:  # onnx raises DecodeError, OSError, ... for files that are not ONNX
        raise NmrlError(f"{onnx_path}: not a readable ONNX model ({error.__class__.__name__})") from error
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise NmrlError(
            f"{onnx_path}: expected one input (observations) and one output (actions), "
            f"found {len(inputs)} and {len(graph.output)}"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise NmrlError(f"{onnx_path}: the input must be [batch, obs_dim] with a fixed obs_dim")

    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:  # torch sometimes stores weights as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t

    gemms = []
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in constants:
            continue
        tensor = constants[node.input[1]]
        weight = numpy_helper.to_array(tensor)
        if weight.ndim != 2:
            continue
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        # Gemm(transB=1) stores W[N, K] (a torch Linear's [out, in]); otherwise B is [K, N].
        weight_kn = weight.T if (node.op_type == "Gemm" and trans_b) else weight
        gemms.append(
            GemmWeight(
                node=node.name,
                op=node.op_type,
                weight=node.input[1],
                k=int(weight_kn.shape[0]),
                n=int(weight_kn.shape[1]),
                dtype=_dtype_name(tensor.data_type),
                fits_2of4=_kn_2of4(weight_kn),
                density=float(np.count_nonzero(weight_kn)) / weight_kn.size,
            )
        )
    return OnnxGraphInfo(
        input_name=inputs[0].name,
        input_dim=int(dims[1].dim_value),
        input_dtype=_dtype_name(tensor_type.elem_type),
        output_name=graph.output[0].name,
        gemms=gemms,
        metadata={prop.key: prop.value for prop in model.metadata_props},
    )
