"""Training on the fast path: give the chosen ``NMLinear`` layers of every network the 2:4 kernel,
keep their compressed weights fresh, and refuse with one line where the device cannot do it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from nmrl.errors import NmrlError
from nmrl.sparsity.layers import MASKED_DENSE, nm_layers
from nmrl.sparsity.semi_structured import probe
from nmrl.sparsity.semi_structured.kernel import SemiStructuredKernel, fast_path_kernel, on_fast_path
from nmrl.sparsity.semi_structured.probe import FAST_DTYPES, SemiStructuredSupport
from nmrl.sparsity.semi_structured.selection import LayerChoice, choose_layers
from nmrl.sparsity.semi_structured.timing import measure_layers


def enable_semi_structured(
    module: nn.Module,
    support: SemiStructuredSupport | None = None,
    speedups: Mapping[str, float] | None = None,
    measure_batch: int | None = None,
) -> list[LayerChoice]:
    """Give the selected ``NMLinear`` layers of ``module`` the 2:4 kernel, in place, and return the
    per-layer choice (the others keep, or go back to, the masked-dense kernel). ``measure_batch``
    times each candidate layer at that batch first and keeps only those where 2:4 wins."""
    support = support or probe.probe_semi_structured()
    layers = nm_layers(module)
    if measure_batch is not None and support.available and speedups is None:
        speedups = measure_layers(layers, measure_batch)
    choices = choose_layers(layers, support, speedups)
    for (_, layer), choice in zip(layers, choices, strict=True):
        if choice.sparse and not on_fast_path(layer):
            layer.kernel = SemiStructuredKernel()
        elif not choice.sparse:
            layer.kernel = MASKED_DENSE
    return choices


def disable_semi_structured(module: nn.Module) -> None:
    """Undo :func:`enable_semi_structured`: every layer back to the masked-dense kernel."""
    for _, layer in nm_layers(module):
        layer.kernel = MASKED_DENSE


def drop_compressed(layers: Iterable[nn.Module]) -> None:
    """Make every fast-path layer in ``layers`` recompress its weight on its next forward."""
    for layer in layers:
        if (kernel := fast_path_kernel(layer)) is not None:
            kernel.drop_compressed()


class SemiStructuredTraining:
    """The fast path for a training run: gives every network's eligible layers the 2:4 kernel
    (those whose whole training step, recompression included, measured faster at
    ``measure_batch`` rows, when given; each layer shape timed once for all networks) and provides
    the autocast context the update runs under. Fails with one clear NmrlError when the device
    cannot do it, rather than silently training masked-dense."""

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        dtype_name: str,
        device: torch.device,
        measure_batch: int | None = None,
    ) -> None:
        if dtype_name not in FAST_DTYPES:
            raise NmrlError(f"2:4 training runs in {' or '.join(FAST_DTYPES)}, not {dtype_name!r}")
        support = probe.device_support(device)
        if not support.available:
            raise NmrlError(f"--semi-structured: 2:4 kernels do not work here: {support.reason}")
        if dtype_name not in support.dtypes:
            raise NmrlError(f"--semi-structured: 2:4 {dtype_name} does not work here ({support.reason})")
        self.dtype = FAST_DTYPES[dtype_name]
        self.device_type = device.type
        layers = {name: nm_layers(net) for name, net in networks.items()}
        speedups: dict[str, float] | None = None
        if measure_batch is not None:  # keep masked-dense the layers where 2:4 measured slower
            every_layer = [(f"{network}.{name}", layer) for network, named in layers.items() for name, layer in named]
            speedups = measure_layers(every_layer, measure_batch, self.dtype, training=True, device=device)
        self.choices = {}
        for network, net in networks.items():
            own = (
                None
                if speedups is None
                else {
                    name: speedups[f"{network}.{name}"]
                    for name, _ in layers[network]
                    if f"{network}.{name}" in speedups
                }
            )
            self.choices[network] = enable_semi_structured(net, support, own)
        if not self.engaged:
            reasons = sorted({choice.reason for choices in self.choices.values() for choice in choices})
            raise NmrlError(
                f"--semi-structured: no layer would run on 2:4 kernels ({'; '.join(reasons)}); "
                "train without --semi-structured"
            )

    @property
    def engaged(self) -> bool:
        """Whether any layer runs on 2:4 kernels."""
        return any(choice.sparse for choices in self.choices.values() for choice in choices)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def report(self) -> str:
        lines = []
        for network, choices in self.choices.items():
            lines += [str(replace(choice, name=f"{network}.{choice.name}")) for choice in choices]
        return "\n".join(lines)
