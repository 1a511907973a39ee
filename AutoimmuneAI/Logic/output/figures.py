"""Evaluation figures as PNG files: ROC curves, reliability, confusion, Kaplan-Meier, set sizes.

Matplotlib with the Agg backend (no display needed, also inside Slicer's batch mode); each
figure is written atomically so a report never links a half-written image.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from ..atomic import atomic_path  # noqa: E402
from ..stats.calibration import expected_calibration_error, reliability_curve  # noqa: E402
from ..stats.survival import RISK_GROUPS  # noqa: E402

GROUP_COLOURS = {"low": "tab:green", "intermediate": "tab:orange", "high": "tab:red"}


def _note(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def roc_curves(probs: np.ndarray, labels: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class present in ``labels`` (unknown labels -1 ignored)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for k, name in enumerate(classes):
        y = labels == k
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, k])
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc_score(y, probs[:, k]):.2f})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC curves (one vs rest)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        _note(ax, "needs cases of at least two known classes")
    return _save(fig, path)


def reliability_diagram(
    probs_before: np.ndarray, probs_after: np.ndarray, labels: np.ndarray, path: str | Path
) -> Path:
    """Top-label accuracy vs confidence before and after temperature scaling, with ECE."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    if not (np.asarray(labels) >= 0).any():
        _note(ax, "no case with a known diagnosis")
    for probs, name, colour in (
        (probs_before, "before", "tab:red"),
        (probs_after, "after", "tab:blue"),
    ):
        curve = reliability_curve(probs, labels, n_bins=10)
        conf = np.asarray(curve["confidence"])
        acc = np.asarray(curve["accuracy"])
        ok = np.asarray(curve["counts"]) > 0
        ece = expected_calibration_error(probs, labels)
        ax.plot(conf[ok], acc[ok], marker="o", color=colour, label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("Reliability (temperature scaling)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def confusion_matrix_plot(
    labels: np.ndarray, preds: np.ndarray, classes: list[str], path: str | Path
) -> Path:
    """Confusion matrix with counts (rows = true class), coloured by the row's fraction."""
    labels = np.asarray(labels).astype(np.int64)
    preds = np.asarray(preds).astype(np.int64)
    keep = labels >= 0
    c = len(classes)
    if keep.any():
        cm = confusion_matrix(labels[keep], preds[keep], labels=list(range(c)))
    else:
        cm = np.zeros((c, c), dtype=int)
    fig, ax = plt.subplots(figsize=(1.1 * c + 2.8, 1.0 * c + 2.2))
    draw_confusion(ax, cm, classes)
    return _save(fig, path)


def draw_confusion(ax: plt.Axes, cm: np.ndarray, classes: list[str]) -> None:
    """scikit-learn's ConfusionMatrixDisplay of the counts, shaded by each true class's
    fraction (so rare classes read as clearly as common ones), with numbers large enough to
    read in the report."""
    cm = np.asarray(cm).astype(int)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    display = ConfusionMatrixDisplay(cm, display_labels=list(classes))
    display.plot(ax=ax, cmap="Blues", colorbar=False, values_format="d", text_kw={"fontsize": 13})
    display.im_.set_data(frac)
    display.im_.set_clim(0, 1)
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_color("white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(len(classes)), classes, fontsize=10)
    ax.set_xlabel("Predicted class", fontsize=11)
    ax.set_ylabel("True class", fontsize=11)
    ax.set_title("Confusion matrix (counts; shade: share of the true class)", fontsize=10)


def km_by_risk_group(
    times: np.ndarray, events: np.ndarray, groups: np.ndarray, path: str | Path
) -> Path:
    """Kaplan-Meier curves (lifelines) per risk group; cases without follow-up are left out."""
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    ok = np.isfinite(times) & np.isfinite(events)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = 0
    for g in RISK_GROUPS:
        sel = ok & (groups == g)
        if sel.sum() < 1:
            continue
        km = KaplanMeierFitter(label=f"{g} (n={int(sel.sum())})")
        km.fit(times[sel], event_observed=events[sel] > 0.5)
        km.plot_survival_function(ax=ax, ci_show=sel.sum() > 5, color=GROUP_COLOURS[g])
        drawn += 1
    if not drawn:
        _note(ax, "no follow-up recorded")
    ax.set(xlabel="months", ylabel="progression-free probability", ylim=(0, 1.02))
    ax.set_title("Kaplan-Meier by predicted risk group")
    return _save(fig, path)


def conformal_set_sizes(sets_mask: np.ndarray, path: str | Path) -> Path:
    """Histogram of prediction-set sizes (how many diagnoses remain in the differential)."""
    sets_mask = np.asarray(sets_mask, dtype=bool)
    sizes = sets_mask.sum(axis=1)
    c = sets_mask.shape[1] if sets_mask.ndim == 2 else 1
    counts = np.bincount(sizes, minlength=c + 1)[1:]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.bar(np.arange(1, c + 1), counts, color="tab:purple")
    ax.set_xticks(np.arange(1, c + 1))
    ax.set(xlabel="classes in the prediction set", ylabel="cases")
    mean = sizes.mean() if sizes.size else float("nan")
    ax.set_title(f"Conformal prediction-set sizes (mean {mean:.2f})")
    return _save(fig, path)
