"""Layers in your own models: make a network sparse, bind its masks to an optimizer, keep targets sparse.

Three calls put nmrl's layers into any PyTorch training loop (CleanRL's, Stable-Baselines3's, yours):

- :func:`sparsify` replaces a model's ``nn.Linear`` layers by sparse ones, for any sparsity
  setting: text (``"2:4"``, ``"dense"``, ``"0.9"``), an :class:`~nmrl.sparsity.pattern.NMPattern`
  or a parsed :mod:`~nmrl.sparsity.spec` value;
- :func:`bind_optimizer` registers a step post-hook on the optimizer that trains the sparse
  layers: after every ``optimizer.step()`` each layer counts the step (its mask is recomputed every
  ``mask_interval`` steps) and drops its compressed 2:4 weight (the fast path's, on GPUs: a fused
  Adam writes parameters without advancing their version counter, so a cache keyed on versions
  alone would keep multiplying by the old weight). It refuses an optimizer that does not hold the
  layers' weights: one created *before* ``sparsify`` holds the replaced layers' parameters, and
  stepping it would leave the sparse weights unchanged forever, silently. A layer ``sparsify``
  made that runs :data:`~nmrl.sparsity.layers.UNSTEPPED_PASS_LIMIT` training passes with no
  counted step (its optimizer was never bound) logs one warning saying so;
- :func:`bind_target` keeps a target network's masks following its own weights: before each of
  its forward passes it re-selects every mask from the current (Polyak-averaged) weights, whatever
  code did the averaging.

``nmrl.train``'s :class:`~nmrl.train.sparse_training.SparseTraining` binds its optimizers with
:func:`bind_optimizer` and re-masks its targets with :func:`remask_now`: one mechanism for nmrl's
own algorithms and for other people's.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nmrl.errors import NmrlError
from nmrl.sparsity.dynamic import sparsify_unstructured
from nmrl.sparsity.layers import LayerReport, MaskedLinear, layer_report, masked_layers, refresh_masks, sparsify_nm
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.spec import DEFAULT_NM_GRADIENT, Dense, NMSparsity, Sparsity, UnstructuredSparsity, parse_sparsity

SparsityLike = str | float | NMPattern | Sparsity
"""What :func:`sparsify` accepts: ``"2:4"``, ``"dense"``, ``"0.9"`` / ``0.9``, an NMPattern, or a spec."""


def as_sparsity(sparsity: SparsityLike) -> Sparsity:
    """The typed sparsity setting of ``sparsity`` (text goes through the one parser,
    :func:`nmrl.sparsity.spec.parse_sparsity`); :class:`NmrlError` for anything else."""
    if isinstance(sparsity, Dense | NMSparsity | UnstructuredSparsity):
        return sparsity
    if isinstance(sparsity, NMPattern):
        return Dense() if sparsity.is_dense else NMSparsity(sparsity)
    if isinstance(sparsity, str):
        return parse_sparsity(sparsity)
    if isinstance(sparsity, int | float) and not isinstance(sparsity, bool):
        return UnstructuredSparsity(float(sparsity))
    raise NmrlError(
        f"sparsity must be text like '2:4', 'dense' or '0.9', an NMPattern or a sparsity spec, got {sparsity!r}"
    )


def sparsify(
    module: nn.Module,
    sparsity: SparsityLike,
    *,
    mask_interval: int = 1,
    srste_decay: float = 2e-4,
    gradient: str = DEFAULT_NM_GRADIENT,
    skip: Iterable[str] = (),
    **unstructured: Any,
) -> list[LayerReport]:
    """Replace, in place, the ``nn.Linear`` layers of ``module`` (except the names in ``skip``) by
    sparse layers with the same weights; returns the per-layer report.

    Args:
        module: the network, built dense.
        sparsity: ``"2:4"`` (or any ``"N:M"``, or an NMPattern / NMSparsity): every Linear becomes an
            :class:`~nmrl.sparsity.layers.NMLinear` trained with SR-STE. ``"0.9"`` (or ``0.9``, or an
            UnstructuredSparsity): 90% of the weights pruned without structure (the last Linear
            stays dense unless the spec says ``layers="all"``). ``"dense"``: nothing changes.
        mask_interval: N:M only: recompute the masks every this many optimizer steps.
        srste_decay: N:M only: SR-STE's decay of the pruned weights (0 = plain straight-through).
        gradient: N:M only: ``"active"`` (only kept shadow weights learn; the default) or ``"ste"``
            (every one: straight-through with SR-STE's decay).
        skip: qualified names of Linears to keep dense.
        **unstructured: unstructured only: the topology schedule of
            :func:`nmrl.sparsity.dynamic.sparsify_unstructured` (``interval``, ``drop_fraction``,
            ``end_step``, ``generator``).

    Create the optimizer *after* this call (the replaced layers' parameters are gone) and bind it
    with :func:`bind_optimizer`.
    """
    spec = as_sparsity(sparsity)
    if unstructured and not isinstance(spec, UnstructuredSparsity):
        raise NmrlError(f"{', '.join(sorted(unstructured))}: options of unstructured sparsity, not of {spec}")
    before = {id(layer) for _, layer in masked_layers(module)}
    if isinstance(spec, NMSparsity):
        reports = sparsify_nm(module, spec.pattern, mask_interval, srste_decay, skip, gradient=gradient)
    elif isinstance(spec, UnstructuredSparsity):
        skipped = set(skip)
        if spec.layers == "hidden":
            linears = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
            skipped |= set(linears[-1:])
        reports = sparsify_unstructured(
            module, spec.fraction, spec.allocation, skip=skipped, topology=spec.topology, **unstructured
        )
    else:
        return layer_report(module)
    for _, layer in masked_layers(module):
        if id(layer) not in before:  # the new layers: warn if no optimizer step is ever counted for them
            layer.watch_steps = True
    return reports


def sparse_layers(networks: nn.Module | Iterable[nn.Module]) -> list[tuple[str, MaskedLinear]]:
    """Every sparse layer of ``networks`` (a module or several), with its qualified name."""
    modules = [networks] if isinstance(networks, nn.Module) else list(networks)
    return [
        (f"{index}.{name}" if len(modules) > 1 else name, layer)
        for index, module in enumerate(modules)
        for name, layer in masked_layers(module)
    ]


def drop_compressed(layers: Iterable[MaskedLinear]) -> None:
    """Make every 2:4 fast-path layer among ``layers`` recompress its weight on its next forward."""
    # Only fast-path layers hold a compressed weight; the import stays lazy so that CPU-only
    # training never loads the CUDA module.
    if "nmrl.sparsity.semi_structured" in sys.modules:
        sys.modules["nmrl.sparsity.semi_structured"].drop_compressed(layers)


def remask_now(layers: list[MaskedLinear]) -> None:
    """Re-select every mask of ``layers`` from their current weights and drop compressed copies
    (a target network after its Polyak update)."""
    refresh_masks(layers, now=True)
    drop_compressed(layers)


# The layers each optimizer's hooks already keep (by id), so that binding twice, which would count
# every step twice, is refused.
_BOUND: weakref.WeakKeyDictionary[torch.optim.Optimizer, set[int]] = weakref.WeakKeyDictionary()


def bind_optimizer(optimizer: torch.optim.Optimizer, networks: nn.Module | Iterable[nn.Module]) -> RemovableHandle:
    """After each ``optimizer.step()``, refresh the masks of ``networks``' sparse layers (every
    ``mask_interval`` steps) and drop their compressed 2:4 weights. Returns the hook's handle
    (``handle.remove()`` unbinds).

    Raises :class:`NmrlError` when ``networks`` has no sparse layer, when ``optimizer`` does not
    hold the weight of every one of them (e.g. it was created before :func:`sparsify`), or when
    they are already bound to it.
    """
    named = sparse_layers(networks)
    if not named:
        raise NmrlError("bind_optimizer: the network has no sparse layers (call nmrl.sparsify on it first)")
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name or "<root>" for name, layer in named if id(layer.weight) not in owned]
    if len(missing) == len(named):
        raise NmrlError(
            f"the optimizer holds none of the {len(named)} sparse layers' weights: an optimizer created before "
            "nmrl.sparsify holds the replaced layers' parameters and would never change the sparse ones; "
            "create it after sparsify (e.g. torch.optim.Adam(model.parameters()))"
        )
    if missing:
        raise NmrlError(
            f"the optimizer does not hold the weights of sparse layers {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}: bind each optimizer to the networks it trains"
        )
    layers = [layer for _, layer in named]
    bound = _BOUND.setdefault(optimizer, set())
    if any(id(layer) in bound for layer in layers):
        raise NmrlError("these sparse layers are already bound to this optimizer (a second hook counts steps twice)")
    bound.update(id(layer) for layer in layers)

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        refresh_masks(layers)
        drop_compressed(layers)

    return optimizer.register_step_post_hook(after_step)


def bind_target(target: nn.Module) -> RemovableHandle:
    """Keep the target network ``target`` (a copy of a sparsified online network that some Polyak
    update averages) sparse with masks of its own: before each forward pass every mask is
    re-selected from the target's current weights, as nmrl's own targets are after each update.
    Returns the hook's handle. :class:`NmrlError` when ``target`` has no sparse layers (copy the
    online network after :func:`sparsify`, or sparsify the target too)."""
    layers = [layer for _, layer in masked_layers(target)]
    if not layers:
        raise NmrlError(
            "bind_target: the target has no sparse layers (copy the online network after nmrl.sparsify, "
            "or sparsify the target with the same setting)"
        )

    def before_forward(module: nn.Module, args: Any) -> None:
        remask_now(layers)

    return target.register_forward_pre_hook(before_forward)
