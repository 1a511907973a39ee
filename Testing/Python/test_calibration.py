"""Temperature scaling and calibration error on deliberately over-confident logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoimmuneai.stats.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    softmax,
)


def _overconfident(n: int, c: int = 5, scale: float = 3.0, seed: int = 0):
    """Calibrated logits (labels drawn from their softmax) multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, c))
    p = softmax(logits)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return logits * scale, labels


def test_softmax_matches_torch_and_is_stable():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20, 4)) * 10
    for t in (0.5, 1.0, 2.5):
        ref = torch.softmax(torch.as_tensor(z) / t, dim=1).numpy()
        np.testing.assert_allclose(softmax(z, t), ref, rtol=1e-12, atol=1e-14)
    big = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(big).all() and big[0, 0] == pytest.approx(1.0)


def test_temperature_recovers_scale_and_reduces_ece():
    logits, labels = _overconfident(3000, scale=3.0)
    t = fit_temperature(logits, labels)
    assert 2.5 < t < 3.6  # the true over-confidence factor is 3
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert before > 0.1
    assert after < 0.04
    assert after < before / 3


def test_temperature_is_nll_minimum():
    logits, labels = _overconfident(800, scale=2.0, seed=3)
    t = fit_temperature(logits, labels)

    def nll(temp: float) -> float:
        p = softmax(logits, temp)
        return float(-np.log(p[np.arange(len(labels)), labels]).mean())

    assert nll(t) <= nll(t * 1.05) + 1e-9
    assert nll(t) <= nll(t / 1.05) + 1e-9


def test_unknown_labels_ignored_and_no_labels_gives_identity():
    logits, labels = _overconfident(600, scale=2.0, seed=4)
    t_all = fit_temperature(logits, labels)
    labels_masked = labels.copy()
    extra = np.random.default_rng(0).normal(size=(50, 5)) * 50
    t_mixed = fit_temperature(
        np.vstack([logits, extra]), np.concatenate([labels_masked, -np.ones(50, int)])
    )
    assert t_mixed == pytest.approx(t_all, rel=1e-4)
    assert fit_temperature(logits[:3], -np.ones(3, int)) == 1.0


def test_ece_by_hand():
    # two bins hit with 15 equal-width bins: conf 0.9 (bin 13) and conf 0.6 (bin 8)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    # bin 0.9: acc 0.5, conf 0.9 -> 0.4 * 2/4; bin 0.6: acc 0.5, conf 0.6 -> 0.1 * 2/4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.25)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_reliability_curve_counts_and_values():
    logits, labels = _overconfident(1000, scale=1.0, seed=5)
    probs = softmax(logits)
    curve = reliability_curve(probs, labels, n_bins=10)
    assert len(curve["edges"]) == 11 and len(curve["counts"]) == 10
    assert sum(curve["counts"]) == 1000
    conf = np.array(curve["confidence"])
    filled = np.array(curve["counts"]) > 0
    lo, hi = np.array(curve["edges"][:-1]), np.array(curve["edges"][1:])
    assert ((conf[filled] > lo[filled]) & (conf[filled] <= hi[filled])).all()
    assert np.isnan(conf[~filled]).all()
    # calibrated by construction: per-bin accuracy near confidence where bins are well filled
    acc = np.array(curve["accuracy"])
    big = np.array(curve["counts"]) >= 100
    assert np.abs(acc[big] - conf[big]).max() < 0.1


def test_choose_temperature_applies_it_only_when_held_out_folds_improve():
    from autoimmuneai.stats.calibration import choose_temperature

    logits, labels = _overconfident(400, scale=3.0, seed=3)
    t, record = choose_temperature(logits, labels, folds=5)
    assert record["applied"] and t == pytest.approx(fit_temperature(logits, labels))
    assert record["heldout_nll_fitted"] < record["heldout_nll_identity"]
    # calibrated logits on few cases: the fitted temperature does not help out of fold
    calibrated, labels = _overconfident(40, scale=1.0, seed=4)
    applied = []
    for seed in range(10):
        t, record = choose_temperature(calibrated, labels, folds=5, seed=seed)
        applied.append(record["applied"])
        if not record["applied"]:
            assert t == 1.0
            assert record["heldout_nll_fitted"] >= record["heldout_nll_identity"]
    assert not all(applied)
    # a class with one labelled case: no folds, the identity
    t, record = choose_temperature(calibrated[:6], np.array([0, 0, 1, 1, 2, -1]))
    assert t == 1.0 and record["applied"] is False and record["folds"] == 0


def test_ece_if_calibrated_matches_a_calibrated_model_and_shrinks_with_n():
    """The reference ECE is what a model whose probabilities are right shows on n cases."""
    from autoimmuneai.stats.calibration import ece_if_calibrated

    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 2.0, size=(4000, 5))
    p = softmax(logits)
    # the ECE of truly calibrated probabilities on independent 50-case draws
    observed = []
    for _ in range(300):
        i = rng.choice(4000, 50, replace=False)
        labels = np.array([rng.choice(5, p=row) for row in p[i]])
        observed.append(expected_calibration_error(p[i], labels))
    ref50 = ece_if_calibrated(p[:50], seed=1)
    assert ref50["n"] == 50
    assert ref50["mean"] == pytest.approx(np.mean(observed), abs=0.03)
    assert ref50["mean"] > 0.08  # on 50 cases even a perfect model misses ECE <= 0.08
    ref2000 = ece_if_calibrated(p[:2000], seed=1)
    assert ref2000["mean"] < ref50["mean"] / 3 and ref2000["p95"] < 0.05
    assert ref50["p95"] > ref50["mean"]


def test_vector_scaling_fixes_a_per_class_overconfidence_temperature_cannot():
    from autoimmuneai.stats.calibration import fit_vector_scaling

    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 1.5, size=(3000, 4))
    labels = np.array([rng.choice(4, p=row) for row in softmax(logits)])
    scale = np.array([3.0, 3.0, 1.0, 1.0])  # two classes over-confident, two not
    bent = logits * scale + np.array([0.5, 0.0, 0.0, -0.5])
    w, b = fit_vector_scaling(bent, labels, l2=1e-4)
    t = fit_temperature(bent, labels)
    ece_v = expected_calibration_error(softmax(bent * w + b), labels)
    ece_t = expected_calibration_error(softmax(bent, t), labels)
    assert ece_v < ece_t and ece_v < 0.03
    assert w[0] < 0.6 and w[2] > 0.7  # the over-confident classes are scaled down
    w0, b0 = fit_vector_scaling(bent, np.full(3000, -1))
    assert np.array_equal(w0, np.ones(4)) and np.array_equal(b0, np.zeros(4))


def test_choose_calibration_picks_the_map_that_helps_out_of_fold():
    from autoimmuneai.stats.calibration import choose_calibration, fit_vector_scaling

    # two classes 3x over-confident, two not: vector scaling wins over a single temperature
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 1.5, size=(400, 4))
    labels = np.array([rng.choice(4, p=row) for row in softmax(logits)])
    bent = logits * np.array([3.0, 3.0, 1.0, 1.0])
    m = choose_calibration(bent, labels)
    nll = m.record["heldout_nll"]
    assert m.kind == "vector" and nll["vector"] < nll["temperature"] < nll["identity"]
    w, b = fit_vector_scaling(bent, labels)
    np.testing.assert_allclose(m.apply(bent), bent * w + b)
    assert m.record["applied"] and m.record["fitted_temperature"] == 1.0
    # a uniform over-confidence: the temperature does as well with one parameter
    t_only = choose_calibration(logits * 2.5, labels)
    assert t_only.kind in ("temperature", "vector") and t_only.record["applied"]
    # calibrated logits on 40 cases: usually no map; never one that is worse out of fold
    calibrated, y40 = _overconfident(40, scale=1.0, seed=4)
    kinds = []
    for seed in range(3):
        c = choose_calibration(calibrated, y40, seed=seed)
        kinds.append(c.kind)
        assert c.record["heldout_nll"][c.kind] <= c.record["heldout_nll"]["identity"]
    assert "identity" in kinds
    few = choose_calibration(calibrated[:6], np.array([0, 0, 1, 1, 2, -1]))
    assert few.kind == "identity" and few.record["folds"] == 0 and not few.record["applied"]


def test_vector_scaling_folded_into_the_network_gives_the_scaled_logits():
    from autoimmuneai.model.fusion import FusionModel, ModelConfig

    torch.manual_seed(0)
    model = FusionModel(
        ModelConfig(n_serology=6, n_classes=3, channels=(4, 8), strides=(2, 2))
    ).eval()
    image, serology = torch.randn(3, 1, 16, 16, 16), torch.randn(3, 6)
    with torch.no_grad():
        before, _ = model.forward_all(image, serology)
    w, b = np.array([0.5, 1.5, 2.0]), np.array([0.3, -0.1, -0.2])
    model.scale_logits(w, b)
    with torch.no_grad():
        after, risk = model.forward_all(image, serology)
        expected = torch.logsumexp(torch.log_softmax(after, 1) + model.class_log_hazard, 1)
    np.testing.assert_allclose(after.numpy(), before.numpy() * w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(risk.numpy(), expected.numpy(), rtol=1e-6)
