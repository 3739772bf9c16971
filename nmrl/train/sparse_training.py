"""The rules every algorithm's sparse training follows, kept by one object: :class:`SparseTraining`.

An algorithm builds its networks dense and hands them to its ``SparseTraining``; from then on
this object, not the update body, keeps them sparse and correct:

- :meth:`SparseTraining.sparsify` makes an online network N:M or unstructured as the config says
  (:mod:`nmrl.train.sparse`) and moves it to the training device;
- :meth:`SparseTraining.target` makes the frozen copy that :class:`SoftUpdate` Polyak-averages
  (shadow weights) and then re-masks, so every target is sparse after every update;
- :meth:`SparseTraining.optimizer` makes the Adam of some networks and binds it to them with
  :func:`nmrl.sparsity.helpers.bind_optimizer` (the helper users call in their own loops): after
  each ``step()`` every sparse layer of those networks counts the step (its mask is recomputed
  every ``--mask-interval`` steps) and drops its compressed 2:4 weight. The hook is what keeps the
  compressed weight fresh: a fused Adam writes parameters without advancing their
  ``_version``, so a cache keyed on versions alone would keep multiplying by the old weight;
- :meth:`SparseTraining.enable_fast_path` switches, with ``--semi-structured``, the eligible layers
  of every network to 2:4 sparse tensor cores (or fails with one line where they cannot run);
  :meth:`SparseTraining.autocast` is the precision context updates run under, and
  :meth:`SparseTraining.minimize` the backward + step, loss-scaled under fp16.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from nmrl.sparsity import MaskedLinear, masked_layers
from nmrl.sparsity.helpers import bind_optimizer, remask_now
from nmrl.train.sparse import make_optimizer, sparsify_network

Network = TypeVar("Network", bound=nn.Module)
logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nmrl.sparsity.semi_structured import SemiStructuredTraining
    from nmrl.train.config import AlgorithmConfig


def _sparse_layers(networks: nn.Module | Iterable[nn.Module]) -> list[MaskedLinear]:
    modules = [networks] if isinstance(networks, nn.Module) else list(networks)
    return [layer for module in modules for _, layer in masked_layers(module)]


class SoftUpdate:
    """Target networks that trail their online networks: ``target <- (1 - tau) target + tau online``
    over every parameter (dense shadow weights included), then each target re-selects its masks
    from its own averaged weights, so targets are sparse after every update."""

    def __init__(self, tau: float, masks: str = "remask") -> None:
        self.tau, self.masks = tau, masks
        self.target_params: list[torch.Tensor] = []
        self.online_params: list[torch.Tensor] = []
        self.target_layers: list[MaskedLinear] = []
        self.online_layers: list[MaskedLinear] = []

    def add(self, target: nn.Module, online: nn.Module) -> None:
        self.target_params += list(target.parameters())
        self.online_params += list(online.parameters())
        self.target_layers += _sparse_layers(target)
        self.online_layers += _sparse_layers(online)

    @torch.no_grad()
    def __call__(self) -> None:
        if not self.target_params:
            return
        torch._foreach_lerp_(self.target_params, self.online_params, self.tau)
        if self.masks == "copy":  # --target-masks copy: each target keeps its online network's masks
            torch._foreach_copy_([t.mask for t in self.target_layers], [o.mask for o in self.online_layers])
        else:
            remask_now(self.target_layers)


class SparseTraining:
    """One algorithm's sparse-training bookkeeping (see the module docstring)."""

    def __init__(self, config: AlgorithmConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.spec = config.sparsity  # every network of the algorithm gets this value
        self.soft_update = SoftUpdate(config.tau, config.nm.target_masks)
        self.fast_path: SemiStructuredTraining | None = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self._precision: Any = contextlib.nullcontext

    def sparsify(self, network: Network, update_every: int = 1) -> Network:
        """``network`` (built dense) made sparse as the config says and moved to the device.
        ``update_every``: its optimizer steps once per this many gradient updates (TD3's actor)."""
        sparsify_network(network, self.spec, self.config, update_every=update_every)
        return network.to(self.device)

    def target(self, online: Network) -> Network:
        """A frozen copy of ``online`` that :attr:`soft_update` keeps trailing it."""
        target = copy.deepcopy(online).requires_grad_(False)
        self.soft_update.add(target, online)
        return target

    def optimizer(self, networks: nn.Module | Iterable[nn.Module], lr: float) -> torch.optim.Optimizer:
        """Adam over ``networks`` (masked with ``--optimizer masked-adam``); after each of its steps
        the sparse layers of ``networks`` refresh their masks and drop their compressed weights."""
        networks = [networks] if isinstance(networks, nn.Module) else list(networks)
        optimizer = make_optimizer(networks, lr, self.config, fused=self.device.type != "mps")
        if _sparse_layers(networks):
            bind_optimizer(optimizer, networks)  # the public helper: one mechanism for every trainer
        return optimizer

    def enable_fast_path(self, networks: Mapping[str, nn.Module]) -> None:
        """With ``--semi-structured``: run the 2:4 layers of ``networks`` (all of the algorithm's,
        targets included) on sparse tensor cores, or raise one NmrlError saying why they cannot.
        Call once, after every network exists. Without the flag: nothing."""
        if not self.config.fast_path.semi_structured:
            return
        from nmrl.sparsity.semi_structured import SemiStructuredTraining

        self.fast_path = SemiStructuredTraining(
            networks, self.config.fast_path.semi_structured_dtype, self.device, measure_batch=self.config.batch_size
        )
        logger.info(
            "2:4 semi-structured layers (%s):\n%s", self.config.fast_path.semi_structured_dtype, self.fast_path.report()
        )
        self._precision = self.fast_path.autocast
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fast_path.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of an update: fp16/bf16 autocast on the fast path, else nothing."""
        if self.config.fast_path.semi_structured and self.fast_path is None:
            raise RuntimeError("--semi-structured: the algorithm never called SparseTraining.enable_fast_path")
        return self._precision()

    def minimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One gradient step on ``loss``: zero the gradients, backpropagate, step (under fp16,
        through the GradScaler: a step whose gradients overflowed is skipped)."""
        optimizer.zero_grad(set_to_none=True)
        if not self.scaler.is_enabled():
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
