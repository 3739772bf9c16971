"""IQM, stratified bootstrap CIs, curve bands and the dense-normalised summary of ``nmrl compare``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nmrl.train.aggregate import curve_band, iqm, stratified_bootstrap_ci
from nmrl.train.compare import parse_method
from nmrl.train.compare_report import MethodResult, summary_rows


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 100, -50, 5, 6]) == pytest.approx(np.mean([2, 3, 4, 5]))  # cut 2 each side
    assert iqm([3.0, 5.0]) == 4.0  # fewer than 4 runs: nothing to cut
    assert iqm([7.0]) == 7.0
    assert math.isnan(iqm([]))


def test_stratified_bootstrap_resamples_within_each_stratum():
    # Every resample keeps 2 runs of env A (all 0) and 6 of env B (all 1): the mean is always 0.75,
    # which a bootstrap over the pooled 8 runs would not give.
    low, high = stratified_bootstrap_ci([[0.0, 0.0], [1.0] * 6], statistic="mean")
    assert low == pytest.approx(0.75) and high == pytest.approx(0.75)
    scores = [[0.2, 0.9, 0.5], [1.1, 0.7, 0.8]]
    low, high = stratified_bootstrap_ci(scores)
    assert 0.2 <= low < iqm([0.2, 0.9, 0.5, 1.1, 0.7, 0.8]) < high <= 1.1
    assert stratified_bootstrap_ci(scores) == (low, high)  # seeded: same runs, same table
    assert all(math.isnan(v) for v in stratified_bootstrap_ci([[], []]))


def test_curve_band_stays_within_the_returns_where_mean_minus_std_does_not():
    # InvertedPendulum-like returns: never negative, one seed far above the others.
    returns = np.array([[5.0, 9.0, 1000.0], [6.0, 8.0, 40.0], [5.0, 10.0, 30.0]])
    low, high = curve_band(returns)
    assert (low >= returns.min(axis=0)).all() and (high <= returns.max(axis=0)).all()
    assert (low <= returns.mean(axis=0)).all() and (returns.mean(axis=0) <= high).all()
    assert (returns.mean(axis=0) - returns.std(axis=0))[2] < 0 <= low[2]


def _result(name: str, finals: list[float], params_ratio: float) -> MethodResult:
    costs = {"agent": {"params_ratio": params_ratio, "training_ratio": params_ratio}, "actor": {}}
    return MethodResult(parse_method(name), finals, {}, costs)


def test_summary_normalises_each_env_by_its_dense_mean():
    per_env = {
        "A-v5": [_result("dense", [100.0, 300.0], 1.0), _result("2:4", [150.0, 250.0], 0.5)],
        "B-v5": [_result("dense", [10.0, 10.0], 1.0), _result("2:4", [5.0, 15.0], 0.6)],
        "C-v5": [_result("dense", [-5.0, 1.0], 1.0), _result("2:4", [3.0, 4.0], 0.7)],  # dense mean < 0
    }
    dense, sparse = summary_rows(per_env)
    assert dense["A-v5"] == pytest.approx(1.0) and dense["B-v5"] == pytest.approx(1.0)
    assert sparse["A-v5"] == pytest.approx(200 / 200) and sparse["B-v5"] == pytest.approx(1.0)
    assert math.isnan(sparse["C-v5"]) and sparse["runs"] == 4  # C cannot be normalised
    assert sparse["normalised_iqm"] == pytest.approx(iqm([0.75, 1.25, 0.5, 1.5]))
    assert sparse["params_vs_dense"] == pytest.approx(0.6)  # mean over envs
