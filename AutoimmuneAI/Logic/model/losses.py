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
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted cross-entropy, sum of weights) over cases with a known label."""
    known = labels >= 0
    if not bool(known.any()):
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    lg, y = logits[known], labels[known]
    ce = F.cross_entropy(lg, y, reduction="none")
    w = weights.to(lg.dtype).to(lg.device)[y] if weights is not None else torch.ones_like(ce)
    return (w * ce).sum(), w.sum()


def _has_followup(times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(times) & torch.isfinite(events)


def cox_neg_log_likelihood(
    log_hazard: torch.Tensor, times: torch.Tensor, events: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative log partial likelihood, number of events), Breslow's method for ties.

    For each event i: ``-(eta_i - log sum_{j: t_j >= t_i} exp(eta_j))``; tied event times
    share the same risk set (Breslow). Cases with a NaN time or event are left out.
    """
    ok = _has_followup(times, events)
    eta, t, e = log_hazard[ok], times[ok].to(log_hazard.dtype), events[ok].to(log_hazard.dtype)
    n_events = e.sum().detach()
    if eta.numel() == 0 or float(n_events) == 0.0:
        return log_hazard.sum() * 0.0, n_events
    at_risk = t.unsqueeze(0) >= t.unsqueeze(1)  # [i, j]: j is at risk at t_i
    masked = eta.unsqueeze(0).masked_fill(~at_risk, float("-inf"))
    log_risk = torch.logsumexp(masked, dim=1)
    return -((eta - log_risk) * e).sum(), n_events
