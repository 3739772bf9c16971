"""A trained policy -> a verified, self-describing ONNX file.

The graph computes with each layer's *effective* weight (shadow * mask, exact zeros) stored as a
dense initializer: TensorRT and ONNX Runtime do not consume ONNX sparse initializers, and TensorRT
finds 2:4 structure in dense constants itself. ``nn.Linear`` exports as ``Gemm(x, W, b, transB=1)``
with ``W[out, in]``, so N:M groups lie along K, where sparse tensor cores need them.

The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript; the TorchScript
exporter is deprecated since torch 2.9). The batch dimension is dynamic; action scaling is part of
the policy module, hence of the graph.

This module builds graphs: tracing and the graph's finishing passes (metadata, fp16), each of
which leaves a graph that the next one and ``nmrl inspect`` can read. The run-to-file pipeline that
orders them with quantization, verification and writing is :mod:`nmrl.export.pipeline`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

import nmrl
from nmrl.errors import NmrlError
from nmrl.export.twin import fill_zeros
from nmrl.export.verify import ModelCheck, inspect_model
from nmrl.files import atomic_write_bytes
from nmrl.policy_file import FORMAT, INPUT_NAME, OUTPUT_NAME, claims_of, write_claims
from nmrl.sparsity.layers import replace_submodule
from nmrl.sparsity.nm_core import nm_violations
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.normalization import NormalizedPolicy

DType = Literal["fp32", "fp16", "int8"]
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
OPSET = 18


def materialize(policy: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of ``policy`` in which every masked layer (anything exposing
    ``effective_weight()``, e.g. NMLinear) is a plain ``nn.Linear`` holding that effective weight.

    The copy computes exactly what the policy computes, without the training-time masking op, so
    the exported graph has one Gemm per layer with the zeros baked into its initializer.
    """
    plain = copy.deepcopy(policy).cpu().eval()
    replacements = []
    for name, module in plain.named_modules():
        effective = getattr(module, "effective_weight", None)
        if not callable(effective):
            continue
        if not isinstance(module, nn.Linear):
            raise NmrlError(
                f"cannot export layer {name!r} ({type(module).__name__}): only Linear-like masked layers are supported"
            )
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            weight = effective()
            # shadow * mask gives -0.0 where a negative shadow weight is pruned; store +0.0 so that
            # tools testing zeros by bit pattern (fp16/bf16 checks do) see every pruned weight.
            linear.weight.copy_(torch.where(weight == 0, torch.zeros_like(weight), weight))
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        replacements.append((name, linear))
    for name, linear in replacements:
        replace_submodule(plain, name, linear)
    if not any(isinstance(m, nn.Linear) for m in plain.modules()):
        raise NmrlError(f"cannot export {type(policy).__name__}: it has no Linear layers")
    return plain.requires_grad_(False)


class _CastIO(nn.Module):
    """Runs a reduced-precision policy behind float32 input/output (casts inside the graph)."""

    def __init__(self, policy: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.policy, self.dtype = policy, dtype

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs.to(self.dtype)).to(torch.float32)


def to_onnx_model(
    policy: nn.Module,
    obs_dim: int,
    dtype: DType = "fp32",
    io_dtype: DType | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Trace ``policy`` (obs [batch, obs_dim] -> action [batch, act_dim]) into an ONNX model.

    ``dtype`` sets the weights and arithmetic; ``io_dtype`` (default: ``dtype``) the input and
    output tensors. fp16 weights with fp32 I/O put one Cast at each end of the graph.
    """
    if dtype not in TORCH_DTYPES or (io_dtype is not None and io_dtype not in TORCH_DTYPES):
        raise NmrlError(
            f"unsupported dtype {dtype!r}/{io_dtype!r} for tracing: fp32 or fp16 (int8 quantizes the fp32 graph)"
        )
    io_dtype = io_dtype or dtype
    if opset < 17:
        raise NmrlError(f"opset {opset} is too old: nmrl exports opset 17 or newer")
    module = materialize(policy).to(TORCH_DTYPES[dtype])
    if io_dtype != dtype:
        module = _CastIO(module, TORCH_DTYPES[dtype])
    example = torch.zeros(2, obs_dim, dtype=TORCH_DTYPES[io_dtype])
    batch = torch.export.Dim("batch")
    # The exporter reports progress on stdout and warns about optional packages (torchvision);
    # neither concerns the user, who gets nmrl's own report.
    exporter_log = logging.getLogger("torch.onnx")
    log_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        except Exception as error:  # torch.export raises many types for untraceable modules
            raise NmrlError(
                f"cannot export {type(policy).__name__} to ONNX: {str(error).splitlines()[0][:200]}"
            ) from None
        finally:
            exporter_log.setLevel(log_level)
    if program is None:  # only the legacy TorchScript exporter (dynamo=False) returns nothing
        raise NmrlError(f"cannot export {type(policy).__name__} to ONNX: the exporter returned no program")
    model = program.model_proto
    # Wrappers prefix the policy's initializers (policy.net.0.weight): strip them so that every
    # graph names its weights and action scaling alike, whatever its I/O casts and normalisation.
    if isinstance(module, _CastIO):
        _strip_initializer_prefix(model, "policy.")
    if isinstance(module.policy if isinstance(module, _CastIO) else module, NormalizedPolicy):
        _strip_initializer_prefix(model, "policy.")
    # Input metadata the exporter leaves on graph inputs (torch.export bookkeeping) is noise for
    # deployment tools; the model-level nmrl.* metadata describes the file.
    for value in model.graph.input:
        del value.metadata_props[:]
    drop_unit_action_scaling(model)
    return model


_UNIT_SCALING = {"Mul": ("action_scale", 1.0), "Add": ("action_bias", 0.0)}
"""The action scaling's ops, their constant's name (the policies' buffers) and its identity value."""


def drop_unit_action_scaling(model: onnx.ModelProto) -> None:
    """Remove the action scaling's ``Mul`` by ``action_scale`` and ``Add`` of ``action_bias`` where
    they are all ones and all zeros (bounds [-1, 1], as every MuJoCo task has), in place: the action
    is then tanh's output itself, exactly (x * 1 + 0 == x). Two nodes cost ~0.7 µs of a 9 µs
    batch-1 call of a 256-256 actor in ONNX Runtime."""
    graph = model.graph
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for node in list(graph.node):
        name, value = _UNIT_SCALING.get(node.op_type, ("", 0.0))
        if len(node.input) != 2 or node.input[1] != name or name not in constants:
            continue
        if not np.all(constants[name] == value):
            continue
        source, target = node.input[0], node.output[0]
        graph.node.remove(node)
        # The node's output keeps its name (it may be the graph's output): its producer writes it.
        for other in graph.node:
            other.output[:] = [target if out == source else out for out in other.output]
            other.input[:] = [target if inp == source else inp for inp in other.input]
        for info in [info for info in graph.value_info if info.name == source]:
            graph.value_info.remove(info)
    used = {inp for node in graph.node for inp in node.input}
    scaling = {name for name, _ in _UNIT_SCALING.values()}
    for init in [init for init in graph.initializer if init.name in scaling and init.name not in used]:
        graph.initializer.remove(init)


def _strip_initializer_prefix(model: onnx.ModelProto, prefix: str) -> None:
    """Rename initializers ``prefix + name`` -> ``name`` so that the fp16 graph's weights carry the
    same names as the fp32 graph's (the I/O-cast wrapper adds a module prefix)."""
    renames = {init.name: init.name[len(prefix) :] for init in model.graph.initializer if init.name.startswith(prefix)}
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]


def layers_metadata(check: ModelCheck) -> list[dict[str, Any]]:
    """Per-layer sparsity summary stored in the file (``nmrl.layers``)."""
    return [
        {
            "weight": layer.weight_name,
            "op": layer.op,
            "shape": list(layer.shape),
            "k_axis": layer.k_axis,
            "pattern": str(layer.finest) if layer.finest else "dense",
            "density": round(layer.density, 6),
            "sparse_tensor_core_2of4": layer.eligible_2of4,
        }
        for layer in check.layers
    ]


def enforce_claim(broken: dict[str, int], claimed: NMPattern) -> None:
    """Raise :class:`NmrlError` naming the layers (weight name -> groups) that break ``claimed``."""
    if broken:
        detail = ", ".join(f"{name}: {count} groups" for name, count in broken.items())
        raise NmrlError(f"refusing to export: weights break the claimed {claimed} pattern along K ({detail})")


@dataclass
class ExportResult:
    path: Path
    check: ModelCheck
    model: onnx.ModelProto


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` to ``path`` atomically (deployment must never pick up a half-written file)."""
    atomic_write_bytes(path, model.SerializeToString())


def build_policy_onnx(
    policy: nn.Module,
    obs_dim: int,
    act_dim: int,
    claimed: NMPattern | None,
    metadata: dict[str, Any] | None = None,
    dtype: DType = "fp32",
    io_dtype: DType | None = None,
    opset: int = OPSET,
) -> tuple[onnx.ModelProto, ModelCheck]:
    """Export, verify and describe a policy in memory.

    Raises :class:`NmrlError` when a GEMM weight breaks ``claimed`` (the pattern the run says it
    trained with) along K, or when the graph fails ``onnx.checker``.
    """
    if claimed is not None:
        # Fail fast on the torch weights (tracing takes seconds); the file itself is checked below.
        plain = materialize(policy)
        broken = {
            f"{name}.weight": nm_violations(layer.weight.numpy(), 1, claimed)
            for name, layer in plain.named_modules()
            if isinstance(layer, nn.Linear)
        }
        enforce_claim({name: count for name, count in broken.items() if count}, claimed)
    model = to_onnx_model(policy, obs_dim, dtype, io_dtype, opset)
    check = inspect_model(model)
    if not check.layers:
        raise NmrlError("the exported graph has no Gemm/MatMul with a constant weight")
    if claimed is not None:
        enforce_claim(check.violations(claimed), claimed)
    write_claims(
        model,
        claims_of(
            {
                "format": FORMAT,
                "version": nmrl.__version__,
                "obs_dim": obs_dim,
                "act_dim": act_dim,
                "dtype": dtype,
                "io_dtype": io_dtype or dtype,
                "sparsity": str(claimed) if claimed is not None else "none",
                "layers": layers_metadata(check),
                **(metadata or {}),
            }
        ),
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise NmrlError(f"exported graph fails onnx.checker: {str(error).splitlines()[0]}") from None
    return model, inspect_model(model)


def finish_graph(model: onnx.ModelProto, claimed: NMPattern | None, metadata: dict[str, Any]) -> ModelCheck:
    """After a graph transform (K padding, quantization): re-check the claim on the new weights,
    describe the new layers in the metadata, and run ``onnx.checker``."""
    check = inspect_model(model)
    if claimed is not None:
        enforce_claim(check.violations(claimed), claimed)
    write_claims(model, claims_of({**metadata, "layers": layers_metadata(check)}))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise NmrlError(f"transformed graph fails onnx.checker: {str(error).splitlines()[0]}") from None
    return inspect_model(model)


def export_policy(
    path: Path,
    policy: nn.Module,
    obs_dim: int,
    act_dim: int,
    claimed: NMPattern | None,
    metadata: dict[str, Any] | None = None,
    dtype: DType = "fp32",
    io_dtype: DType | None = None,
    opset: int = OPSET,
) -> ExportResult:
    """Export, verify and write ``policy`` to ``path`` (nothing is written when verification fails)."""
    model, check = build_policy_onnx(policy, obs_dim, act_dim, claimed, metadata, dtype, io_dtype, opset)
    path = Path(path)
    save_onnx(model, path)
    check.path = path
    return ExportResult(path, check, model)


def dense_twin_module(policy: nn.Module, seed: int = 0) -> nn.Module:
    """:func:`materialize`-d copy of ``policy`` whose Linear weights have no zeros."""
    twin = materialize(policy)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, nn.Linear):
                weight = module.weight.numpy()
                module.weight.copy_(torch.from_numpy(fill_zeros(weight, rng)))
    return twin
