"""N:M patterns: at most N nonzeros in every group of M consecutive weights along the input dim."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nmrl.errors import NmrlError

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
MAX_M = 256
"""The largest group: nm-packed stores in-group positions in 8 bits, and sparse kernels use M of 2
to 16. A larger M (``1:99999999999999999999`` from a file or a flag) is refused here, not in the
array code it would reach (numpy's pad width, numba's integer range)."""


@dataclass(frozen=True, order=True)
class NMPattern:
    """Keep at most ``n`` of every ``m`` consecutive weights along a layer's input dimension.

    ``NMPattern(1, 1)`` keeps everything and is the dense pattern (:data:`DENSE`).
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise NmrlError(f"N:M pattern needs integers, got n={self.n!r}, m={self.m!r}")
        if not 1 <= self.m <= MAX_M:
            raise NmrlError(f"N:M pattern {self.n}:{self.m}: M must be between 1 and {MAX_M}")
        if not 1 <= self.n <= self.m:
            raise NmrlError(f"N:M pattern {self.n}:{self.m}: N must be between 1 and M")

    @classmethod
    def parse(cls, text: str) -> NMPattern:
        """Parse ``"2:4"``-style text, or ``"dense"``; anything else raises :class:`NmrlError`."""
        if not isinstance(text, str):
            raise NmrlError(f"N:M pattern must be text like '2:4', got {text!r}")
        if text.strip().lower() == "dense":
            return DENSE
        match = _PATTERN_RE.match(text)
        if match is None:
            raise NmrlError(f"invalid N:M pattern {text!r}: expected 'N:M' (e.g. '2:4') or 'dense'")
        n, m = match.groups()
        if max(len(n), len(m)) > 9:  # int() of thousands of digits is a ValueError of its own
            raise NmrlError(f"N:M pattern {text.strip()[:40]!r}: M must be between 1 and {MAX_M}")
        return cls(int(n), int(m))

    @property
    def is_dense(self) -> bool:
        return self.n == self.m

    @property
    def density(self) -> float:
        """Fraction of weights kept (for widths that are a multiple of M)."""
        return self.n / self.m

    def __str__(self) -> str:
        return "dense" if self.is_dense else f"{self.n}:{self.m}"


DENSE = NMPattern(1, 1)
