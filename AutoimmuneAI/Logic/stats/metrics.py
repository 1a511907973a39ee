"""Diagnosis and progression metrics, computed with the field's libraries.

AUROC, balanced accuracy and the confusion matrix come from scikit-learn, the c-index from
lifelines (via :mod:`survival`); nothing is re-derived. Both functions tolerate the gaps of
real cohorts: unknown labels (-1) and cases without follow-up are left out and counted, and
a class absent from the labels has its AUROC skipped (and listed) instead of failing.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)

from .calibration import expected_calibration_error
from .survival import concordance, integrated_brier_score


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def diagnosis_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Discrimination and calibration of class probabilities [n, C] against int labels [n].

    Keys: ``n``, ``n_unlabelled``, ``macro_auroc`` (one-vs-rest, macro; over the classes
    present when some are absent, listed in ``auroc_skipped``), ``balanced_accuracy``,
    ``accuracy``, ``log_loss``, ``ece``, ``per_class`` (``auroc``, ``sensitivity``,
    ``specificity``, ``ppv``, ``n``) and ``confusion`` (rows = true, columns = predicted).
    """
    classes = list(classes)
    c = len(classes)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.shape != (labels.size, c):
        raise ValueError(f"probs has shape {probs.shape}, expected ({labels.size}, {c})")
    keep = labels >= 0
    out: dict = {"n": int(keep.sum()), "n_unlabelled": int((~keep).sum())}
    probs, labels = probs[keep], labels[keep]
    if labels.size == 0:
        out.update(
            macro_auroc=float("nan"),
            balanced_accuracy=float("nan"),
            accuracy=float("nan"),
            log_loss=float("nan"),
            ece=float("nan"),
            per_class={},
            confusion=[],
            auroc_skipped=list(classes),
        )
        return out
    preds = probs.argmax(axis=1)
    present = np.unique(labels)
    absent = [k for k in range(c) if k not in set(present.tolist())]

    per_class_auc: dict[int, float] = {}
    for k in present:
        y = labels == k
        if y.all():
            continue  # one class only: AUROC undefined
        per_class_auc[int(k)] = float(roc_auc_score(y, probs[:, k]))
    if len(present) == c:
        macro = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    elif len(per_class_auc) >= 1:
        macro = float(np.mean(list(per_class_auc.values())))
    else:
        macro = float("nan")

    cm = confusion_matrix(labels, preds, labels=list(range(c)))
    per_class = {}
    total = cm.sum()
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fn = cm[k, :].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = total - tp - fn - fp
        per_class[name] = {
            "auroc": per_class_auc.get(k, float("nan")),
            "sensitivity": _safe_div(tp, tp + fn),
            "specificity": _safe_div(tn, tn + fp),
            "ppv": _safe_div(tp, tp + fp),
            "n": int(cm[k, :].sum()),
        }
    p_clip = np.clip(probs, 1e-12, 1.0)
    with warnings.catch_warnings():
        # predicted classes absent from the labels are reported in ``note`` below
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        bacc = float(balanced_accuracy_score(labels, preds))
    out.update(
        macro_auroc=macro,
        balanced_accuracy=bacc,
        accuracy=float(accuracy_score(labels, preds)),
        log_loss=float(
            log_loss(labels, p_clip / p_clip.sum(1, keepdims=True), labels=list(range(c)))
        ),
        ece=expected_calibration_error(probs, labels),
        per_class=per_class,
        confusion=cm.astype(int).tolist(),
        auroc_skipped=[classes[k] for k in range(c) if k not in per_class_auc],
    )
    if absent:
        out["note"] = "classes absent from the labels (AUROC skipped): " + ", ".join(
            classes[k] for k in absent
        )
    return out


def progression_metrics(
    risk: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    *,
    surv_probs: np.ndarray | None = None,
    times_grid: np.ndarray | None = None,
    train_times: np.ndarray | None = None,
    train_events: np.ndarray | None = None,
) -> dict:
    """C-index of log-hazards ``risk`` and, when curves are given, the integrated Brier score.

    Cases without follow-up (NaN time or event) or without a risk are excluded. The IBS
    uses the censoring distribution of ``train_times``/``train_events`` when given, else of
    the evaluated cases themselves. Keys: ``n``, ``n_events``, ``n_without_follow_up``,
    ``c_index``, ``integrated_brier_score`` (NaN when not computable).
    """
    risk = np.asarray(risk, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    follow = np.isfinite(times) & np.isfinite(events)
    keep = follow & np.isfinite(risk)
    out = {
        "n": int(keep.sum()),
        "n_events": int((events[keep] > 0.5).sum()),
        "n_without_follow_up": int((~follow).sum()),
        "c_index": concordance(times[keep], risk[keep], events[keep]),
        "integrated_brier_score": float("nan"),
    }
    if surv_probs is not None and times_grid is not None and len(times_grid) > 0:
        surv = np.asarray(surv_probs, dtype=np.float64)
        ok = keep & np.isfinite(surv).all(axis=1)
        if ok.sum() >= 2 and (events[ok] > 0.5).any():
            tr_t = times[ok] if train_times is None else np.asarray(train_times, dtype=np.float64)
            tr_e = (
                events[ok] if train_events is None else np.asarray(train_events, dtype=np.float64)
            )
            out["integrated_brier_score"] = integrated_brier_score(
                tr_t, tr_e, times[ok], events[ok], surv[ok], np.asarray(times_grid)
            )
    return out
