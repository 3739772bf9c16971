"""Which matrix multiplies of an ONNX graph carry constant weights that 2:4 sparse kernels could use.

TensorRT considers a ``Gemm`` or ``MatMul`` for sparse math when its weight operand is a constant
that passes the 2:4 verdict (:mod:`nmrl.sparsity.two_four`): 2:4 along K, K % 4 == 0, and reduced
precision. ``fits_2of4`` is the weights' side of it (structure and K); the precision a build runs
in is the build settings' (TensorRT 10 runs an fp32 graph in fp16 with its FP16 flag), while
``reasons`` is what ``nmrl inspect`` says of the stored dtype. The layers come from
:func:`nmrl.export.verify.inspect_model` (the checks ``nmrl inspect`` prints); this module adds what
the builder needs besides (the input and output, the compute dtype) so that ``nmrl deploy build``
can say, before and independently of the builder, which layers were candidates; the builder's own
log then says which of them it picked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nmrl.errors import NmrlError
from nmrl.export.verify import LayerCheck, inspect_model, load_onnx
from nmrl.sparsity.two_four import K_MULTIPLE_OF_4, REDUCED_PRECISION, STRUCTURE


@dataclass(frozen=True)
class GemmWeight:
    """One constant weight matrix of the graph, as [K, N]."""

    node: str
    op: str
    weight: str  # the initializer (or Constant output) holding it
    k: int
    n: int
    dtype: str
    fits_2of4: bool  # the weights' side of the 2:4 verdict: 2:4 along K, and K % 4 == 0
    density: float
    reasons: tuple[str, ...] = ()  # the verdict's reasons, as `nmrl inspect` prints them (structure, K % 4, dtype)

    @classmethod
    def from_check(cls, layer: LayerCheck) -> GemmWeight:
        return cls(
            node=layer.node,
            op=layer.op,
            weight=layer.weight_name,
            k=layer.k,
            n=math.prod(layer.shape) // layer.k if layer.k else 0,
            dtype=layer.dtype,
            fits_2of4=layer.verdict.fits((STRUCTURE, K_MULTIPLE_OF_4)),
            density=layer.density,
            reasons=layer.reasons,
        )

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
        return self.compute_dtype in REDUCED_PRECISION


def read_graph_info(onnx_path: Path) -> OnnxGraphInfo:
    """The input/output of the graph and every Gemm/MatMul with a constant 2-D weight."""
    import onnx

    model = load_onnx(Path(onnx_path))
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
    input_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else ""
    check = inspect_model(model)
    return OnnxGraphInfo(
        input_name=inputs[0].name,
        input_dim=int(dims[1].dim_value),
        input_dtype=input_dtype or "unknown",
        output_name=graph.output[0].name,
        gemms=[GemmWeight.from_check(layer) for layer in check.layers if len(layer.shape) == 2],
        metadata=check.metadata,
    )
