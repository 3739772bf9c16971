"""Aggregating returns over seeds and environments the way deep-RL evaluation now expects.

Few seeds make the mean and the standard deviation poor summaries (one diverged seed moves the
mean; mean ± std runs below returns that cannot be negative). Following Agarwal et al., "Deep RL
at the Edge of the Statistical Precipice" (NeurIPS 2021):

- the **interquartile mean** (IQM): the mean of the middle 50% of the runs, robust to one outlier
  yet using more of the data than the median;
- **stratified bootstrap** confidence intervals: resample the runs with replacement *within each
  environment* (the strata), recompute the statistic, and take the percentiles of the resamples.

These are small numpy implementations of the same definitions as the ``rliable`` library (IQM =
``scipy.stats.trim_mean(x, 0.25)``; percentile intervals of a stratified bootstrap). nmrl does not
depend on ``rliable``: it brings arch, statsmodels, scipy, pandas and seaborn for these two functions
(a 510 MB environment), its newest release (1.2.0) fails to import with pandas 3 (arch's
``deprecate_kwarg`` breaks), and its bootstrap needs the same number of runs on every env while a
grid being resumed can have unequal finished seeds. The bootstrap uses a fixed seed, so the same
runs always give the same table (the two engines of ``nmrl compare`` must give identical tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: drop the lowest and highest ``floor(n/4)`` scores, average the rest."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0:
        return float("nan")
    cut = int(0.25 * values.size)
    return float(values[cut : values.size - cut].mean())


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """IQM of every row of a (resamples, runs) array."""
    ordered = np.sort(samples, axis=1)
    cut = int(0.25 * ordered.shape[1])
    return ordered[:, cut : ordered.shape[1] - cut].mean(axis=1)


def _mean_rows(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


STATISTICS = {"iqm": _iqm_rows, "mean": _mean_rows}


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float]],
    statistic: str = "iqm",
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` over all runs, resampling each stratum
    (an environment's runs) with replacement on its own. Strata may differ in size; empty ones
    are left out. (nan, nan) when there are no runs at all."""
    groups = [np.asarray(group, dtype=np.float64) for group in strata if len(group)]
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([group[rng.integers(0, group.size, size=(samples, group.size))] for group in groups], 1)
    values = STATISTICS[statistic](resampled)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def curve_band(returns: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE) -> np.ndarray:
    """Bootstrap confidence band of the mean return over seeds at each evaluation step.

    ``returns`` is (seeds, steps); the result is (2, steps): lower and upper bounds. A resampled
    mean is an average of observed returns, so the band never leaves the range of the data at that
    step (unlike mean ± std, which runs below zero for returns that cannot be negative)."""
    returns = np.asarray(returns, dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, returns.shape[0], size=(samples, returns.shape[0]))
    means = returns[picks].mean(axis=1)  # (samples, steps)
    tail = (1 - confidence) / 2 * 100
    return np.percentile(means, [tail, 100 - tail], axis=0)
