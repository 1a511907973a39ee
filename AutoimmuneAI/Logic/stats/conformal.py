"""Split-conformal prediction sets (LAC / APS / RAPS, marginal or class-conditional).

The set is the clinician-facing differential ("class A or class B, 90% coverage"): on exchangeable
data it contains the true diagnosis with probability >= 1 - alpha, whatever the model.

LAC (Sadinle et al. 2019, "least ambiguous set-valued classifiers"): the score of class y is
``1 - p_y``; of all conformal sets with the coverage guarantee it gives the smallest mean set
size when the probabilities are calibrated, which is why it is the default.

APS and RAPS (Romano et al. 2020; Angelopoulos et al. 2021): with the classes sorted by
probability, the score of class y is the probability mass ranked above y, plus ``u * p_y``
(``u ~ U(0, 1)`` when randomised, 1 otherwise), plus ``lam * max(0, rank_y - k_reg)`` for
RAPS (rank 1-based). The threshold ``qhat`` is the ``ceil((n + 1)(1 - alpha))``-th smallest
calibration score; the set holds every class whose score is <= qhat, and never less than
the top class.

Class-conditional ("Mondrian", Vovk et al. 2005) sets use one threshold per class from that
class's calibration cases, so that *each* diagnosis, the rare ones included, is covered with
probability >= 1 - alpha, not only the average case. A class with n calibration cases has a
threshold below the largest score only when ``ceil((n + 1)(1 - alpha)) < n``, i.e.
``n >= (2 - alpha) / alpha`` (19 at alpha 0.1); with fewer the threshold is the maximum or
infinite and the sets balloon. :func:`fit_default_conformal` chooses the set rule from the
class counts only (see there), so the chosen sets keep their exact guarantee, which
``guarantee`` states.

A per-class floor is the middle way: the marginal threshold for every class, raised for a
class whose own calibration cases need more to reach ``1 - class_alpha`` (``class_alpha``
> ``alpha``, e.g. 85% for each diagnosis beside 90% on average). Each threshold is at least
the marginal one, so every set contains the marginal set and keeps its ``1 - alpha``
guarantee; each class's threshold is at least its own ``1 - class_alpha`` quantile, so each
class keeps that guarantee too (both exact for split conformal). It needs
``mondrian_min_cases(class_alpha)`` cases per class (13 at 0.15) instead of 19, and it widens
only the sets of the classes the marginal threshold under-covers.

Cross-conformal sets (Vovk 2015; CV+, Barber et al. 2021): with K-fold cross-validation,
every development case is scored by the one fold network that never trained on it, so the
threshold comes from all n labelled cases instead of one small validation split, and the
threshold is applied to the final network (``cross_conformal``; ``train --folds K``). CV+
proper, which scores a new case with every fold network, guarantees coverage >=
``cv_plus_bound`` (about 1 - 2 alpha); with the final network in their place the coverage is
approximately 1 - alpha, exact only in so far as the final network's scores are distributed
like the fold networks' out-of-fold ones. ``guarantee`` says so.

RAPS's ``lam`` and ``k_reg`` can be tuned as its authors do (:func:`fit_conformal_tuned`): a
random part of the calibration cases picks the pair that gives the smallest sets there, and
the threshold comes from the other cases only, so the coverage guarantee is untouched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

METHODS = ("lac", "aps", "raps")


@dataclass
class ConformalPredictor:
    """A fitted conformal threshold; ``qhat`` is a float or one value per class.

    ``inf`` in ``qhat`` (too few calibration cases for the requested coverage) means
    "always include"; it is stored as ``None`` in :meth:`to_dict` so the dict stays JSON.
    """

    method: str
    alpha: float
    qhat: float | list[float]
    class_conditional: bool = False
    lam: float = 0.0
    k_reg: int = 1
    randomized: bool = True
    n_calibration: int = 0
    n_tuning: int = 0  # calibration cases spent on choosing lam and k_reg (not in the threshold)
    # Conformity scores of the calibration cases' true classes (and those classes), kept so
    # that the same calibration gives a threshold for another error rate (``with_alpha``).
    scores: list[float] = field(default_factory=list)
    score_labels: list[int] = field(default_factory=list)
    guarantee: str = ""  # which coverage guarantee holds, in words (``describe_guarantee``)
    # > 1: cross-conformal, the scores are the out-of-fold outputs of that many fold networks
    # (``cross_conformal``); 0: split conformal on held-out calibration cases
    folds: int = 0
    # class-conditional with a floor: each class's threshold is the larger of the marginal
    # one (at ``alpha``) and the class's own at ``class_alpha``; None: plain Mondrian
    class_alpha: float | None = None

    def with_alpha(self, alpha: float) -> ConformalPredictor:
        """The same calibration at another error rate (needs the stored calibration scores).

        A per-class floor is kept while it stays below the new level ``1 - alpha``; at or
        above it the sets become marginal, as ``fit_default_conformal`` would choose.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not self.scores:
            raise ValueError("this bundle stores no calibration scores; retrain it to change alpha")
        scores = np.asarray(self.scores, dtype=np.float64)
        labels = np.asarray(self.score_labels, dtype=np.int64)
        n_classes = np.atleast_1d(np.asarray(self.qhat)).size
        cc, class_alpha = self.class_conditional, _floor_below(alpha, self.class_alpha)
        if self.class_alpha is not None and class_alpha is None:  # the floor is dropped
            cc = False
        qhat = _thresholds(scores, labels, n_classes, alpha, cc, class_alpha)
        changed = replace(
            self, alpha=float(alpha), qhat=qhat, class_conditional=cc, class_alpha=class_alpha
        )
        changed.guarantee = describe_guarantee(changed)
        return changed

    def predict_sets(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Boolean mask [n, C] of the classes in each case's prediction set (never empty).

        Randomised sets draw ``u`` from ``rng`` (a fixed seed when None, so the same
        probabilities always give the same sets).
        """
        probs = np.asarray(probs, dtype=np.float64)
        n, c = probs.shape
        if self.randomized:
            rng = rng if rng is not None else np.random.default_rng(0)
            u = rng.uniform(size=len(probs))
        else:
            u = np.ones(n)
        scores = _scores_for(self.method, probs, u, self.lam, self.k_reg)
        if self.class_conditional:
            q = np.asarray(self.qhat, dtype=np.float64)
            if q.shape != (c,):
                raise ValueError(f"class-conditional qhat has {q.size} values for {c} classes")
            mask = scores <= q[None, :]
        else:
            mask = scores <= float(np.asarray(self.qhat))
        mask[np.arange(n), probs.argmax(axis=1)] = True
        return mask

    def to_dict(self) -> dict:
        """JSON-able description (stored in the model bundle)."""
        d = asdict(self)
        if self.class_conditional:
            d["qhat"] = [
                None if not math.isfinite(q) else float(q)
                for q in np.asarray(self.qhat, dtype=np.float64)
            ]
        else:
            q = float(np.asarray(self.qhat))
            d["qhat"] = q if math.isfinite(q) else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConformalPredictor:
        """Rebuild from :meth:`to_dict` output."""
        qhat = d["qhat"]
        if isinstance(qhat, list):
            qhat = [math.inf if q is None else float(q) for q in qhat]
        else:
            qhat = math.inf if qhat is None else float(qhat)
        method = str(d.get("method", "aps"))
        if method not in METHODS:
            raise ValueError(f"unknown conformal method {method!r} (one of {METHODS})")
        return cls(
            method=method,
            alpha=float(d["alpha"]),
            qhat=qhat,
            class_conditional=bool(d.get("class_conditional", False)),
            lam=float(d.get("lam", 0.0)),
            k_reg=int(d.get("k_reg", 1)),
            randomized=bool(d.get("randomized", True)),
            n_calibration=int(d.get("n_calibration", 0)),
            n_tuning=int(d.get("n_tuning", 0)),
            scores=[float(x) for x in d.get("scores", [])],
            score_labels=[int(x) for x in d.get("score_labels", [])],
            guarantee=str(d.get("guarantee", "")),
            folds=int(d.get("folds", 0) or 0),
            class_alpha=None if d.get("class_alpha") is None else float(d["class_alpha"]),
        )


def _all_scores(probs: np.ndarray, u: np.ndarray, lam: float, k_reg: int) -> np.ndarray:
    """Conformity score of every class for every case, [n, C] (see module docstring)."""
    n, c = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    above = np.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked strictly above
    ranks = np.arange(1, c + 1)[None, :]
    sorted_scores = above + u[:, None] * sorted_p + lam * np.maximum(ranks - k_reg, 0)
    scores = np.empty_like(sorted_scores)
    np.put_along_axis(scores, order, sorted_scores, axis=1)
    return scores


def _scores_for(
    method: str, probs: np.ndarray, u: np.ndarray, lam: float, k_reg: int
) -> np.ndarray:
    """Conformity scores [n, C] of ``method``: LAC ``1 - p``; APS/RAPS as in the module docstring."""
    if method == "lac":
        return 1.0 - probs
    return _all_scores(probs, u, lam if method == "raps" else 0.0, k_reg)


def mondrian_min_cases(alpha: float) -> int:
    """Fewest calibration cases of one class that give it a threshold below its largest score."""
    return math.ceil((2.0 - alpha) / alpha - 1e-9)


def cv_plus_bound(alpha: float, n: int, folds: int) -> float:
    """The coverage CV+ guarantees with ``folds`` folds of ``n`` cases (Barber et al. 2021,
    theorem 4): ``1 - 2 alpha - min(2 (1 - 1/K) / (n/K + 1), (1 - K/n) / (K + 1))``."""
    k = max(int(folds), 2)
    slack = min(2.0 * (1.0 - 1.0 / k) / (n / k + 1.0), (1.0 - k / max(n, k)) / (k + 1.0))
    return max(0.0, 1.0 - 2.0 * alpha - slack)


def cross_conformal(cp: ConformalPredictor, folds: int) -> ConformalPredictor:
    """``cp`` (fitted on out-of-fold scores of ``folds`` fold networks) marked cross-conformal,
    with its guarantee in words."""
    if folds < 2:
        raise ValueError(f"cross-conformal sets need at least 2 folds, got {folds}")
    marked = replace(cp, folds=int(folds))
    marked.guarantee = describe_guarantee(marked)
    return marked


def _describe_cross(cp: ConformalPredictor, least: int) -> str:
    """:func:`describe_guarantee` of cross-conformal sets; ``least``: the fewest cases of a class."""
    level = f"{1.0 - cp.alpha:.0%}"
    # the floor's coverage on average rests on every case, like marginal sets
    n_bound = least if cp.class_conditional and cp.class_alpha is None else cp.n_calibration
    bound = f"{cv_plus_bound(cp.alpha, n_bound, cp.folds):.0%}"
    source = (
        f"cross-conformal over {cp.n_calibration} cases from {cp.folds} folds: each case's "
        "score from the fold network that never trained on it, the threshold applied to the "
        "final network"
    )
    caveat = (
        f"approximately >= {level} (exact only as far as the final network's scores match the "
        f"fold networks'; CV+ with the fold networks themselves guarantees >= {bound})"
    )
    if cp.class_alpha is not None:
        floor = f"{1.0 - cp.class_alpha:.0%}"
        return (
            f"marginal with a per-class floor ({source}, fewest cases of one class: {least}): "
            f"the set holds the true diagnosis with probability {caveat} on average over cases, "
            f"and approximately >= {floor} for each diagnosis"
        )
    if cp.class_conditional:
        return (
            f"class-conditional ({source}, one threshold per class, fewest cases of one class: "
            f"{least}): for each diagnosis the set holds the true one with probability {caveat}"
        )
    return (
        f"marginal ({source}): the set holds the true diagnosis with probability {caveat} on "
        "average over cases, not for each diagnosis separately"
    )


def describe_guarantee(cp: ConformalPredictor) -> str:
    """The coverage guarantee ``cp`` carries, in one sentence for the report and the bundle."""
    level = f"{1.0 - cp.alpha:.0%}"
    labels = np.asarray(cp.score_labels, dtype=np.int64)
    n_classes = np.atleast_1d(np.asarray(cp.qhat)).size
    counts = np.bincount(labels, minlength=n_classes) if labels.size else np.zeros(0, int)
    least = int(min(counts)) if len(counts) else 0
    if cp.folds > 1:
        return _describe_cross(cp, least)
    if cp.class_alpha is not None:
        return (
            f"marginal with a per-class floor (split conformal on {cp.n_calibration} calibration "
            f"cases): the set holds the true diagnosis with probability >= {level} on average "
            f"over cases and >= {1.0 - cp.class_alpha:.0%} for each diagnosis (fewest "
            f"calibration cases of one class: {least})"
        )
    if cp.class_conditional:
        return (
            f"class-conditional (Mondrian split conformal): for each diagnosis the set holds the "
            f"true one with probability >= {level} (fewest calibration cases of one class: {least})"
        )
    return (
        f"marginal (split conformal on {cp.n_calibration} calibration cases): the set holds the "
        f"true diagnosis with probability >= {level} on average over cases, not for each "
        "diagnosis separately"
    )


def _finite_sample_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score; inf when that exceeds n."""
    n = scores.size
    k = math.ceil((n + 1) * (1.0 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(np.sort(scores)[max(k, 1) - 1])


def _floor_below(alpha: float, class_alpha: float | None) -> float | None:
    """``class_alpha`` when it is a floor below the level ``1 - alpha``, else None: a floor
    that would outrank ``1 - alpha`` is none (``with_alpha`` and ``fit_default_conformal``)."""
    return class_alpha if class_alpha is not None and class_alpha > alpha else None


def _thresholds(
    scores: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    alpha: float,
    class_conditional: bool,
    class_alpha: float | None,
) -> float | list[float]:
    """``qhat`` of the calibration ``scores`` of the true classes ``labels``: one marginal
    value, one per class (Mondrian), or one per class floored by the marginal one."""
    if not class_conditional:
        return _finite_sample_quantile(scores, alpha)
    if class_alpha is None:
        return [_finite_sample_quantile(scores[labels == k], alpha) for k in range(n_classes)]
    marginal = _finite_sample_quantile(scores, alpha)
    return [
        max(marginal, _finite_sample_quantile(scores[labels == k], class_alpha))
        for k in range(n_classes)
    ]


def fit_conformal(
    probs_cal: np.ndarray,
    labels_cal: np.ndarray,
    alpha: float = 0.1,
    method: str = "aps",
    class_conditional: bool = False,
    lam: float = 0.01,
    k_reg: int = 1,
    randomized: bool = True,
    seed: int = 0,
    class_alpha: float | None = None,
) -> ConformalPredictor:
    """Split-conformal threshold from calibration probabilities and labels (-1 = unknown, skipped).

    ``class_alpha`` (with ``class_conditional``): the per-class floor of the module docstring.
    """
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r} (one of {METHODS})")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    probs = np.asarray(probs_cal, dtype=np.float64)
    labels = np.asarray(labels_cal).astype(np.int64)
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    n, c = probs.shape
    rng = np.random.default_rng(seed)
    randomized = randomized and method != "lac"  # LAC scores need no tie-breaking draw
    u = rng.uniform(size=len(probs)) if randomized else np.ones(n)
    lam_eff = lam if method == "raps" else 0.0
    if class_alpha is not None and not (class_conditional and 0.0 < class_alpha < 1.0):
        raise ValueError(f"class_alpha needs class-conditional sets and (0, 1), got {class_alpha}")
    true_scores = _scores_for(method, probs, u, lam_eff, k_reg)[np.arange(n), labels]
    qhat = _thresholds(true_scores, labels, c, alpha, class_conditional, class_alpha)
    fitted = ConformalPredictor(
        method=method,
        alpha=float(alpha),
        qhat=qhat,
        class_conditional=class_conditional,
        lam=float(lam_eff),
        k_reg=int(k_reg),
        randomized=randomized,
        n_calibration=int(n),
        scores=[float(x) for x in true_scores],
        score_labels=[int(x) for x in labels],
        class_alpha=None if class_alpha is None else float(class_alpha),
    )
    fitted.guarantee = describe_guarantee(fitted)
    return fitted


def fit_default_conformal(
    probs_cal: np.ndarray,
    labels_cal: np.ndarray,
    alpha: float = 0.1,
    method: str = "lac",
    class_conditional: bool | None = None,
    lam: float = 0.05,
    k_reg: int = 1,
    seed: int = 0,
    class_alpha: float | None = None,
) -> ConformalPredictor:
    """The sets ``train`` stores, the rule chosen from the class counts alone (so the guarantee
    stays exact).

    ``class_conditional=None``: with ``class_alpha`` (> ``alpha``), the per-class floor when
    every class has ``mondrian_min_cases(class_alpha)`` calibration cases; without it, Mondrian
    when every class has ``mondrian_min_cases(alpha)``; marginal otherwise (and when
    ``class_alpha`` <= ``alpha``: a floor that would outrank ``1 - alpha``). True forces
    class-conditional sets (floored when ``class_alpha`` is given), False marginal ones.
    """
    labels = np.asarray(labels_cal).astype(np.int64)
    n_classes = np.asarray(probs_cal).shape[1]
    if class_alpha is not None and _floor_below(alpha, class_alpha) is None:
        # the sets are marginal then (as ``with_alpha`` makes them), unless class-conditional
        # sets are asked for
        class_alpha = None
        class_conditional = bool(class_conditional)
    if class_conditional is None:
        counts = np.bincount(labels[labels >= 0], minlength=n_classes)
        needed = mondrian_min_cases(alpha if class_alpha is None else class_alpha)
        class_conditional = bool(counts.min() >= needed)
    return fit_conformal(
        probs_cal, labels, alpha=alpha, method=method, class_conditional=class_conditional,
        lam=lam, k_reg=k_reg, seed=seed,
        class_alpha=class_alpha if class_conditional else None,
    )  # fmt: skip


RAPS_LAMBDAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
RAPS_K_REGS = (0, 1, 2)
TUNING_FRACTION = 0.3
MIN_TUNING_CASES = 20


def fit_conformal_tuned(
    probs_cal: np.ndarray,
    labels_cal: np.ndarray,
    alpha: float = 0.1,
    class_conditional: bool = False,
    randomized: bool = True,
    seed: int = 0,
    lams: tuple[float, ...] = RAPS_LAMBDAS,
    k_regs: tuple[int, ...] = RAPS_K_REGS,
    tuning_fraction: float = TUNING_FRACTION,
) -> ConformalPredictor:
    """RAPS with ``lam`` and ``k_reg`` chosen on a random ``tuning_fraction`` of the cases.

    Each pair is calibrated on the tuning cases and scored by the mean set size it gives
    them; the smallest wins (ties: the earlier pair, i.e. the smaller penalty). The final
    threshold is calibrated on the remaining cases alone (Angelopoulos et al. 2021, sec. 3).
    With fewer than ``MIN_TUNING_CASES`` tuning cases the pair (0.1, 1) is used untuned.
    """
    probs = np.asarray(probs_cal, dtype=np.float64)
    labels = np.asarray(labels_cal).astype(np.int64)
    keep = np.flatnonzero(labels >= 0)
    n_tune = int(round(tuning_fraction * keep.size))
    if n_tune < MIN_TUNING_CASES or keep.size - n_tune < MIN_TUNING_CASES:
        return fit_conformal(
            probs, labels, alpha, "raps", class_conditional, lam=0.1, k_reg=1,
            randomized=randomized, seed=seed,
        )  # fmt: skip
    order = np.random.default_rng(seed + 7919).permutation(keep)
    tune, rest = order[:n_tune], order[n_tune:]
    best: tuple[float, float, int] | None = None
    for lam in lams:
        for k_reg in k_regs:
            trial = fit_conformal(
                probs[tune], labels[tune], alpha, "raps", class_conditional, lam=lam,
                k_reg=k_reg, randomized=randomized, seed=seed,
            )  # fmt: skip
            size = mean_set_size(trial.predict_sets(probs[tune]))
            if best is None or size < best[0] - 1e-12:
                best = (size, lam, k_reg)
    assert best is not None
    fitted = fit_conformal(
        probs[rest], labels[rest], alpha, "raps", class_conditional, lam=best[1],
        k_reg=best[2], randomized=randomized, seed=seed,
    )  # fmt: skip
    return replace(fitted, n_tuning=int(n_tune))


def coverage(sets_mask: np.ndarray, labels: np.ndarray) -> float:
    """Share of labelled cases (label >= 0) whose true class is in their set; NaN if none."""
    sets_mask = np.asarray(sets_mask, dtype=bool)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    return float(sets_mask[keep, labels[keep]].mean())


def mean_set_size(sets_mask: np.ndarray) -> float:
    """Average number of classes per prediction set."""
    sets_mask = np.asarray(sets_mask, dtype=bool)
    return float(sets_mask.sum(axis=1).mean()) if sets_mask.size else float("nan")
