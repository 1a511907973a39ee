"""Probability calibration: temperature scaling, expected calibration error, reliability curves.

A network trained with cross-entropy is usually over-confident; one scalar temperature fitted
on held-out logits (Guo et al. 2017) fixes most of it without changing the ranking, so AUROC
and the predicted class stay the same while the probabilities become honest.
"""

from __future__ import annotations

import numpy as np
import torch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable), float64 [n, C]."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """Temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on held-out cases.

    Optimises log T with L-BFGS so T stays positive. Cases with an unknown label (< 0) are
    ignored; with no labelled case the identity temperature 1.0 is returned.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return 1.0
    x = torch.as_tensor(logits[keep], dtype=torch.float64)
    y = torch.as_tensor(labels[keep], dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / torch.exp(log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(torch.exp(log_t).item())
    if not np.isfinite(t) or t <= 0:
        return 1.0
    return float(np.clip(t, 1e-3, 1e3))


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return conf, correct


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over (0, 1]: bin b holds confidences in (b/n, (b+1)/n]."""
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x share.

    Cases with an unknown label (< 0) are ignored; NaN when no case is labelled.
    """
    conf, correct = _top_label(probs, labels)
    if conf.size == 0:
        return float("nan")
    idx = _bin_index(conf, n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / conf.size)


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Per-bin mean confidence, accuracy and count of the top-label prediction.

    Returns ``{"edges": [n_bins + 1], "confidence": [n_bins], "accuracy": [n_bins],
    "counts": [n_bins]}`` as lists; empty bins have NaN confidence and accuracy.
    """
    conf, correct = _top_label(probs, labels)
    idx = _bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "counts": counts.astype(int).tolist(),
    }
