"""Unstructured sparse training: the baselines N:M training is measured against.

- Per-layer density for a global sparsity: Erdos-Renyi (density proportional to
  ``(fan_in + fan_out) / (fan_in * fan_out)``, Mocanu et al. 2018) or uniform.
- :class:`UnstructuredLinear`: a Linear computing with ``weight * mask`` where the mask holds an
  exact number of active weights anywhere in the matrix. Its topology is ``static`` (the random
  initial mask forever), ``set`` (SET / DS-TD3, Mocanu et al. 2018, Sokar et al. 2022: every
  ``interval`` optimizer steps drop the ``drop_fraction`` smallest-magnitude active weights and
  regrow as many inactive ones at random) or ``rigl`` (Evci et al. 2020: regrow where the dense
  gradient is largest, drop fraction cosine-decayed to 0 at ``end_step``). Regrown weights start
  at 0. Inactive weights are exact zeros at all times (the owner calls
  :func:`nmrl.sparsity.refresh_masks` after each optimizer step, as for N:M layers).
- :class:`MaskedAdam` (TowS, Tan et al. 2023): Adam whose gradient and both moments are zero at
  inactive positions on every step, so a regrown weight starts with fresh moments.
- Target networks keep their online network's sparsity by magnitude: after a Polyak update,
  ``refresh_masks(target, now=True)`` keeps the same number of largest-magnitude weights.

Randomness (initial masks, SET regrowth) comes from torch's global generator unless a generator
is given, so a run seeded with ``torch.manual_seed`` and resumed with its RNG state repeats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity.layers import LayerReport, MaskedLinear, layer_report, replace_submodule
from nmrl.sparsity.spec import ALLOCATIONS, TOPOLOGIES, Allocation, Topology


# ---- density allocation ---------------------------------------------------------------------
def allocate_densities(
    shapes: Sequence[tuple[int, int]], sparsity: float, method: Allocation = "erdos_renyi"
) -> list[float]:
    """Density of each layer ``[out, in]`` so that the layers together keep ``1 - sparsity`` of
    their weights.

    ``uniform`` gives every layer the same density. ``erdos_renyi`` makes density proportional to
    ``(in + out) / (in * out)``: small layers (the input layer of a low-dimensional observation)
    stay denser. A layer whose ER density would exceed 1 is made dense and the rest share what is
    left, repeated until no layer exceeds 1.
    """
    if not 0.0 <= sparsity < 1.0:
        raise NmrlError(f"unstructured sparsity must be in [0, 1), got {sparsity}")
    if method not in ALLOCATIONS:
        raise NmrlError(f"unknown density allocation {method!r}; choose from {', '.join(ALLOCATIONS)}")
    sizes = [out * fan_in for out, fan_in in shapes]
    if method == "uniform":
        return [1.0 - sparsity] * len(shapes)
    budget = (1.0 - sparsity) * sum(sizes)  # active weights in all
    raw = [(out + fan_in) / (out * fan_in) for out, fan_in in shapes]
    dense: set[int] = set()
    while True:
        sparse_ids = [i for i in range(len(shapes)) if i not in dense]
        if not sparse_ids:  # the budget covers every weight
            return [1.0] * len(shapes)
        left = budget - sum(sizes[i] for i in dense)
        scale = left / sum(raw[i] * sizes[i] for i in sparse_ids)
        over = [i for i in sparse_ids if raw[i] * scale > 1.0]
        if not over:
            return [1.0 if i in dense else raw[i] * scale for i in range(len(shapes))]
        dense.update(over)


# ---- masks ----------------------------------------------------------------------------------
def random_mask(
    shape: tuple[int, int], active: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """A 0/1 float mask of ``shape`` with exactly ``active`` ones at uniformly random positions."""
    numel = shape[0] * shape[1]
    mask = torch.zeros(numel)
    mask[torch.randperm(numel, generator=generator)[:active]] = 1.0
    return mask.reshape(shape).to(device)


def top_k_mask(scores: torch.Tensor, active: int) -> torch.Tensor:
    """A 0/1 mask of ``scores``' shape keeping the ``active`` largest scores (ties to the lower
    flat index, so the result is deterministic)."""
    flat = scores.detach().flatten()
    mask = torch.zeros_like(flat)
    if active > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:active]] = 1.0
    return mask.reshape(scores.shape)


# ---- the layer ------------------------------------------------------------------------------
class UnstructuredLinear(MaskedLinear):
    """``nn.Linear`` computing with ``weight * mask``, the mask holding exactly ``active`` ones.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        density: fraction of weights active (the count is ``round(density * in * out)``, at least 1).
        topology: ``static``, ``set`` or ``rigl`` (see the module docstring).
        interval: optimizer steps between topology updates.
        drop_fraction: fraction of active weights replaced at each update (RigL: at step 0).
        end_step: no topology updates after this many optimizer steps (0 = never stop; RigL
            needs an end for its cosine schedule).
    """

    topology_steps: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        density: float,
        bias: bool = True,
        topology: Topology = "static",
        interval: int = 1000,
        drop_fraction: float = 0.05,
        end_step: int = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not 0.0 < density <= 1.0:
            raise NmrlError(f"layer density must be in (0, 1], got {density}")
        if topology not in TOPOLOGIES:
            raise NmrlError(f"unknown topology {topology!r}; choose from {', '.join(TOPOLOGIES)}")
        if interval < 1 or not 0.0 <= drop_fraction < 1.0 or end_step < 0:
            raise NmrlError("topology needs interval >= 1, 0 <= drop_fraction < 1 and end_step >= 0")
        if topology == "rigl" and end_step == 0:
            raise NmrlError("rigl needs an end step for its cosine drop-fraction schedule")
        self.topology, self.interval = topology, interval
        self.drop_fraction, self.end_step = drop_fraction, end_step
        active = max(1, round(density * in_features * out_features))
        self.register_buffer(
            "mask", random_mask((out_features, in_features), active, generator, device).to(self.weight.dtype)
        )
        # Optimizer steps so far; a buffer so that a resumed run keeps the schedule.
        self.register_buffer("topology_steps", torch.zeros((), dtype=torch.long, device=device))
        # The gradient w.r.t. the masked weight, at every position, from the last backward of a
        # step that ends in a RigL update (None otherwise).
        self.dense_grad: torch.Tensor | None = None
        with torch.no_grad():
            self.weight.mul_(self.mask)

    @property
    def active(self) -> int:
        """Number of active weights (constant through topology updates)."""
        return int(self.mask.sum().item())

    @property
    def sparsity_label(self) -> str:
        return "unstructured"

    def _wants_dense_grad(self) -> bool:
        if self.topology != "rigl":
            return False
        next_step = int(self.topology_steps) + 1
        return next_step % self.interval == 0 and next_step <= self.end_step

    def _store_dense_grad(self, grad: torch.Tensor) -> None:
        self.dense_grad = grad.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.note_training_pass()
        weight = self.weight * self.mask
        if weight.requires_grad and self._wants_dense_grad():
            weight.register_hook(self._store_dense_grad)
        return nn.functional.linear(x, weight, self.bias)

    @torch.no_grad()
    def step_mask(self) -> None:
        """After an optimizer step: keep inactive weights at exact zero, count the step and
        update the topology when one is due."""
        self.weight.mul_(self.mask)
        self.topology_steps += 1
        step = int(self.topology_steps)
        if self.topology == "static" or step % self.interval or (self.end_step and step > self.end_step):
            return
        if self.topology == "set":
            drop_and_grow(self, self.drop_fraction, grow_scores=None)
        else:
            if self.dense_grad is None:
                raise RuntimeError("rigl update without a dense gradient: no backward ran through the layer")
            drop_and_grow(
                self, cosine_drop_fraction(self.drop_fraction, step, self.end_step), grow_scores=self.dense_grad.abs()
            )
            self.dense_grad = None

    @torch.no_grad()
    def update_mask(self) -> None:
        """Keep the same number of active weights, chosen by magnitude now (target networks)."""
        self.mask.copy_(top_k_mask(self.weight.abs(), self.active))
        self.weight.mul_(self.mask)

    def extra_repr(self) -> str:
        density = self.active / self.weight.numel()
        return (
            f"{super().extra_repr()}, density={density:.3f}, topology={self.topology}, "
            f"interval={self.interval}, drop_fraction={self.drop_fraction}, end_step={self.end_step}"
        )


def unstructured_layers(module: nn.Module) -> list[tuple[str, UnstructuredLinear]]:
    """Every UnstructuredLinear inside ``module`` with its qualified name."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, UnstructuredLinear)]


# ---- topology updates -----------------------------------------------------------------------
def cosine_drop_fraction(initial: float, step: int, end_step: int) -> float:
    """RigL's schedule: ``initial / 2 * (1 + cos(pi * step / end_step))``, 0 from ``end_step`` on."""
    if step >= end_step:
        return 0.0
    return initial / 2 * (1 + math.cos(math.pi * step / end_step))


@dataclass(frozen=True)
class TopologyChange:
    """What one drop-and-grow did to a layer (flat indices into the weight)."""

    dropped: torch.Tensor
    grown: torch.Tensor


@torch.no_grad()
def drop_and_grow(
    layer: UnstructuredLinear,
    drop_fraction: float,
    grow_scores: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TopologyChange:
    """Drop the ``round(drop_fraction * active)`` smallest-magnitude active weights of ``layer``
    and activate as many weights that were inactive before the drop: the highest
    ``grow_scores`` (RigL) or, with ``grow_scores=None``, uniformly random ones (SET). Grown
    weights start at 0; the active count is unchanged. Just-dropped weights are not regrown, so
    every update really moves connections (they are only candidates when too few others exist).
    """
    mask = layer.mask.flatten()
    weight = layer.weight.data.view(-1)  # a view: zeroing through it zeroes the layer's weight
    active_ids = torch.nonzero(mask, as_tuple=True)[0]
    inactive_ids = torch.nonzero(mask == 0, as_tuple=True)[0]
    count = min(round(drop_fraction * active_ids.numel()), active_ids.numel())
    empty = torch.zeros(0, dtype=torch.long, device=mask.device)
    if count == 0:
        return TopologyChange(empty, empty)
    # Smallest magnitudes first; ties to the lower index.
    order = torch.sort(weight[active_ids].abs(), stable=True).indices
    dropped = active_ids[order[:count]]
    candidates = inactive_ids if inactive_ids.numel() >= count else torch.cat([inactive_ids, dropped])
    if grow_scores is None:
        pick = torch.randperm(candidates.numel(), generator=generator)[:count].to(mask.device)
    else:
        pick = torch.sort(grow_scores.flatten()[candidates], descending=True, stable=True).indices[:count]
    grown = candidates[pick]
    new_mask = mask.clone()
    new_mask[dropped] = 0.0
    new_mask[grown] = 1.0
    layer.mask.copy_(new_mask.view_as(layer.mask))
    weight[dropped] = 0.0
    weight[grown] = 0.0
    return TopologyChange(dropped, grown)


# ---- building sparse networks ---------------------------------------------------------------
def sparsify_unstructured(
    module: nn.Module,
    sparsity: float,
    allocation: Allocation = "erdos_renyi",
    skip: Iterable[str] = (),
    topology: Topology = "static",
    interval: int = 1000,
    drop_fraction: float = 0.05,
    end_step: int = 0,
    generator: torch.Generator | None = None,
) -> list[LayerReport]:
    """Replace, in place, every ``nn.Linear`` of ``module`` (except names in ``skip``) by an
    UnstructuredLinear with the same weights, masked at random to the per-layer density that
    ``allocation`` gives for ``sparsity`` over the replaced layers; returns the layer report."""
    skipped = set(skip)
    targets = [
        (name, layer) for name, layer in module.named_modules() if type(layer) is nn.Linear and name not in skipped
    ]
    if not targets or sparsity == 0.0:
        return layer_report(module)
    shapes = [(linear.out_features, linear.in_features) for _, linear in targets]
    densities = allocate_densities(shapes, sparsity, allocation)
    for (name, linear), density in zip(targets, densities, strict=True):
        sparse = UnstructuredLinear(
            linear.in_features,
            linear.out_features,
            density,
            bias=linear.bias is not None,
            topology=topology,
            interval=interval,
            drop_fraction=drop_fraction,
            end_step=end_step,
            generator=generator,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            sparse.weight.copy_(linear.weight * sparse.mask)
            if linear.bias is not None:
                sparse.bias.copy_(linear.bias)
        replace_submodule(module, name, sparse)
    return layer_report(module)


# ---- masked Adam ----------------------------------------------------------------------------
class MaskedAdam(torch.optim.Adam):
    """Adam that keeps the gradient and both moments at exact zero where a layer's mask is 0
    (TowS). Positions follow the layers' current masks on every step, so dropped weights lose
    their moments and regrown weights start from zero moments. Parameters that are not the
    weight of an UnstructuredLinear are updated as by plain Adam.

    Args:
        params: as for ``torch.optim.Adam``.
        layers: the sparse layers whose weights are among ``params``.
        **kwargs: Adam's options (lr, betas, eps; weight_decay is refused: it would move
            inactive weights).
    """

    def __init__(self, params, layers: Iterable[UnstructuredLinear], **kwargs) -> None:
        if kwargs.get("weight_decay", 0):
            raise NmrlError("MaskedAdam does not support weight_decay")
        super().__init__(params, **kwargs)
        in_optimizer = {id(p) for group in self.param_groups for p in group["params"]}
        self._layers = [layer for layer in layers if id(layer.weight) in in_optimizer]

    @torch.no_grad()
    def _apply_masks(self, before_step: bool) -> None:
        for layer in self._layers:
            weight, mask = layer.weight, layer.mask
            if before_step and weight.grad is not None:
                weight.grad.mul_(mask)
            state = self.state.get(weight)
            if state:
                state["exp_avg"].mul_(mask)
                state["exp_avg_sq"].mul_(mask)
                if "max_exp_avg_sq" in state:
                    state["max_exp_avg_sq"].mul_(mask)
            if not before_step:
                weight.mul_(mask)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        self._apply_masks(before_step=True)
        loss = super().step(closure)
        self._apply_masks(before_step=False)
        return loss


def make_adam(
    params, lr: float, layers: Iterable[UnstructuredLinear] = (), masked: bool = False, **adam_options
) -> torch.optim.Adam:
    """Adam over ``params``: :class:`MaskedAdam` over ``layers`` when ``masked``, else plain Adam."""
    params = list(params)
    if masked:
        return MaskedAdam(params, layers, lr=lr, **adam_options)
    return torch.optim.Adam(params, lr=lr, **adam_options)
