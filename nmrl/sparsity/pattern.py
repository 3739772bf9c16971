"""N:M patterns: at most N nonzeros in every group of M consecutive weights along the input dim."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nmrl.errors import NmrlError

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


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
        if self.m < 1:
            raise NmrlError(f"N:M pattern {self.n}:{self.m}: M must be at least 1")
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
        return cls(int(match.group(1)), int(match.group(2)))

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
