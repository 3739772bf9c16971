"""From an algorithm's sparsity settings to sparse networks, their optimizers and their costs.

Every algorithm builds its networks dense; its :class:`~nmrl.train.sparse_training.SparseTraining`
hands each online network to :func:`sparsify_network` and makes its optimizers with
:func:`make_optimizer`, whose step hook keeps the sparse layers sparse (and moves their
topology) after each optimizer step. Two families:

- **N:M** (``--sparsity 2:4``, RNM): every Linear of every network is N:M (docs/architecture.md).
- **unstructured** (``--sparsity 0.9`` = 90% of the sparse layers' weights pruned), with
  ``--topology static`` (SS), ``set`` (DS-TD3 / DS-SAC) or ``rigl``; ``--optimizer masked-adam``
  and ``--activation leaky_relu`` give TowS. By default the output layer of each network stays
  dense (``--sparse-layers hidden``, as DS-TD3 does: the output layer is small, and pruning it
  removes whole action or Q dimensions' inputs); ``--sparse-layers all`` prunes it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nmrl.files import atomic_write_text
from nmrl.sparsity import sparsify
from nmrl.sparsity.accounting import CostSummary, format_count, network_costs, total_cost
from nmrl.sparsity.dynamic import make_adam, unstructured_layers
from nmrl.sparsity.spec import NMSparsity, Sparsity, UnstructuredSparsity
from nmrl.train.networks import Critic

if TYPE_CHECKING:
    from nmrl.train.config import AlgorithmConfig

logger = logging.getLogger(__name__)

# Fraction of the gradient updates after which RigL stops moving connections when
# --topology-end-step is 0 (the RigL paper's default end point).
RIGL_DEFAULT_END = 0.75


def rigl_end_step(config: AlgorithmConfig, spec: UnstructuredSparsity) -> int:
    """The gradient update at which topology updates stop (0 = never)."""
    if config.unstructured.topology_end_step:
        return config.unstructured.topology_end_step
    if spec.topology == "rigl":
        return max(1, int(RIGL_DEFAULT_END * max(config.planned_updates, 1)))
    return 0


def set_leaky_relu_slope(module: nn.Module, slope: float) -> None:
    """Give every LeakyReLU in ``module`` the negative slope ``slope``."""
    for layer in module.modules():
        if isinstance(layer, nn.LeakyReLU):
            layer.negative_slope = slope


def sparsify_network(module: nn.Module, spec: Sparsity, config: AlgorithmConfig, update_every: int = 1) -> None:
    """Make ``module`` (an online network, built dense) sparse as ``spec`` says, in place; ``config``
    gives the training schedule (N:M mask interval and SR-STE decay, unstructured topology updates).

    ``update_every``: the network's optimizer steps once per this many gradient updates (TD3's
    actor: ``policy_delay``), so that ``--topology-interval`` and ``--topology-end-step``, counted
    in gradient updates, mean the same wall of training for every network.
    """
    set_leaky_relu_slope(module, config.activation_slope)
    if isinstance(spec, NMSparsity):
        nm = config.nm
        if nm.nm_networks == "actor" and isinstance(module, Critic):
            return
        linears = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
        skip = [linears[0], linears[-1]] if nm.nm_layers == "hidden" else []
        sparsify(
            module,
            spec,
            mask_interval=nm.mask_interval,
            srste_decay=nm.srste_decay,
            gradient=nm.gradient,
            skip=skip,
        )
    elif isinstance(spec, UnstructuredSparsity):
        end = rigl_end_step(config, spec)
        sparsify_unstructured_network(
            module,
            spec,
            interval=max(1, round(config.unstructured.topology_interval / update_every)),
            drop_fraction=config.unstructured.drop_fraction,
            end_step=-(-end // update_every) if end else 0,
        )


def sparsify_unstructured_network(module: nn.Module, spec: UnstructuredSparsity, **schedule: Any) -> None:
    """``module``'s Linears made unstructured-sparse as ``spec`` says (its output layer kept dense
    with ``layers="hidden"``); ``schedule``: topology-update settings of :func:`sparsify_unstructured`."""
    sparsify(module, spec, **schedule)


def make_optimizer(
    networks: nn.Module | Iterable[nn.Module], lr: float, config: AlgorithmConfig, **adam_options: Any
) -> torch.optim.Adam:
    """Adam over the parameters of ``networks``, masked (TowS) with ``--optimizer masked-adam``;
    ``adam_options`` go to Adam (e.g. ``fused``)."""
    modules = [networks] if isinstance(networks, nn.Module) else list(networks)
    params = [p for module in modules for p in module.parameters()]
    layers = [layer for module in modules for _, layer in unstructured_layers(module)]
    return make_adam(params, lr, layers, masked=config.unstructured.optimizer == "masked-adam", **adam_options)


def agent_costs(networks: dict[str, nn.Module]) -> dict[str, CostSummary]:
    """Cost summaries of each network, and of the whole agent per gradient update.

    ``agent`` counts training FLOPs of the online networks (forward + backward) plus inference
    FLOPs of the target networks (named ``*_target``, forward only), each once per update: the
    ratio to a dense agent is what the sparse-RL papers report. Parameters count the online
    networks only (targets are copies). Networks without Linear layers (SAC's temperature) are left out.
    """
    summaries: dict[str, CostSummary] = {}
    agent: list[CostSummary] = []
    for name, module in networks.items():
        costs = network_costs(module)
        if not costs:
            continue
        summary = total_cost(costs)
        summaries[name] = summary
        if name.endswith("_target"):
            # Forward only: no training FLOPs and no parameters of its own.
            agent.append(CostSummary(0, 0, 0.0, 0.0, summary.inference_flops, summary.dense_inference_flops))
        else:
            agent.append(summary)
    summaries["agent"] = CostSummary(
        params=sum(s.params for s in agent),
        dense_params=sum(s.dense_params for s in agent),
        inference_flops=sum(s.inference_flops for s in agent),
        dense_inference_flops=sum(s.dense_inference_flops for s in agent),
        training_flops=sum(s.training_flops for s in agent),
        dense_training_flops=sum(s.dense_training_flops for s in agent),
        biases=sum(s.biases for s in agent),
    )
    return summaries


def cost_table(summaries: dict[str, CostSummary]) -> str:
    """The run summary's cost block: one line per online network and the agent total (target
    networks are copies that only run forward; they count in the agent's training FLOPs)."""
    lines = [f"{'network':<16} {'sparsity':>8} {'params':>16} {'inference FLOPs':>22} {'training FLOPs':>22}"]
    for name, s in summaries.items():
        if name.endswith("_target"):
            continue
        lines.append(
            f"{name:<16} {s.sparsity:>8.1%} {format_count(s.params):>8} ({s.params_ratio:>4.2f}x) "
            f"{format_count(s.inference_flops):>12} ({s.inference_ratio:>4.2f}x) "
            f"{format_count(s.training_flops):>12} ({s.training_ratio:>4.2f}x)"
        )
    return "\n".join(lines)


COSTS_FILE = "costs.json"


def log_costs(run_dir: Path, networks: dict[str, nn.Module], log: Callable[[dict[str, Any]], None]) -> None:
    """The run summary's cost block: writes ``costs.json`` (per network and per layer, with the
    ratios to dense), logs the agent's totals as a ``costs`` record and the table (``logging``)."""
    summaries = agent_costs(networks)
    layers = {
        name: [
            {**asdict(cost), "training_ratio": cost.training_flops / cost.dense_training_flops}
            for cost in network_costs(module)
        ]
        for name, module in networks.items()
        if name in summaries
    }
    document = {"networks": {name: s.to_dict() for name, s in summaries.items()}, "layers": layers}
    atomic_write_text(Path(run_dir) / COSTS_FILE, json.dumps(document, indent=2) + "\n")
    log({"kind": "costs", "step": 0, **summaries["agent"].to_dict()})
    logger.info("%s", cost_table(summaries))
