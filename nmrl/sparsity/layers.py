"""NMLinear: a Linear layer trained under an N:M mask with SR-STE, and ``sparsify_nm`` to convert nets.

The layer keeps a dense *shadow* weight. The forward pass uses ``shadow * mask`` where the mask
holds the magnitude top-N of each group of M along the input dim. Gradients reach every shadow
weight unchanged (straight-through estimator); SR-STE adds ``srste_decay * shadow`` to the
gradient of the pruned weights so that they shrink unless the loss keeps pulling them back
(Zhou et al., 2021). The mask is recomputed every ``mask_interval`` optimizer steps: the owner
calls :func:`refresh_masks` after each ``optimizer.step()``.

How an ``NMLinear`` multiplies is a strategy it holds, ``layer.kernel``: :data:`MASKED_DENSE`
(this module; any device and dtype) by default, or the 2:4 sparse-tensor-core kernel of
:mod:`nmrl.sparsity.semi_structured`, which the fast path puts in its place. The kernel is
plain Python state, not a parameter or buffer: ``state_dict`` and checkpoints are the same
either way.

State dicts come in two forms. ``module.state_dict()`` is the *full* form: shadow weights, masks and
mask counters, so a checkpoint resumes exactly (nmrl's checkpoints and SB3's zips store it).
:func:`dense_state_dict` is the *dense* form, keys and shapes of the same model built with plain
``nn.Linear`` (each weight is the effective ``shadow * mask``): it loads into that dense model. A
sparse layer also loads a dense-form dict: its masks are then recomputed from the loaded weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from nmrl.sparsity.mask import nm_mask
from nmrl.sparsity.pattern import NMPattern
from nmrl.sparsity.spec import DEFAULT_NM_GRADIENT, NM_GRADIENTS

log = logging.getLogger(__name__)

UNSTEPPED_PASS_LIMIT = 1000
"""Training passes (forwards that record gradients) of a layer made by ``nmrl.sparsify`` with no
counted optimizer step between them, after which nmrl warns that no optimizer is bound to it."""
_warned_unstepped = False


def _sparse_refined_ste(weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """``weight * mask`` whose gradient reaches every shadow weight unchanged (straight-through),
    plus ``decay * weight`` on the pruned entries (SR-STE).

    Built from native autograd ops: a Python ``autograd.Function`` here cost 1-2 ms of a 10 ms
    TD3 update on a CPU (its Python forward and backward ran for every layer call).
    """
    pruned_negated = (weight.detach() * mask).sub_(weight.detach())  # -w where pruned, 0 where kept
    # The value is weight * mask; the derivative with respect to ``weight`` is the identity.
    effective = weight + pruned_negated
    if decay:
        # grad + decay * (1 - mask) * weight, on its way back to ``weight``
        effective.register_hook(lambda grad: grad.sub(pruned_negated, alpha=decay))
    return effective


class LayerKernel(Protocol):
    """How an :class:`NMLinear` multiplies: the strategy it holds as ``layer.kernel``."""

    name: str

    def forward(self, layer: NMLinear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x, layer.weight * layer.mask, layer.bias)``, with the layer's gradients."""
        ...

    def drop_compressed(self) -> None:
        """Forget any derived copy of the weight (called after every optimizer step)."""
        ...


class MaskedDenseKernel:
    """The default kernel of an :class:`NMLinear`: ``linear(x, weight * mask)`` as a dense GEMM, with
    straight-through + SR-STE gradients while training. Stateless: one instance serves every layer."""

    name = "masked dense"

    def forward(self, layer: NMLinear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and layer.weight.requires_grad and layer.gradient == "ste":
            weight = _sparse_refined_ste(layer.weight, layer.mask, layer.srste_decay)
        else:  # gradient="active" (only kept weights learn), targets, acting, frozen critics
            weight = layer.weight * layer.mask
        return nn.functional.linear(x, weight, layer.bias)

    def drop_compressed(self) -> None:
        """Nothing to drop: this kernel keeps no derived copy of the weight."""

    def __deepcopy__(self, memo: dict) -> MaskedDenseKernel:
        return self  # stateless: copies of a layer share it

    def __repr__(self) -> str:
        return "MaskedDenseKernel()"


MASKED_DENSE = MaskedDenseKernel()


class MaskedLinear(nn.Linear):
    """``nn.Linear`` that computes with ``weight * mask``: the common base of every sparse layer.

    Subclasses decide how the 0/1 ``mask`` buffer is chosen (N:M groups in :class:`NMLinear`,
    unstructured in :class:`nmrl.sparsity.dynamic.UnstructuredLinear`) and implement the two
    mask hooks that :func:`refresh_masks` calls: :meth:`step_mask` after each optimizer step and
    :meth:`update_mask` to re-select the mask from the current weights now (target networks).
    """

    mask: torch.Tensor
    # Set by nmrl.sparsify on the layers it makes. An optimizer that nobody bound (or one created
    # before sparsify, holding the replaced layers' parameters) never counts a step, so the masks
    # would never be refreshed (and, in the second case, the weights never change) without a word:
    # count the training passes since the last counted step and warn once.
    watch_steps: bool = False
    passes_since_step: int = 0

    def note_training_pass(self) -> None:
        """Count one forward pass that records gradients (subclasses' ``forward`` calls this)."""
        # This runs every pass: _parameters and __dict__ directly, as nn.Module's __getattr__ and
        # __setattr__ cost about a microsecond each.
        if not (self.watch_steps and torch.is_grad_enabled() and self._parameters["weight"].requires_grad):  # type: ignore[union-attr]
            return
        passes = self.__dict__["passes_since_step"] = self.passes_since_step + 1
        global _warned_unstepped
        if passes >= UNSTEPPED_PASS_LIMIT and not _warned_unstepped:
            _warned_unstepped = True
            log.warning(
                "a sparse layer ran %d training passes without a counted optimizer step: its masks are never "
                "refreshed; bind the optimizer that trains it with nmrl.bind_optimizer(optimizer, model) (it "
                "refuses an optimizer created before nmrl.sparsify, whose steps leave the sparse weights unchanged)",
                passes,
            )

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with: ``weight * mask`` (exact zeros where pruned)."""
        return self.weight.detach() * self.mask

    @property
    def sparsity_label(self) -> str:
        """How the layer's reports name its sparsity (``"2:4"``, ``"unstructured"``)."""
        raise NotImplementedError

    def update_mask(self) -> None:
        """Re-select the mask from the current weights, now."""
        raise NotImplementedError

    def step_mask(self) -> None:
        """Count one optimizer step of this layer's weights."""
        raise NotImplementedError

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A dense-form dict (a plain Linear's, or dense_state_dict's) has no mask: the layer keeps
        # its own buffers while loading, then re-selects its mask from the weights it was given.
        dense_form = f"{prefix}weight" in state_dict and f"{prefix}mask" not in state_dict
        if dense_form:
            for name, buffer in self._buffers.items():
                if buffer is not None and name not in self._non_persistent_buffers_set:
                    state_dict[f"{prefix}{name}"] = buffer
        errors_before = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if dense_form and len(error_msgs) == errors_before:
            self.update_mask()


class NMLinear(MaskedLinear):
    """``nn.Linear`` whose effective weight is N:M sparse at all times.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        pattern: the N:M pattern; groups run along ``in_features``.
        mask_interval: recompute the mask every this many optimizer steps (see :meth:`step_mask`).
        srste_decay: SR-STE ``lambda_w``; 0 gives plain STE.
        gradient: which shadow weights the gradient reaches: ``"ste"`` every one (straight-through,
            with SR-STE's decay on the pruned ones), ``"active"`` only the kept ones (the pruned
            weights stay where they were until a refresh selects them; ``srste_decay`` unused).
    """

    mask: torch.Tensor
    steps_since_refresh: torch.Tensor
    kernel: LayerKernel

    def __init__(
        self,
        in_features: int,
        out_features: int,
        pattern: NMPattern,
        bias: bool = True,
        mask_interval: int = 1,
        srste_decay: float = 2e-4,
        gradient: str = DEFAULT_NM_GRADIENT,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if mask_interval < 1:
            raise ValueError(f"mask_interval must be >= 1, got {mask_interval}")
        if srste_decay < 0:
            raise ValueError(f"srste_decay must be >= 0, got {srste_decay}")
        if gradient not in NM_GRADIENTS:
            raise ValueError(f"gradient must be one of {', '.join(NM_GRADIENTS)}, got {gradient!r}")
        self.pattern = pattern
        self.mask_interval = mask_interval
        self.srste_decay = srste_decay
        self.gradient = gradient
        self.register_buffer("mask", nm_mask(self.weight, pattern))
        # Optimizer steps since the mask was last recomputed; saved with the state so that a
        # resumed run refreshes on the same schedule.
        self.register_buffer("steps_since_refresh", torch.zeros((), dtype=torch.long))
        self.kernel = MASKED_DENSE

    @torch.no_grad()
    def update_mask(self) -> None:
        """Recompute the mask from the current shadow weight, now."""
        nm_mask(self.weight, self.pattern, out=self.mask)
        self.steps_since_refresh.zero_()

    @torch.no_grad()
    def step_mask(self) -> None:
        """Count one optimizer step; recompute the mask when ``mask_interval`` steps have passed."""
        if self.mask_interval == 1:  # the default: skip the counter's tensor ops
            self.update_mask()
            return
        self.steps_since_refresh += 1
        if int(self.steps_since_refresh) >= self.mask_interval:
            self.update_mask()

    @property
    def sparsity_label(self) -> str:
        return str(self.pattern)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.note_training_pass()
        return self.kernel.forward(self, x)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, pattern={self.pattern}, mask_interval={self.mask_interval}, "
            f"srste_decay={self.srste_decay}, gradient={self.gradient}, kernel={self.kernel.name}"
        )


def nm_layers(module: nn.Module) -> list[tuple[str, NMLinear]]:
    """Every NMLinear inside ``module`` with its qualified name, in registration order."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, NMLinear)]


def masked_layers(module: nn.Module) -> list[tuple[str, MaskedLinear]]:
    """Every sparse layer (N:M or unstructured) inside ``module`` with its qualified name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, MaskedLinear)]


def dense_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict in the dense form: the keys and shapes of the same model built with
    plain ``nn.Linear`` layers, each sparse layer's ``weight`` being its effective weight
    (``shadow * mask``, exact zeros where pruned) and its masks and counters left out.

    ``dense_model.load_state_dict(dense_state_dict(sparse_model))`` gives a dense model that
    computes what the sparse one does. ``module.state_dict()`` stays the full form (shadow weights
    and masks) that resumes training exactly.
    """
    state = module.state_dict()
    for name, layer in masked_layers(module):
        prefix = f"{name}." if name else ""
        for buffer in layer._buffers:
            state.pop(f"{prefix}{buffer}", None)
        weight = layer.effective_weight()
        # shadow * mask is -0.0 where a negative weight is pruned: store +0.0 (a plain zero)
        state[f"{prefix}weight"] = torch.where(weight == 0, torch.zeros_like(weight), weight)
    return state


def refresh_masks(layers: nn.Module | Iterable[MaskedLinear], now: bool = False) -> None:
    """Call after each ``optimizer.step()``: counts the step in every sparse layer (N:M or
    unstructured) of ``layers`` (a module, or a list of layers kept by a caller that refreshes
    often), recomputing masks that are due; ``now=True`` recomputes them all regardless (for
    target networks after a Polyak update)."""
    if isinstance(layers, nn.Module):
        layers = [layer for _, layer in masked_layers(layers)]
    for layer in layers:
        layer.__dict__["passes_since_step"] = 0  # a counted step (see MaskedLinear.note_training_pass)
        if now:
            layer.update_mask()
        else:
            layer.step_mask()


@dataclass(frozen=True)
class LayerReport:
    """What ``sparsify`` did to one layer."""

    name: str
    shape: tuple[int, int]
    pattern: str
    density: float

    def __str__(self) -> str:
        return f"{self.name:<24} {self.shape!s:<14} {self.pattern:<6} density {self.density:.3f}"


def layer_report(module: nn.Module) -> list[LayerReport]:
    """Shape, pattern and achieved density of every Linear layer in ``module``."""
    reports = []
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        if isinstance(layer, MaskedLinear):
            weight, pattern = layer.effective_weight(), layer.sparsity_label
        else:
            weight, pattern = layer.weight.detach(), "dense"
        density = float((weight != 0).float().mean())
        reports.append(LayerReport(name, (layer.out_features, layer.in_features), pattern, density))
    return reports


def replace_submodule(root: nn.Module, name: str, replacement: nn.Module) -> None:
    """Put ``replacement`` where ``root``'s submodule ``name`` (dotted, e.g. ``net.2``) is."""
    parent_name, _, child_name = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child_name, replacement)


def sparsify_nm(
    module: nn.Module,
    pattern: NMPattern,
    mask_interval: int = 1,
    srste_decay: float = 2e-4,
    skip: Iterable[str] = (),
    gradient: str = DEFAULT_NM_GRADIENT,
) -> list[LayerReport]:
    """Replace, in place, every ``nn.Linear`` of ``module`` (except names in ``skip``) by an
    NMLinear with the same weights; returns the per-layer report. A dense pattern leaves the
    module unchanged. (:func:`nmrl.sparsify` takes any sparsity setting, text included.)"""
    skip = set(skip)
    if not pattern.is_dense:
        targets = [
            (name, layer) for name, layer in module.named_modules() if type(layer) is nn.Linear and name not in skip
        ]
        for name, linear in targets:
            sparse = NMLinear(
                linear.in_features,
                linear.out_features,
                pattern,
                bias=linear.bias is not None,
                mask_interval=mask_interval,
                srste_decay=srste_decay,
                gradient=gradient,
                device=linear.weight.device,
                dtype=linear.weight.dtype,
            )
            with torch.no_grad():
                sparse.weight.copy_(linear.weight)
                if linear.bias is not None:
                    sparse.bias.copy_(linear.bias)
            sparse.update_mask()
            replace_submodule(module, name, sparse)
    return layer_report(module)
