"""What the benchmarks print about the machine they ran on (imported by the scripts beside it:
``python benchmarks/<script>.py`` puts this folder first on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name as Linux reports it ("unknown CPU" where /proc/cpuinfo says nothing)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"
