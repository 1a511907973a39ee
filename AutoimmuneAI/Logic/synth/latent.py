"""One synthetic patient without the image: demographics, lesions, serology, progression.

Each case draws from its own ``SeedSequence`` (spawned per case), split into independent
streams for the latent variables and for the image, so the latent truth is the same whatever
the output grid, and the same whether or not images are rendered (tests and the difficulty
benchmark sample thousands of cases this way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import LABELS, Anatomy
from .config import SynthConfig
from .lesions import LesionMaps, LesionSpec, draw_lesions, sample_lesions
from .serology import FEATURES, lab_strings, measure_serology, sample_true_serology
from .survival import Survival, risk_factors, sample_survival


@dataclass
class CaseLatent:
    """Everything about one case except the rendered image."""

    case_id: str
    diagnosis: str
    age: float
    sex: str
    atrophy: float
    lesions: list[LesionSpec]
    maps: LesionMaps | None  # template-space drawing (None once released to save memory)
    region_volumes_ml: dict[str, float]
    serology_true: dict[str, float]
    serology_measured: dict[str, float | None]
    labs: dict[str, str]  # lab-sheet strings, one per panel feature
    survival: Survival
    image_seed: np.random.SeedSequence

    def region_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(LABELS.values(), 0)
        for s in self.lesions:
            counts[LABELS[s.label]] += 1
        return counts

    def truth_row(self) -> dict[str, object]:
        """The row of ``truth.csv`` (see cohort.TRUTH_COLUMNS)."""
        counts = self.region_counts()
        vols = self.region_volumes_ml
        row: dict[str, object] = {"case_id": self.case_id, "diagnosis": self.diagnosis}
        for name in LABELS.values():
            row[f"n_{name}"] = counts[name]
            row[f"vol_{name}_ml"] = vols[name]
        row["n_total"] = sum(counts.values())
        row["vol_total_ml"] = sum(vols.values())
        row["age"] = self.age
        row["sex"] = self.sex
        row["atrophy"] = self.atrophy
        row["autoimmune"] = int(self.serology_true["autoimmune"])
        row["complement_low"] = int(self.serology_true["complement_low"])
        for f in FEATURES:
            row[f"true_{f}"] = self.serology_true[f]
        row["true_log_hazard"] = self.survival.log_hazard
        row["true_event_time"] = self.survival.event_time_true
        row["censor_time"] = self.survival.censor_time
        return row


def sample_age_sex(rng: np.random.Generator, cls: str, cfg: SynthConfig) -> tuple[float, str]:
    d = cfg.demographics[cls]
    comps = np.asarray(d["age"], float)
    k = rng.choice(len(comps), p=comps[:, 0] / comps[:, 0].sum())
    lo, hi = d["age_range"]
    age = float(np.clip(comps[k, 1] + comps[k, 2] * rng.normal(), lo, hi))
    sex = "F" if rng.random() < d["female"] else "M"
    return round(age, 1), sex


def sample_atrophy(rng: np.random.Generator, cls: str, age: float, cfg: SynthConfig) -> float:
    a = cfg.atrophy
    mean, sd = a["classes"][cls]
    value = a["age_slope"] * max(age - a["age_ref"], 0.0) + mean + sd * rng.normal()
    marked = a["marked"].get(cls)
    if marked and rng.random() < marked[0]:
        value += marked[1]
    return float(np.clip(value, 0.0, a["max"]))


def sample_case(
    seed: np.random.SeedSequence, case_id: str, diagnosis: str, anat: Anatomy, cfg: SynthConfig
) -> CaseLatent:
    """Draw the latent variables of one case (lesions drawn on the template grid)."""
    s_demo, s_lesion, s_sero, s_surv, s_image = seed.spawn(5)
    r = np.random.default_rng(s_demo)
    age, sex = sample_age_sex(r, diagnosis, cfg)
    atrophy = sample_atrophy(r, diagnosis, age, cfg)
    specs = sample_lesions(np.random.default_rng(s_lesion), diagnosis, age, anat, cfg)
    maps = draw_lesions(specs, anat)
    volumes = maps.region_volumes_ml()
    r = np.random.default_rng(s_sero)
    true = sample_true_serology(r, diagnosis, age, sex, cfg)
    measured = measure_serology(r, true, diagnosis, cfg)
    labs = lab_strings(r, measured, cfg)
    x = risk_factors(
        diagnosis,
        age=age,
        sex=sex,
        n_lesions=len(specs),
        lesion_volume_ml=sum(volumes.values()),
        serology=true,
    )
    surv = sample_survival(np.random.default_rng(s_surv), diagnosis, x, cfg)
    return CaseLatent(
        case_id=case_id,
        diagnosis=diagnosis,
        age=age,
        sex=sex,
        atrophy=atrophy,
        lesions=specs,
        maps=maps,
        region_volumes_ml=volumes,
        serology_true=true,
        serology_measured=measured,
        labs=labs,
        survival=surv,
        image_seed=s_image,
    )
