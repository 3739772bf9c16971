"""``nmrl compare``: train a grid of sparsity methods x seeds on one env, then tabulate and plot.

Each cell is an ordinary run (``<out>/runs/<method>__s<seed>``) trained by the shared loop in a
worker process. A cell is finished when its ``metrics.jsonl`` holds the evaluation at the last
step; running the same command again skips finished cells, resumes interrupted ones from their
checkpoint and only then rebuilds the results, so a grid can be stopped and continued at will.

Methods (all on ``--algo``, td3 or sac):

=============  ==============================================================
``dense``      no sparsity
``N:M``        RNM: every network N:M (``2:4``, ``1:4``, ``1:8``, ...)
``ss-F``       static sparse, fraction F of the sparse layers' weights pruned
``ds-F``       dynamic sparse (SET): DS-TD3 / DS-SAC
``rigl-F``     dynamic sparse with gradient regrowth (RigL)
``tows-F``     TowS: SET + masked Adam + LeakyReLU
=============  ==============================================================
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from nmrl.errors import NmrlError
from nmrl.sparsity.spec import UnstructuredSparsity, parse_sparsity
from nmrl.train.config import TrainConfig
from nmrl.train.sparse import COSTS_FILE

METHOD_PREFIXES: dict[str, dict[str, Any]] = {
    "ss": {"topology": "static"},
    "ds": {"topology": "set"},
    "set": {"topology": "set"},
    "rigl": {"topology": "rigl"},
    "tows": {"topology": "set", "optimizer": "masked-adam", "activation": "leaky_relu"},
}


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a name and the config settings it changes."""

    name: str
    settings: dict[str, Any]

    @property
    def slug(self) -> str:
        """The name as a directory name (``2:4`` -> ``2of4``)."""
        return self.name.replace(":", "of")


def parse_method(text: str) -> Method:
    """``dense`` / ``2:4`` / ``ss-0.9`` / ``ds-0.5`` / ``rigl-0.9`` / ``tows-0.9`` -> Method."""
    name = text.strip()
    if name.lower() == "dense" or ":" in name:
        parse_sparsity(name)  # raises NmrlError for a bad pattern
        return Method(name.lower() if name.lower() == "dense" else name, {"sparsity": name, "topology": "auto"})
    prefix, _, fraction = name.partition("-")
    if prefix.lower() not in METHOD_PREFIXES or not fraction:
        raise NmrlError(
            f"unknown method {text!r}: use dense, an N:M pattern (2:4), or "
            f"{'/'.join(METHOD_PREFIXES)} with a sparsity, like ds-0.5 or tows-0.9"
        )
    if not isinstance(parse_sparsity(fraction), UnstructuredSparsity):
        raise NmrlError(f"method {text!r}: {prefix} needs an unstructured sparsity fraction like 0.9")
    return Method(name, {"sparsity": fraction, **METHOD_PREFIXES[prefix.lower()]})


def parse_methods(text: str) -> list[Method]:
    methods = [parse_method(part) for part in text.split(",") if part.strip()]
    if not methods:
        raise NmrlError("--methods is empty")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise NmrlError(f"--methods lists a method twice: {text}")
    return methods


# ---- one cell ---------------------------------------------------------------------------------
def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run, in step order ([] before the first)."""
    from nmrl.train.run import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = read_metrics(path)
    return sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["step"])


def is_finished(run_dir: Path, config: TrainConfig) -> bool:
    """The run evaluated at its last step, or stopped early at --stop-at-return."""
    target = config.stop_at_return
    return any(
        record["step"] >= config.total_steps or (target is not None and record["return_mean"] >= target)
        for record in read_evals(run_dir)
    )


def run_cell(config_data: dict[str, Any], log_path: str) -> float:
    """Worker: train (or resume) one cell, its output going to ``log_path``. Returns the seconds
    it took."""
    from nmrl.envs import confirm_env_id
    from nmrl.train.loop import LAST_CHECKPOINT, resume, train

    config = TrainConfig.from_dict(config_data)
    confirm_env_id(config.env)  # the grid's env came from the user's command line, not from a file
    run_dir = Path(config.runs_dir) / config.run_name
    start = time.perf_counter()
    with open(log_path, "a") as log:
        sys.stdout = sys.stderr = log
        if (run_dir / LAST_CHECKPOINT).exists():
            resume(run_dir, total_steps=config.total_steps)
        else:
            # A cell killed before its first checkpoint left only logs: start it afresh.
            shutil.rmtree(run_dir, ignore_errors=True)
            train(config)
    return time.perf_counter() - start


# ---- the grid ---------------------------------------------------------------------------------
@dataclass
class Cell:
    method: Method
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.runs_dir) / self.config.run_name


def build_grid(base: TrainConfig, methods: Sequence[Method], seeds: int, out: Path) -> list[Cell]:
    cells = []
    for method in methods:
        for seed in range(base.seed, base.seed + seeds):
            # One torch thread per worker unless asked otherwise: workers share the cores.
            config = base.with_settings(
                **method.settings,
                seed=seed,
                runs_dir=out / "runs",
                run_name=f"{method.slug}__s{seed}",
                progress=False,
                threads=base.threads or 1,
            )
            config.validate()
            cells.append(Cell(method, seed, config))
    return cells


# Settings a finished or interrupted cell may differ in from a new invocation of the same grid.
MAY_CHANGE = frozenset({"total_steps", "threads", "progress", "runs_dir", "device"})


def check_same_settings(cell: Cell) -> None:
    """Refuse to mix a grid's existing runs with different settings (their results would not be
    comparable, and a resume keeps the saved settings)."""
    saved_path = cell.run_dir / "config.json"
    if not saved_path.exists():
        return
    saved, wanted = TrainConfig.load(saved_path).to_dict(), cell.config.to_dict()
    changed = sorted(key for key in wanted if key not in MAY_CHANGE and saved.get(key) != wanted[key])
    if changed:
        raise NmrlError(
            f"{cell.run_dir} was trained with other settings ({', '.join(changed)}); "
            "use another --out for a different grid"
        )


def run_grid(cells: Sequence[Cell], workers: int) -> None:
    """Train every unfinished cell, ``workers`` at a time, each in its own process."""
    for cell in cells:
        check_same_settings(cell)
    todo = [cell for cell in cells if not is_finished(cell.run_dir, cell.config)]
    print(
        f"{len(cells) - len(todo)} of {len(cells)} cells already finished; training {len(todo)} "
        f"with {workers} worker process(es)",
        file=sys.stderr,
        flush=True,
    )
    if not todo:
        return
    # spawn: a fresh interpreter per worker (no forked torch/MuJoCo state, same on every OS).
    context = multiprocessing.get_context("spawn")
    started: dict[Any, Cell] = {}
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for cell in todo:
            cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = cell.run_dir.parent / f"{cell.config.run_name}.log"
            started[pool.submit(run_cell, cell.config.to_dict(), str(log_path))] = cell
        pending = set(started)
        done_count = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = started[future]
                done_count += 1
                label = f"[{done_count}/{len(todo)}] {cell.method.name} seed {cell.seed}"
                error = future.exception()
                if error is not None:
                    failures.append(f"{label}: {error}")
                    print(
                        f"{label}: FAILED ({error}); log: {cell.run_dir.parent / cell.config.run_name}.log",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                evals = read_evals(cell.run_dir)
                if not evals:
                    final = "no evaluation"
                elif is_finished(cell.run_dir, cell.config):
                    final = f"final return {evals[-1]['return_mean']:.1f}"
                else:  # stopped by a signal: its checkpoint is kept, the next invocation resumes it
                    final = f"stopped at step {evals[-1]['step']:,} (not finished; run again to resume)"
                print(f"{label}: {final} ({future.result():.0f} s)", file=sys.stderr, flush=True)
    if failures:
        raise NmrlError(f"{len(failures)} cell(s) failed: " + "; ".join(failures))


# ---- results ----------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """One method's row: final returns over seeds, curves, and the costs of its networks."""

    method: Method
    finals: list[float]
    curves: dict[int, list[tuple[int, float]]]  # seed -> [(step, return)]
    costs: dict[str, Any]

    @property
    def mean(self) -> float:
        return float(np.mean(self.finals)) if self.finals else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.finals)) if self.finals else math.nan


def collect(cells: Sequence[Cell], methods: Sequence[Method]) -> list[MethodResult]:
    results = []
    for method in methods:
        finals, curves, costs = [], {}, {}
        for cell in (c for c in cells if c.method == method):
            evals = read_evals(cell.run_dir)
            curves[cell.seed] = [(r["step"], r["return_mean"]) for r in evals]
            if evals and is_finished(cell.run_dir, cell.config):
                finals.append(float(evals[-1]["return_mean"]))
            if not costs and (cell.run_dir / COSTS_FILE).exists():
                costs = json.loads((cell.run_dir / COSTS_FILE).read_text())["networks"]
        results.append(MethodResult(method, finals, curves, costs))
    return results


TABLE_COLUMNS = (
    "method",
    "return_mean",
    "return_std",
    "seeds",
    "sparsity",
    "actor_params",
    "agent_params",
    "params_vs_dense",
    "training_flops_vs_dense",
    "inference_flops_vs_dense",
)


def table_rows(results: Sequence[MethodResult]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        agent, actor = result.costs.get("agent", {}), result.costs.get("actor", {})
        rows.append(
            {
                "method": result.method.name,
                "return_mean": result.mean,
                "return_std": result.std,
                "seeds": len(result.finals),
                "sparsity": agent.get("sparsity", math.nan),
                "actor_params": actor.get("params", math.nan),
                "agent_params": agent.get("params", math.nan),
                "params_vs_dense": agent.get("params_ratio", math.nan),
                "training_flops_vs_dense": agent.get("training_ratio", math.nan),
                # What a deployed policy costs: the actor's forward pass.
                "inference_flops_vs_dense": actor.get("inference_ratio", math.nan),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], env: str, algo: str, total_steps: int) -> str:
    from nmrl.sparsity.accounting import format_count

    def count(value: float) -> str:
        return "-" if isinstance(value, float) and math.isnan(value) else format_count(value)

    lines = [
        f"{env}, {algo}, {total_steps:,} steps: final evaluation return, mean ± std over seeds",
        "",
        "| method | return | seeds | sparsity | actor params | agent params | training FLOPs | actor FLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ret = "-" if math.isnan(row["return_mean"]) else f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"
        lines.append(
            f"| {row['method']} | {ret} | {row['seeds']} | {row['sparsity']:.1%} | {count(row['actor_params'])} | "
            f"{count(row['agent_params'])} | {row['training_flops_vs_dense']:.2f}x | "
            f"{row['inference_flops_vs_dense']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[MethodResult], path: Path, title: str) -> None:
    """Mean evaluation return per method against env steps, with a ±1 std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for result in results:
        curves = [c for c in result.curves.values() if c]
        if not curves:
            continue
        # Seeds share the evaluation schedule; align them on the steps all of them reached.
        length = min(len(c) for c in curves)
        steps = np.array([step for step, _ in curves[0][:length]])
        returns = np.array([[ret for _, ret in c[:length]] for c in curves])
        mean, std = returns.mean(axis=0), returns.std(axis=0)
        (line,) = axes.plot(steps, mean, label=f"{result.method.name} ({len(curves)} seeds)")
        axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("environment steps")
    axes.set_ylabel("evaluation return")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(results: Sequence[MethodResult], out: Path, base: TrainConfig) -> str:
    """results.md, results.csv, curves.csv and curves.png in ``out``; returns the markdown."""
    rows = table_rows(results)
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "curves.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "seed", "step", "return_mean"])
        for result in results:
            for seed, curve in result.curves.items():
                writer.writerows([result.method.name, seed, step, ret] for step, ret in curve)
    markdown = markdown_table(rows, base.env, base.algo, base.total_steps)
    (out / "results.md").write_text(markdown)
    plot_curves(results, out / "curves.png", f"{base.env} ({base.algo})")
    return markdown


def default_out(base: TrainConfig) -> Path:
    return Path(base.runs_dir) / f"compare__{base.env}__{base.algo}"


def run_comparison(
    base: TrainConfig,
    methods: str,
    seeds: int = 3,
    workers: int = 2,
    out: Path | None = None,
    report_only: bool = False,
) -> Path:
    """Train (or continue) the grid, then write the results; returns the output folder."""
    if seeds < 1 or workers < 1:
        raise NmrlError("--seeds and --workers must be at least 1")
    out = Path(out) if out is not None else default_out(base)
    if report_only and not out.is_dir():
        raise NmrlError(f"--report-only: {out} does not exist (nothing to report)")
    cells = build_grid(base, parse_methods(methods), seeds, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(
        json.dumps(
            {
                "methods": [m.name for m in {c.method.name: c.method for c in cells}.values()],
                "seeds": seeds,
                "base_config": base.to_dict(),
            },
            indent=2,
        )
        + "\n"
    )
    if not report_only:
        run_grid(cells, workers)
    method_list = list({cell.method.name: cell.method for cell in cells}.values())
    markdown = write_results(collect(cells, method_list), out, base)
    print(markdown)
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'curves.png'}")
    return out


def compare(
    config: Annotated[TrainConfig, tyro.conf.arg(name="")],
    methods: str = "dense,2:4,ds-0.5",
    seeds: int = 3,
    workers: int = 2,
    out: Path | None = None,
    report_only: bool = False,
) -> None:
    """Compare sparsity methods on one env: train methods x seeds in parallel worker processes,
    then write a results table (markdown + CSV) and learning curves (PNG) with a seed band.
    Running the command again skips finished cells and resumes interrupted ones.

    Args:
        config: Training settings shared by every cell; each method sets --sparsity and --topology.
        methods: Comma-separated: dense, N:M patterns (2:4, 1:4, 1:8), ss-F (static sparse), ds-F (SET:
            DS-TD3/DS-SAC), rigl-F, tows-F (SET + masked Adam + LeakyReLU); F = fraction of weights pruned.
        seeds: Seeds per method: --seed, --seed+1, ...
        workers: Parallel worker processes (one torch thread each unless --threads is given).
        out: Output folder (default: <runs-dir>/compare__<env>__<algo>).
        report_only: Only rebuild the table and plot from the runs already in --out.
    """
    run_comparison(config, methods, seeds=seeds, workers=workers, out=out, report_only=report_only)
