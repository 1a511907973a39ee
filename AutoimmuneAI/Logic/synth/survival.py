"""Progression / relapse times from class- and feature-dependent Weibull hazards, with censoring.

Hazard h(t) = rate * shape * t**(shape - 1) * exp(beta . x) with the risk factors of
docs/clinical_priors.md (OCB and lesion load in MS, AQP4 titre and coexisting autoimmunity in
NMOSD, male sex in MOGAD, low C3/C4 and antiphospholipid in NPSLE, lesion volume and age in
SVD). Censoring: administrative (uniform follow-up) plus steady loss to follow-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import SynthConfig


@dataclass(frozen=True)
class Survival:
    """True log hazard scale, latent event and censoring times, and what is observed (months)."""

    log_hazard: float  # log(rate) + beta . x
    event_time_true: float
    censor_time: float
    event_time: float
    event: int


def risk_factors(
    cls: str,
    *,
    age: float,
    sex: str,
    n_lesions: int,
    lesion_volume_ml: float,
    serology: dict[str, float],
) -> dict[str, float]:
    """The covariates x that enter the class's hazard (names match config.HAZARDS betas)."""
    s = serology
    x = {
        "ocb": s["ocb"],
        "lesions_2_9": float(2 <= n_lesions <= 9),
        "lesions_gt9": float(n_lesions > 9),
        "pleocytosis": float(s["csf_wbc"] >= 5),
        "aqp4_high": float(s["aqp4_igg"] >= 320),
        "autoimmune": s["autoimmune"],
        "ana_pos": float(s["ana"] >= 80),
        "male": float(sex == "M"),
        "mog_high": float(s["mog_igg"] >= 320),
        "low_c4": float(s["c4"] < 0.1),
        "low_c3": float(s["c3"] < 0.9),
        "apl": s["antiphospholipid"],
        "lesion_volume_ml": lesion_volume_ml,
        "age_per_decade": (age - 64.0) / 10.0,
    }
    return x


def sample_survival(
    rng: np.random.Generator, cls: str, x: dict[str, float], cfg: SynthConfig
) -> Survival:
    """Draw the event time from the class hazard and censor it."""
    h = cfg.hazards[cls]
    lp = sum(beta * x[name] for name, beta in h["beta"].items())
    scale = h["rate"] * math.exp(lp)
    e = rng.exponential()
    t_event = (e / scale) ** (1.0 / h["shape"])
    c = cfg.censoring
    admin = rng.uniform(c["admin_min_months"], c["admin_max_months"])
    loss = rng.exponential(12.0 / c["loss_per_year"]) if c["loss_per_year"] > 0 else math.inf
    t_censor = min(admin, loss)
    observed = max(round(min(t_event, t_censor), 2), 0.1)
    return Survival(
        log_hazard=float(math.log(h["rate"]) + lp),
        event_time_true=float(t_event),
        censor_time=float(t_censor),
        event_time=float(observed),
        event=int(t_event <= t_censor),
    )
