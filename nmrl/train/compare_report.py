"""``nmrl compare``'s results: per-env tables (IQM with a bootstrap CI, mean ± std, costs) and
learning curves, and the summary over envs of the return normalised by dense.

Pure functions of :class:`MethodResult` (what :func:`nmrl.train.compare.collect` reads from a grid's
runs): they read no run directory and train nothing, so a grid's report can be rebuilt at will
(``nmrl compare --report-only``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nmrl.files import atomic_write_text
from nmrl.train.aggregate import curve_band, iqm, stratified_bootstrap_ci

if TYPE_CHECKING:
    from nmrl.train.compare import Method
    from nmrl.train.config import SharedConfig


@dataclass
class MethodResult:
    """One method's row on one env: final returns over seeds, curves, and its networks' costs."""

    method: Method
    finals: list[float]
    curves: dict[int, list[tuple[int, float]]]  # seed -> [(step, return)]
    costs: dict[str, Any]

    @property
    def cells(self) -> int:
        """The grid's cells of this method (one per seed), finished or not."""
        return len(self.curves)

    @property
    def mean(self) -> float:
        return float(np.mean(self.finals)) if self.finals else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.finals)) if self.finals else math.nan


TABLE_COLUMNS = (
    "method",
    "return_iqm",
    "return_ci_low",
    "return_ci_high",
    "return_mean",
    "return_std",
    "seeds",
    "cells",
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
                "cells": result.cells,
                **cost_columns(result.costs),
            }
        )
    return rows


def _count(value: float) -> str:
    from nmrl.sparsity.accounting import format_count

    return "-" if isinstance(value, float) and math.isnan(value) else format_count(value)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def finished_note(results: Sequence[MethodResult]) -> list[str]:
    """A line saying how many cells finished, for a grid that is not done ([] when it is): its
    returns are over the finished cells only."""
    finished, cells = sum(len(r.finals) for r in results), sum(r.cells for r in results)
    if finished == cells:
        return []
    return [
        f"{finished} of {cells} cells finished: returns are over finished cells only (the same nmrl compare "
        "command trains the rest)",
        "",
    ]


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _interval(centre: float, low: float, high: float, fmt: str = ".1f") -> str:
    return "-" if math.isnan(centre) else f"{centre:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def markdown_table(
    rows: Sequence[dict[str, Any]], env: str, algo: str, total_steps: int, note: Sequence[str] = ()
) -> str:
    lines = [
        f"{env}, {algo}, {total_steps:,} steps: final evaluation return over seeds, IQM [95% bootstrap CI] "
        "and mean ± std",
        "",
        *note,
        "| method | return IQM [95% CI] | mean ± std | seeds | sparsity | actor params | agent params "
        "| training FLOPs | actor FLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mean = "-" if math.isnan(row["return_mean"]) else f"{row['return_mean']:.1f} ± {row['return_std']:.1f}"
        seeds = f"{row['seeds']}" if row["seeds"] == row["cells"] else f"{row['seeds']} of {row['cells']}"
        lines.append(
            f"| {row['method']} | {_interval(row['return_iqm'], row['return_ci_low'], row['return_ci_high'])} "
            f"| {mean} | {seeds} | {_percent(row['sparsity'])} | {_count(row['actor_params'])} "
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
    markdown = markdown_table(rows, env, base.algo, base.total_steps, finished_note(results))
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


def summary_markdown(
    rows: Sequence[dict[str, Any]], envs: Sequence[str], algo: str, total_steps: int, note: Sequence[str] = ()
) -> str:
    lines = [
        f"{', '.join(envs)}; {algo}, {total_steps:,} steps: final return normalised by dense (per env: mean over "
        "seeds / dense mean; all: IQM over envs x seeds [95% stratified-bootstrap CI]); costs vs dense, mean over envs",
        "",
        *note,
        "| method | " + " | ".join(envs) + " | all: IQM [95% CI] | runs | params | training FLOPs | actor FLOPs |",
        "|---|" + "---:|" * (len(envs) + 5),
    ]
    for row in rows:
        per_env = " | ".join(_percent(row[env]) for env in envs)
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
    note = finished_note([result for results in per_env.values() for result in results])
    markdown = summary_markdown(rows, envs, base.algo, base.total_steps, note)
    atomic_write_text(out / "summary.md", markdown)
    return markdown
