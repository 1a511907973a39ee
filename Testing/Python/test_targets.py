"""The small-cohort target list of metrics.json: intervals, verdicts, "too few cases"."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from autoimmuneai.stats.targets import small_cohort_targets, wilson_interval

CLASSES = ["A", "B", "C"]


def test_wilson_interval_equals_scipy():
    for k, n in ((8, 10), (45, 50), (0, 12), (30, 30)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert wilson_interval(0, 0) is None


def _case_outputs(n: int, seed: int, miss: float):
    """Sets that hold the truth with probability 1 - miss, calibrated-ish probabilities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), labels] = 0.8
    sets = np.zeros((n, 3), bool)
    hit = rng.uniform(size=n) > miss
    sets[np.arange(n), np.where(hit, labels, (labels + 1) % 3)] = True
    risk = rng.normal(size=n)
    times = rng.exponential(20 * np.exp(-risk))
    return probs, labels, sets, risk, times, np.ones(n)


def _by_name(targets: list[dict]) -> dict:
    keys = {"name", "target", "measured", "ci", "met", "note"}
    assert all(set(t) - {"if_calibrated"} == keys for t in targets)
    return {t["name"]: t for t in targets}


def test_targets_are_judged_on_many_cases_and_left_open_on_few():
    probs, labels, sets, risk, times, events = _case_outputs(1500, 0, miss=0.1)
    many = _by_name(
        small_cohort_targets(
            classes=CLASSES,
            probs=probs,
            labels=labels,
            sets=sets,
            risk=risk,
            times=times,
            events=events,
            serology_risk=-risk,
            n_training=500,
        )  # fmt: skip
    )
    cov = many["marginal coverage of the prediction sets"]
    assert cov["met"] is True and cov["ci"][0] < cov["measured"] < cov["ci"][1]
    assert many["mean prediction-set size"]["target"] == "<= 1.6"  # >= 400 training cases
    assert many["coverage of A"]["target"] == ">= 0.85" and many["coverage of A"]["met"] is True
    assert many["expected calibration error (15 bins)"]["met"] is False  # 0.8 vs 0.9 accuracy
    c = many["fused c-index minus serology-only c-index"]
    assert c["met"] is True and c["measured"] > 0.1  # -risk ranks everything backwards
    # 24 cases that miss 15%: a borderline coverage cannot be told apart from the target
    probs, labels, sets, risk, times, events = _case_outputs(24, 1, miss=0.15)
    few = _by_name(
        small_cohort_targets(
            classes=CLASSES,
            probs=probs,
            labels=labels,
            sets=sets,
            risk=risk,
            times=times,
            events=events,
            serology_risk=None,
            n_training=150,
        )  # fmt: skip
    )
    cov = few["marginal coverage of the prediction sets"]
    assert cov["met"] is None and "too few cases" in cov["note"] and cov["ci"] is not None
    assert few["mean prediction-set size"]["target"] == "<= 2.0"
    assert few["coverage of A"]["target"] == ">= 0.8"
    assert few["fused c-index minus serology-only c-index"]["met"] is None


def _calibrated(n: int, seed: int, sharpen: float = 1.0):
    """Probabilities whose labels are drawn from them (``sharpen`` > 1: over-confident)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    q = np.exp(logits * sharpen)
    return q / q.sum(axis=1, keepdims=True), labels


def _ece(probs, labels, n_training=150) -> dict:
    n = len(labels)
    sets = np.ones((n, 3), bool)
    targets = small_cohort_targets(
        classes=CLASSES, probs=probs, labels=labels, sets=sets, risk=np.zeros(n),
        times=np.ones(n), events=np.ones(n), serology_risk=None, n_training=n_training,
    )  # fmt: skip
    return _by_name(targets)["expected calibration error (15 bins)"]


def test_ece_on_few_cases_is_judged_against_what_a_calibrated_model_shows():
    from autoimmuneai.stats.calibration import expected_calibration_error

    # 50 cases of a perfectly calibrated model: the ECE is above 0.08, yet nothing is wrong
    probs, labels = _calibrated(50, 2)
    entry = _ece(probs, labels)
    assert entry["measured"] == pytest.approx(expected_calibration_error(probs, labels))
    ref = entry["if_calibrated"]
    assert ref["n"] == 50 and ref["mean"] > 0.08 and ref["p95"] > ref["mean"]
    if entry["measured"] > 0.08:
        assert entry["met"] is None and "perfectly calibrated" in entry["note"]
    # 2000 cases: a calibrated model meets the target, a strongly over-confident one does not
    probs, labels = _calibrated(2000, 3)
    good = _ece(probs, labels)
    assert good["met"] is True and good["if_calibrated"]["p95"] < 0.08
    bad = _ece(*_calibrated(2000, 3, sharpen=3.0))
    assert bad["met"] is False and bad["measured"] > bad["if_calibrated"]["p95"]
