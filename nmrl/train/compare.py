"""``nmrl compare``: train a grid of envs x sparsity methods x seeds, then tabulate and plot.

Each cell is an ordinary run (``<out>/<env>/runs/<method>__s<seed>``) trained by the shared loop,
in a local worker process or a Ray task (``nmrl.train.engines``). A cell is finished when its
``metrics.jsonl`` holds the evaluation at the last step; running the same command again skips
finished cells, resumes interrupted ones from their checkpoint and only then rebuilds the results,
so a grid can be stopped and continued at will. Per env: a table (IQM with a bootstrap CI, mean ±
std, costs) and curves; over envs: the return normalised by dense (``nmrl.train.aggregate``).

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
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from nmrl.errors import NmrlError
from nmrl.files import atomic_write_text
from nmrl.sparsity.spec import UnstructuredSparsity, parse_sparsity
from nmrl.train.aggregate import curve_band, iqm, stratified_bootstrap_ci
from nmrl.train.config import SharedConfig, TrainConfig
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


# ---- the grid ---------------------------------------------------------------------------------
@dataclass
class Cell:
    env: str
    method: Method
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.runs_dir) / self.config.run_name

    @property
    def log_path(self) -> Path:
        return Path(self.config.runs_dir) / f"{self.config.run_name}.log"

    @property
    def label(self) -> str:
        return f"{self.env} {self.method.name} seed {self.seed}"


def parse_envs(text: str, default: str) -> list[str]:
    """``--envs A,B`` (empty: ``--env``) -> env ids, each known to Gymnasium."""
    from nmrl.envs import make_env

    envs = [part.strip() for part in text.split(",") if part.strip()] if text else [default]
    if len(set(envs)) != len(envs):
        raise NmrlError(f"--envs lists an env twice: {text}")
    for env_id in envs:
        make_env(env_id).close()  # NmrlError for an unknown id, before anything is trained
    return envs


def env_folder(out: Path, env: str) -> Path:
    """Each env's runs, table and curves live in ``<out>/<env>/``."""
    return out / env


def build_grid(
    base: SharedConfig, envs: Sequence[str], methods: Sequence[Method], seeds: int, first_seed: int, out: Path
) -> list[Cell]:
    """One cell per env x method x seed (seeds ``first_seed .. first_seed + seeds - 1``)."""
    cells = []
    for env in envs:
        for method in methods:
            for seed in range(first_seed, first_seed + seeds):
                # One torch thread per worker unless asked otherwise: workers share the cores.
                config = TrainConfig.from_shared(
                    base,
                    **method.settings,
                    env=env,
                    seed=seed,
                    runs_dir=env_folder(out, env) / "runs",
                    run_name=f"{method.slug}__s{seed}",
                    progress=False,
                    threads=base.threads or 1,
                )
                config.validate()
                cells.append(Cell(env, method, seed, config))
    return cells


# Settings a finished or interrupted cell may differ in from a new invocation of the same grid.
MAY_CHANGE = frozenset({"total_steps", "threads", "progress", "runs_dir", "device"})


def check_same_settings(cell: Cell) -> None:
    """Refuse to mix a grid's existing runs with different settings (their results would not be
    comparable, and a resume keeps the saved settings)."""
    saved_path = cell.run_dir / "config.json"
    if not saved_path.exists():
        return
    saved, wanted = TrainConfig.load(saved_path).flat_settings(), cell.config.flat_settings()
    changed = sorted(key for key in wanted if key not in MAY_CHANGE and saved.get(key) != wanted[key])
    if changed:
        raise NmrlError(
            f"{cell.run_dir} was trained with other settings ({', '.join(changed)}); "
            "use another --out for a different grid"
        )


ENGINES = ("local", "ray")


@dataclass
class EngineSettings:
    """How the grid's cells are run (``--engine`` and its options)."""

    engine: str = "local"
    workers: int = 2
    address: str = ""
    retries: int = 2
    cell_gpus: float = 0.25


def run_grid(cells: Sequence[Cell], grid_file: Path, settings: EngineSettings) -> None:
    """Train every unfinished cell on the chosen engine."""
    from nmrl.train.engines import CellJob, run_local, run_ray
    from nmrl.train.grid_progress import GridProgress

    for cell in cells:
        check_same_settings(cell)
    todo = [cell for cell in cells if not is_finished(cell.run_dir, cell.config)]
    where = f"{settings.workers} worker process(es)" if settings.engine == "local" else "Ray"
    print(
        f"{len(cells) - len(todo)} of {len(cells)} cells already finished; training {len(todo)} on {where}",
        file=sys.stderr,
        flush=True,
    )
    if not todo:
        return
    for cell in todo:
        cell.log_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [CellJob(cell.label, cell.config, cell.log_path) for cell in todo]
    with GridProgress(jobs, finished_before=len(cells) - len(todo), total_cells=len(cells)) as progress:
        if settings.engine == "ray":
            outcome = run_ray(
                jobs, grid_file, settings.address, settings.workers, settings.retries, settings.cell_gpus, progress
            )
        else:
            outcome = run_local(jobs, grid_file, settings.workers, settings.retries, progress)
    if outcome.failures:
        raise NmrlError(f"{len(outcome.failures)} cell(s) failed: " + "; ".join(outcome.failures))


# ---- results ----------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """One method's row on one env: final returns over seeds, curves, and its networks' costs."""

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
    """Per method, the results of ``cells`` (one env's cells)."""
    results = []
    for method in methods:
        finals: list[float] = []
        curves: dict[int, list[tuple[int, float]]] = {}
        costs: dict[str, Any] = {}
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
    "return_iqm",
    "return_ci_low",
    "return_ci_high",
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


def cost_columns(costs: dict[str, Any]) -> dict[str, Any]:
    agent, actor = costs.get("agent", {}), costs.get("actor", {})
    return {
        "sparsity": agent.get("sparsity", math.nan),
        "actor_params": actor.get("params", math.nan),
        "agent_params": agent.get("params", math.nan),
        "params_vs_dense": agent.get("params_ratio", math.nan),
        "training_flops_vs_dense": agent.get("training_ratio", math.nan),
        # What a deployed policy costs: the actor's forward pass.
        "inference_flops_vs_dense": actor.get("inference_ratio", math.nan),
    }


def table_rows(results: Sequence[MethodResult]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        low, high = stratified_bootstrap_ci([result.finals])
        rows.append(
            {
                "method": result.method.name,
                "return_iqm": iqm(result.finals),
                "return_ci_low": low,
                "return_ci_high": high,
                "return_mean": result.mean,
                "return_std": result.std,
                "seeds": len(result.finals),
                **cost_columns(result.costs),
            }
        )
    return rows


def _count(value: float) -> str:
    from nmrl.sparsity.accounting import format_count

    return "-" if isinstance(value, float) and math.isnan(value) else format_count(value)


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _interval(centre: float, low: float, high: float, fmt: str = ".1f") -> str:
    return "-" if math.isnan(centre) else f"{centre:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def markdown_table(rows: Sequence[dict[str, Any]], env: str, algo: str, total_steps: int) -> str:
    lines = [
        f"{env}, {algo}, {total_steps:,} steps: final evaluation return over seeds, IQM [95% bootstrap CI] "
        "and mean ± std",
        "",
        "| method | return IQM [95% CI] | mean ± std | seeds | sparsity | actor params | agent params "
        "| training FLOPs | actor FLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mean = "-" if math.isnan(row["return_mean"]) else f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"
        lines.append(
            f"| {row['method']} | {_interval(row['return_iqm'], row['return_ci_low'], row['return_ci_high'])} "
            f"| {mean} | {row['seeds']} | {row['sparsity']:.1%} | {_count(row['actor_params'])} "
            f"| {_count(row['agent_params'])} | {_ratio(row['training_flops_vs_dense'])} "
            f"| {_ratio(row['inference_flops_vs_dense'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[MethodResult], path: Path, title: str) -> None:
    """Mean evaluation return per method against env steps, with a 95% bootstrap confidence band
    of that mean over seeds (it stays within the seeds' returns, unlike mean ± std)."""
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
        low, high = curve_band(returns)
        (line,) = axes.plot(steps, returns.mean(axis=0), label=f"{result.method.name} ({len(curves)} seeds)")
        axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("environment steps")
    axes.set_ylabel("evaluation return (mean, 95% CI band)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_results(results: Sequence[MethodResult], folder: Path, env: str, base: SharedConfig) -> str:
    """One env's results.md, results.csv, curves.csv and curves.png in ``folder``; returns the markdown."""
    rows = table_rows(results)
    write_csv(folder / "results.csv", TABLE_COLUMNS, rows)
    curve_rows = [
        {"method": result.method.name, "seed": seed, "step": step, "return_mean": ret}
        for result in results
        for seed, curve in result.curves.items()
        for step, ret in curve
    ]
    write_csv(folder / "curves.csv", ("method", "seed", "step", "return_mean"), curve_rows)
    markdown = markdown_table(rows, env, base.algo, base.total_steps)
    atomic_write_text(folder / "results.md", markdown)
    plot_curves(results, folder / "curves.png", f"{env} ({base.algo})")
    return markdown


# ---- the summary over envs: return normalised by dense -------------------------------------------
SUMMARY_COLUMNS = (
    "method",
    "normalised_iqm",
    "normalised_ci_low",
    "normalised_ci_high",
    "runs",
    "params_vs_dense",
    "training_flops_vs_dense",
    "inference_flops_vs_dense",
)


def summary_rows(per_env: dict[str, list[MethodResult]], reference: str = "dense") -> list[dict[str, Any]]:
    """Per method: each env's mean final return divided by the dense mean on that env (as the
    RNM-TD3 paper reports it), and the IQM of every run's normalised return over envs and seeds
    with a stratified-bootstrap CI (strata = envs). Cost ratios are averaged over envs. An env
    whose dense mean is not positive cannot normalise (nan)."""
    envs = list(per_env)
    methods = [result.method.name for result in next(iter(per_env.values()))]
    dense_mean = {}
    for env, results in per_env.items():
        dense = next((r for r in results if r.method.name == reference), None)
        dense_mean[env] = dense.mean if dense is not None and dense.finals and dense.mean > 0 else math.nan
    rows = []
    for index, name in enumerate(methods):
        normalised = {
            env: [final / dense_mean[env] for final in per_env[env][index].finals]
            for env in envs
            if not math.isnan(dense_mean[env])
        }
        runs = [score for scores in normalised.values() for score in scores]
        low, high = stratified_bootstrap_ci(list(normalised.values()))
        costs = [cost_columns(per_env[env][index].costs) for env in envs]
        row = {
            "method": name,
            **{f"{env}": float(np.mean(normalised[env])) if normalised.get(env) else math.nan for env in envs},
            "normalised_iqm": iqm(runs),
            "normalised_ci_low": low,
            "normalised_ci_high": high,
            "runs": len(runs),
        }
        for key in ("params_vs_dense", "training_flops_vs_dense", "inference_flops_vs_dense"):
            known = [c[key] for c in costs if not math.isnan(c[key])]
            row[key] = float(np.mean(known)) if known else math.nan
        rows.append(row)
    return rows


def summary_markdown(rows: Sequence[dict[str, Any]], envs: Sequence[str], algo: str, total_steps: int) -> str:
    lines = [
        f"{', '.join(envs)}; {algo}, {total_steps:,} steps: final return normalised by dense (per env: mean over "
        "seeds / dense mean; all: IQM over envs x seeds [95% stratified-bootstrap CI]); costs vs dense, mean over envs",
        "",
        "| method | " + " | ".join(envs) + " | all: IQM [95% CI] | runs | params | training FLOPs | actor FLOPs |",
        "|---|" + "---:|" * (len(envs) + 5),
    ]
    for row in rows:
        per_env = " | ".join("-" if math.isnan(row[env]) else f"{row[env]:.1%}" for env in envs)
        total = (
            "-"
            if math.isnan(row["normalised_iqm"])
            else f"{row['normalised_iqm']:.1%} [{row['normalised_ci_low']:.1%}, {row['normalised_ci_high']:.1%}]"
        )
        lines.append(
            f"| {row['method']} | {per_env} | {total} | {row['runs']} | {_ratio(row['params_vs_dense'])} "
            f"| {_ratio(row['training_flops_vs_dense'])} | {_ratio(row['inference_flops_vs_dense'])} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(per_env: dict[str, list[MethodResult]], out: Path, base: SharedConfig) -> str:
    """summary.md and summary.csv in ``out``; returns the markdown ('' without a dense method)."""
    if not any(r.method.name == "dense" for r in next(iter(per_env.values()))):
        return ""
    rows = summary_rows(per_env)
    envs = list(per_env)
    write_csv(out / "summary.csv", (SUMMARY_COLUMNS[0], *envs, *SUMMARY_COLUMNS[1:]), rows)
    markdown = summary_markdown(rows, envs, base.algo, base.total_steps)
    atomic_write_text(out / "summary.md", markdown)
    return markdown


def default_out(base: SharedConfig, envs: Sequence[str]) -> Path:
    return Path(base.runs_dir) / f"compare__{'+'.join(envs)}__{base.algo}"


def run_comparison(
    base: SharedConfig,
    methods: str,
    seeds: int = 3,
    first_seed: int = 1,
    envs: str = "",
    out: Path | None = None,
    report_only: bool = False,
    settings: EngineSettings | None = None,
) -> Path:
    """Train (or continue) the grid, then write the results; returns the output folder."""
    settings = settings or EngineSettings()
    if seeds < 1 or settings.workers < 1 or settings.retries < 0:
        raise NmrlError("--seeds and --workers must be at least 1, --retries at least 0")
    if settings.engine not in ENGINES:
        raise NmrlError(f"unknown --engine {settings.engine!r}: choose {' or '.join(ENGINES)}")
    if settings.engine == "ray" and not report_only:
        from nmrl.train.engines import import_ray

        import_ray()  # one line, before anything is written, when Ray is not installed
    env_ids = parse_envs(envs, base.env)
    method_list = parse_methods(methods)
    out = Path(out) if out is not None else default_out(base, env_ids)
    if report_only and not out.is_dir():
        raise NmrlError(f"--report-only: {out} does not exist (no grid folder to report on)")
    cells = build_grid(base, env_ids, method_list, seeds, first_seed, out)
    out.mkdir(parents=True, exist_ok=True)
    grid_file = out / "grid.json"
    atomic_write_text(
        grid_file,
        json.dumps(
            {
                "envs": env_ids,
                "methods": [m.name for m in method_list],
                "seeds": list(range(first_seed, first_seed + seeds)),
                "base_config": base.to_dict(),
            },
            indent=2,
        )
        + "\n",
    )
    if not report_only:
        run_grid(cells, grid_file, settings)
    per_env = {}
    for env in env_ids:
        per_env[env] = collect([c for c in cells if c.env == env], method_list)
        folder = env_folder(out, env)
        folder.mkdir(parents=True, exist_ok=True)
        print(write_results(per_env[env], folder, env, base))
    summary = write_summary(per_env, out, base)
    if summary:
        print(summary)
    files = [env_folder(out, env) / name for env in env_ids for name in ("results.md", "curves.png")]
    print("results: " + ", ".join(str(f) for f in ([out / "summary.md"] if summary else []) + files))
    return out


def compare(
    config: Annotated[SharedConfig, tyro.conf.arg(name="")],
    methods: str = "dense,2:4,ds-0.5",
    seeds: int = 3,
    seed: int = 1,
    envs: str = "",
    engine: Literal["local", "ray"] = "local",
    workers: int = 2,
    address: str = "",
    retries: int = 2,
    cell_gpus: float = 0.25,
    out: Path | None = None,
    report_only: bool = False,
) -> None:
    """Compare sparsity methods over envs x seeds: train every cell (local worker processes or a
    Ray cluster), then write per env a results table (markdown + CSV) and learning curves (PNG)
    with a 95% confidence band, and a summary of the return normalised by dense over all envs
    (IQM with a stratified-bootstrap CI). Running the command again skips finished cells and
    resumes interrupted ones.

    Args:
        config: Training settings shared by every cell (each method sets the sparsity, and the
            topology, optimizer or activation it needs; each cell sets its seed and run name).
        methods: Comma-separated: dense, N:M patterns (2:4, 1:4, 1:8), ss-F (static sparse), ds-F (SET:
            DS-TD3/DS-SAC), rigl-F, tows-F (SET + masked Adam + LeakyReLU); F = fraction of weights pruned.
        seeds: Seeds per method and env: --seed, --seed+1, ...
        seed: The first seed.
        envs: Comma-separated Gymnasium ids (Hopper-v5,HalfCheetah-v5); empty = the one --env.
        engine: local (worker processes on this machine) or ray (tasks on a Ray cluster: pip install 'nmrl[ray]').
        workers: Cells trained at once on the local engine (one torch thread each unless --threads is given);
            with --engine ray and no --address, the size of the Ray instance started on this machine.
        address: Ray cluster to run on (host:port of its head, or 'auto'); empty = RAY_ADDRESS, else a new
            instance on this machine.
        retries: Times a cell whose worker (or node) died is run again, resuming from its last checkpoint.
        cell_gpus: Ray: the GPU fraction each cell asks for with --device cuda (0.25: four cells per GPU).
        out: Output folder, on storage every Ray node reaches (default: <runs-dir>/compare__<envs>__<algo>).
        report_only: Only rebuild the tables and plots from the runs already in --out.
    """
    settings = EngineSettings(engine, workers, address, retries, cell_gpus)
    run_comparison(
        config, methods, seeds=seeds, first_seed=seed, envs=envs, out=out, report_only=report_only, settings=settings
    )
