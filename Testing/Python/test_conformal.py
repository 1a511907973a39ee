"""Split-conformal prediction sets: coverage on a generated problem, thresholds, round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoimmuneai.stats.calibration import softmax
from autoimmuneai.stats.conformal import (
    RAPS_K_REGS,
    RAPS_LAMBDAS,
    ConformalPredictor,
    coverage,
    fit_conformal,
    fit_conformal_tuned,
    fit_default_conformal,
    mean_set_size,
    mondrian_min_cases,
)

C = 5


def _problem(n: int, seed: int):
    """True class probabilities from a Dirichlet, labels drawn from them, and a model that sees
    the truth through noise and over-confidence (so coverage does not rely on calibration)."""
    rng = np.random.default_rng(seed)
    true_p = rng.dirichlet(np.full(C, 0.4), size=n)
    labels = (rng.uniform(size=(n, 1)) > np.cumsum(true_p, axis=1)).sum(axis=1)
    labels = np.minimum(labels, C - 1)
    logits = 2.0 * np.log(true_p + 1e-3) + rng.normal(0, 0.7, size=(n, C))
    return softmax(logits), labels


def _random_splits(n: int, n_cal: int, repeats: int, seed: int):
    """``repeats`` random calibration/test splits of ``n`` cases: (repeat, cal, test)."""
    rng = np.random.default_rng(seed)
    for s in range(repeats):
        perm = rng.permutation(n)
        yield s, perm[:n_cal], perm[n_cal:]


@pytest.mark.parametrize(
    "method,class_conditional,randomized",
    [
        ("aps", False, True),
        ("aps", False, False),
        ("raps", False, True),
        ("aps", True, True),
        ("raps", True, False),
        ("lac", False, False),
        ("lac", True, False),
    ],
)
def test_coverage_holds_over_random_splits(method, class_conditional, randomized):
    alpha = 0.1
    probs, labels = _problem(3000, seed=11)
    covs, sizes, per_class = [], [], []
    for s, cal, test in _random_splits(len(labels), n_cal=1500, repeats=30, seed=0):
        cp = fit_conformal(
            probs[cal],
            labels[cal],
            alpha=alpha,
            method=method,
            class_conditional=class_conditional,
            lam=0.05,
            k_reg=2,
            randomized=randomized,
            seed=s,
        )
        sets = cp.predict_sets(probs[test], rng=np.random.default_rng(100 + s))
        assert sets.any(axis=1).all()
        covs.append(coverage(sets, labels[test]))
        sizes.append(mean_set_size(sets))
        per_class.append(
            [coverage(sets[labels[test] == k], labels[test][labels[test] == k]) for k in range(C)]
        )
    mean_cov = float(np.mean(covs))
    assert mean_cov >= 1 - alpha - 0.01
    assert mean_cov <= 1 - alpha + 0.05  # not trivially covering with every class
    assert np.mean(sizes) < C - 0.5
    if class_conditional:
        assert (np.mean(per_class, axis=0) >= 1 - alpha - 0.02).all()


def test_class_conditional_fixes_undercovered_class():
    probs, labels = _problem(4000, seed=5)
    # a model that under-rates class 4 badly: marginal sets miss it, per-class sets do not
    probs = probs.copy()
    probs[:, 4] *= 0.05
    probs /= probs.sum(axis=1, keepdims=True)
    cal, test = np.arange(2000), np.arange(2000, 4000)
    marg = fit_conformal(probs[cal], labels[cal], alpha=0.1, seed=1)
    cc = fit_conformal(probs[cal], labels[cal], alpha=0.1, class_conditional=True, seed=1)
    is4 = labels[test] == 4
    cov_m = coverage(marg.predict_sets(probs[test])[is4], labels[test][is4])
    cov_c = coverage(cc.predict_sets(probs[test])[is4], labels[test][is4])
    assert cov_c >= 0.86
    assert cov_c > cov_m + 0.02


def test_threshold_is_finite_sample_quantile():
    # deterministic APS on one-hot-ish probs: score of the true class = mass above + own mass
    probs = np.tile(np.array([[0.7, 0.2, 0.1]]), (9, 1))
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])  # scores 0.7 x5, 0.9 x3, 1.0 x1
    cp = fit_conformal(probs, labels, alpha=0.2, randomized=False)
    # k = ceil(10 * 0.8) = 8 -> 8th smallest = 0.9
    assert cp.qhat == pytest.approx(0.9)
    sets = cp.predict_sets(probs[:1])
    assert sets.tolist() == [[True, True, False]]
    # too few cases for the coverage asked: every class included
    cp_inf = fit_conformal(probs[:5], labels[:5], alpha=0.1, randomized=False)
    assert math.isinf(cp_inf.qhat)
    assert cp_inf.predict_sets(probs[:2]).all()


def test_raps_penalty_shrinks_sets():
    probs, labels = _problem(3000, seed=2)
    cal, test = np.arange(1500), np.arange(1500, 3000)
    aps = fit_conformal(probs[cal], labels[cal], alpha=0.1, method="aps", seed=0)
    raps = fit_conformal(
        probs[cal], labels[cal], alpha=0.1, method="raps", lam=0.5, k_reg=1, seed=0
    )
    s_aps = aps.predict_sets(probs[test])
    s_raps = raps.predict_sets(probs[test])
    assert mean_set_size(s_raps) <= mean_set_size(s_aps) + 1e-9
    assert coverage(s_raps, labels[test]) >= 0.87


def test_sets_never_empty_and_nested_in_alpha():
    probs, labels = _problem(1000, seed=9)
    small = fit_conformal(probs[:500], labels[:500], alpha=0.3, randomized=False)
    large = fit_conformal(probs[:500], labels[:500], alpha=0.05, randomized=False)
    s_small, s_large = small.predict_sets(probs[500:]), large.predict_sets(probs[500:])
    assert s_small.sum(axis=1).min() >= 1
    assert (s_small <= s_large).all()  # a lower error rate never removes a class
    top = probs[500:].argmax(axis=1)
    assert s_small[np.arange(500), top].all()


@pytest.mark.parametrize("class_conditional", [False, True])
def test_dict_round_trip_is_json(class_conditional):
    probs, labels = _problem(400, seed=3)
    # class 4 kept rare in calibration to force an infinite per-class threshold
    keep = (labels != 4) | (np.arange(400) < 60)
    cp = fit_conformal(
        probs[keep], labels[keep], alpha=0.1, method="raps", class_conditional=class_conditional
    )
    d = json.loads(json.dumps(cp.to_dict(), allow_nan=False))
    back = ConformalPredictor.from_dict(d)
    assert back.method == "raps" and back.alpha == 0.1 and back.n_calibration == int(keep.sum())
    np.testing.assert_array_equal(back.predict_sets(probs), cp.predict_sets(probs))
    # same rng, same sets (randomised sets are reproducible)
    a = cp.predict_sets(probs, rng=np.random.default_rng(7))
    b = cp.predict_sets(probs, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_unknown_labels_skipped_and_bad_arguments():
    probs, labels = _problem(300, seed=4)
    lab = labels.copy()
    lab[:100] = -1
    cp = fit_conformal(probs, lab, alpha=0.1)
    assert cp.n_calibration == 200
    assert coverage(np.ones((3, C), bool), np.array([-1, -1, -1])) != coverage(
        np.ones((3, C), bool), np.array([0, 1, 2])
    )
    with pytest.raises(ValueError):
        fit_conformal(probs, labels, method="thr")
    with pytest.raises(ValueError):
        fit_conformal(probs, labels, alpha=1.5)


def test_with_alpha_equals_a_fresh_fit_on_the_same_calibration():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (300, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    for class_conditional in (False, True):
        base = fit_conformal(probs, labels, alpha=0.1, class_conditional=class_conditional)
        again = ConformalPredictor.from_dict(base.to_dict()).with_alpha(0.3)
        fresh = fit_conformal(probs, labels, alpha=0.3, class_conditional=class_conditional)
        assert again.alpha == 0.3
        np.testing.assert_allclose(np.asarray(again.qhat), np.asarray(fresh.qhat))
        wide, narrow = base.predict_sets(probs), again.predict_sets(probs)
        assert narrow.sum() <= wide.sum()
    with pytest.raises(ValueError, match="no calibration scores"):
        ConformalPredictor("aps", 0.1, 0.5).with_alpha(0.2)


def test_tuned_raps_covers_and_calibrates_on_cases_it_did_not_tune_on():
    alpha = 0.1
    probs, labels = _problem(3000, seed=12)
    covs, tuned_sizes, fixed_sizes = [], [], []
    for s, cal, test in _random_splits(len(labels), n_cal=300, repeats=20, seed=1):
        cp = fit_conformal_tuned(probs[cal], labels[cal], alpha=alpha, seed=s)
        assert cp.method == "raps" and cp.n_tuning == 90 and cp.n_calibration == 210
        assert cp.lam in RAPS_LAMBDAS and cp.k_reg in RAPS_K_REGS
        # the threshold is the finite-sample quantile of the 210 non-tuning cases' scores
        expected = np.sort(cp.scores)[math.ceil(211 * (1 - alpha)) - 1]
        assert cp.qhat == pytest.approx(expected)
        sets = cp.predict_sets(probs[test], rng=np.random.default_rng(s))
        covs.append(coverage(sets, labels[test]))
        tuned_sizes.append(mean_set_size(sets))
        fixed = fit_conformal(probs[cal], labels[cal], alpha=alpha, method="aps", seed=s)
        fixed_sizes.append(mean_set_size(fixed.predict_sets(probs[test])))
    assert np.mean(covs) >= 1 - alpha - 0.01
    assert np.mean(tuned_sizes) < np.mean(fixed_sizes)  # RAPS tuned for size beats APS
    # too few calibration cases to spare a tuning part: the untuned default pair
    small = fit_conformal_tuned(probs[:40], labels[:40], alpha=alpha)
    assert (small.lam, small.k_reg, small.n_tuning, small.n_calibration) == (0.1, 1, 0, 40)


def test_lac_sets_are_the_classes_above_one_minus_qhat_and_smaller_than_aps():
    probs, labels = _problem(3000, seed=5)
    cal, test = np.arange(1500), np.arange(1500, 3000)
    lac = fit_conformal(probs[cal], labels[cal], alpha=0.1, method="lac")
    scores = np.sort(1.0 - probs[cal, labels[cal]])
    assert lac.qhat == scores[math.ceil(1501 * 0.9) - 1]  # the finite-sample quantile of 1 - p
    sets = lac.predict_sets(probs[test])
    expected = probs[test] >= 1.0 - lac.qhat
    expected[np.arange(1500), probs[test].argmax(1)] = True
    np.testing.assert_array_equal(sets, expected)
    aps = fit_conformal(probs[cal], labels[cal], alpha=0.1, method="aps")
    assert mean_set_size(sets) < mean_set_size(aps.predict_sets(probs[test]))
    covs = []
    for seed in range(10):  # one split's coverage varies by about 0.01; their mean does not
        p, y = _problem(3000, seed=seed)
        cp = fit_conformal(p[:1500], y[:1500], alpha=0.1, method="lac")
        covs.append(coverage(cp.predict_sets(p[1500:]), y[1500:]))
    assert abs(np.mean(covs) - 0.9) < 0.01


def _rare_class_problem(n: int, seed: int):
    """Class 0 is rare and its cases look like class 1's: marginal sets under-cover it."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(C, size=n, p=[0.08, 0.32, 0.2, 0.2, 0.2])
    logits = rng.normal(0, 1.0, size=(n, C))
    logits[np.arange(n), labels] += 2.5
    logits[labels == 0, 1] += 2.0  # the rare class is mistaken for class 1
    return softmax(logits), labels


def test_mondrian_covers_every_class_where_marginal_fails_the_rare_one():
    alpha = 0.1
    marginal_cov, mondrian_cov = [], []
    for seed in range(20):
        probs, labels = _rare_class_problem(4000, seed)
        cal, test = np.arange(2000), np.arange(2000, 4000)
        for cc, store in ((False, marginal_cov), (True, mondrian_cov)):
            cp = fit_conformal(probs[cal], labels[cal], alpha, "lac", class_conditional=cc)
            sets = cp.predict_sets(probs[test])
            store.append(
                [
                    coverage(sets[labels[test] == k], labels[test][labels[test] == k])
                    for k in range(C)
                ]
            )
    marginal_cov, mondrian_cov = np.mean(marginal_cov, 0), np.mean(mondrian_cov, 0)
    assert marginal_cov[0] < 1 - alpha - 0.05  # the rare class is under-covered on average
    assert (mondrian_cov >= 1 - alpha - 0.03).all()  # every class keeps its guarantee


def test_default_conformal_uses_mondrian_only_with_enough_cases_per_class():
    assert mondrian_min_cases(0.1) == 19 and mondrian_min_cases(0.2) == 9
    probs, labels = _problem(400, seed=6)
    big = fit_default_conformal(probs, labels, alpha=0.1)
    assert big.class_conditional and big.method == "lac"
    assert "class-conditional" in big.guarantee and "for each diagnosis" in big.guarantee
    small = fit_default_conformal(probs[:60], labels[:60], alpha=0.1)
    counts = np.bincount(labels[:60], minlength=C)
    assert counts.min() < 19 and not small.class_conditional
    assert small.guarantee.startswith("marginal (split conformal on 60 calibration cases)")
    # the guarantee survives the JSON round trip and follows a new alpha
    back = ConformalPredictor.from_dict(json.loads(json.dumps(big.to_dict())))
    assert back.guarantee == big.guarantee
    assert ">= 80%" in back.with_alpha(0.2).guarantee


def test_class_floor_keeps_both_guarantees_with_smaller_sets_than_mondrian():
    """The per-class floor: marginal 90% and 85% for every class (the rare one included) over
    repeated calibrations of the rare-class problem, sets that contain the marginal ones, and
    fewer classes than Mondrian at 90% per class."""
    alpha, class_alpha = 0.1, 0.15
    covs, per_class, sizes = [], [], {"floor": [], "mondrian": []}
    for seed in range(20):
        probs, labels = _rare_class_problem(3000, seed)
        cal, test = np.arange(600), np.arange(600, 3000)
        floor = fit_conformal(
            probs[cal], labels[cal], alpha, "lac", class_conditional=True, class_alpha=class_alpha
        )
        marg = fit_conformal(probs[cal], labels[cal], alpha, "lac")
        mondrian = fit_conformal(probs[cal], labels[cal], alpha, "lac", class_conditional=True)
        # each threshold is the larger of the marginal one and the class's own at 85%
        own = fit_conformal(probs[cal], labels[cal], class_alpha, "lac", class_conditional=True)
        assert np.allclose(floor.qhat, np.maximum(marg.qhat, own.qhat))
        sets = floor.predict_sets(probs[test])
        assert (sets | ~marg.predict_sets(probs[test])).all()  # a superset of the marginal set
        yt = labels[test]
        covs.append(coverage(sets, yt))
        per_class.append([coverage(sets[yt == k], yt[yt == k]) for k in range(C)])
        sizes["floor"].append(mean_set_size(sets))
        sizes["mondrian"].append(mean_set_size(mondrian.predict_sets(probs[test])))
    assert np.mean(covs) >= 1 - alpha - 0.005
    assert (np.mean(per_class, axis=0) >= 1 - class_alpha - 0.02).all()
    assert np.mean(sizes["floor"]) < np.mean(sizes["mondrian"]) - 0.02
    back = ConformalPredictor.from_dict(json.loads(json.dumps(floor.to_dict())))
    assert back.class_alpha == class_alpha and np.allclose(back.qhat, floor.qhat)
    assert "per-class floor" in back.guarantee and ">= 85% for each diagnosis" in back.guarantee
    # a stricter alpha keeps the floor; at 0.2 the 85% floor would outrank 1 - alpha: marginal
    assert np.allclose(back.with_alpha(0.05).qhat, np.maximum(
        fit_conformal(probs[cal], labels[cal], 0.05, "lac").qhat, own.qhat))  # fmt: skip
    wider = back.with_alpha(0.2)
    assert not wider.class_conditional and wider.class_alpha is None
    assert float(wider.qhat) == fit_conformal(probs[cal], labels[cal], 0.2, "lac").qhat
    assert wider.guarantee.startswith("marginal (split conformal")
    plain = fit_default_conformal(probs[cal], labels[cal], alpha=0.2, class_alpha=0.15)
    assert plain.class_alpha is None and not plain.class_conditional


def test_default_floor_needs_enough_cases_of_every_class():
    assert mondrian_min_cases(0.15) == 13
    probs, labels = _rare_class_problem(2000, 3)
    counts = np.bincount(labels[:100], minlength=C)
    assert counts.min() < 13  # 8% of 100: the rare class has too few for a floor
    small = fit_default_conformal(probs[:100], labels[:100], alpha=0.1, class_alpha=0.15)
    assert not small.class_conditional and small.class_alpha is None
    big = fit_default_conformal(probs[:400], labels[:400], alpha=0.1, class_alpha=0.15)
    assert np.bincount(labels[:400], minlength=C).min() >= 13
    assert big.class_conditional and big.class_alpha == 0.15
