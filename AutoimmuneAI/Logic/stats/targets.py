"""The small-cohort targets (issue 18) measured on held-out cases, each with its uncertainty.

``evaluate`` writes the list into ``metrics.json`` as ``"targets"``; the report renders it next
to the results. Every entry is ``{"name", "target", "measured", "ci", "met", "note"}`` (the
ECE's also ``"if_calibrated"``: the ECE a perfectly calibrated model shows on as many cases):

- ``measured``: the figure on the evaluated cases (None when it cannot be computed);
- ``ci``: a 95% interval, Wilson's for a coverage (a proportion) and a percentile bootstrap
  over cases for the others (mean set size, ECE, the c-index difference);
- ``met``: True or False from the measured value, and None when the evaluated cases are too
  few to tell: the interval reaches across the target and fewer than ``MIN_CASES`` cases
  (``MIN_CLASS_CASES`` for one class's coverage) stand behind the figure. The note then says
  so plainly.

Which targets apply depends on the size of the training cohort: at a few hundred cases (the
default demo) every class's coverage >= 0.80 with mean set <= 2.0; from ``LARGE_COHORT``
labelled training and validation cases on, every class's coverage >= 0.85 with mean set <= 1.6.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from .calibration import ece_if_calibrated, expected_calibration_error
from .survival import concordance

MIN_CASES = 100  # cases behind a whole-cohort figure before a borderline result counts
MIN_CLASS_CASES = 30  # cases of one class behind its coverage before a borderline one counts
LARGE_COHORT = 400  # training + validation cases from which the stricter targets apply
BOOTSTRAP = 500
ECE_TARGET = 0.08
CINDEX_BOOTSTRAP = 200  # each draw runs two concordance computations
Z95 = float(norm.ppf(0.975))


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a proportion (None when n is 0)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_interval(
    stat: Callable[[np.ndarray], float], n: int, seed: int = 0, draws: int = BOOTSTRAP
) -> list[float] | None:
    """Percentile 95% interval of ``stat(index)`` over bootstrap resamples of ``n`` cases."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        v = stat(rng.integers(0, n, n))
        if v is not None and math.isfinite(v):
            vals.append(v)
    if len(vals) < draws // 2:
        return None
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def _judge(
    measured: float | None,
    ci: list[float] | None,
    ok: Callable[[float], bool],
    n: int,
    n_min: int,
) -> tuple[bool | None, str]:
    """``met`` and the note's verdict for one figure."""
    if measured is None or not math.isfinite(measured):
        return None, "not computable on these cases"
    met = bool(ok(measured))
    inside = [ok(float(v)) for v in np.linspace(ci[0], ci[1], 101)] if ci is not None else []
    if ci is not None and any(inside) and not all(inside) and n < n_min:
        return None, (
            f"too few cases to tell ({n} < {n_min}): the 95% interval "
            f"[{ci[0]:.3f}, {ci[1]:.3f}] reaches across the target"
        )
    return met, f"{n} cases"


def _entry(
    name: str,
    target: str,
    measured: float | None,
    ci: list[float] | None,
    ok: Callable[[float], bool],
    n: int,
    n_min: int,
    extra: str = "",
) -> dict:
    met, verdict = _judge(measured, ci, ok, n, n_min)
    note = verdict + (f"; {extra}" if extra else "")
    value = None if measured is None or not math.isfinite(measured) else float(measured)
    return {"name": name, "target": target, "measured": value, "ci": ci, "met": met, "note": note}


def small_cohort_targets(
    *,
    classes: list[str],
    probs: np.ndarray,
    labels: np.ndarray,
    sets: np.ndarray,
    risk: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    serology_risk: np.ndarray | None,
    n_training: int | None,
    alpha: float = 0.1,
    seed: int = 0,
) -> list[dict]:
    """The target list of ``metrics.json`` (see the module docstring)."""
    labels = np.asarray(labels).astype(np.int64)
    known = labels >= 0
    probs, sets_k, y = np.asarray(probs)[known], np.asarray(sets, bool)[known], labels[known]
    n = int(y.size)
    large = n_training is not None and n_training >= LARGE_COHORT
    size_target, class_target = (1.6, 0.85) if large else (2.0, 0.80)
    cohort_note = (
        f"targets for {'>=' if large else '<'} {LARGE_COHORT} training and validation cases"
        + (f" (this bundle: {n_training})" if n_training is not None else "")
    )
    out: list[dict] = []
    hit = sets_k[np.arange(n), y] if n else np.zeros(0, bool)
    lo_cov, hi_cov = 1.0 - alpha - 0.05, 1.0 - alpha + 0.05
    out.append(
        _entry(
            "marginal coverage of the prediction sets",
            f"{1 - alpha:.2f} +- 0.05",
            float(hit.mean()) if n else None,
            wilson_interval(int(hit.sum()), n),
            lambda v: lo_cov - 1e-12 <= v <= hi_cov + 1e-12,
            n,
            MIN_CASES,
        )
    )
    sizes = sets_k.sum(axis=1).astype(float)
    out.append(
        _entry(
            "mean prediction-set size",
            f"<= {size_target}",
            float(sizes.mean()) if n else None,
            bootstrap_interval(lambda i: float(sizes[i].mean()), n, seed),
            lambda v: v <= size_target + 1e-12,
            n,
            MIN_CASES,
            cohort_note,
        )
    )
    for k, name in enumerate(classes):
        mine = hit[y == k]
        out.append(
            _entry(
                f"coverage of {name}",
                f">= {class_target}",
                float(mine.mean()) if mine.size else None,
                wilson_interval(int(mine.sum()), int(mine.size)),
                lambda v: v >= class_target - 1e-12,
                int(mine.size),
                MIN_CLASS_CASES,
                cohort_note,
            )
        )
    out.append(_ece_entry(probs, y, seed))
    out.append(_cindex_entry(risk, times, events, serology_risk, seed))
    return out


def _ece_entry(probs: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """The ECE target, next to the ECE a perfectly calibrated model would show on these cases.

    When even a perfectly calibrated model would exceed the target on this many cases (its
    95th percentile, :func:`~autoimmuneai.stats.calibration.ece_if_calibrated`, is above it)
    and the measured ECE is within what such a model shows, the cases cannot tell: ``met`` is
    None. The entry carries ``"if_calibrated": {"n", "mean", "p95"}``.
    """
    n = int(y.size)
    measured = expected_calibration_error(probs, y) if n else None
    reference = ece_if_calibrated(probs, seed=seed)
    entry = _entry(
        "expected calibration error (15 bins)",
        f"<= {ECE_TARGET}",
        measured,
        bootstrap_interval(lambda i: expected_calibration_error(probs[i], y[i]), n, seed),
        lambda v: v <= ECE_TARGET + 1e-12,
        n,
        MIN_CASES,
    )
    entry["if_calibrated"] = reference
    if n == 0 or measured is None:
        return entry
    ref = (
        f"a perfectly calibrated model would show {reference['mean']:.3f} on {n} cases "
        f"(95% of draws below {reference['p95']:.3f})"
    )
    if reference["p95"] > ECE_TARGET and measured <= reference["p95"] and measured > ECE_TARGET:
        entry["met"] = None
        entry["note"] = f"too few cases to tell: {ref}, so {measured:.3f} is consistent with it"
    else:
        entry["note"] = f"{entry['note']}; {ref}"
    return entry


def _cindex_entry(
    risk: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    serology_risk: np.ndarray | None,
    seed: int,
) -> dict:
    name, target = "fused c-index minus serology-only c-index", ">= 0"
    if serology_risk is None:
        return {
            "name": name, "target": target, "measured": None, "ci": None, "met": None,
            "note": "the bundle has no serology-only Cox model",
        }  # fmt: skip
    t, e = np.asarray(times, float), np.asarray(events, float)
    r, s = np.asarray(risk, float), np.asarray(serology_risk, float)
    keep = np.isfinite(t) & np.isfinite(e) & np.isfinite(r) & np.isfinite(s)
    t, e, r, s = t[keep], e[keep], r[keep], s[keep]

    def diff(i: np.ndarray) -> float:
        return concordance(t[i], r[i], e[i]) - concordance(t[i], s[i], e[i])

    n = int(t.size)
    measured = diff(np.arange(n)) if n else None
    return _entry(
        name,
        target,
        measured,
        bootstrap_interval(diff, n, seed, draws=CINDEX_BOOTSTRAP),
        lambda v: v >= -1e-12,
        n,
        MIN_CASES,
        f"paired bootstrap over cases; {int((e > 0.5).sum())} events",
    )
