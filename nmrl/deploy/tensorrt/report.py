"""The build report: what one ``nmrl deploy build`` made and what the builder said, for people and CI.

Saved as JSON beside the engine and printed by the CLI. It is an output only: nothing in nmrl
reads it back to decide how to run an engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nmrl.files import atomic_write_text


@dataclass
class BuildReport:
    """What ``build_engines`` made, saved as JSON next to the engine."""

    flavour: str
    version: str
    onnx: str
    plan: str
    dense_plan: str | None
    profile: dict[str, int]
    settings: dict[str, Any]
    flags: dict[str, bool]
    onnx_gemms: list[dict[str, Any]]
    builder_eligible: list[str] | None
    builder_picked: list[str] | None
    inspector_sparse_tactics: list[str] | None
    notes: list[str] = field(default_factory=list)
    inspector_fused_layers: list[str] | None = None  # Myelin regions the inspector cannot see into
    sparse_kernels: str = ""  # the verdict: which layers run sparse kernels, and whose word it is
    env_id: str | None = None  # from the ONNX metadata (nmrl.env_id), for the reader

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BuildReport:
        """Read a saved report (for tools and tests; the runner never does)."""
        return cls(**json.loads(Path(path).read_text()))

    def format(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [
            f"{self.flavour} {self.version}: {self.plan}"
            + (f"  (dense-kernel engine: {self.dense_plan})" if self.dense_plan else ""),
            f"  flags: {', '.join(k for k, v in self.flags.items() if v) or 'none'};  "
            f"batch profile {self.profile['min']}/{self.profile['opt']}/{self.profile['max']}",
            "  weight matrices in the ONNX (K x N, 2:4 along K?):",
        ]
        for gemm in self.onnx_gemms:
            fits = "2:4" if gemm["fits_2of4"] else "no"
            lines.append(
                f"    {gemm['node']:<28} {gemm['k']:>6} x {gemm['n']:<6} {gemm['dtype']:<8} "
                f"density {gemm['density']:.3f}  {fits}"
            )

        def show(names: list[str] | None, missing: str) -> str:
            if names is None:
                return missing
            return ", ".join(names) if names else "none"

        lines.append(
            "  builder: eligible for sparse math: " + show(self.builder_eligible, "not reported by this builder")
        )
        lines.append(
            "  builder: picked sparse kernels for: " + show(self.builder_picked, "not reported by this builder")
        )
        if self.sparse_kernels:
            lines.append("  sparse kernels run in: " + self.sparse_kernels)
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
