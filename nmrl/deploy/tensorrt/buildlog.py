"""The builder's log: a logger that keeps every line, and the two ``(Sparsity)`` lines read back.

TensorRT says which layers were eligible for sparse math and which it picked sparse kernels for
only in its log (INFO); nmrl needs those lines themselves, so it installs its own logger rather
than Polygraphy's global one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_ELIGIBLE_RE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)$")
_PICKED_RE = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)$")


def _layer_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(", ") if name.strip()]


def parse_sparsity_log(lines: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    """(eligible, picked) layer names from TensorRT's builder log; None where it printed no such
    line (TensorRT prints both lines, possibly empty, whenever SPARSE_WEIGHTS was set)."""
    eligible = picked = None
    for line in lines:
        if match := _ELIGIBLE_RE.search(line):
            eligible = _layer_list(match.group(1))
        elif match := _PICKED_RE.search(line):
            picked = _layer_list(match.group(1))
    return eligible, picked


def capturing_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps every message (VERBOSE and up) as ``SEVERITY: text``."""

    logger_base: Any = trt.ILogger  # the module is imported at run time: its classes are not known statically

    class CapturingLogger(logger_base):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            self.lines.append(f"{getattr(severity, 'name', severity)}: {msg}")

        def errors(self) -> list[str]:
            return [line for line in self.lines if line.startswith(("ERROR", "INTERNAL_ERROR"))]

    return CapturingLogger()
