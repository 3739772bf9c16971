"""Which layers run sparse kernels: the engine inspector's view, and the verdict the report prints.

The builder times sparse and dense tactics and keeps the faster, so "eligible" is not "picked".
The builder log's "picked" list is the trusted source; the engine inspector (GPU only) is a
cross-check that cannot see inside fused Myelin regions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from nmrl.deploy.tensorrt.buildlog import capturing_logger


def classify_inspector_layers(layers: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(layers whose tactic names a sparse kernel, fused layers the inspector cannot see into),
    from the engine inspector's JSON ``Layers`` list.

    A fused Myelin region (``LayerType`` Myelin, a ``{ForeignNode[...]}`` name) is one opaque entry:
    its tactic name says nothing about the GEMM kernels inside, which may well be sparse. Counting
    it as dense would misreport exactly the layers TensorRT fuses most (GEMM + activation chains).
    """
    sparse, opaque = [], []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        name, tactic = str(layer.get("Name", "?")), str(layer.get("TacticName", ""))
        if str(layer.get("LayerType", "")).lower() == "myelin" or "ForeignNode" in name or "myelin" in tactic.lower():
            opaque.append(name)
        elif "sparse" in tactic.lower():
            sparse.append(name)
    return sparse, opaque


def inspect_engine_layers(trt: ModuleType, plan: bytes) -> tuple[list[str], list[str]] | None:
    """:func:`classify_inspector_layers` of an engine; None where the engine cannot be loaded here
    (no GPU) or the inspector gives no layer list."""
    logger = capturing_logger(trt)
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            return None
        inspector = engine.create_engine_inspector()
        layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # the inspector is a cross-check; failing it must not fail the build
        return None
    return classify_inspector_layers(layers.get("Layers", []))


def sparse_kernels_verdict(picked: list[str] | None, inspected: tuple[list[str], list[str]] | None) -> str:
    """Which layers run sparse kernels, which source says so, and why that source is trusted."""
    if picked is None:
        verdict = (
            "unknown: this builder does not log which layers it picked sparse kernels for "
            "(TensorRT-RTX chooses kernels on the target GPU at run time)"
        )
    else:
        listed = ", ".join(picked) if picked else "none"
        verdict = (
            f"{listed} (trusted: the builder log's 'picked sparse implementation' list, written as TensorRT "
            "chooses each layer's kernel, fused layers included)"
        )
    if inspected is not None:
        sparse, opaque = inspected
        verdict += f"; engine inspector cross-check: sparse tactic names in {', '.join(sparse) or 'none'}"
        if opaque:
            verdict += (
                f", {len(opaque)} fused (Myelin) layer(s) whose kernels it cannot show, so it cannot "
                "say dense or sparse for them"
            )
    return verdict
