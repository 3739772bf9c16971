"""`nmrl train` before and after the training seam (issue 19): the same run, bit for bit, and as fast.

Runs `nmrl train` from two source trees: this checkout (the seam: a Trainer plus callbacks) and a
git revision from before it (``--baseline``, default d03b7a1, /work/main's last commit with the old
monolithic loop; checked out with ``git worktree`` into a temporary folder and imported through
``PYTHONPATH``, which comes before the editable install). Each run is its own process with one
torch thread, on the same config; the runs are interleaved (baseline, seam, seam, baseline, ...)
so that drifts in machine load hit both alike. The report:

- parity: the two runs' last and best checkpoints (networks with masks, optimizers, replay buffer,
  counters, RNG states) and metrics records (timings aside) compared value for value;
- throughput: env steps/s of the warm-up window (random actions, no update: where the seam's
  per-step callbacks weigh most) and of the windows with one update per step, medians over
  repeats, and the ratio seam / baseline.

    python benchmarks/seam_parity.py                              # Hopper-v5, dense and 2:4, 3 repeats
    /work/grid23/quiet python benchmarks/seam_parity.py --repeats 5 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 1_000  # random-action steps before the first update; nmrl logs steps/s per 1000 steps
RUNNER = (
    "import sys, nmrl; from nmrl.cli import main; "
    "print('nmrl from', nmrl.__file__, file=sys.stderr); sys.exit(main(sys.argv[1:]))"
)


def cpu_line() -> str:
    flags: set[str] = set()
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [name for name in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if name in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, instruction sets: {' '.join(isa) or 'none of avx2/avx512'}"


def run_train(tree: Path, out: Path, env_id: str, sparsity: str, steps: int, seed: int) -> tuple[Path, float]:
    """One `nmrl train` from ``tree``; its run directory and wall seconds."""
    total = WARMUP + steps
    args = ["train", "--env", env_id, "--sparsity", sparsity, "--seed", str(seed), "--total-steps", str(total)]
    args += ["--learning-starts", str(WARMUP), "--buffer-size", str(total), "--eval-every", str(total)]
    args += ["--eval-episodes", "2", "--checkpoint-every", str(total), "--threads", "1", "--no-progress"]
    args += ["--runs-dir", "runs", "--run-name", "run"]  # relative: both configs say the same
    environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    command = [sys.executable, "-c", RUNNER, *args]
    done = subprocess.run(command, cwd=out, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nmrl train from {tree} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    origin = next(line for line in done.stderr.splitlines() if line.startswith("nmrl from"))
    if not origin.split()[-1].startswith(str(tree)):
        raise SystemExit(f"the run imported the wrong tree: {origin} (wanted {tree})")
    return out / "runs" / "run", wall


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two checkpoint values first differ (None: equal, bit for bit)."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return None if same and a.shape == b.shape and torch.equal(a, b) else where
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return None if np.array_equal(np.asarray(a), np.asarray(b)) else where
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where} (keys {sorted(set(a) ^ set(b))})"
        for key in a:
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return f"{where} (length)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # both NaN
        return None
    return None if a == b else where


def python_rng_note(old: Any, new: Any, seed: int) -> str:
    """What the two runs did with Python's ``random`` (nothing in training draws from it; the old
    loop built a rich ``Progress`` even with --no-progress, and rich draws from it)."""
    import random

    def state(draws: int) -> list[Any]:
        generator = random.Random(seed)
        for _ in range(draws):
            generator.random()
        version, internal, gauss = generator.getstate()
        return [version, list(internal), gauss]

    def as_list(saved: Any) -> list[Any]:
        return [saved[0], list(saved[1]), saved[2]]

    said = []
    for name, saved in (("baseline", old), ("seam", new)):
        draws = next((n for n in range(4) if as_list(saved) == state(n)), None)
        said.append(f"{name}: {'?' if draws is None else draws} draw(s) since the seed")
    return "; ".join(said)


def parity(baseline: Path, seam: Path, seed: int) -> list[str]:
    """One line per part compared: equal, or where it first differs."""
    from nmrl.train.checkpoint import load_checkpoint
    from nmrl.train.run import read_metrics

    lines = []
    for name in ("checkpoints/last.pt", "checkpoints/best.pt"):
        old, new = load_checkpoint(baseline / name), load_checkpoint(seam / name)
        for part in sorted(set(old) | set(new)):
            found = first_difference(old.get(part), new.get(part), part)
            line = f"{name} {part}: " + ("identical" if found is None else f"DIFFERS at {found}")
            if found is not None and found.startswith("rng.python"):
                line += f" (Python's random: {python_rng_note(old['rng']['python'], new['rng']['python'], seed)})"
            lines.append(line)

    def untimed(run: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in read_metrics(run / "metrics.jsonl")]

    old_records, new_records = untimed(baseline), untimed(seam)
    same = json.dumps(old_records) == json.dumps(new_records)
    lines.append(f"metrics.jsonl ({len(new_records)} records, timings aside): " + ("identical" if same else "DIFFER"))
    return lines


def rates(run: Path) -> tuple[float, float]:
    """Steps/s of the warm-up window and the median over the windows with updates."""
    from nmrl.train.run import read_metrics

    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    warmup = next(r["steps_per_second"] for r in train if r["step"] == WARMUP)
    updating = [r["steps_per_second"] for r in train if r["step"] > WARMUP]
    return warmup, statistics.median(updating)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="d03b7a1", help="git revision from before the seam")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--sparsities", default="dense,2:4")
    parser.add_argument("--steps", type=int, default=2_000, help="env steps with updates, after the 1000-step warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    print(f"CPU: {cpu_line()}; one torch thread per run")
    with tempfile.TemporaryDirectory(prefix="nmrl-seam-") as scratch:
        base_tree = Path(scratch) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"baseline": base_tree, "seam": ROOT}
            results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            for sparsity in args.sparsities.split(","):
                order = ["baseline", "seam"]
                for repeat in range(args.repeats):
                    runs = {}
                    for name in order if repeat % 2 == 0 else order[::-1]:  # ABBA: drift hits both alike
                        out = Path(scratch) / f"{name}-{sparsity.replace(':', 'of')}-{repeat}"
                        out.mkdir()
                        run, wall = run_train(trees[name], out, args.env, sparsity, args.steps, args.seed)
                        results.setdefault((sparsity, name), []).append((*rates(run), wall))
                        runs[name] = run
                        print(f"  {sparsity:>5} {name:<8} repeat {repeat}: {results[(sparsity, name)][-1]}", flush=True)
                    if repeat == 0:
                        print(f"parity, {args.env} {sparsity} seed {args.seed} ({WARMUP + args.steps} steps):")
                        for line in parity(runs["baseline"], runs["seam"], args.seed):
                            print(f"  {line}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)

    print(f"\n{args.env}, {WARMUP} warm-up + {args.steps} update steps, medians of {args.repeats} interleaved runs")
    print("| sparsity | loop | warm-up steps/s | steps/s with updates | wall s | seam / baseline (updates) |")
    print("|---|---|---|---|---|---|")
    for sparsity in args.sparsities.split(","):
        medians = {
            name: [statistics.median(values) for values in zip(*results[(sparsity, name)], strict=True)]
            for name in ("baseline", "seam")
        }
        for name, (warm, updating, wall) in medians.items():
            ratio = f"{updating / medians['baseline'][1]:.3f}" if name == "seam" else ""
            print(f"| {sparsity} | {name} | {warm:.0f} | {updating:.1f} | {wall:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
