"""Serology and CSF per class: true values, what the assays report, and the lab-sheet strings.

Three layers, as in a real record: the patient's true antibody/CSF state (correlated:
coexisting autoimmunity raises ANA, anti-Ro and anti-dsDNA together; lupus activity
consumes C3 and C4 together), the measured result (assay false negatives, measurement
noise, dilution steps, tests not done), and the string a lab sheet carries ("1:160",
"neg", "2,5", "<10", "95 mg/dL", blank).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .config import SynthConfig

FEATURES: tuple[str, ...] = (
    "aqp4_igg", "mog_igg", "ocb", "igg_index", "csf_wbc", "ana", "anti_dsdna", "anti_sm",
    "c3", "c4", "antiphospholipid", "anti_ro", "esr", "crp",
)  # fmt: skip
TITRES = ("aqp4_igg", "mog_igg", "ana")
BINARY = ("ocb", "anti_sm", "antiphospholipid", "anti_ro")
CSF = ("ocb", "igg_index", "csf_wbc")
LUPUS = ("anti_dsdna", "anti_sm", "c3", "c4", "antiphospholipid", "anti_ro")
# Lowest dilution each titre assay reports (below it the result is negative).
SCREEN_DILUTION = {"aqp4_igg": 10, "mog_igg": 10, "ana": 40}
# Reported values stay inside the panel's plausible ranges.
REPORT_RANGE = {
    "igg_index": (0.1, 4.9), "csf_wbc": (0.0, 4000.0), "anti_dsdna": (0.5, 4000.0),
    "c3": (0.1, 3.9), "c4": (0.01, 1.4), "esr": (1.0, 145.0), "crp": (0.1, 450.0),
}  # fmt: skip
_Format = Callable[[str, float, bool, float, bool, dict], str]


def _lognormal(rng: np.random.Generator, median: float, sd: float) -> float:
    return float(median * math.exp(sd * rng.normal()))


def sample_true_serology(
    rng: np.random.Generator, cls: str, age: float, sex: str, cfg: SynthConfig
) -> dict[str, float]:
    """The patient's true serology (titres as reciprocal dilution, 0 = absent; binaries 0/1).

    Also returns the latent ``autoimmune`` flag (coexisting autoimmunity) and
    ``complement_low`` (lupus complement consumption).
    """
    p = cfg.serology[cls]
    eff = cfg.autoimmune_effect
    out: dict[str, float] = {}
    autoimmune = bool(rng.random() < p["autoimmune"])
    out["autoimmune"] = float(autoimmune)
    for name, key in (("aqp4_igg", "aqp4"), ("mog_igg", "mog")):
        prob, mu, sd = p[key]
        present = rng.random() < prob
        out[name] = float(max(10 ** (mu + sd * rng.normal()), 10.0)) if present else 0.0
    ocb = rng.random() < p["ocb"]
    out["ocb"] = float(ocb)
    med, sd = p["igg_pos"] if ocb else (0.5, 0.18)
    out["igg_index"] = float(np.clip(_lognormal(rng, med, sd), 0.2, 4.5))
    p_zero, mu, sd = p["wbc"]
    if rng.random() < p_zero:
        out["csf_wbc"] = float(rng.integers(0, 3))
    else:
        out["csf_wbc"] = float(np.clip(math.exp(mu + sd * rng.normal()), 0.0, 2000.0))
    sle = cls == "NPSLE"
    ana_mu = p["ana"][0] + (eff["ana_shift"] if autoimmune and not sle else 0.0)
    out["ana"] = float(10 ** (ana_mu + p["ana"][1] * rng.normal()))
    dsdna_p = p["dsdna_pos"] + (eff["dsdna_prob"] if autoimmune and not sle else 0.0)
    dsdna_pos = rng.random() < dsdna_p
    out["anti_dsdna"] = float(
        np.clip(_lognormal(rng, 80.0, 0.8) if dsdna_pos else _lognormal(rng, 6.0, 0.6), 0.5, 3000)
    )
    out["anti_sm"] = float(rng.random() < p["sm"])
    low = rng.random() < p["complement_low"]
    out["complement_low"] = float(low)
    z1, z2 = rng.normal(size=2)
    z4 = 0.7 * z1 + 0.71 * z2
    out["c3"] = float(np.clip((0.78 + 0.15 * z1) if low else (1.25 + 0.2 * z1), 0.15, 3.5))
    out["c4"] = float(np.clip((0.09 + 0.04 * z4) if low else (0.25 + 0.07 * z4), 0.02, 1.2))
    out["antiphospholipid"] = float(rng.random() < p["apl"])
    ro_p = eff["ro_prob"] if autoimmune and not sle else p["ro"]
    out["anti_ro"] = float(rng.random() < ro_p)
    esr_med = p["esr"] * (1.25 if sex == "F" else 1.0) * math.exp(0.01 * (age - 40.0))
    esr_med *= 1.3 if low else 1.0
    out["esr"] = float(np.clip(_lognormal(rng, esr_med, 0.45), 1.0, 140.0))
    out["crp"] = float(np.clip(_lognormal(rng, p["crp"], 0.9), 0.1, 300.0))
    return out


def _dilution(value: float, screen: int) -> float:
    """The highest doubling dilution (screen, 2*screen, ...) that the value reaches; 0 below."""
    if value < screen:
        return 0.0
    steps = int(math.floor(math.log2(value / screen) + 1e-9))
    return float(screen * 2 ** min(steps, 10))


def measure_serology(
    rng: np.random.Generator, true: dict[str, float], cls: str, cfg: SynthConfig
) -> dict[str, float | None]:
    """What the lab reports, in canonical units; ``None`` where the test was not done."""
    a = cfg.assays
    miss = cfg.missing[cls]
    within = cfg.missing_within_csf
    out: dict[str, float | None] = {}
    draws = rng.random(32)  # fixed number of uniforms: one per decision below
    csf_done = draws[0] >= miss["csf"]
    # Titres.
    sens = {"aqp4_igg": a["aqp4_sensitivity"], "mog_igg": a["mog_sensitivity"], "ana": 1.0}
    noise = rng.normal(size=3) * a["titre_noise_log10"]
    for i, (name, key) in enumerate((("aqp4_igg", "aqp4"), ("mog_igg", "mog"), ("ana", "ana"))):
        if draws[1 + i] < miss[key]:
            out[name] = None
            continue
        value = true[name]
        detected = value > 0 and draws[4 + i] < sens[name]
        out[name] = _dilution(value * 10 ** noise[i], SCREEN_DILUTION[name]) if detected else 0.0
    ana_pos = out["ana"] is not None and out["ana"] >= 80
    lupus_miss = miss["lupus_if_ana_pos"] if ana_pos else miss["lupus_otherwise"]
    lupus_done = draws[7] >= lupus_miss
    # Binary tests with sensitivity / specificity.
    for i, name in enumerate(BINARY):
        done = (csf_done and draws[8 + i] >= within["ocb"]) if name == "ocb" else lupus_done
        if not done:
            out[name] = None
            continue
        se = a["ocb_sensitivity"] if name == "ocb" else a["binary_sensitivity"]
        sp = a["ocb_specificity"] if name == "ocb" else a["binary_specificity"]
        pos = draws[12 + i] < (se if true[name] >= 0.5 else 1.0 - sp)
        out[name] = float(pos)
    # Continuous measurements with multiplicative noise.
    cv = rng.normal(size=7) * a["cv"]
    for i, name in enumerate(("igg_index", "csf_wbc", "anti_dsdna", "c3", "c4", "esr", "crp")):
        if name in CSF:
            done = csf_done and draws[16 + i] >= within[name]
        elif name in LUPUS:
            done = lupus_done
        else:
            done = draws[16 + i] >= miss["inflammation"]
        lo, hi = REPORT_RANGE[name]
        out[name] = float(np.clip(true[name] * math.exp(cv[i]), lo, hi)) if done else None
    if out["csf_wbc"] is not None:
        out["csf_wbc"] = float(round(out["csf_wbc"]))
    return {k: out[k] for k in FEATURES}


def _num(value: float, decimals: int, comma: bool) -> str:
    text = f"{value:.{decimals}f}"
    return text.replace(".", ",") if comma and decimals > 0 else text


def lab_strings(
    rng: np.random.Generator, measured: dict[str, float | None], cfg: SynthConfig
) -> dict[str, str]:
    """Write measured values the way lab sheets do (see the module docstring)."""
    s = cfg.lab_strings
    u = rng.random(3 * len(FEATURES)).reshape(len(FEATURES), 3)
    dsdna_lab_censors = rng.random() < s["dsdna_censoring_lab"]
    crp_lab_censors = rng.random() < s["crp_censoring_lab"]
    out: dict[str, str] = {}
    for f, name in enumerate(FEATURES):
        v = measured[name]
        r0, r1, r2 = u[f]
        if v is None:
            out[name] = ""
        elif name in TITRES:
            if v <= 0:
                if r0 < s["neg_titre_below"]:
                    out[name] = f"<1:{SCREEN_DILUTION[name]}"
                else:
                    out[name] = "negative" if r1 < s["neg_word_negative"] else "neg"
            else:
                out[name] = f"1:{int(v)}"
        elif name in BINARY:
            long = r0 < s["binary_long_words"]
            out[name] = (
                ("positive" if long else "pos") if v >= 0.5 else ("negative" if long else "neg")
            )
        else:
            comma = r1 < s["decimal_comma"]
            out[name] = _continuous(name, v, comma, r2, dsdna_lab_censors, crp_lab_censors, s)
    return out


def _continuous(
    name: str, v: float, comma: bool, r: float, dsdna_cens: bool, crp_cens: bool, s: dict
) -> str:
    """The lab-sheet string of one continuous result (``r``: the uniform that picks the unit;
    ``dsdna_cens`` / ``crp_cens``: whether this patient's lab reports "<" / ">" limits)."""
    censors = {"anti_dsdna": dsdna_cens, "crp": crp_cens}.get(name, False)
    return _CONTINUOUS_FORMATS[name](name, v, comma, r, censors, s)


def _plain(decimals: int) -> _Format:
    """A number with ``decimals`` decimals (comma or point)."""
    return lambda name, v, comma, r, censors, s: _num(v, decimals, comma)


def _count(name: str, v: float, comma: bool, r: float, censors: bool, s: dict) -> str:
    return str(int(round(v)))


def _dsdna(name: str, v: float, comma: bool, r: float, censors: bool, s: dict) -> str:
    if censors and v < s["dsdna_lower"]:
        return f"<{s['dsdna_lower']:g}"
    if censors and v > s["dsdna_upper"]:
        return f">{s['dsdna_upper']:g}"
    return _num(v, 1, comma)


def _complement(name: str, v: float, comma: bool, r: float, censors: bool, s: dict) -> str:
    if r < s["c3c4_mg_dl"]:
        return f"{_num(v * 100.0, 0 if name == 'c3' else 1, comma)} mg/dL"
    return _num(v, 2, comma)


def _crp(name: str, v: float, comma: bool, r: float, censors: bool, s: dict) -> str:
    if censors and v < s["crp_lower"]:
        return f"<{s['crp_lower']:g}"
    if r < s["crp_mg_dl"]:
        return f"{_num(v / 10.0, 2, comma)} mg/dL"
    return _num(v, 1, comma)


# One lab-sheet format per continuous lab (name, value, comma, unit uniform, censors, config).
_CONTINUOUS_FORMATS: dict[str, _Format] = {
    "igg_index": _plain(2),
    "csf_wbc": _count,
    "esr": _count,
    "anti_dsdna": _dsdna,
    "c3": _complement,
    "c4": _complement,
    "crp": _crp,
}
