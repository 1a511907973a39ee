"""Cross-conformal sets and cross-fitted calibration from the training folds (issue 18).

``train --folds K`` scores every development case with the one fold network that never
trained on it; those out-of-fold outputs choose the calibration map and give the conformal
threshold, which the final network then uses. The threshold is recomputed here from the
out-of-fold logits the training summary records, independently of the stored scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.special
from conftest import tiny_train_config

from autoimmuneai.stats.calibration import CalibrationMap
from autoimmuneai.stats.conformal import (
    ConformalPredictor,
    cross_conformal,
    cv_plus_bound,
    fit_default_conformal,
)

FOLDS = 3


def _quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score, inf beyond n (written out again)."""
    k = math.ceil((scores.size + 1) * (1 - alpha))
    return math.inf if k > scores.size else float(np.sort(scores)[k - 1])


@pytest.fixture(scope="module")
def cross_bundle(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoimmuneai.training.trainer import train_bundle

    cfg = tiny_train_config()
    cfg.folds, cfg.epochs = FOLDS, 1
    out = tmp_path_factory.mktemp("cross") / "bundle"
    return Path(train_bundle(tiny_cohort, out, cfg, progress=False))


@pytest.mark.slow
def test_folds_give_cross_conformal_sets_from_every_development_case(
    cross_bundle: Path,
) -> None:
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.model.bundle import load_bundle

    bundle = load_bundle(cross_bundle)
    training = bundle.metadata["training"]
    n_dev = training["n_cases"]["train"] + training["n_cases"]["val"]
    cp = bundle.conformal
    assert cp.n_calibration == n_dev and cp.folds == FOLDS
    assert cp.guarantee.startswith(
        ("marginal (cross-conformal", "class-conditional (cross-conf", "marginal with a per-class")
    )
    assert f"over {n_dev} cases from {FOLDS} folds" in cp.guarantee
    assert training["conformal_guarantee"] == cp.guarantee
    assert cp.guarantee in (cross_bundle / "docs" / "README.md").read_text(encoding="utf-8")

    # every development case was scored once, by the fold that held it out
    oof = training["cross_validation"]["out_of_fold"]
    cohort = load_cohort(training["cohort"])
    labels = {c.case_id: int(y) for c, y in zip(cohort.cases, cohort.labels())}
    dev_ids = [c.case_id for c in cohort.cases if c.split != "test"]
    assert sorted(oof["case_ids"]) == sorted(dev_ids)
    folds = np.array(oof["fold"])
    per_fold = training["cross_validation"]["per_fold"]
    assert [int((folds == f["fold"]).sum()) for f in per_fold] == [f["n"] for f in per_fold]

    # the threshold, recomputed from the recorded out-of-fold logits and calibration map
    y = np.array([labels[c] for c in oof["case_ids"]])
    z = np.array(oof["logits"], dtype=np.float64)
    check = training["calibration"]["temperature_check"]
    if check["map"] == "vector":
        z = z * np.array(check["vector_scale"]) + np.array(check["vector_shift"])
    probs = scipy.special.softmax(z / bundle.temperature, axis=1)
    scores = 1.0 - probs[np.arange(len(y)), y]
    if cp.class_conditional and cp.class_alpha is not None:  # the marginal one, floored per class
        marginal = _quantile(scores, cp.alpha)
        own = [_quantile(scores[y == k], cp.class_alpha) for k in range(probs.shape[1])]
        expected = [max(marginal, q) for q in own]
        assert np.allclose(np.asarray(cp.qhat, dtype=float), expected, rtol=0, atol=1e-9)
    elif cp.class_conditional:
        expected = [_quantile(scores[y == k], cp.alpha) for k in range(probs.shape[1])]
        assert np.allclose(np.asarray(cp.qhat, dtype=float), expected, rtol=0, atol=1e-9)
    else:
        assert float(np.asarray(cp.qhat)) == pytest.approx(_quantile(scores, cp.alpha), abs=1e-9)
    # the map was chosen on the out-of-fold logits and checked on the final network
    final = check["final_network_check"]
    assert final["fitted_on"] == f"out-of-fold logits of {n_dev} cases"
    assert final["kept_on_final"] in (True, False)
    if check["map"] != "identity":
        assert final["final_nll_map"] <= final["final_nll_identity"]
    conformal_check = training["conformal_check"]
    assert conformal_check["out_of_fold"]["n"] == n_dev
    assert conformal_check["final_validation"]["n"] == training["n_cases"]["val"]
    # another error rate from the same out-of-fold scores stays cross-conformal
    wider = cp.with_alpha(0.2)
    assert wider.folds == FOLDS and "approximately >= 80%" in wider.guarantee


def test_cross_conformal_marks_the_predictor_and_survives_the_bundle_json() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), 200)
    labels = rng.integers(0, 4, 200)
    split = fit_default_conformal(probs, labels, class_conditional=False)
    cross = cross_conformal(split, 5)
    assert cross.qhat == split.qhat and cross.n_calibration == 200
    assert split.folds == 0 and split.guarantee.startswith("marginal (split conformal")
    assert cross.guarantee.startswith("marginal (cross-conformal over 200 cases from 5 folds")
    bound = 1 - 2 * 0.1 - min(2 * (1 - 1 / 5) / (200 / 5 + 1), (1 - 5 / 200) / 6)
    assert cv_plus_bound(0.1, 200, 5) == pytest.approx(bound)
    assert f">= {bound:.0%})" in cross.guarantee
    back = ConformalPredictor.from_dict(json.loads(json.dumps(cross.to_dict())))
    assert back.folds == 5 and back.guarantee == cross.guarantee
    old = split.to_dict()
    del old["folds"]  # a bundle written before cross-conformal sets
    assert ConformalPredictor.from_dict(old).folds == 0
    mondrian = cross_conformal(fit_default_conformal(probs, labels, class_conditional=True), 5)
    assert mondrian.guarantee.startswith("class-conditional (cross-conformal")
    fewest = int(np.bincount(labels).min())
    assert f"fewest cases of one class: {fewest}" in mondrian.guarantee
    assert f">= {cv_plus_bound(0.1, fewest, 5):.0%})" in mondrian.guarantee
    floored = cross_conformal(
        fit_default_conformal(probs, labels, class_conditional=True, class_alpha=0.15), 5
    )
    assert floored.guarantee.startswith("marginal with a per-class floor (cross-conformal")
    # the average coverage rests on all 200 cases, the floor on each class's own
    assert f">= {cv_plus_bound(0.1, 200, 5):.0%})" in floored.guarantee
    assert "approximately >= 85% for each diagnosis" in floored.guarantee
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_conformal(split, 1)


def test_a_map_chosen_on_the_folds_is_refused_when_it_worsens_the_final_network() -> None:
    from autoimmuneai.training.trainer import _map_on_final_network

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    # the final network's logits, drawn so that T = 1 is calibrated
    base = rng.normal(0, 1.0, (300, 3))
    base[np.arange(300), labels] += 1.5
    sharpen = CalibrationMap("temperature", temperature=0.4, record={"chosen": "temperature"})
    kept, record = _map_on_final_network(sharpen, base, labels, n_oof=900)
    assert kept.kind == "identity" and kept.temperature == 1.0 and not record["kept_on_final"]
    assert record["final_nll_map"] > record["final_nll_identity"]
    assert "raised the final network's validation log loss" in kept.record["reason"]
    # the same map on a final network that is under-confident by that factor is kept
    kept, record = _map_on_final_network(sharpen, base * 0.4, labels, n_oof=900)
    assert kept is sharpen and record["kept_on_final"]
    assert record["final_temperature_alone"] < 0.6  # the final network alone wants it too
