"""Every knob of the synthetic demo cohort in one dataclass (a product decision, see README).

Figures follow ``docs/clinical_priors.md`` (sources cited there); where the priors give no number the
values are design assumptions chosen so that the task is realistic and not trivial:
lesion-only and serology-only classifiers stay clearly imperfect, their combination is
clearly better (``Testing/Benchmarks/bench_synth.py`` measures the three figures).
Assay sensitivities, missingness and class overlap are the difficulty dials.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CLASSES: tuple[str, ...] = ("MS", "NMOSD", "MOGAD", "NPSLE", "SVD")


def _d(value: Any) -> Any:
    return field(default_factory=lambda: _deepcopy(value))


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


# Lesion recipes: where a lesion's centre is drawn (an anatomy region), its major diameter in
# mm (log-normal: median, sd of log), elongation (major/minor axis), orientation ("radial":
# long axis away from the ventricles, Dawson's fingers; "cap": flat against the ventricle;
# "cst": along the corticospinal tract; "random"), edge softness (mm of the sigmoid rim: small
# is well demarcated, large is "fluffy"), lobulation (irregular outline) and peak intensity
# (multiple of white-matter signal).
LESION_RECIPES: dict[str, dict[str, Any]] = {
    "pv_ovoid": dict(region="periventricular", diam=[10.0, 0.30], elong=2.0, orient="radial", edge=0.5, lobe=0.05, gain=2.1),
    "jc_ovoid": dict(region="juxtacortical", diam=[7.0, 0.30], elong=1.4, orient="random", edge=0.5, lobe=0.05, gain=2.0),
    "it_peripheral": dict(region="pons_peripheral", diam=[7.0, 0.30], elong=1.4, orient="random", edge=0.5, lobe=0.05, gain=2.0),
    "mcp_ovoid": dict(region="mcp", diam=[7.5, 0.30], elong=1.5, orient="random", edge=0.5, lobe=0.05, gain=2.0),
    "cerebellar": dict(region="infratentorial", diam=[6.0, 0.30], elong=1.3, orient="random", edge=0.5, lobe=0.05, gain=1.9),
    "deep_wm_ovoid": dict(region="deep_wm", diam=[8.0, 0.30], elong=1.6, orient="random", edge=0.5, lobe=0.05, gain=2.0),
    "callosal": dict(region="callosal", diam=[7.0, 0.30], elong=1.8, orient="radial", edge=0.5, lobe=0.05, gain=2.0),
    "deep_grey_small": dict(region="deep_grey", diam=[5.0, 0.30], elong=1.2, orient="random", edge=0.5, lobe=0.05, gain=1.9),
    "punctate_wm": dict(region="deep_wm", diam=[4.5, 0.25], elong=1.1, orient="random", edge=0.4, lobe=0.0, gain=1.9),
    "punctate_jc": dict(region="juxtacortical", diam=[4.0, 0.25], elong=1.1, orient="random", edge=0.4, lobe=0.0, gain=1.9),
    "punctate_pv": dict(region="periventricular", diam=[4.5, 0.25], elong=1.1, orient="random", edge=0.4, lobe=0.0, gain=1.9),
    "pv_cap": dict(region="pv_caps", diam=[9.0, 0.25], elong=2.6, orient="cap", edge=0.8, lobe=0.05, gain=1.8),
    "pons_central": dict(region="pons", diam=[5.0, 0.25], elong=1.2, orient="random", edge=0.6, lobe=0.05, gain=1.8),
    "lacune": dict(region="deep_grey", diam=[5.0, 0.30], elong=1.2, orient="random", edge=0.4, lobe=0.0, gain=1.9),
    "periependymal": dict(region="periependymal", diam=[9.0, 0.30], elong=1.6, orient="cap", edge=1.0, lobe=0.15, gain=1.9),
    "area_postrema": dict(region="area_postrema", diam=[7.0, 0.25], elong=1.4, orient="random", edge=0.8, lobe=0.1, gain=1.9),
    "diencephalic": dict(region="diencephalic", diam=[10.0, 0.30], elong=1.4, orient="random", edge=1.5, lobe=0.2, gain=1.8),
    "cst_long": dict(region="cst", diam=[32.0, 0.25], elong=5.0, orient="cst", edge=1.2, lobe=0.1, gain=1.9),
    "confluent": dict(region="hemispheric_wm", diam=[30.0, 0.30], elong=1.5, orient="random", edge=2.5, lobe=0.35, gain=1.8),
    "fluffy_wm": dict(region="hemispheric_wm", diam=[15.0, 0.30], elong=1.3, orient="random", edge=2.5, lobe=0.3, gain=1.7),
    "fluffy_jc": dict(region="juxtacortical", diam=[14.0, 0.30], elong=1.3, orient="random", edge=2.5, lobe=0.3, gain=1.7),
    "fluffy_deep_grey": dict(region="deep_grey", diam=[13.0, 0.30], elong=1.3, orient="random", edge=2.5, lobe=0.3, gain=1.7),
    "fluffy_pons": dict(region="pons", diam=[14.0, 0.30], elong=1.3, orient="random", edge=2.2, lobe=0.3, gain=1.7),
    "fluffy_mcp": dict(region="mcp", diam=[14.0, 0.30], elong=1.3, orient="random", edge=2.2, lobe=0.3, gain=1.7),
}  # fmt: skip

# Per class: probability of a normal scan, lesion count (negative binomial: mean, shape k;
# SVD's mean grows with age), and how lesions split across recipes.
LESIONS: dict[str, dict[str, Any]] = {
    "MS": dict(
        p_normal=0.03, count_mean=16.0, count_k=1.4, age_slope=0.0,
        recipes=dict(pv_ovoid=0.34, jc_ovoid=0.22, it_peripheral=0.06, mcp_ovoid=0.04, cerebellar=0.03,
                     deep_wm_ovoid=0.20, callosal=0.06, deep_grey_small=0.03, punctate_wm=0.02),
    ),
    "NMOSD": dict(
        p_normal=0.28, count_mean=3.0, count_k=1.2, age_slope=0.0,
        recipes=dict(periependymal=0.17, area_postrema=0.15, punctate_pv=0.13, punctate_wm=0.22,
                     cst_long=0.08, confluent=0.07, diencephalic=0.06, callosal=0.06, punctate_jc=0.06),
    ),
    "MOGAD": dict(
        p_normal=0.12, count_mean=3.0, count_k=2.0, age_slope=0.0,
        recipes=dict(fluffy_pons=0.18, fluffy_mcp=0.12, fluffy_deep_grey=0.20, fluffy_jc=0.17,
                     fluffy_wm=0.20, pv_ovoid=0.05, punctate_wm=0.08),
    ),
    "NPSLE": dict(
        p_normal=0.41, count_mean=5.0, count_k=1.3, age_slope=0.0,
        recipes=dict(punctate_jc=0.36, punctate_wm=0.36, punctate_pv=0.10, lacune=0.09,
                     cerebellar=0.04, confluent=0.05),
    ),
    "SVD": dict(
        # mean * exp(slope*(age-64)): ~20 lesions at 60-64 (docs/clinical_priors.md [52]), ~10 at 45
        p_normal=0.10, count_mean=20.0, count_k=1.8, age_slope=0.035,
        recipes=dict(punctate_wm=0.42, pv_cap=0.20, punctate_jc=0.14, pons_central=0.07, lacune=0.10,
                     confluent=0.04, punctate_pv=0.03),
    ),
}  # fmt: skip

# Demographics: female fraction and age as a mixture of normals [weight, mean, sd], clipped.
DEMOGRAPHICS: dict[str, dict[str, Any]] = {
    "MS": dict(female=0.72, age=[[1.0, 32.0, 9.0]], age_range=[16, 65]),
    "NMOSD": dict(female=0.90, age=[[1.0, 41.0, 12.0]], age_range=[12, 80]),
    "MOGAD": dict(female=0.50, age=[[0.22, 11.0, 4.0], [0.78, 33.0, 12.0]], age_range=[3, 75]),
    "NPSLE": dict(female=0.90, age=[[1.0, 38.0, 11.0]], age_range=[16, 75]),
    # Migraine white-matter lesions in younger adults, small vessel disease in older ones.
    "SVD": dict(female=0.55, age=[[0.40, 45.0, 10.0], [0.60, 64.0, 9.0]], age_range=[25, 90]),
}

# Brain atrophy (fraction): age term + class mean/sd; NPSLE has a marked-atrophy subgroup.
ATROPHY: dict[str, Any] = dict(
    age_slope=0.0035, age_ref=30.0,
    classes=dict(MS=[0.04, 0.03], NMOSD=[0.015, 0.02], MOGAD=[0.01, 0.02], NPSLE=[0.02, 0.03], SVD=[0.03, 0.03]),
    marked=dict(NPSLE=[0.19, 0.06]),  # probability, extra atrophy
    max=0.35,
)  # fmt: skip

# True serology per class (before assay noise). Titres: log10 normal [mean, sd] with the
# probability of being present at all; binary: probability; continuous: see serology.py.
SEROLOGY: dict[str, dict[str, Any]] = {
    "MS": dict(
        autoimmune=0.05,
        aqp4=[0.0, 0, 0],
        mog=[0.025, 1.3, 0.3],
        ocb=0.94,
        igg_pos=[0.95, 0.35],
        wbc=[0.25, 1.1, 0.8],
        ana=[1.3, 0.6],
        dsdna_pos=0.02,
        sm=0.005,
        complement_low=0.02,
        apl=0.05,
        ro=0.03,
        esr=9.0,
        crp=1.4,
    ),
    "NMOSD": dict(
        autoimmune=0.25,
        aqp4=[1.0, 2.7, 0.7],
        mog=[0.0, 0, 0],
        ocb=0.25,
        igg_pos=[0.75, 0.3],
        wbc=[0.15, 1.7, 1.1],
        ana=[1.6, 0.6],
        dsdna_pos=0.03,
        sm=0.01,
        complement_low=0.04,
        apl=0.08,
        ro=0.08,
        esr=12.0,
        crp=1.8,
    ),
    "MOGAD": dict(
        autoimmune=0.05,
        aqp4=[0.0, 0, 0],
        mog=[1.0, 2.3, 0.5],
        ocb=0.12,
        igg_pos=[0.75, 0.3],
        wbc=[0.15, 2.2, 1.4],
        ana=[1.3, 0.6],
        dsdna_pos=0.02,
        sm=0.005,
        complement_low=0.02,
        apl=0.05,
        ro=0.03,
        esr=10.0,
        crp=1.8,
    ),
    "NPSLE": dict(
        autoimmune=1.0,
        aqp4=[0.02, 1.8, 0.4],
        mog=[0.0, 0, 0],
        ocb=0.20,
        igg_pos=[0.8, 0.3],
        wbc=[0.35, 1.2, 1.0],
        ana=[2.7, 0.4],
        dsdna_pos=0.40,
        sm=0.15,
        complement_low=0.35,
        apl=0.33,
        ro=0.35,
        esr=20.0,
        crp=3.0,
    ),
    "SVD": dict(
        autoimmune=0.05,
        aqp4=[0.0, 0, 0],
        mog=[0.01, 1.2, 0.2],
        ocb=0.03,
        igg_pos=[0.7, 0.3],
        wbc=[0.45, 0.6, 0.6],
        ana=[1.2, 0.6],
        dsdna_pos=0.02,
        sm=0.005,
        complement_low=0.03,
        apl=0.04,
        ro=0.03,
        esr=14.0,
        crp=2.6,
    ),
}
# Coexisting autoimmunity (about 25% of NMOSD) raises ANA, anti-Ro and anti-dsDNA.
AUTOIMMUNE_EFFECT: dict[str, float] = dict(ana_shift=0.8, ro_prob=0.55, dsdna_prob=0.25)

# Assays: sensitivity (detect a truly present antibody), specificity of binary tests, and the
# coefficient of variation of continuous measurements. AQP4: the assay misses 8-20% of
# clinical NMOSD; MOG: clear positives are the minority in some cohorts (docs/clinical_priors.md).
ASSAYS: dict[str, Any] = dict(
    aqp4_sensitivity=0.80, mog_sensitivity=0.70, ocb_sensitivity=0.85, ocb_specificity=0.97,
    binary_sensitivity=0.92, binary_specificity=0.99, titre_noise_log10=0.15, cv=0.08,
)  # fmt: skip

# Probability that a test is missing (not done), per class: tests are ordered on clinical
# suspicion, so missingness is informative, as in real records. Most outpatients never have a
# lumbar puncture, so CSF results are missing in most records.
MISSING: dict[str, dict[str, float]] = {
    "MS": dict(csf=0.72, aqp4=0.45, mog=0.55, ana=0.35, lupus_if_ana_pos=0.3, lupus_otherwise=0.65, inflammation=0.25),
    "NMOSD": dict(csf=0.60, aqp4=0.18, mog=0.35, ana=0.30, lupus_if_ana_pos=0.3, lupus_otherwise=0.65, inflammation=0.25),
    "MOGAD": dict(csf=0.55, aqp4=0.25, mog=0.33, ana=0.40, lupus_if_ana_pos=0.3, lupus_otherwise=0.65, inflammation=0.25),
    "NPSLE": dict(csf=0.70, aqp4=0.55, mog=0.70, ana=0.45, lupus_if_ana_pos=0.40, lupus_otherwise=0.6, inflammation=0.20),
    "SVD": dict(csf=0.72, aqp4=0.5, mog=0.55, ana=0.40, lupus_if_ana_pos=0.35, lupus_otherwise=0.75, inflammation=0.25),
}  # fmt: skip
MISSING_WITHIN_CSF: dict[str, float] = dict(igg_index=0.15, csf_wbc=0.03, ocb=0.05)

# How values are written on the lab sheet (share of non-missing values).
LAB_STRINGS: dict[str, Any] = dict(
    decimal_comma=0.08, neg_word_negative=0.25, neg_titre_below=0.15, binary_long_words=0.3,
    c3c4_mg_dl=0.25, crp_mg_dl=0.15, dsdna_censoring_lab=0.6, dsdna_lower=10.0,
    dsdna_upper=800.0, crp_censoring_lab=0.35, crp_lower=5.0,
)  # fmt: skip

# Progression / relapse: Weibull baseline (rate per month, shape) and log hazard ratios. Rates
# are those of treated patients (a baseline case: no risk factor), so most are censored.
HAZARDS: dict[str, dict[str, Any]] = {
    "MS": dict(rate=0.06 / 12, shape=1.0, beta=dict(ocb=0.79, lesions_2_9=0.69, lesions_gt9=0.99, pleocytosis=0.22)),
    "NMOSD": dict(rate=0.012, shape=1.0, beta=dict(aqp4_high=0.41, autoimmune=0.41, ana_pos=0.4)),
    "MOGAD": dict(rate=0.025, shape=0.7, beta=dict(male=-0.78, mog_high=0.3)),
    "NPSLE": dict(rate=0.12 / 12, shape=1.0, beta=dict(low_c4=0.69, low_c3=0.41, apl=0.4)),
    "SVD": dict(rate=0.05 / 12, shape=1.2, beta=dict(lesion_volume_ml=0.05, age_per_decade=0.3)),
}  # fmt: skip
CENSORING: dict[str, float] = dict(
    admin_min_months=12.0, admin_max_months=120.0, loss_per_year=0.05
)

# Imaging: FLAIR-like tissue intensities (relative, WM = 1 on average), per-case variation.
IMAGING: dict[str, Any] = dict(
    wm=1.0, gm=1.25, csf=0.12, contrast_sd=0.06, scale=400.0, scale_sd=0.15,
    noise=[0.02, 0.05],  # Rician sigma as a fraction of WM signal (uniform range)
    bias=0.18,  # amplitude of the smooth multiplicative bias field (log scale)
    deform_mm=2.0, deform_spacing_mm=24.0,  # smooth random deformation
    rotate_deg=3.0, scale_pct=4.0,  # head position and size
    ventricle_gain=1.6,  # ventricle expansion per unit atrophy (radial, around the ventricles)
    sulcal_gain=1.2,  # cortical thinning (grey matter -> CSF) per unit atrophy
    lesion_gain_sd=0.12,
    anisotropic_factors=[1.0, 1.0, 2.5],  # spacing multipliers with --anisotropic (slice axis)
    oblique_axis=[1.0, 0.35, 0.2],  # rotation axis for --oblique DEG (mostly pitch)
)  # fmt: skip

# Clinical scans (``synth --anatomy head``, the default): whole head in a scanner field of view
# that holds the top of the neck, a random head pose, mixed acquisitions, scanner scale and
# offset, a stronger bias field than the brain-only images.
SCAN: dict[str, Any] = dict(
    pitch_deg=20.0, roll_deg=10.0, yaw_deg=10.0,  # uniform within +-
    shift_mm=[8.0, 8.0, 8.0],  # head position in the field of view, uniform within +-
    acquisitions={"3d_1mm": 0.2, "2d_axial": 0.4, "3d_2mm": 0.4},  # share of cases
    slice_mm=[4.0, 6.0], inplane_mm=[1.0, 1.2], slice_samples=3,  # 2D: thickness, profile
    fov_mm=[180.0, 216.0, 200.0], fov_centre=[0.0, -14.0, -8.0],  # RAS mm of the scanner box
    scanner_scale=[0.3, 3.0], offset_frac=[0.0, 0.3],  # x the brain-only scale; + x WM signal
    bias=0.35,
)  # fmt: skip


@dataclass
class SynthConfig:
    """All parameters of the synthetic cohort; ``to_dict`` goes into ``cohort.json``."""

    class_fractions: dict[str, float] = _d(
        dict(MS=0.26, NMOSD=0.18, MOGAD=0.18, NPSLE=0.18, SVD=0.20)
    )
    split_fractions: dict[str, float] = _d(dict(train=0.6, val=0.2, test=0.2))
    demographics: dict[str, dict[str, Any]] = _d(DEMOGRAPHICS)
    lesions: dict[str, dict[str, Any]] = _d(LESIONS)
    lesion_recipes: dict[str, dict[str, Any]] = _d(LESION_RECIPES)
    atrophy: dict[str, Any] = _d(ATROPHY)
    serology: dict[str, dict[str, Any]] = _d(SEROLOGY)
    autoimmune_effect: dict[str, float] = _d(AUTOIMMUNE_EFFECT)
    assays: dict[str, Any] = _d(ASSAYS)
    missing: dict[str, dict[str, float]] = _d(MISSING)
    missing_within_csf: dict[str, float] = _d(MISSING_WITHIN_CSF)
    lab_strings: dict[str, Any] = _d(LAB_STRINGS)
    hazards: dict[str, dict[str, Any]] = _d(HAZARDS)
    censoring: dict[str, float] = _d(CENSORING)
    imaging: dict[str, Any] = _d(IMAGING)
    scan: dict[str, Any] = _d(SCAN)
    max_lesions: int = 60

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_fractions)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
