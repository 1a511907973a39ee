"""Survival statistics against lifelines, and the IPCW integrated Brier score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from scipy.integrate import trapezoid

from autoimmuneai.stats.survival import (
    baseline_to_dict,
    breslow_baseline,
    concordance,
    default_times_grid,
    integrated_brier_score,
    risk_cutoffs,
    risk_groups,
    survival_curves,
)


def _cox_data(n: int = 300, seed: int = 0, censor_rate: float = 0.05):
    """Exponential times with log-hazard 0.8 x1 - 0.5 x2, uniform + exponential censoring,
    rounded to whole months so that tied times occur."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    log_h = 0.8 * x[:, 0] - 0.5 * x[:, 1]
    t_true = rng.exponential(1.0 / (0.03 * np.exp(log_h)))
    c = np.minimum(rng.uniform(12, 120, n), rng.exponential(1 / censor_rate, n))
    times = np.ceil(np.minimum(t_true, c))
    events = (t_true <= c).astype(float)
    return x, log_h, t_true, times, events


def test_breslow_matches_lifelines_baseline():
    x, _, _, times, events = _cox_data()
    df = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "T": times, "E": events})
    cph = CoxPHFitter().fit(df, duration_col="T", event_col="E")
    risk = cph.predict_log_partial_hazard(df).to_numpy()
    t, h0 = breslow_baseline(risk, times, events)
    ref = cph.baseline_cumulative_hazard_
    assert np.unique(times).size < times.size  # ties exercised
    np.testing.assert_array_equal(t, np.unique(times[events == 1]))
    np.testing.assert_allclose(h0, ref.loc[t].to_numpy().ravel(), rtol=1e-8)
    # survival curves equal lifelines' predictions at event times (lifelines interpolates
    # linearly between them, the step function is the Breslow estimate proper)
    grid = t[[0, 5, 20, len(t) // 2, len(t) - 1]]
    ours = survival_curves(risk[:20], (t, h0), grid)
    theirs = cph.predict_survival_function(df.iloc[:20], times=grid).to_numpy().T
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-10)
    # the dict form (bundle storage) gives the same curves
    np.testing.assert_allclose(survival_curves(risk[:20], baseline_to_dict((t, h0)), grid), ours)


def test_breslow_shift_invariance_and_missing_follow_up():
    _, log_h, _, times, events = _cox_data(150, seed=2)
    t1, h1 = breslow_baseline(log_h, times, events)
    t2, h2 = breslow_baseline(log_h + 3.0, times, events)  # S depends on H0 * exp(risk) only
    np.testing.assert_allclose(h1, h2 * np.exp(3.0), rtol=1e-10)
    times_nan = times.copy()
    times_nan[:10] = np.nan
    t3, h3 = breslow_baseline(np.concatenate([log_h]), times_nan, events)
    t4, h4 = breslow_baseline(log_h[10:], times[10:], events[10:])
    np.testing.assert_array_equal(t3, t4)
    np.testing.assert_allclose(h3, h4)
    t5, h5 = breslow_baseline(log_h, times, np.zeros_like(events))
    assert t5.size == 0 and h5.size == 0
    curves = survival_curves(log_h[:3], (t5, h5), np.array([1.0, 5.0]))
    np.testing.assert_array_equal(curves, np.ones((3, 2)))


def test_survival_curves_are_monotone_and_ordered_by_risk():
    _, log_h, _, times, events = _cox_data(200, seed=3)
    base = breslow_baseline(log_h, times, events)
    grid = np.linspace(0, 120, 25)
    s = survival_curves(np.array([-1.0, 0.0, 1.0]), base, grid)
    assert s.shape == (3, 25)
    assert (np.diff(s, axis=1) <= 1e-12).all()
    assert (s[0] >= s[1]).all() and (s[1] >= s[2]).all()
    assert s[:, 0].tolist() == [1.0, 1.0, 1.0]


def test_concordance_matches_lifelines_and_skips_nan():
    _, log_h, _, times, events = _cox_data(200, seed=4)
    noisy = log_h + np.random.default_rng(0).normal(0, 0.5, log_h.size)
    ref = concordance_index(times, -noisy, events)
    assert concordance(times, noisy, events) == pytest.approx(ref, abs=1e-12)
    assert ref > 0.65
    t = times.copy()
    e = events.copy()
    t[:15] = np.nan
    e[15:30] = np.nan
    ref2 = concordance_index(times[30:], -noisy[30:], events[30:])
    assert concordance(t, noisy, e) == pytest.approx(ref2, abs=1e-12)
    assert np.isnan(concordance(times[:5], noisy[:5], np.zeros(5)))


def test_risk_groups_tertiles():
    train = np.arange(30, dtype=float)
    lo, hi = risk_cutoffs(train)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(train, [1 / 3, 2 / 3])))
    groups = risk_groups(train, (lo, hi))
    assert [int((groups == g).sum()) for g in ("low", "intermediate", "high")] == [10, 10, 10]
    assert risk_groups(np.array([-5.0, np.nan, 100.0]), (lo, hi)).tolist() == [
        "low",
        "unknown",
        "high",
    ]
    with pytest.raises(ValueError):
        risk_cutoffs(np.array([np.nan]))


def _exp_survival(rate: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.exp(-np.outer(rate, grid))


def test_ibs_without_censoring_is_mean_squared_error():
    rng = np.random.default_rng(5)
    rate = 0.05 * np.exp(rng.normal(0, 0.7, 400))
    t = rng.exponential(1 / rate)
    e = np.ones_like(t)
    grid = np.linspace(1, 30, 30)
    s = _exp_survival(rate, grid)
    expected = ((s - (t[:, None] > grid[None, :])) ** 2).mean(axis=0)
    ref = trapezoid(expected, grid) / (grid[-1] - grid[0])
    assert integrated_brier_score(t, e, t, e, s, grid) == pytest.approx(ref, rel=1e-10)


def test_ibs_perfect_beats_marginal_beats_useless_and_ipcw_corrects_censoring():
    rng = np.random.default_rng(6)
    n = 4000
    rate = 0.04 * np.exp(rng.normal(0, 1.0, n))
    t_true = rng.exponential(1 / rate)
    c = rng.uniform(5, 80, n)  # independent censoring
    times, events = np.minimum(t_true, c), (t_true <= c).astype(float)
    grid = np.linspace(1, 40, 40)
    perfect = _exp_survival(rate, grid)
    marginal = np.tile(_exp_survival(np.array([rate.mean()]), grid), (n, 1))
    useless = np.full((n, grid.size), 0.5)
    half = n // 2
    tr, te = slice(0, half), slice(half, n)
    ibs = {
        name: integrated_brier_score(times[tr], events[tr], times[te], events[te], s[te], grid)
        for name, s in [("perfect", perfect), ("marginal", marginal), ("useless", useless)]
    }
    assert ibs["perfect"] < ibs["marginal"] - 0.01
    assert ibs["marginal"] < ibs["useless"]
    assert ibs["useless"] == pytest.approx(0.25, abs=0.01)
    # IPCW: the censored estimate agrees with the Brier score on the uncensored truth
    uncensored = integrated_brier_score(
        t_true[tr], np.ones(half), t_true[te], np.ones(n - half), perfect[te], grid
    )
    assert ibs["perfect"] == pytest.approx(uncensored, abs=0.01)
    # without the weights the estimate would be biased: check that it is not simply ignored
    naive_alive = (times[te][:, None] > grid[None, :]).astype(float)
    naive = ((perfect[te] - naive_alive) ** 2).mean()
    assert abs(naive - uncensored) > abs(ibs["perfect"] - uncensored)


def test_ibs_shape_check_and_grid():
    t = np.array([1.0, 2.0, 3.0, np.nan])
    e = np.array([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        integrated_brier_score(t, e, t, e, np.ones((3, 2)), np.array([1.0, 2.0]))
    grid = default_times_grid(np.array([1.0, 5.0, 10.0, np.nan, 20.0]), np.array([1, 0, 1, 1, 0]))
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(np.quantile([1, 5, 10, 20], 0.8))
    assert default_times_grid(np.array([np.nan]), np.array([1.0])).size == 0


def _grouped_survival(n: int, gap: float, seed: int):
    """Risk scores whose thirds have hazards exp(0), exp(gap), exp(2 gap); some censoring."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    third = np.digitize(risk, np.quantile(risk, [1 / 3, 2 / 3]))
    t = rng.exponential(30.0 / np.exp(gap * third))
    c = rng.uniform(5, 80, n)
    return risk, np.minimum(t, c), (t <= c).astype(float)


def test_logrank_summary_equals_lifelines():
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    from autoimmuneai.stats.survival import logrank_summary

    risk, times, events = _grouped_survival(300, 0.8, 0)
    groups = risk_groups(risk, risk_cutoffs(risk))
    times[:5] = np.nan  # no follow-up: left out
    out = logrank_summary(times, events, groups)
    keep = np.isfinite(times)
    ref = multivariate_logrank_test(times[keep], groups[keep], events[keep])
    assert out["groups"] == ["low", "intermediate", "high"]
    assert out["overall"]["p_value"] == pytest.approx(ref.p_value)
    lo, mid = (groups == "low") & keep, (groups == "intermediate") & keep
    pair = logrank_test(times[lo], times[mid], events[lo], events[mid])
    assert out["adjacent"][0]["pair"] == ["low", "intermediate"]
    assert out["adjacent"][0]["p_value"] == pytest.approx(pair.p_value)


def test_three_risk_groups_only_when_held_out_cases_separate_them():
    from autoimmuneai.stats.survival import choose_risk_cutoffs

    risk, times, events = _grouped_survival(600, 1.0, 1)
    cutoffs, record = choose_risk_cutoffs(risk[:300], risk[300:], times[300:], events[300:])
    assert record["n_groups"] == 3 and cutoffs == tuple(risk_cutoffs(risk[:300]))
    # no relation between risk and outcome: two groups at the median, with the reason
    flat_risk = np.random.default_rng(2).normal(size=600)
    cutoffs, record = choose_risk_cutoffs(
        flat_risk[:300], flat_risk[300:], times[300:], events[300:]
    )
    assert record["n_groups"] == 2 and cutoffs[0] == cutoffs[1] == np.median(flat_risk[:300])
    assert "do not all separate" in record["reason"]
    assert set(risk_groups(flat_risk, cutoffs)) == {"low", "high"}
