"""Baselines: equal to scikit-learn / lifelines fits, JSON round trip, criteria rules by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autoimmuneai.data.panel import load_panel, panel_from_dict
from autoimmuneai.stats.baselines import (
    BaselineInputs,
    CriteriaBaseline,
    ModelOutputs,
    OracleBaseline,
    SerologyBaseline,
    baseline_from_dict,
    baseline_outputs,
    fit_baselines,
    truth_feature_columns,
)
from autoimmuneai.stats.survival import survival_curves


def _problem(n: int = 300, d: int = 6, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = np.array([0.4, 0.3, 0.2, 0.1, 0.1])[:c]
    labels = rng.choice(c, size=n, p=p / p.sum())
    centres = rng.normal(0, 1.0, (c, d))
    x = centres[labels] + rng.normal(0, 1.0, (n, d))
    x[:, -1] = (rng.uniform(size=n) < 0.3).astype(float)  # a missing-indicator-like column
    log_h = 0.7 * x[:, 0] - 0.4 * x[:, 1]
    t = rng.exponential(40 / np.exp(log_h))
    cens = rng.uniform(10, 100, n)
    times, events = np.minimum(t, cens), (t <= cens).astype(float)
    times[:25] = np.nan  # no follow-up recorded
    events[:25] = np.nan
    return x, labels, times, events


def test_serology_baseline_equals_sklearn_and_lifelines():
    x, labels, times, events = _problem()
    b = SerologyBaseline(n_classes=4).fit(x, labels, times, events)
    ref = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000)
    ).fit(x, labels)
    np.testing.assert_allclose(b.predict_proba(x), ref.predict_proba(x), atol=1e-6)

    follow = np.isfinite(times)
    z = StandardScaler().fit(x).transform(x)
    df = pd.DataFrame(z[follow], columns=[f"x{j}" for j in range(6)])
    df["T"], df["E"] = times[follow], events[follow].astype(int)
    cph = CoxPHFitter(penalizer=0.1).fit(df, duration_col="T", event_col="E")
    ours = b.predict_risk(x[follow])
    theirs = cph.predict_log_partial_hazard(df).to_numpy()
    np.testing.assert_allclose(ours - ours.mean(), theirs - theirs.mean(), atol=1e-5)
    # survival curves from the stored Breslow baseline equal lifelines' at event times
    grid = np.sort(times[follow][events[follow] == 1])[[3, 30, 60]]
    np.testing.assert_allclose(
        survival_curves(ours[:10], b.baseline_hazard, grid),
        cph.predict_survival_function(df.iloc[:10], times=grid).to_numpy().T,
        rtol=1e-4,
    )


def test_serology_baseline_json_round_trip_and_absent_class():
    x, labels, times, events = _problem(seed=1)
    labels = labels.copy()
    labels[labels == 3] = 2  # class 3 never seen in training
    labels[:5] = -1  # unknown diagnosis: skipped
    b = SerologyBaseline(n_classes=5).fit(x, labels, times, events)
    d = json.loads(json.dumps(b.to_dict(), allow_nan=False))
    back = baseline_from_dict(d)
    assert isinstance(back, SerologyBaseline)
    np.testing.assert_array_equal(back.predict_proba(x), b.predict_proba(x))
    np.testing.assert_array_equal(back.predict_risk(x), b.predict_risk(x))
    p = b.predict_proba(x)
    assert p.shape == (300, 5)
    assert (p[:, 3] == 0).all() and (p[:, 4] == 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_serology_baseline_beats_chance_on_held_out_data_and_handles_no_events():
    x, labels, times, events = _problem(600, seed=2)
    b = SerologyBaseline(n_classes=4).fit(x[:400], labels[:400], times[:400], events[:400])
    bacc = balanced_accuracy_score(labels[400:], b.predict_proba(x[400:]).argmax(1))
    assert bacc > 0.5  # chance is 0.25
    no_fu = SerologyBaseline(n_classes=4).fit(x, labels, np.full(600, np.nan), np.full(600, np.nan))
    assert np.isnan(no_fu.predict_risk(x[:3])).all() and no_fu.baseline_hazard is None
    assert baseline_from_dict(no_fu.to_dict()).predict_proba(x[:3]).shape == (3, 4)
    with pytest.raises(ValueError):
        b.predict_proba(x[:, :3])
    with pytest.raises(ValueError):
        SerologyBaseline(4).fit(x, np.zeros(600, int), times, events)


# -- criteria -----------------------------------------------------------------------------

PANEL = load_panel("cns_autoimmune")


def _rows(*cases: dict) -> np.ndarray:
    v = np.full((len(cases), len(PANEL.feature_names)), np.nan)
    for i, case in enumerate(cases):
        for name, value in case.items():
            v[i, PANEL.feature_names.index(name)] = value
    return v


def test_criteria_rules_on_hand_made_rows():
    crit = CriteriaBaseline.for_panel(PANEL)
    assert crit.thresholds["mog"] == 100.0 and crit.thresholds["aqp4_high"] == 320.0
    rows = _rows(
        {"aqp4_igg": 160, "mog_igg": 0, "ocb": 1},  # AQP4 positive wins over OCB
        {"aqp4_igg": 160, "mog_igg": 400},  # rule order: NMOSD before MOGAD
        {"aqp4_igg": 0, "mog_igg": 200},  # clear MOG positive
        {"mog_igg": 40, "ocb": 1},  # low MOG titre is not enough; OCB -> MS
        {"ana": 320, "anti_dsdna": 120},  # 6 points
        {"ana": 320, "c3": 0.5, "antiphospholipid": 1},  # 3 + 2 = 5 < 6
        {"ana": 320, "c3": 0.5, "c4": 0.05, "antiphospholipid": 1},  # 4 + 2 = 6
        {"ana": 40, "anti_dsdna": 200, "anti_sm": 1},  # ANA below the entry criterion
        {"ana": 640, "anti_sm": 1, "ocb": 1},  # anti-Sm 6 points -> NPSLE before MS
        {},  # nothing tested
        {"ocb": 0, "igg_index": 1.2},
    )
    assert crit.predict(rows).tolist() == [
        "NMOSD",
        "NMOSD",
        "MOGAD",
        "MS",
        "NPSLE",
        "SVD",
        "NPSLE",
        "SVD",
        "NPSLE",
        "SVD",
        "SVD",
    ]
    assert crit.score("sle_immunology_points", rows).tolist() == [0, 0, 0, 0, 6, 5, 6, 6, 6, 0, 0]
    p = crit.predict_proba(rows)
    assert p.shape == (11, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, PANEL.class_index("NMOSD")] == pytest.approx(0.95)
    risk = crit.predict_risk(
        _rows(
            {},
            {"ocb": 1, "csf_wbc": 12},
            {"aqp4_igg": 640, "ana": 160, "c4": 0.05, "c3": 0.5},
        )
    )
    assert risk.tolist() == [0.0, 2.0, 3.0]  # low C3 and C4 count as one marker


def test_criteria_round_trip_and_panel_without_rules():
    crit = CriteriaBaseline.for_panel(PANEL)
    back = baseline_from_dict(json.loads(json.dumps(crit.to_dict())))
    rows = _rows({"aqp4_igg": 20}, {"mog_igg": 100}, {"ocb": 1})
    assert back.predict(rows).tolist() == ["NMOSD", "MOGAD", "MS"]
    other = panel_from_dict(
        {
            "name": "other",
            "channels": ["t1"],
            "classes": [{"name": "A"}, {"name": "B"}],
            "features": [
                {"name": "rf", "kind": "continuous"},
                {"name": "anti_ccp", "kind": "continuous"},
            ],
        }
    )
    assert CriteriaBaseline.for_panel(other) is None
    x, labels, times, events = _problem(120, d=3, c=2, seed=3)
    inputs = BaselineInputs(x, np.zeros((120, 2)))
    fitted = fit_baselines(other, inputs, labels, times, events)
    assert set(fitted) == {"serology_only"}  # no rules published: the baseline is absent
    assert set(baseline_outputs(fitted, inputs, other)) == {"serology_only"}
    # an older bundle's criteria entry (no rules stored) falls back to the panel's rules
    old = {"kind": "criteria", "feature_names": [], "classes": [], "thresholds": {}}
    assert "criteria" not in baseline_outputs({"criteria": old}, inputs, other)


def test_criteria_rules_are_data_a_new_panel_gets_its_own():
    """A panel with its own rules and risk markers: the same code applies them."""
    panel = panel_from_dict(
        {
            "name": "toy",
            "channels": ["t1"],
            "classes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
            "features": [
                {"name": "x", "kind": "continuous", "reference_high": 5.0},
                {"name": "y", "kind": "binary"},
            ],
            "criteria": {
                "markers": {
                    "x_high": {"feature": "x", "op": ">", "threshold": "reference_high"},
                    "y_pos": {"feature": "y", "threshold": 0.5},
                },
                "rules": [
                    {"class": "B", "all": ["x_high", "y_pos"]},
                    {"class": "C", "all": ["y_pos"]},
                ],
                "default": "A",
                "risk_markers": [{"label": "x above reference", "any": ["x_high"]}],
            },
        }
    )
    crit = CriteriaBaseline.for_panel(panel)
    rows = np.array([[6.0, 1.0], [5.0, 1.0], [9.0, 0.0], [np.nan, np.nan]])
    assert crit.predict(rows).tolist() == ["B", "C", "A", "A"]
    assert crit.predict_risk(rows).tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": [{"class": "Z", "all": ["y_pos"]}]}, "unknown class 'Z'"),
        ({"markers": {"y_pos": {"feature": "q", "threshold": 1}}}, "unknown feature 'q'"),
        (
            {"markers": {"y_pos": {"feature": "y", "threshold": "positive_at"}}},
            "has no positive_at",
        ),
        ({"markers": {"y_pos": {"feature": "y", "op": "=", "threshold": 1}}}, "has op '='"),
        ({"default": "Q"}, "default class 'Q'"),
    ],
)
def test_malformed_criteria_are_refused_with_the_problem(change, message):
    from autoimmuneai.errors import InputError

    crit = {
        "markers": {"y_pos": {"feature": "y", "threshold": 0.5}},
        "rules": [{"class": "B", "all": ["y_pos"]}],
        "default": "A",
    } | change
    with pytest.raises(InputError, match=message):
        panel_from_dict(
            {
                "name": "toy",
                "channels": ["t1"],
                "classes": [{"name": "A"}, {"name": "B"}],
                "features": [{"name": "y", "kind": "binary"}],
                "criteria": crit,
            },
            source="toy.json",
        )


def test_oracle_uses_truth_columns_and_beats_serology():
    rng = np.random.default_rng(3)
    n = 500
    labels = rng.integers(0, 4, n)
    lesions = rng.poisson(np.array([30, 4, 8, 15])[labels])  # latent lesion counts per class
    volume = rng.gamma(2.0, np.array([2000, 500, 4000, 800])[labels])
    serology = rng.normal(0, 1, (n, 3)) + 0.3 * labels[:, None]
    log_h = 0.05 * lesions
    t = rng.exponential(60 / np.exp(log_h - log_h.mean()))
    times, events = np.minimum(t, 100.0), (t <= 100.0).astype(float)
    truth = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "diagnosis": np.array(["MS", "NMOSD", "MOGAD", "NPSLE"])[labels],
            "class_index": labels,  # would leak the label
            "event_time": times,
            "true_event_time": t,  # an outcome, not a latent cause
            "censor_time": np.full(n, 100.0),
            "true_log_hazard": log_h,  # latent outcome
            "true_aqp4_igg": labels == 1,  # noise-free serology
            "lesion_count_total": lesions,
            "lesion_volume_mm3": volume,
        }
    ).set_index("case_id")
    assert truth_feature_columns(truth) == ["lesion_count_total", "lesion_volume_mm3"]
    tr, te = slice(0, 350), slice(350, n)
    oracle = OracleBaseline(4).fit(truth.iloc[tr], serology[tr], labels[tr], times[tr], events[tr])
    sero = SerologyBaseline(4).fit(serology[tr], labels[tr], times[tr], events[tr])
    assert set(oracle.log_columns) == {"lesion_count_total", "lesion_volume_mm3"}
    b_oracle = balanced_accuracy_score(
        labels[te], oracle.predict_proba(truth.iloc[te], serology[te]).argmax(1)
    )
    b_sero = balanced_accuracy_score(labels[te], sero.predict_proba(serology[te]).argmax(1))
    assert b_oracle > b_sero + 0.1
    back = baseline_from_dict(json.loads(json.dumps(oracle.to_dict())))
    np.testing.assert_allclose(
        back.predict_risk(truth.iloc[te], serology[te]),
        oracle.predict_risk(truth.iloc[te], serology[te]),
    )
    with pytest.raises(ValueError, match="lacks"):
        oracle.predict_proba(truth.drop(columns=["lesion_volume_mm3"]), serology)


def test_fit_baselines_and_one_output_path_for_fitted_and_stored_baselines():
    x, labels, times, events = _problem(200, d=5, c=5, seed=4)
    truth = pd.DataFrame({"n_total": np.arange(200) % 7, "diagnosis": "MS"})
    enc = np.hstack([x, np.zeros((200, 1))])
    values = np.full((200, len(PANEL.feature_names)), np.nan)
    values[:, PANEL.feature_names.index("aqp4_igg")] = np.where(labels == 1, 160.0, np.nan)
    inputs = BaselineInputs(enc, values, truth)
    fitted = fit_baselines(PANEL, inputs, labels, times, events)
    stored = json.loads(json.dumps({k: b.to_dict() for k, b in fitted.items()}))
    assert set(stored) == {"serology_only", "criteria", "oracle"}
    assert stored["oracle"]["truth_columns"] == ["n_total"]
    # the bundle's JSON and the fitted objects give the same outputs through one function
    a = baseline_outputs(fitted, inputs.rows(np.arange(50)), PANEL)
    b = baseline_outputs(stored, inputs.rows(np.arange(50)), PANEL)
    assert set(a) == set(b) == {"serology_only", "criteria", "oracle"}
    for name in a:
        assert isinstance(a[name], ModelOutputs) and a[name].probs.shape == (50, 5)
        np.testing.assert_allclose(a[name].probs, b[name].probs)
        np.testing.assert_allclose(a[name].risk, b[name].risk)
    crit = CriteriaBaseline.for_panel(PANEL)
    np.testing.assert_array_equal(a["criteria"].probs, crit.predict_proba(values[:50]))
    # without a truth table the oracle reports why; without serology_only, that it is absent
    no_truth = baseline_outputs(stored, BaselineInputs(enc, values), PANEL)
    assert no_truth["oracle"] == {"available": False, "reason": "no truth.csv beside the manifest"}
    only_rules = baseline_outputs({}, BaselineInputs(enc, values), PANEL)
    assert only_rules["serology_only"]["available"] is False
    assert isinstance(only_rules["criteria"], ModelOutputs)
    assert set(fit_baselines(PANEL, BaselineInputs(enc, values), labels, times, events)) == {
        "serology_only",
        "criteria",
    }


def test_linear_baseline_predicts_as_its_sklearn_pipeline_with_missing_values():
    x, labels, times, events = _problem(seed=5)
    x = x.copy()
    x[np.random.default_rng(0).uniform(size=x.shape) < 0.15] = np.nan  # missing lab values
    x[:, 2] = np.nan  # a lab never measured in training
    b = SerologyBaseline(n_classes=4).fit(x, labels, times, events)
    pipe = b.models.pipeline
    assert [name for name, _ in pipe.steps] == ["impute", "scale", "logistic"]
    np.testing.assert_allclose(b.predict_proba(x), pipe.predict_proba(x), atol=1e-10)
    back = baseline_from_dict(json.loads(json.dumps(b.to_dict())))
    np.testing.assert_allclose(back.predict_proba(x), pipe.predict_proba(x), atol=1e-10)
    assert back.models.pipeline is None  # the bundle keeps numbers, never the pickled object
