"""The multiple-sclerosis course cohort (panel ``ms_course``): CIS, RRMS, SPMS, PPMS with FLAIR, T1, T1-Gd.

The per-family priors of the generator (``docs/clinical_priors.md``, section *MS course*, cites
the sources): onset age, disease duration and sex ratio per course; T2 lesion counts; the share
of patients with gadolinium-enhancing lesions (activity: common in CIS and RRMS, rare in
progressive disease); T1 black holes and brain atrophy growing with disease duration, most in
progressive disease; serum NfL rising with age and activity, serum GFAP with age and
progression; EDSS and relapses; and the time to 6-month confirmed disability worsening from a
latent Weibull hazard. Where the sources give no number the values are design assumptions.

The three contrasts are rendered by the CNS generator's renderer (``render.render_case``) from
the same template tissue maps and the same per-case geometry (one image seed: pose,
deformation, ventricle enlargement with atrophy), each with its own tissue contrast and lesion
signal: on FLAIR every lesion is bright; on T1 lesions are mildly dark and black holes very
dark; on T1-Gd enhancing lesions are bright. The lesion mask of each contrast labels only its
own kind (all lesions, black holes, enhancing lesions), so ground truth per kind costs no
extra rendering.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_with
from .anatomy import LABELS, Anatomy, load_anatomy
from .cohort import (
    _check_options,
    _collect,
    _prepare_folder,
    _run,
    _write_tables,
    assign_classes,
    case_ids,
    template_resolution,
)
from .config import LESIONS, SCAN, SynthConfig
from .latent import CaseLatent
from .lesions import LesionSpec, draw_lesions, sample_lesions
from .render import OutputGrid, output_grid, render_case
from .scan import Scan, render_scan
from .survival import Survival, sample_survival

PANEL = "ms_course"
CLASSES: tuple[str, ...] = ("CIS", "RRMS", "SPMS", "PPMS")
PROGRESSIVE = ("SPMS", "PPMS")
CHANNELS = ("flair", "t1", "t1gd")


def _d(value: Any) -> Any:
    return field(default_factory=lambda: json.loads(json.dumps(value)))


@dataclass
class MSCourseConfig:
    """Every prior of the MS course cohort (``cohort.json`` records it)."""

    class_fractions: dict[str, float] = _d(dict(CIS=0.2, RRMS=0.4, SPMS=0.2, PPMS=0.2))
    split_fractions: dict[str, float] = _d(dict(train=0.6, val=0.2, test=0.2))
    # onset age ~ N(mean, sd) (years), female share, disease duration (years: gamma shape,
    # scale, plus an offset), age range
    demographics: dict[str, dict[str, Any]] = _d(
        dict(
            CIS=dict(onset=[30.0, 8.0], female=0.72, duration=[1.0, 0.6, 0.05]),
            RRMS=dict(onset=[30.0, 8.5], female=0.72, duration=[1.5, 4.5, 0.3]),
            SPMS=dict(onset=[32.0, 8.5], female=0.65, duration=[3.0, 4.0, 3.0]),
            PPMS=dict(onset=[40.0, 9.0], female=0.50, duration=[2.0, 3.5, 0.5]),
        )
    )
    age_range: list[float] = _d([18.0, 75.0])
    # T2 (FLAIR) lesions: negative binomial mean and shape; mean grows by age_slope per year
    lesions: dict[str, dict[str, float]] = _d(
        dict(
            CIS=dict(count_mean=5.0, count_k=2.0),
            RRMS=dict(count_mean=20.0, count_k=2.0),
            SPMS=dict(count_mean=24.0, count_k=2.0),
            PPMS=dict(count_mean=18.0, count_k=1.8),
        )
    )
    lesion_age_slope: float = 0.01
    # activity: probability of >= 1 gadolinium-enhancing lesion, and 1 + Poisson(extra) of them
    p_enhancing: dict[str, float] = _d(dict(CIS=0.40, RRMS=0.40, SPMS=0.15, PPMS=0.12))
    enhancing_extra: float = 0.8
    # T1 black holes: share of the non-enhancing lesions, base + per year of duration (+ in
    # progressive disease), capped
    black_holes: dict[str, float] = _d(dict(base=0.05, per_year=0.012, progressive=0.25, max=0.6))
    # brain atrophy (the renderer's ventricle enlargement and cortical thinning per unit)
    atrophy: dict[str, Any] = _d(
        dict(
            classes=dict(CIS=0.01, RRMS=0.02, SPMS=0.09, PPMS=0.09),
            per_year=0.004,
            age_slope=0.002,
            age_ref=30.0,
            sd=0.02,
            max=0.35,
        )
    )
    # EDSS ~ N(mean + per_year * duration, sd), rounded to 0.5; relapses in 2 years ~ Poisson
    edss: dict[str, list[float]] = _d(
        dict(
            CIS=[1.2, 1.0, 0.0], RRMS=[2.2, 1.5, 0.05], SPMS=[4.4, 1.5, 0.03], PPMS=[3.8, 1.5, 0.08]
        )
    )
    relapses_2y: dict[str, float] = _d(dict(CIS=1.0, RRMS=0.9, SPMS=0.15, PPMS=0.04))
    relapses_if_active: float = 0.5  # extra relapses in 2 years with an enhancing lesion
    # serum NfL (pg/mL): log-normal around an age-dependent reference, raised by activity
    nfl: dict[str, float] = _d(
        dict(median_at_40=7.0, age_slope=0.022, sd=0.40, per_enhancing=0.35, per_relapse=0.12,
             progressive=0.10)
    )  # fmt: skip
    # serum GFAP (pg/mL): log-normal around an age-dependent reference, raised by progression
    gfap: dict[str, float] = _d(
        dict(median_at_40=80.0, age_slope=0.02, sd=0.35, progressive=0.25, per_atrophy=2.0,
             per_enhancing=0.03)
    )  # fmt: skip
    # CSF: oligoclonal bands positive, IgG index log-normal (median with / without bands)
    ocb_positive: dict[str, float] = _d(dict(CIS=0.80, RRMS=0.90, SPMS=0.92, PPMS=0.90))
    igg_index: dict[str, float] = _d(dict(with_ocb=0.85, without_ocb=0.55, sd=0.28))
    # missing at random: lumbar puncture (OCB and IgG index together), other values, images
    missing: dict[str, float] = _d(
        dict(csf=0.35, nfl=0.05, gfap=0.10, edss=0.15, relapses_2y=0.10, disease_duration=0.30,
             t1=0.05, t1gd=0.15)
    )  # fmt: skip
    # time to 6-month confirmed disability worsening: Weibull rate (per month) and shape per
    # course, log hazard ratios of the latent covariates (SynthConfig.hazards format)
    hazards: dict[str, dict[str, Any]] = _d(
        {
            c: dict(rate=r, shape=1.0, beta=dict(
                nfl_z=0.15, gfap_z=0.30, edss_over_2=0.15, active=0.35, age_per_decade=0.10,
                atrophy_per_0_1=0.9, black_holes_log=0.5))
            for c, r in dict(CIS=0.0025, RRMS=0.004, SPMS=0.012, PPMS=0.013).items()
        }
    )  # fmt: skip
    censoring: dict[str, float] = _d(
        dict(admin_min_months=12.0, admin_max_months=72.0, loss_per_year=0.05)
    )
    # tissue contrast per sequence (WM = 1) and lesion signal (multiple of WM signal)
    contrasts: dict[str, dict[str, float]] = _d(
        dict(
            flair=dict(wm=1.0, gm=1.25, csf=0.12),
            t1=dict(wm=1.0, gm=0.66, csf=0.22, lesion=0.80, black_hole=0.40),
            t1gd=dict(wm=1.0, gm=0.68, csf=0.24, lesion=0.80, black_hole=0.40, enhancing=1.8),
        )
    )
    # whole-head clinical scans (``--anatomy head``): the CNS cohort's scanner model
    scan: dict[str, Any] = _d(SCAN)
    max_lesions: int = 40

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_fractions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def base_config(self) -> SynthConfig:
        """The CNS generator's config with this cohort's classes, lesion counts and hazards
        (``sample_lesions``, ``sample_survival`` and ``render_case`` read it)."""
        recipes = dict(LESIONS["MS"]["recipes"])  # the typical MS lesion mix (Dawson, ovoid)
        lesions = {
            c: dict(p_normal=0.0, count_mean=p["count_mean"], count_k=p["count_k"],
                    age_slope=self.lesion_age_slope, recipes=recipes)
            for c, p in self.lesions.items()
        }  # fmt: skip
        return replace(
            SynthConfig(),
            class_fractions=dict(self.class_fractions),
            split_fractions=dict(self.split_fractions),
            lesions=lesions,
            hazards=json.loads(json.dumps(self.hazards)),
            censoring=dict(self.censoring),
            scan=json.loads(json.dumps(self.scan)),
            max_lesions=self.max_lesions,
        )


@dataclass
class CourseCase:
    """One patient of the MS course cohort, before rendering."""

    case_id: str
    diagnosis: str
    split: str
    age: float
    sex: str
    duration: float
    atrophy: float
    edss: float
    relapses_2y: int
    lesions: list[LesionSpec]
    enhancing: list[bool]
    black_hole: list[bool]
    true_nfl: float
    true_gfap: float
    labs: dict[str, str]
    channels: tuple[str, ...]  # the contrasts acquired (FLAIR always)
    survival: Survival
    image_seed: np.random.SeedSequence


def _edss(rng: np.random.Generator, cls: str, duration: float, cfg: MSCourseConfig) -> float:
    mean, sd, per_year = cfg.edss[cls]
    value = mean + per_year * duration + sd * rng.normal()
    return float(np.clip(round(value * 2.0) / 2.0, 0.0, 9.5))


def _demographics(rng: np.random.Generator, cls: str, cfg: MSCourseConfig) -> tuple:
    d = cfg.demographics[cls]
    shape, scale, offset = d["duration"]
    duration = float(offset + rng.gamma(shape, scale))
    onset = float(d["onset"][0] + d["onset"][1] * rng.normal())
    lo, hi = cfg.age_range
    age = float(np.clip(onset + duration, lo, hi))
    duration = float(min(duration, age - 10.0))
    sex = "F" if rng.random() < d["female"] else "M"
    return age, sex, duration


def _atrophy(rng: np.random.Generator, cls: str, age: float, duration: float, cfg) -> float:
    a = cfg.atrophy
    value = (
        a["classes"][cls]
        + a["per_year"] * duration
        + a["age_slope"] * max(age - a["age_ref"], 0.0)
        + a["sd"] * rng.normal()
    )
    return float(np.clip(value, 0.0, a["max"]))


def _lesion_kinds(
    rng: np.random.Generator, cls: str, n: int, duration: float, cfg: MSCourseConfig
) -> tuple[list[bool], list[bool]]:
    """Which lesions enhance (activity) and which are T1 black holes (chronic damage)."""
    n_enh = 0
    if n and rng.random() < cfg.p_enhancing[cls]:
        n_enh = int(min(n, 1 + rng.poisson(cfg.enhancing_extra)))
    enhancing = np.zeros(n, bool)
    enhancing[rng.choice(n, size=n_enh, replace=False) if n_enh else []] = True
    b = cfg.black_holes
    share = b["base"] + b["per_year"] * duration + (b["progressive"] if cls in PROGRESSIVE else 0)
    black = (~enhancing) & (rng.random(n) < min(share, b["max"]))
    return enhancing.tolist(), black.tolist()


def _biomarkers(
    rng: np.random.Generator, cls: str, age: float, n_enh: int, relapses: int, atrophy: float, cfg
) -> tuple[float, float, dict[str, float]]:
    """True serum NfL and GFAP (pg/mL) and their z-scores against the age reference."""
    prog = float(cls in PROGRESSIVE)
    f, g = cfg.nfl, cfg.gfap
    ref_nfl = math.log(f["median_at_40"]) + f["age_slope"] * (age - 40.0)
    log_nfl = (
        ref_nfl
        + f["per_enhancing"] * math.sqrt(min(n_enh, 6))
        + f["per_relapse"] * relapses
        + f["progressive"] * prog
        + f["sd"] * rng.normal()
    )
    ref_gfap = math.log(g["median_at_40"]) + g["age_slope"] * (age - 40.0)
    log_gfap = (
        ref_gfap
        + g["progressive"] * prog
        + g["per_atrophy"] * atrophy
        + g["per_enhancing"] * min(n_enh, 6)
        + g["sd"] * rng.normal()
    )
    z = {"nfl_z": (log_nfl - ref_nfl) / f["sd"], "gfap_z": (log_gfap - ref_gfap) / g["sd"]}
    return math.exp(log_nfl), math.exp(log_gfap), z


def _lab_sheet(
    rng: np.random.Generator, cls: str, values: dict[str, float], cfg: MSCourseConfig
) -> dict[str, str]:
    """The lab-sheet strings of one case (blank = not done), some with units."""
    miss = cfg.missing
    ocb = rng.random() < cfg.ocb_positive[cls]
    ig = cfg.igg_index
    igg = math.exp(math.log(ig["with_ocb"] if ocb else ig["without_ocb"]) + ig["sd"] * rng.normal())
    csf_done = rng.random() >= miss["csf"]
    nfl_unit = " ng/L" if rng.random() < 0.2 else (" pg/mL" if rng.random() < 0.3 else "")

    def maybe(name: str, text: str) -> str:
        return "" if rng.random() < miss.get(name, 0.0) else text

    return {
        "nfl": maybe("nfl", f"{values['nfl']:.1f}{nfl_unit}"),
        "gfap": maybe("gfap", f"{values['gfap']:.0f}"),
        "ocb": ("pos" if ocb else "neg") if csf_done else "",
        "igg_index": f"{min(max(igg, 0.2), 4.5):.2f}" if csf_done else "",
        "disease_duration": maybe("disease_duration", f"{values['duration']:.1f}"),
        "edss": maybe("edss", f"{values['edss']:.1f}"),
        "relapses_2y": maybe("relapses_2y", str(int(values["relapses_2y"]))),
    }


def sample_course_case(
    seed: np.random.SeedSequence,
    case_id: str,
    diagnosis: str,
    split: str,
    anat: Anatomy,
    cfg: MSCourseConfig,
    base: SynthConfig | None = None,
) -> CourseCase:
    """Draw the latent variables of one case (no image)."""
    base = base or cfg.base_config()
    s_demo, s_lesion, s_lab, s_surv, s_image = seed.spawn(5)
    r = np.random.default_rng(s_demo)
    age, sex, duration = _demographics(r, diagnosis, cfg)
    atrophy = _atrophy(r, diagnosis, age, duration, cfg)
    edss = _edss(r, diagnosis, duration, cfg)
    r_les = np.random.default_rng(s_lesion)
    specs = sample_lesions(r_les, diagnosis, age, anat, base)
    enhancing, black = _lesion_kinds(r_les, diagnosis, len(specs), duration, cfg)
    n_enh = int(sum(enhancing))
    r = np.random.default_rng(s_lab)
    relapses = int(
        max(
            1 if diagnosis == "CIS" else 0,
            r.poisson(cfg.relapses_2y[diagnosis] + cfg.relapses_if_active * (n_enh > 0)),
        )
    )
    if diagnosis == "CIS":
        relapses = 1  # the one clinical event that defines it
    nfl, gfap, z = _biomarkers(r, diagnosis, age, n_enh, relapses, atrophy, cfg)
    values = dict(nfl=nfl, gfap=gfap, duration=duration, edss=edss, relapses_2y=relapses)
    labs = _lab_sheet(r, diagnosis, values, cfg)
    channels = tuple(
        c for c in CHANNELS if c == CHANNELS[0] or r.random() >= cfg.missing.get(c, 0.0)
    )
    x = {
        **z,
        "edss_over_2": (edss - 3.0) / 2.0,
        "active": float(n_enh > 0),
        "age_per_decade": (age - 45.0) / 10.0,
        "atrophy_per_0_1": atrophy / 0.1,
        "black_holes_log": math.log1p(sum(black)),
    }
    surv = sample_survival(np.random.default_rng(s_surv), diagnosis, x, base)
    return CourseCase(
        case_id, diagnosis, split, age, sex, duration, atrophy, edss, relapses, specs,
        enhancing, black, nfl, gfap, labs, channels, surv, s_image,
    )  # fmt: skip


def contrast_lesions(case: CourseCase, channel: str, cfg: MSCourseConfig) -> list[LesionSpec]:
    """The lesions as ``channel`` shows them: signal per kind, and the region label kept only
    on the kind its mask records (FLAIR: all; T1: black holes; T1-Gd: enhancing)."""
    if channel == "flair":
        return list(case.lesions)
    c = cfg.contrasts[channel]
    out = []
    for spec, enh, black in zip(case.lesions, case.enhancing, case.black_hole):
        if channel == "t1gd" and enh:
            gain, keep = c["enhancing"], True
        else:
            gain, keep = (c["black_hole"], channel == "t1") if black else (c["lesion"], False)
        out.append(replace(spec, gain=float(gain), label=spec.label if keep else 0))
    return out


def render_course_case(
    case: CourseCase,
    anat: Anatomy,
    grid: OutputGrid | None,
    cfg: MSCourseConfig,
    base: SynthConfig,
) -> dict[str, Scan | tuple[np.ndarray, np.ndarray]]:
    """channel -> (image int16, mask uint8) on ``grid`` for every acquired contrast of
    ``case``; with ``grid=None`` whole-head clinical scans (``scan.render_scan``: the same
    head pose and acquisition for every contrast, one session)."""
    out: dict[str, Scan | tuple[np.ndarray, np.ndarray]] = {}
    for channel in case.channels:
        contrast = cfg.contrasts[channel]
        imaging = {
            **base.imaging,
            "wm": contrast["wm"],
            "gm": contrast["gm"],
            "csf": contrast["csf"],
        }
        specs = contrast_lesions(case, channel, cfg)
        latent = CaseLatent(
            case_id=case.case_id, diagnosis=case.diagnosis, age=case.age, sex=case.sex,
            atrophy=case.atrophy, lesions=specs, maps=draw_lesions(specs, anat),
            region_volumes_ml={}, serology_true={}, serology_measured={}, labs={},
            survival=case.survival, image_seed=case.image_seed,
        )  # fmt: skip
        cfg_c = replace(base, imaging=imaging)
        out[channel] = (
            render_scan(latent, anat, cfg_c)
            if grid is None
            else render_case(latent, anat, grid, cfg_c)
        )
    return out


MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id", *(f"image_{c}" for c in CHANNELS), "mask_lesions", "nfl", "gfap", "ocb",
    "igg_index", "age", "sex", "disease_duration", "edss", "relapses_2y", "diagnosis",
    "event_time", "event", "split",
)  # fmt: skip
TRUTH_COLUMNS: tuple[str, ...] = (
    "case_id", "diagnosis",
    *(f"{p}_{r}" if p == "n" else f"vol_{r}_ml" for r in LABELS.values() for p in ("n", "vol")),
    "n_total", "vol_total_ml", "n_enhancing", "vol_enhancing_ml", "n_black_holes",
    "vol_black_holes_ml", "atrophy", "age", "sex", "mask_enhancing", "mask_black_holes",
    "true_nfl", "true_gfap", "true_log_hazard", "true_event_time", "censor_time",
)  # fmt: skip


def _truth(case: CourseCase, anat: Anatomy, masks: dict[str, str]) -> dict[str, object]:
    all_maps = draw_lesions(case.lesions, anat)
    vols = all_maps.region_volumes_ml()
    row: dict[str, object] = {"case_id": case.case_id, "diagnosis": case.diagnosis}
    counts = dict.fromkeys(LABELS.values(), 0)
    for s in case.lesions:
        counts[LABELS[s.label]] += 1
    for name in LABELS.values():
        row[f"n_{name}"] = counts[name]
        row[f"vol_{name}_ml"] = round(vols[name], 4)
    row["n_total"] = len(case.lesions)
    row["vol_total_ml"] = round(sum(vols.values()), 4)
    for kind, flags in (("enhancing", case.enhancing), ("black_holes", case.black_hole)):
        chosen = [s for s, f in zip(case.lesions, flags) if f]
        row[f"n_{kind}"] = len(chosen)
        row[f"vol_{kind}_ml"] = round(
            sum(draw_lesions(chosen, anat).region_volumes_ml().values()), 4
        )
        row[f"mask_{kind}"] = masks.get(kind, "")
    row.update(
        atrophy=round(case.atrophy, 5), age=round(case.age, 2), sex=case.sex,
        true_nfl=round(case.true_nfl, 3), true_gfap=round(case.true_gfap, 3),
        true_log_hazard=round(case.survival.log_hazard, 6),
        true_event_time=round(case.survival.event_time_true, 3),
        censor_time=round(case.survival.censor_time, 3),
    )  # fmt: skip
    return row


_JOB: dict[str, Any] = {}


def _init_worker(job: dict[str, Any]) -> None:
    _JOB.update(job)
    load_anatomy(job["resolution"])


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    write_with(path, lambda tmp: nib.save(img, tmp))
    os.chmod(path, 0o644)


def _make_case(task: tuple[str, str, str, Any]) -> tuple[dict[str, object], dict[str, object]]:
    case_id, diagnosis, split, seed = task
    cfg: MSCourseConfig = _JOB["config"]
    base: SynthConfig = _JOB["base"]
    grid: OutputGrid | None = _JOB["grid"]  # None: whole-head clinical scans
    out: Path = _JOB["out_dir"]
    anat = load_anatomy(_JOB["resolution"])
    case = sample_course_case(seed, case_id, diagnosis, split, anat, cfg, base)
    rendered = render_course_case(case, anat, grid, cfg, base)
    row: dict[str, object] = {"case_id": case_id}
    masks: dict[str, str] = {}
    kinds = {"flair": "lesions", "t1": "black_holes", "t1gd": "enhancing"}
    scan_truth: dict[str, object] = {}
    for channel in CHANNELS:
        if channel not in rendered:
            row[f"image_{channel}"] = ""
            continue
        result = rendered[channel]
        image_rel = f"images/{case_id}_{channel}.nii.gz"
        mask_rel = f"masks/{case_id}_{kinds[channel]}.nii.gz"
        if isinstance(result, Scan):
            image, mask, affine = result.image, result.lesions, result.grid.affine
            if channel == CHANNELS[0]:
                brain_rel = f"masks/{case_id}_brain.nii.gz"
                _save_nifti(out / brain_rel, result.brain, affine)
                scan_truth = {
                    "acquisition": result.acquisition,
                    "template_to_image_ras": np.round(result.pose, 6).tolist(),
                    "pitch_roll_yaw_deg": [round(a, 3) for a in result.angles_deg],
                    "brain_mask": brain_rel,
                }
        else:
            assert grid is not None
            (image, mask), affine = result, grid.affine
        _save_nifti(out / image_rel, image, affine)
        _save_nifti(out / mask_rel, mask, affine)
        row[f"image_{channel}"] = image_rel
        masks[kinds[channel]] = mask_rel
    row["mask_lesions"] = masks["lesions"]
    row.update(case.labs)
    row.update(
        age=int(math.floor(case.age)), sex=case.sex, diagnosis=diagnosis,
        event_time=f"{case.survival.event_time:.2f}", event=case.survival.event, split=split,
    )  # fmt: skip
    truth = _truth(case, anat, masks)
    if scan_truth:
        truth["_scan"] = scan_truth
    return row, truth


def plan(n_cases: int, seed: int, cfg: MSCourseConfig) -> list[tuple[str, str, str, Any]]:
    """(case id, course, split, seed) of every case: the same assignment rule as the CNS cohort."""
    root = np.random.SeedSequence(seed)
    assign_seed, *case_seeds = root.spawn(n_cases + 1)
    diagnoses, splits = assign_classes(
        np.random.default_rng(assign_seed), n_cases, cfg.base_config()
    )
    return list(zip(case_ids(n_cases), diagnoses, splits, case_seeds))


def generate_cohort(
    out_dir: Path,
    n_cases: int = 400,
    seed: int = 0,
    *,
    voxel_size: float = 2.0,
    oblique_deg: float = 0.0,
    anisotropic: bool = False,
    workers: int | None = None,
    progress: bool = True,
    config: MSCourseConfig | None = None,
    anatomy: str = "head",
) -> Path:
    """Write the MS course cohort to ``out_dir`` (images, masks per lesion kind, ``manifest.csv``,
    ``truth.csv``, ``cohort.json``, with head scans ``scans.json``) and return the manifest's
    path. ``anatomy``: ``head`` whole-head clinical scans (``scan.render_scan``), ``brain``
    skull-stripped images on one grid (``voxel_size``, ``oblique_deg``, ``anisotropic``)."""
    _check_options(n_cases, seed, voxel_size, oblique_deg, anatomy)
    cfg = config or MSCourseConfig()
    base = cfg.base_config()
    out = Path(out_dir)
    _prepare_folder(out)
    resolution = template_resolution(voxel_size)
    anat = load_anatomy(resolution)
    grid = output_grid(anat, voxel_size, oblique_deg, anisotropic, base)
    job_grid = grid if anatomy == "brain" else None
    tasks = plan(n_cases, seed, cfg)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    job = dict(config=cfg, base=base, grid=job_grid, out_dir=out, resolution=resolution)
    results = _run(tasks, max(1, min(workers, n_cases)), job, _init_worker, _make_case)
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=n_cases, desc=f"synth {PANEL}", unit="case")
    rows, truths, scans = _collect(results)
    meta = {
        "generator": "autoimmuneai synth",
        "panel": PANEL,
        "cases": n_cases,
        "seed": seed,
        "anatomy": anatomy,
        "voxel_size": voxel_size if anatomy == "brain" else None,
        "template": f"MNI152 (nilearn), {resolution} mm",
        "grid": {"shape": list(grid.shape), "affine": grid.affine.round(6).tolist()},
        "labels": {str(k): v for k, v in LABELS.items()},
        "masks": {"mask_lesions": "all T2/FLAIR lesions", "mask_black_holes": "T1 black holes",
                  "mask_enhancing": "gadolinium-enhancing lesions"},
        "classes": {c: sum(r["diagnosis"] == c for r in rows) for c in cfg.classes},
        "config": cfg.to_dict(),
    }  # fmt: skip
    return _write_tables(out, rows, truths, scans, meta, MANIFEST_COLUMNS, TRUTH_COLUMNS)
