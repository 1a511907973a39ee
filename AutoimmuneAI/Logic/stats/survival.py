"""Survival statistics for the Cox risk head: Breslow baseline, curves, risk groups, metrics.

``risk`` is always a log-hazard (higher = earlier progression). Cases without follow-up
(NaN time or event) are dropped wherever a function needs times. The concordance index
comes from lifelines; the integrated Brier score is the IPCW estimator of Graf et al. (1999)
with a Kaplan-Meier (lifelines) censoring distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import concordance_index
from scipy.integrate import trapezoid

RISK_GROUPS = ("low", "intermediate", "high")
BaselineHazard = tuple[np.ndarray, np.ndarray] | Mapping
"""A Breslow baseline: ``(event times, H0)`` or its :func:`baseline_to_dict` form."""


def _finite(*arrays: np.ndarray) -> np.ndarray:
    keep = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        keep &= np.isfinite(np.asarray(a, dtype=np.float64))
    return keep


def breslow_baseline(
    risk: np.ndarray, times: np.ndarray, events: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow estimate of the cumulative baseline hazard for log-hazards ``risk``.

    Returns ``(event_times, H0)``: the distinct event times (ascending) and
    ``H0(t) = sum_{t_i <= t} d_i / sum_{j: T_j >= t_i} exp(risk_j)`` at each of them.
    """
    risk = np.asarray(risk, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    keep = _finite(risk, times, events)
    risk, times, events = risk[keep], times[keep], events[keep] > 0.5
    if not events.any():
        return np.zeros(0), np.zeros(0)
    shift = risk.max()  # exp(risk - shift) avoids overflow; H0 is rescaled below
    w = np.exp(risk - shift)
    uniq, inverse = np.unique(times, return_inverse=True)
    w_at = np.bincount(inverse, weights=w, minlength=uniq.size)
    d_at = np.bincount(inverse, weights=events.astype(np.float64), minlength=uniq.size)
    at_risk = np.cumsum(w_at[::-1])[::-1]  # sum of weights with T_j >= t
    has_event = d_at > 0
    hazard = d_at[has_event] / at_risk[has_event] * np.exp(-shift)
    return uniq[has_event], np.cumsum(hazard)


def _baseline_arrays(
    baseline: tuple[np.ndarray, np.ndarray] | Sequence | Mapping,
) -> tuple[np.ndarray, np.ndarray]:
    """Accept ``(times, H0)`` or a dict with ``times`` and ``cumulative_hazard``."""
    if isinstance(baseline, Mapping):
        t, h = baseline["times"], baseline["cumulative_hazard"]
    else:
        t, h = baseline
    return np.asarray(t, dtype=np.float64), np.asarray(h, dtype=np.float64)


def baseline_to_dict(baseline: BaselineHazard) -> dict:
    """JSON-able form of a Breslow baseline (as stored in the model bundle)."""
    t, h = _baseline_arrays(baseline)
    return {"times": t.tolist(), "cumulative_hazard": h.tolist()}


def hazard_from_dict(d: Mapping | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(event times, H0)`` from :func:`baseline_to_dict` output (None stays None)."""
    return None if d is None else _baseline_arrays(d)


def cumulative_baseline_at(baseline: BaselineHazard, times_grid: np.ndarray) -> np.ndarray:
    """Right-continuous step function H0 evaluated at ``times_grid`` (0 before the first event)."""
    t, h = _baseline_arrays(baseline)
    grid = np.asarray(times_grid, dtype=np.float64)
    idx = np.searchsorted(t, grid, side="right") - 1
    return np.where(idx >= 0, h[np.clip(idx, 0, None)] if h.size else 0.0, 0.0)


def survival_curves(
    risk: np.ndarray, baseline: BaselineHazard, times_grid: np.ndarray
) -> np.ndarray:
    """Per-case survival ``S(t|x) = exp(-H0(t) exp(risk))`` on ``times_grid``, [n, len(grid)]."""
    h0 = cumulative_baseline_at(baseline, times_grid)
    risk = np.asarray(risk, dtype=np.float64)
    return np.exp(-np.outer(np.exp(risk), h0))


def risk_cutoffs(train_risk: np.ndarray) -> tuple[float, float]:
    """Tertiles of the training risk scores: the low/intermediate and intermediate/high cuts."""
    r = np.asarray(train_risk, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("no finite training risk to derive risk groups from")
    lo, hi = np.quantile(r, [1.0 / 3.0, 2.0 / 3.0])
    return float(lo), float(hi)


def risk_groups(risk: np.ndarray, cutoffs: tuple[float, float]) -> np.ndarray:
    """``"low"`` (risk <= first cut), ``"high"`` (> second cut), else ``"intermediate"``.

    Equal cut-offs give two groups (low, high). A NaN risk gives ``"unknown"``.
    """
    r = np.asarray(risk, dtype=np.float64)
    lo, hi = float(cutoffs[0]), float(cutoffs[1])
    out = np.full(r.shape, "intermediate", dtype=object)
    out[r <= lo] = "low"
    out[r > hi] = "high"
    out[~np.isfinite(r)] = "unknown"
    return out.astype(str)


SEPARATION_P = 0.05  # adjacent risk groups must differ at this log-rank level to stay apart


def logrank_summary(times: np.ndarray, events: np.ndarray, groups: np.ndarray) -> dict:
    """Log-rank tests (lifelines) of the risk groups present: all together and adjacent pairs.

    Keys: ``groups`` (those with follow-up, in risk order), ``overall`` (multivariate test:
    ``statistic``, ``p_value``, ``df``) and ``adjacent`` (one entry per neighbouring pair).
    Cases without follow-up are left out; a test that cannot run (one group, no event) has
    None for its figures.
    """
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    keep = _finite(t, e) & np.isin(g, RISK_GROUPS)
    t, observed, g = t[keep], e[keep] > 0.5, g[keep]
    present = [name for name in RISK_GROUPS if (g == name).any()]
    out: dict = {"groups": present, "overall": None, "adjacent": []}
    if len(present) < 2 or not observed.any():
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = multivariate_logrank_test(t, g, observed)
    out["overall"] = {
        "statistic": float(res.test_statistic),
        "p_value": float(res.p_value),
        "df": len(present) - 1,
    }
    for a, b in zip(present, present[1:]):
        ia, ib = g == a, g == b
        entry: dict[str, object] = {"pair": [a, b], "statistic": None, "p_value": None}
        if observed[ia].any() or observed[ib].any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = logrank_test(t[ia], t[ib], observed[ia], observed[ib])
            entry.update(statistic=float(r.test_statistic), p_value=float(r.p_value))
        out["adjacent"].append(entry)
    return out


def choose_risk_cutoffs(
    train_risk: np.ndarray,
    check_risk: np.ndarray,
    check_times: np.ndarray,
    check_events: np.ndarray,
    p_level: float = SEPARATION_P,
) -> tuple[tuple[float, float], dict]:
    """Three risk groups when held-out cases support them, else two (split at the median).

    The tertile cut-offs of the training risk are applied to cases the model did not train on
    (``check_*``, the validation cases); three groups are kept when every adjacent pair differs
    at ``p_level`` by the log-rank test, otherwise the median of the training risk splits
    two groups (stored as equal cut-offs). Returns the cut-offs and the record of both checks.
    """
    lo, hi = risk_cutoffs(train_risk)
    three = logrank_summary(check_times, check_events, risk_groups(check_risk, (lo, hi)))
    r = np.asarray(train_risk, dtype=np.float64)
    median = float(np.median(r[np.isfinite(r)]))
    two = logrank_summary(check_times, check_events, risk_groups(check_risk, (median, median)))
    separated = len(three["adjacent"]) == 2 and all(
        a["p_value"] is not None and a["p_value"] < p_level for a in three["adjacent"]
    )
    cutoffs = (lo, hi) if separated else (median, median)
    record = {
        "n_groups": 3 if separated else 2,
        "p_level": p_level,
        "tertile_cutoffs": [lo, hi],
        "median_cutoff": median,
        "cutoffs": list(cutoffs),
        "checked_on": "validation cases",
        "three_groups": three,
        "two_groups": two,
        "reason": (
            "adjacent tertile groups separate (log-rank)"
            if separated
            else "adjacent tertile groups do not all separate on the validation cases "
            f"(log-rank p >= {p_level}): two groups split at the median training risk"
        ),
    }
    return cutoffs, record


def concordance(times: np.ndarray, risk: np.ndarray, events: np.ndarray) -> float:
    """Harrell's c-index from lifelines (higher risk should mean earlier event).

    Cases without follow-up are dropped; NaN when no comparable pair remains.
    """
    times = np.asarray(times, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    keep = _finite(times, risk, events)
    if keep.sum() < 2 or not (events[keep] > 0.5).any():
        return float("nan")
    try:
        return float(concordance_index(times[keep], -risk[keep], events[keep] > 0.5))
    except ZeroDivisionError:  # no admissible pairs
        return float("nan")


def _censoring_km(times: np.ndarray, events: np.ndarray) -> KaplanMeierFitter:
    km = KaplanMeierFitter()
    km.fit(times, event_observed=1.0 - events)
    return km


def _km_at(km: KaplanMeierFitter, t: np.ndarray) -> np.ndarray:
    return np.asarray(km.survival_function_at_times(np.asarray(t, dtype=np.float64)).values)


def brier_scores(
    train_times: np.ndarray,
    train_events: np.ndarray,
    test_times: np.ndarray,
    test_events: np.ndarray,
    surv_probs: np.ndarray,
    times_grid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """IPCW Brier score at each grid time; returns ``(grid_used, scores)``.

    ``BS(t) = mean_i [ S_i(t)^2 1{T_i <= t, d_i = 1} / G(T_i-) + (1 - S_i(t))^2 1{T_i > t} / G(t) ]``
    with ``G`` the Kaplan-Meier survival of the censoring times in the training data (events
    are taken to precede censoring at tied times). Grid times where ``G`` reaches 0 are dropped.
    """
    tr_t = np.asarray(train_times, dtype=np.float64)
    tr_e = np.asarray(train_events, dtype=np.float64)
    keep_tr = _finite(tr_t, tr_e)
    km = _censoring_km(tr_t[keep_tr], tr_e[keep_tr])

    te_t = np.asarray(test_times, dtype=np.float64)
    te_e = np.asarray(test_events, dtype=np.float64)
    surv = np.asarray(surv_probs, dtype=np.float64)
    grid = np.asarray(times_grid, dtype=np.float64)
    if surv.shape != (te_t.size, grid.size):
        raise ValueError(
            f"surv_probs has shape {surv.shape}, expected ({te_t.size}, {grid.size}) "
            "(one row per test case, one column per grid time)"
        )
    keep = _finite(te_t, te_e)
    te_t, te_e, surv = te_t[keep], te_e[keep] > 0.5, surv[keep]
    g_grid = _km_at(km, grid)
    g_before = _km_at(km, np.nextafter(te_t, -np.inf))  # G(T_i-)
    ok = g_grid > 0
    if not ok.all():
        warnings.warn(
            "Brier score: grid times past the last censoring-survival mass dropped", stacklevel=2
        )
    scores = []
    for j in np.flatnonzero(ok):
        t = grid[j]
        died = (te_t <= t) & te_e
        alive = te_t > t
        w_died = np.where(died, 1.0 / np.where(g_before > 0, g_before, np.inf), 0.0)
        term = surv[:, j] ** 2 * w_died + (1.0 - surv[:, j]) ** 2 * alive / g_grid[j]
        scores.append(term.mean())
    return grid[ok], np.asarray(scores)


def integrated_brier_score(
    train_times: np.ndarray,
    train_events: np.ndarray,
    test_times: np.ndarray,
    test_events: np.ndarray,
    surv_probs: np.ndarray,
    times_grid: np.ndarray,
) -> float:
    """IPCW Brier score integrated over ``times_grid`` (trapezoid rule / time span).

    ``surv_probs`` has one row per test case (rows of cases without follow-up are dropped
    together with them) and one column per grid time. Lower is better; 0.25 is a constant 0.5 prediction.
    """
    grid, scores = brier_scores(
        train_times, train_events, test_times, test_events, surv_probs, times_grid
    )
    if grid.size == 0:
        return float("nan")
    if grid.size == 1:
        return float(scores[0])
    return float(trapezoid(scores, grid) / (grid[-1] - grid[0]))


def default_times_grid(times: np.ndarray, events: np.ndarray, n: int = 50) -> np.ndarray:
    """A grid for the IBS: from the first observed time to the 80th percentile of follow-up.

    Stopping at the 80th percentile keeps enough cases at risk that the IPCW weights stay
    stable (the usual practice); NaN times are ignored; empty when no follow-up exists.
    """
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events, dtype=np.float64)
    keep = _finite(t, e)
    t = t[keep]
    if t.size < 2:
        return np.zeros(0)
    lo, hi = float(t.min()), float(np.quantile(t, 0.8))
    if hi <= lo:
        return np.asarray([lo])
    return np.linspace(lo, hi, n)
