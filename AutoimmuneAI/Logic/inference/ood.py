"""Out-of-distribution warnings: a case unlike the training data gets a warning, not a silent answer."""

from __future__ import annotations

import numpy as np

from ..data.panel import Panel


def training_distribution(
    descriptions: list[dict], values: np.ndarray, missing: np.ndarray, panel: Panel
) -> dict:
    """Summarise the training images (``imaging.describe_volume`` dicts) and lab values."""
    spacing = np.array([d["spacing"] for d in descriptions], dtype=float)
    p50 = np.array([d["intensity_percentiles"]["p50"] for d in descriptions], dtype=float)
    p99 = np.array([d["intensity_percentiles"]["p99"] for d in descriptions], dtype=float)
    labs = {}
    for j, f in enumerate(panel.features):
        obs = values[~missing[:, j], j]
        if obs.size and f.kind in ("continuous", "titer"):
            labs[f.name] = [float(np.min(obs)), float(np.max(obs))]
    return {
        "spacing_min": spacing.min(0).tolist(),
        "spacing_max": spacing.max(0).tolist(),
        "orientations": sorted({d["orientation"] for d in descriptions}),
        "max_obliquity_deg": float(max(d["obliquity_deg"] for d in descriptions)),
        "intensity_p50": [float(np.min(p50)), float(np.max(p50))],
        "intensity_p99": [float(np.min(p99)), float(np.max(p99))],
        "labs": labs,
    }


def out_of_distribution_warnings(
    description: dict,
    values: np.ndarray,
    missing: np.ndarray,
    reference: dict,
    panel: Panel,
    *,
    standardised: bool = False,
) -> list[str]:
    """Plain-language warnings where a case lies outside what the model was trained on.

    ``standardised``: the bundle's clinical-scan stage registers the image to the template
    and standardises its intensities inside the brain, so the scanner's intensity scale and
    the grid's obliquity (``description`` is of the image as it came) are not checked; the
    voxel size and the labs still are."""
    if not reference:
        return ["the bundle holds no training distribution: out-of-distribution checks skipped"]
    warnings: list[str] = []
    spacing = np.asarray(description["spacing"], dtype=float)
    lo, hi = np.asarray(reference["spacing_min"]), np.asarray(reference["spacing_max"])
    if np.any(spacing < 0.5 * lo) or np.any(spacing > 1.5 * hi):
        warnings.append(
            f"voxel size {_mm(spacing)} mm is far from the training data ({_mm(lo)}-{_mm(hi)} mm)"
        )
    if not standardised and description["obliquity_deg"] > reference["max_obliquity_deg"] + 15.0:
        warnings.append(
            f"image is oblique by {description['obliquity_deg']:.0f} degrees; training images "
            f"were within {reference['max_obliquity_deg']:.0f} degrees"
        )
    for key in () if standardised else ("50", "99"):
        value = float(description["intensity_percentiles"][f"p{key}"])
        low, high = reference[f"intensity_p{key}"]
        span = max(high - low, 1e-6)
        if value < low - span or value > high + span:
            warnings.append(
                f"image intensity (p{key} {value:.3g}) is far outside the training range "
                f"({low:.3g}-{high:.3g}): different sequence or scaling?"
            )
    for j, f in enumerate(panel.features):
        bounds = reference.get("labs", {}).get(f.name)
        if bounds is None or missing[j]:
            continue
        if values[j] < bounds[0] or values[j] > bounds[1]:
            warnings.append(
                f"{f.label} {values[j]:.3g} lies outside the training range {bounds[0]:.3g}-{bounds[1]:.3g}"
            )
    return warnings


def _mm(v: np.ndarray) -> str:
    return "x".join(f"{x:.2g}" for x in v)
