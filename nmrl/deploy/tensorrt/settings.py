"""What to ask of the builder: precision and sparsity flags per TensorRT version, and the batch profile.

Sparse tensor cores need reduced precision and weights that are 2:4 along K. TensorRT 10 takes an
fp32 ONNX with the FP16 builder flag; TensorRT 11 and TensorRT-RTX are strongly typed only, so the
precision comes from the graph itself (the fp16 export). Pure logic: no TensorRT needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nmrl.deploy.tensorrt.flavours import major_version
from nmrl.errors import NmrlError


@dataclass(frozen=True)
class BuildSettings:
    """The version-dependent builder settings for one ONNX graph."""

    flavour: str
    version: str
    strongly_typed: bool  # precision comes from the graph's own dtypes
    fp16_flag: bool  # BuilderFlag.FP16 (TensorRT 10 weakly typed networks only)
    sparse_weights: bool  # BuilderFlag.SPARSE_WEIGHTS
    sparse_possible: bool  # the GEMMs will run in a precision that has sparse kernels
    note: str = ""


def build_settings(flavour: str, version: str, graph_dtype: str, sparse: bool) -> BuildSettings:
    """Decide the builder settings from the TensorRT flavour/version and the ONNX graph's dtype.

    * TensorRT 10 + fp32 graph: weakly typed network with the FP16 flag (TensorRT picks fp16 kernels).
    * TensorRT 10 + fp16/bf16 graph: strongly typed network, no precision flag.
    * TensorRT 11 and TensorRT-RTX: always strongly typed, no precision flags exist. An fp32 graph
      builds but runs fp32 kernels, which have no sparse form: the note says to export fp16.
    * An int8 Q/DQ graph (weights int8 behind DequantizeLinear) is explicitly quantized: strongly typed,
      its GEMMs are int8, which has sparse kernels.
    """
    reduced = graph_dtype in ("float16", "bfloat16", "int8")
    if flavour == "tensorrt":
        major = major_version(version)
        if major < 10:
            raise NmrlError(f"TensorRT {version} is too old: nmrl builds with TensorRT 10 or newer")
        strongly_typed = major >= 11 or reduced
    else:
        strongly_typed = True
    fp16_flag = not strongly_typed
    sparse_possible = fp16_flag or reduced
    note = ""
    if sparse and not sparse_possible:
        note = (
            f"{flavour} {version} is strongly typed and this graph is {graph_dtype}: its GEMMs run fp32 "
            "kernels, which have no 2:4 sparse form; build the fp16 export (nmrl export --dtype fp16) "
            "to use sparse tensor cores"
        )
    return BuildSettings(flavour, version, strongly_typed, fp16_flag, sparse, sparse_possible, note)


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic-batch optimisation profile: smallest, tuned-for and largest batch."""

    min: int = 1
    opt: int = 64
    max: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise NmrlError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def up_to(cls, max_batch: int) -> BatchProfile:
        """The default profile cut down (or up) to ``max_batch`` rows."""
        return cls(min=1, opt=min(cls.opt, max_batch), max=max_batch)
