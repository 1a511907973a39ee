"""Training losses: class-weighted cross-entropy and the Cox partial likelihood (Breslow ties).

Both skip what a case does not have: an unknown diagnosis (label -1) does not enter the
cross-entropy, and a case without follow-up (time or event missing, NaN) does not enter
the Cox risk sets. Training divides the negative log partial likelihood by the number of
events (``training.trainer.batch_loss``), so its scale does not depend on the batch size.

For data-parallel training both losses can be told the *global* normaliser (the sum of
class weights, or the number of events, over the whole global batch) so that gradients
summed across ranks equal the single-process gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Balanced class weights ``n / (k * count_c)`` from the known training labels.

    Classes absent from training get weight 0 (nothing to learn from them); the weights of
    present classes average to one over the training cases.
    """
    labels = np.asarray(labels)
    known = labels[labels >= 0]
    counts = np.bincount(known, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(known) / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def diagnosis_sum(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted cross-entropy, sum of weights) over cases with a known label.

    ``label_smoothing`` (training only) spreads that share of each target over all classes
    (``torch.nn.functional.cross_entropy``'s), so a few hundred cases cannot drive the
    logits of the training cases towards certainty.
    """
    known = labels >= 0
    if not bool(known.any()):
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    lg, y = logits[known], labels[known]
    ce = F.cross_entropy(lg, y, reduction="none", label_smoothing=float(label_smoothing))
    w = weights.to(lg.dtype).to(lg.device)[y] if weights is not None else torch.ones_like(ce)
    return (w * ce).sum(), w.sum()


def _has_followup(times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(times) & torch.isfinite(events)


def sorted_cox_nll(times: torch.Tensor, events: torch.Tensor):
    """Negative log partial likelihood as a function of eta, O(n log n), Breslow ties.

    The cases are sorted by time once; each event's risk set is then a prefix of the
    descending order, summed by ``logcumsumexp`` (no n x n risk-set matrix), so the same
    function serves training batches and a refit on thousands of cases. Cases with a NaN
    time or event are left out.
    """
    ok = _has_followup(times, events)
    idx = torch.nonzero(ok).squeeze(1)
    order = idx[torch.argsort(times[idx], descending=True, stable=True)]
    t_sorted, e_sorted = times[order], events[order]
    # last position of each case's tie group in descending order: its whole risk set
    _, counts = torch.unique_consecutive(t_sorted, return_counts=True)
    group_end = torch.repeat_interleave(torch.cumsum(counts, 0) - 1, counts)

    def nll(eta: torch.Tensor) -> torch.Tensor:
        eta_sorted = eta[order]
        log_risk = torch.logcumsumexp(eta_sorted, dim=0)[group_end]
        return -((eta_sorted - log_risk) * e_sorted.to(eta.dtype)).sum()

    return nll


def cox_neg_log_likelihood(
    log_hazard: torch.Tensor, times: torch.Tensor, events: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative log partial likelihood, number of events), Breslow's method for ties.

    For each event i: ``-(eta_i - log sum_{j: t_j >= t_i} exp(eta_j))``; tied event times
    share the same risk set (Breslow). Cases with a NaN time or event are left out.
    """
    ok = _has_followup(times, events)
    n_events = events[ok].to(log_hazard.dtype).sum().detach()
    if not bool(ok.any()) or float(n_events) == 0.0:
        return log_hazard.sum() * 0.0, n_events
    t = times.to(log_hazard.device)
    e = events.to(log_hazard.device)
    return sorted_cox_nll(t, e)(log_hazard), n_events
