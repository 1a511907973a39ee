"""``autoimmuneai evaluate``: a bundle and all its baselines on one cohort, in one run.

Writes ``metrics.json`` (diagnosis, calibration, conformal and progression figures for the
fused model, the same figures for every baseline under ``baselines.<name>``, and how the fused
model compares with them), ``predictions.csv`` (the contract in docs/contracts.md, plus the risk
group) and the figures (ROC, reliability, confusion, Kaplan-Meier by risk group, set sizes).
Every baseline sees exactly the cases the fused model sees, so the comparison is paired.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..atomic import csv_text, json_safe, write_csv, write_text
from ..contracts import ERRORS_CSV, ERRORS_CSV_COLUMNS
from ..errors import BundleError, InputError
from ..output import figures
from ..stats.baselines import BaselineInputs, ModelOutputs, baseline_outputs
from ..stats.calibration import expected_calibration_error, softmax
from ..stats.conformal import ConformalPredictor, coverage, describe_guarantee, mean_set_size
from ..stats.metrics import diagnosis_metrics, progression_metrics
from ..stats.survival import (
    BaselineHazard,
    default_times_grid,
    logrank_summary,
    risk_groups,
    survival_curves,
)
from ..stats.targets import small_cohort_targets

if TYPE_CHECKING:
    from ..data.cohort import Cohort
    from ..inference.batch import Outputs
    from ..model.bundle import Bundle

SINGLE_MODALITY = ("serology_only", "image_only")
__all__ = ["ModelOutputs", "evaluate_bundle", "evaluate_predictions"]


def _model_block(
    out: ModelOutputs,
    labels: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    classes: list[str],
    grid: np.ndarray,
) -> dict:
    block: dict = {"diagnosis": diagnosis_metrics(out.probs, labels, classes)}
    if out.risk is None:
        block["progression"] = {
            "c_index": float("nan"),
            "integrated_brier_score": float("nan"),
            "note": "no risk model",
        }
    else:
        surv = None
        if out.baseline_hazard is not None and grid.size:
            surv = survival_curves(np.nan_to_num(out.risk, nan=0.0), out.baseline_hazard, grid)
        block["progression"] = progression_metrics(
            out.risk, times, events, surv_probs=surv, times_grid=grid if surv is not None else None
        )
    if out.notes:
        block["notes"] = list(out.notes)
    return block


def evaluate_predictions(
    classes: list[str],
    logits: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    risk: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    conformal: ConformalPredictor,
    baseline_hazard: BaselineHazard,
    cutoffs: tuple[float, float],
    baselines: dict[str, ModelOutputs | dict] | None = None,
    n_training: int | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """All metrics from arrays: returns ``(metrics, per_case)``.

    ``probs`` are the temperature-calibrated probabilities of ``logits``; ``baselines`` maps a
    name to its outputs on the same cases, or to a dict reported as is (e.g. "not applicable").
    ``n_training`` (training + validation cases of the bundle) picks which small-cohort
    targets apply (:mod:`~autoimmuneai.stats.targets`).
    ``per_case`` holds ``sets`` (bool [n, C]), ``groups`` (risk groups) and ``grid``/``surv``.
    """
    classes = list(classes)
    labels = np.asarray(labels).astype(np.int64)
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    grid = default_times_grid(times, events)

    fused = _model_block(
        ModelOutputs(probs, risk, baseline_hazard), labels, times, events, classes, grid
    )
    fused["diagnosis"]["ece_before_calibration"] = expected_calibration_error(
        softmax(logits), labels
    )
    sets = conformal.predict_sets(probs, rng=np.random.default_rng(0))
    known = labels >= 0
    sizes = sets.sum(axis=1)
    conf = {
        "alpha": float(conformal.alpha),
        "target_coverage": 1.0 - float(conformal.alpha),
        "method": conformal.method,
        "class_conditional": bool(conformal.class_conditional),
        "class_floor_coverage": (
            None if conformal.class_alpha is None else 1.0 - float(conformal.class_alpha)
        ),
        "guarantee": conformal.guarantee or describe_guarantee(conformal),
        "n_calibration": int(conformal.n_calibration),
        "coverage": coverage(sets, labels),
        "mean_set_size": mean_set_size(sets),
        "set_size_counts": {str(k): int((sizes == k).sum()) for k in range(1, len(classes) + 1)},
        "per_class_coverage": {
            name: coverage(sets[known & (labels == k)], labels[known & (labels == k)])
            for k, name in enumerate(classes)
        },
    }
    groups = risk_groups(risk, cutoffs)
    group_summary = {}
    names = ("low", "high") if cutoffs[0] == cutoffs[1] else ("low", "intermediate", "high")
    for g in names:
        sel = (groups == g) & np.isfinite(times) & np.isfinite(events)
        group_summary[g] = {
            "n": int((groups == g).sum()),
            "n_with_follow_up": int(sel.sum()),
            "events": int((events[sel] > 0.5).sum()),
            "event_rate": float(events[sel].mean()) if sel.any() else float("nan"),
        }
    fused["progression"]["risk_groups"] = group_summary
    fused["progression"]["risk_cutoffs"] = [float(cutoffs[0]), float(cutoffs[1])]
    fused["progression"]["logrank"] = logrank_summary(times, events, groups)
    fused["progression"]["times_grid_months"] = (
        [float(grid[0]), float(grid[-1])] if grid.size else []
    )

    metrics: dict = {
        "n_cases": int(labels.size),
        "n_labelled": int(known.sum()),
        "classes": classes,
        "diagnosis": fused["diagnosis"],
        "conformal": conf,
        "progression": fused["progression"],
        "baselines": {},
    }
    for name, out in (baselines or {}).items():
        if isinstance(out, ModelOutputs):
            metrics["baselines"][name] = _model_block(out, labels, times, events, classes, grid)
        else:
            metrics["baselines"][name] = dict(out)
    metrics["comparison"] = _comparison(metrics)
    sero = (baselines or {}).get("serology_only")
    metrics["targets"] = small_cohort_targets(
        classes=classes,
        probs=probs,
        labels=labels,
        sets=sets,
        risk=risk,
        times=times,
        events=events,
        serology_risk=sero.risk if isinstance(sero, ModelOutputs) else None,
        n_training=n_training,
        alpha=float(conformal.alpha),
    )
    surv = survival_curves(risk, baseline_hazard, grid) if grid.size else np.zeros((risk.size, 0))
    return metrics, {"sets": sets, "groups": groups, "grid": grid, "surv": surv}


def _comparison(metrics: dict) -> dict:
    """Fused vs the best single-modality baseline and vs the oracle (the issue's targets)."""

    def get(block: dict, part: str, key: str) -> float:
        v = block.get(part, {}).get(key, float("nan"))
        return float(v) if v is not None else float("nan")

    out: dict = {}
    base = metrics["baselines"]
    for part, key in (("diagnosis", "balanced_accuracy"), ("progression", "c_index")):
        fused = get(metrics, part, key)
        singles = {n: get(base[n], part, key) for n in SINGLE_MODALITY if n in base}
        singles = {n: v for n, v in singles.items() if math.isfinite(v)}
        if singles:
            best = max(singles, key=singles.__getitem__)
            out[f"best_single_modality_{key}"] = {"baseline": best, "value": singles[best]}
            out[f"fused_minus_best_single_{key}"] = fused - singles[best]
        if "oracle" in base:
            oracle = get(base["oracle"], part, key)
            if math.isfinite(oracle) and oracle > 0:
                out[f"fraction_of_oracle_{key}"] = fused / oracle
    return out


def predictions_table(
    case_ids: list[str],
    classes: list[str],
    probs: np.ndarray,
    sets: np.ndarray,
    risk: np.ndarray,
    groups: np.ndarray,
) -> str:
    """``predictions.csv`` text: case_id, p_<class>..., predicted, prediction_set, risk_score,
    risk_group."""
    columns = ["case_id", *[f"p_{c}" for c in classes], "predicted", "prediction_set"]
    columns += ["risk_score", "risk_group"]
    rows = []
    for i, cid in enumerate(case_ids):
        r = float(risk[i])
        rows.append(
            [
                cid,
                *[f"{float(p):.6f}" for p in probs[i]],
                classes[int(np.argmax(probs[i]))],
                "|".join(c for c, keep in zip(classes, sets[i]) if keep),
                f"{r:.6f}" if math.isfinite(r) else "",
                groups[i],
            ]
        )
    return csv_text(rows, columns)  # the product's one (spreadsheet-safe) CSV writer


def write_figures(
    out_dir: Path,
    classes: list[str],
    logits: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    sets: np.ndarray,
    groups: np.ndarray,
) -> dict[str, str]:
    """The evaluation figures under ``out_dir/figures``; returns name -> relative path."""
    fig_dir = out_dir / "figures"
    paths = {
        "roc": "figures/roc_curves.png",
        "reliability": "figures/reliability.png",
        "confusion": "figures/confusion_matrix.png",
        "km_risk_groups": "figures/km_by_risk_group.png",
        "conformal_set_sizes": "figures/conformal_set_sizes.png",
    }
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures.roc_curves(probs, labels, classes, out_dir / paths["roc"])
    figures.reliability_diagram(softmax(logits), probs, labels, out_dir / paths["reliability"])
    figures.confusion_matrix_plot(
        labels, probs.argmax(axis=1), classes, out_dir / paths["confusion"]
    )
    figures.km_by_risk_group(times, events, groups, out_dir / paths["km_risk_groups"])
    figures.conformal_set_sizes(sets, out_dir / paths["conformal_set_sizes"])
    return paths


def _as_conformal(obj: object) -> ConformalPredictor:
    if isinstance(obj, ConformalPredictor):
        return obj
    if isinstance(obj, dict):
        return ConformalPredictor.from_dict(obj)
    raise InputError("bundle holds no conformal threshold")


def _baseline_outputs(
    bundle: Bundle, cohort: Cohort, run_network: Callable[[str], Outputs]
) -> dict:
    """Outputs (or a reason) of the image-only network and every stored baseline.

    ``run_network(which)`` runs one of the bundle's networks on the same cases; the other
    baselines go through :func:`~autoimmuneai.stats.baselines.baseline_outputs`, the path
    ``train``'s validation summary takes too.
    """
    values, missing = cohort.lab_matrix()
    inputs = BaselineInputs(bundle.encoder.transform(values, missing), values, cohort.truth_table())
    out: dict = {}
    try:
        res = run_network("image_only")
        out["image_only"] = ModelOutputs(
            np.asarray(res.probs, dtype=np.float64),
            np.asarray(res.risk, dtype=np.float64),
            getattr(bundle, "image_only_baseline_hazard", None),
        )
    except (KeyError, AttributeError, ValueError, InputError) as exc:
        out["image_only"] = {"available": False, "reason": f"image-only model: {exc}"}
    stored = dict(getattr(bundle, "baselines", None) or {})
    try:
        out.update(baseline_outputs(stored, inputs, bundle.panel))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"a stored baseline cannot be read: {exc}") from None
    return out


def _training_cases(bundle: Bundle) -> int | None:
    """Training + validation cases the bundle was fitted on (None when not recorded)."""
    counts = ((getattr(bundle, "metadata", None) or {}).get("training") or {}).get("n_cases")
    if not isinstance(counts, dict):
        return None
    return int(counts.get("train", 0)) + int(counts.get("val", 0))


def _write_failures(out_dir: Path, cohort, failures: list[tuple[str, str]]) -> None:
    """``errors.csv`` of the cases left out because their image failed (one line each, with
    the manifest row), and a warning per case; no file when none failed."""
    path = out_dir / ERRORS_CSV
    if not failures:
        path.unlink(missing_ok=True)
        return
    rows = {c.case_id: c.row for c in cohort.cases}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(
        path,
        [
            {"case_id": case_id, "row": rows.get(case_id) or "", "field": "image", "reason": reason}
            for case_id, reason in failures
        ],
        ERRORS_CSV_COLUMNS,
    )
    for case_id, reason in failures:
        warnings.warn(f"case {case_id} left out of the evaluation: {reason}", stacklevel=3)


def evaluate_bundle(
    bundle_path: str | Path,
    cohort_path: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the bundle's fused model and every baseline on a cohort; write the outputs.

    ``split`` keeps only the cases whose manifest ``split`` equals it (e.g. ``test``).
    Returns the metrics written to ``out_dir/metrics.json``.
    """
    from ..data.cohort import load_cohort
    from ..data.dataset import build_arrays
    from ..inference.batch import infer
    from ..model.bundle import load_bundle

    out_dir = Path(out_dir)
    steps = tqdm(total=6, desc="evaluate", unit="step", disable=not progress, leave=False)
    bundle = load_bundle(bundle_path)
    cohort = load_cohort(cohort_path, panel=bundle.panel)
    if split is not None:
        ids = [c.case_id for c in cohort.cases if (c.split or "") == split]
        if not ids:
            found = sorted({c.split or "(none)" for c in cohort.cases})
            raise InputError(
                f"no case has split {split!r} (splits present: {', '.join(found)})",
                file=cohort_path,
                field="split",
            )
        cohort = cohort.subset(ids)
    classes = list(bundle.panel.classes)
    steps.update()

    steps.set_postfix_str("images")
    failures: list[tuple[str, str]] = []
    arrays = build_arrays(cohort, bundle.grid, bundle.encoder, progress=progress, failures=failures)
    _write_failures(out_dir, cohort, failures)
    if failures:
        cohort = cohort.subset(arrays.case_ids)
        if len(cohort) == 0:
            raise InputError("no case has a usable image", file=cohort_path)
    if list(arrays.case_ids) != cohort.case_ids:
        raise RuntimeError("model inputs are not in the cohort's case order")
    steps.set_postfix_str("fused model")
    res = infer(bundle, arrays, which="fused")
    logits = np.asarray(res.logits, dtype=np.float64)
    probs = np.asarray(res.probs, dtype=np.float64)
    risk = np.asarray(res.risk, dtype=np.float64)
    labels = cohort.labels()
    times, events = cohort.survival()
    steps.update()

    steps.set_postfix_str("baselines")
    baselines = _baseline_outputs(bundle, cohort, lambda which: infer(bundle, arrays, which=which))
    steps.update()

    steps.set_postfix_str("metrics")
    metrics, per_case = evaluate_predictions(
        classes,
        logits,
        probs,
        labels,
        risk,
        times,
        events,
        _as_conformal(bundle.conformal),
        bundle.baseline_hazard,
        bundle.risk_cutoffs,
        baselines,
        n_training=_training_cases(bundle),
    )
    metrics.update(
        bundle=str(bundle_path),
        cohort=str(cohort_path),
        split=split,
        temperature=float(bundle.temperature),
        failed_cases=len(failures),
    )
    steps.update()

    steps.set_postfix_str("figures")
    metrics["figures"] = write_figures(
        out_dir,
        classes,
        logits,
        probs,
        labels,
        times,
        events,
        per_case["sets"],
        per_case["groups"],
    )
    steps.update()

    write_text(
        out_dir / "predictions.csv",
        predictions_table(
            cohort.case_ids, classes, probs, per_case["sets"], risk, per_case["groups"]
        ),
    )
    metrics = json_safe(metrics)
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    steps.update()
    steps.close()
    return metrics
