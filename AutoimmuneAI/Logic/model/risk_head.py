"""The class log-hazards ``a_k`` of the mixture risk head (``model.FusionModel``).

Training starts them at the crude log event rate of each class (events per month of follow-up
in the training cases), so the few steps of an early-stopped run refine a sensible start
instead of travelling from zero. After training they are refitted to the maximum of the Cox
partial likelihood on the training cases with the network frozen: a convex-in-practice fit
of ``n_classes`` numbers (L-BFGS), which early-stopped stochastic steps do not reach (the
refit raised the demo's held-out c-index: CHANGELOG.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .losses import sorted_cox_nll


def crude_class_log_hazards(
    labels: np.ndarray, times: np.ndarray, events: np.ndarray, n_classes: int
) -> torch.Tensor:
    """``log((events_k + 0.5) / (follow-up_k + 0.5 * median follow-up))``, centred on 0.

    Cases without follow-up (NaN) are left out; a class without any keeps 0 (the mean).
    The 0.5 terms keep a class without events finite.
    """
    y = np.asarray(labels)
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(e) & (y >= 0)
    out = np.zeros(n_classes)
    if not ok.any():
        return torch.zeros(n_classes)
    pad = 0.5 * float(np.median(t[ok]))
    seen = np.zeros(n_classes, dtype=bool)
    for k in range(n_classes):
        m = ok & (y == k)
        if m.any():
            out[k] = np.log((e[m].sum() + 0.5) / (t[m].sum() + pad))
            seen[k] = True
    out[seen] -= out[seen].mean()
    return torch.tensor(out, dtype=torch.float32)


def fit_class_log_hazards(
    logits: torch.Tensor,
    times: torch.Tensor,
    events: torch.Tensor,
    init: torch.Tensor | None = None,
    l2: float = 1e-3,
) -> torch.Tensor:
    """``a`` maximising the Cox partial likelihood of ``log sum_k softmax(logits)_k exp(a_k)``.

    ``l2`` (per event) keeps the log-hazard of a class without events finite. Returns the
    fitted ``a`` (float32, centred on 0: the partial likelihood ignores a common shift).
    """
    log_p = torch.log_softmax(logits.detach().double(), dim=1)
    t = times.detach().double()
    e = events.detach().double()
    n_classes = log_p.shape[1]
    a = init.detach().double().clone() if init is not None else torch.zeros(n_classes)
    a = a.double().requires_grad_(True)
    n_events = max(float(torch.nan_to_num(e).sum()), 1.0)
    opt = torch.optim.LBFGS([a], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    nll = sorted_cox_nll(t, e)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(torch.logsumexp(log_p + a, dim=1)) / n_events + l2 * (a - a.mean()).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a = a.detach()
    return (a - a.mean()).float()


def fit_covariate_log_hazards(
    logits: torch.Tensor,
    covariates: torch.Tensor,
    times: torch.Tensor,
    events: torch.Tensor,
    l2: float,
    init: torch.Tensor | None = None,
    l2_class: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, w)`` of the log-hazard ``log sum_k p_k exp(a_k) + w . x`` at its ridge Cox optimum.

    The class term is the mixture head's; ``w . x`` adds what the covariates ``x`` (the
    standardised lab encoding) say about progression within a diagnosis, which the
    mixture cannot (the relapse risk of an AQP4-positive case rises with the titre). ``l2``
    (per event, on ``w``) shrinks ``w`` towards 0, i.e. towards the plain mixture head;
    ``l2_class`` is :func:`fit_class_log_hazards`' ridge on ``a``.
    """
    log_p = torch.log_softmax(logits.detach().double(), dim=1)
    x = covariates.detach().double()
    t, e = times.detach().double(), events.detach().double()
    n_classes = log_p.shape[1]
    a = init.detach().double().clone() if init is not None else torch.zeros(n_classes)
    a = a.double().requires_grad_(True)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    n_events = max(float(torch.nan_to_num(e).sum()), 1.0)
    opt = torch.optim.LBFGS(
        [a, w], max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )
    nll = sorted_cox_nll(t, e)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        eta = torch.logsumexp(log_p + a, dim=1) + x @ w
        loss = nll(eta) / n_events + l2_class * (a - a.mean()).pow(2).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a = a.detach()
    return (a - a.mean()).float(), w.detach().float()
