"""Diagnosis and progression metrics equal the library values on the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from autoimmuneai.stats.calibration import expected_calibration_error, softmax
from autoimmuneai.stats.metrics import diagnosis_metrics, progression_metrics
from autoimmuneai.stats.survival import breslow_baseline, integrated_brier_score, survival_curves

CLASSES = ["MS", "NMOSD", "MOGAD", "NPSLE", "SVD"]


def _predictions(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), labels] += 1.2
    return softmax(logits), labels


def test_diagnosis_metrics_equal_sklearn():
    probs, labels = _predictions()
    m = diagnosis_metrics(probs, labels, CLASSES)
    preds = probs.argmax(1)
    assert m["macro_auroc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert m["accuracy"] == pytest.approx((preds == labels).mean())
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    cm = confusion_matrix(labels, preds, labels=range(5))
    assert m["confusion"] == cm.tolist()
    for k, name in enumerate(CLASSES):
        pc = m["per_class"][name]
        assert pc["auroc"] == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
        assert pc["sensitivity"] == pytest.approx(recall_score(labels == k, preds == k))
        assert pc["ppv"] == pytest.approx(precision_score(labels == k, preds == k))
        assert pc["specificity"] == pytest.approx(recall_score(labels != k, preds != k))
        assert pc["n"] == int((labels == k).sum())
    assert m["n"] == 400 and m["auroc_skipped"] == []
    assert 0.6 < m["macro_auroc"] < 0.95  # an informative but imperfect model
    json.dumps(m)


def test_absent_class_and_unknown_labels():
    probs, labels = _predictions(300, seed=1)
    keep = labels != 2  # no MOGAD case
    probs, labels = probs[keep], labels[keep].copy()
    labels[:7] = -1
    m = diagnosis_metrics(probs, labels, CLASSES)
    assert m["n"] == keep.sum() - 7 and m["n_unlabelled"] == 7
    assert m["auroc_skipped"] == ["MOGAD"] and "MOGAD" in m["note"]
    assert np.isnan(m["per_class"]["MOGAD"]["auroc"])
    lab, pr = labels[7:], probs[7:]
    per = [roc_auc_score(lab == k, pr[:, k]) for k in (0, 1, 3, 4)]
    assert m["macro_auroc"] == pytest.approx(np.mean(per))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(lab, pr.argmax(1)))
    empty = diagnosis_metrics(probs[:3], -np.ones(3, int), CLASSES)
    assert empty["n"] == 0 and np.isnan(empty["macro_auroc"])
    with pytest.raises(ValueError):
        diagnosis_metrics(probs[:, :4], labels, CLASSES)


def test_progression_metrics_equal_lifelines_and_skip_missing_follow_up():
    rng = np.random.default_rng(2)
    n = 300
    risk = rng.normal(size=n)
    t = rng.exponential(30 / np.exp(risk))
    c = rng.uniform(5, 100, n)
    times, events = np.minimum(t, c), (t <= c).astype(float)
    times[:20] = np.nan
    events[20:30] = np.nan
    ok = slice(30, n)
    base = breslow_baseline(risk[ok], times[ok], events[ok])
    grid = np.linspace(2, 40, 20)
    surv = survival_curves(risk, base, grid)
    m = progression_metrics(risk, times, events, surv_probs=surv, times_grid=grid)
    assert m["n"] == n - 30 and m["n_without_follow_up"] == 30
    assert m["n_events"] == int(events[ok].sum())
    assert m["c_index"] == pytest.approx(concordance_index(times[ok], -risk[ok], events[ok]))
    ibs = integrated_brier_score(times[ok], events[ok], times[ok], events[ok], surv[ok], grid)
    assert m["integrated_brier_score"] == pytest.approx(ibs)
    assert m["c_index"] > 0.65 and m["integrated_brier_score"] < 0.2
    only_c = progression_metrics(risk, times, events)
    assert np.isnan(only_c["integrated_brier_score"]) and only_c["c_index"] == m["c_index"]
    none = progression_metrics(risk[:5], np.full(5, np.nan), np.full(5, np.nan))
    assert none["n"] == 0 and np.isnan(none["c_index"])


def test_evaluate_predictions_figures_and_table(tmp_path):
    """The evaluate stage from arrays: metric blocks, baselines, comparison, CSV and PNGs."""
    import csv

    from autoimmuneai.atomic import json_safe
    from autoimmuneai.stats.calibration import fit_temperature
    from autoimmuneai.stats.conformal import fit_conformal
    from autoimmuneai.stats.survival import risk_cutoffs
    from autoimmuneai.workflows.evaluate import (
        ModelOutputs,
        evaluate_predictions,
        predictions_table,
        write_figures,
    )

    rng = np.random.default_rng(7)
    n = 240
    labels = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), labels] += 1.5
    logits *= 2.5  # over-confident
    risk = rng.normal(size=n)
    t = rng.exponential(40 / np.exp(risk))
    times, events = np.minimum(t, 60.0), (t <= 60.0).astype(float)
    times[:10], events[:10] = np.nan, np.nan
    cal, test = slice(0, 120), slice(120, n)
    temp = fit_temperature(logits[cal], labels[cal])
    probs = softmax(logits, temp)
    cp = fit_conformal(probs[cal], labels[cal], alpha=0.1)
    base = breslow_baseline(risk[cal], times[cal], events[cal])
    weak = ModelOutputs(softmax(rng.normal(size=(n, 5)))[test], risk[test] + rng.normal(0, 2, 120))
    metrics, per_case = evaluate_predictions(
        CLASSES,
        logits[test],
        probs[test],
        labels[test],
        risk[test],
        times[test],
        events[test],
        cp,
        base,
        risk_cutoffs(risk[cal]),
        {
            "serology_only": weak,
            "criteria": {"available": False, "reason": "stored without its rules"},
        },
    )
    d = metrics["diagnosis"]
    assert d["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels[test], probs[test].argmax(1))
    )
    assert d["ece_before_calibration"] > d["ece"]
    fu = np.isfinite(times[test])
    assert metrics["progression"]["c_index"] == pytest.approx(
        concordance_index(times[test][fu], -risk[test][fu], events[test][fu])
    )
    assert 0 < metrics["progression"]["integrated_brier_score"] < 0.25
    assert metrics["conformal"]["coverage"] == pytest.approx(
        per_case["sets"][np.arange(120), labels[test]].mean()
    )
    sero = metrics["baselines"]["serology_only"]
    assert sero["diagnosis"]["balanced_accuracy"] < d["balanced_accuracy"]
    assert np.isnan(sero["progression"]["integrated_brier_score"])  # no baseline hazard given
    assert metrics["baselines"]["criteria"]["available"] is False
    comp = metrics["comparison"]
    assert comp["best_single_modality_balanced_accuracy"]["baseline"] == "serology_only"
    assert comp["fused_minus_best_single_balanced_accuracy"] == pytest.approx(
        d["balanced_accuracy"] - sero["diagnosis"]["balanced_accuracy"]
    )
    json.dumps(json_safe(metrics), allow_nan=False)

    text = predictions_table(
        [f"c{i}" for i in range(120)],
        CLASSES,
        probs[test],
        per_case["sets"],
        risk[test],
        per_case["groups"],
    )
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0])[:7] == ["case_id", *[f"p_{c}" for c in CLASSES], "predicted"]
    assert {"prediction_set", "risk_score", "risk_group"} <= set(rows[0])
    assert rows[3]["predicted"] in rows[3]["prediction_set"].split("|")
    assert float(rows[3]["risk_score"]) == pytest.approx(risk[test][3], abs=1e-6)

    paths = write_figures(
        tmp_path,
        CLASSES,
        logits[test],
        probs[test],
        labels[test],
        times[test],
        events[test],
        per_case["sets"],
        per_case["groups"],
    )
    assert len(paths) == 5
    for rel in paths.values():
        data = (tmp_path / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob("figures/.tmp-*"))


def test_evaluate_predictions_on_an_unlabelled_cohort_without_follow_up(tmp_path):
    """An external cohort at prediction time: no diagnosis, no follow-up; nothing fails."""
    from autoimmuneai.atomic import json_safe
    from autoimmuneai.stats.conformal import fit_conformal
    from autoimmuneai.workflows.evaluate import ModelOutputs, evaluate_predictions, write_figures

    rng = np.random.default_rng(8)
    n = 20
    logits = rng.normal(size=(n, 5))
    probs = softmax(logits)
    cp = fit_conformal(probs, rng.integers(0, 5, n))
    labels, nan = -np.ones(n, int), np.full(n, np.nan)
    risk = rng.normal(size=n)
    base = (np.array([1.0, 2.0]), np.array([0.1, 0.2]))
    metrics, per_case = evaluate_predictions(
        CLASSES, logits, probs, labels, risk, nan, nan, cp, base, (-0.5, 0.5),
        {"serology_only": ModelOutputs(probs, risk, base)},
    )  # fmt: skip
    safe = json_safe(metrics)
    json.dumps(safe, allow_nan=False)
    assert safe["n_labelled"] == 0 and safe["diagnosis"]["balanced_accuracy"] is None
    assert safe["conformal"]["coverage"] is None and safe["conformal"]["mean_set_size"] > 1
    assert safe["progression"]["c_index"] is None
    assert per_case["surv"].shape == (n, 0)
    paths = write_figures(
        tmp_path, CLASSES, logits, probs, labels, nan, nan, per_case["sets"], per_case["groups"]
    )
    assert all((tmp_path / p).stat().st_size > 1000 for p in paths.values())
