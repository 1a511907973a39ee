"""Attribution map -> labelmap of evidence regions, in the patient's own image geometry.

The map (already on the INPUT image's grid, see ``ModelGrid.to_input``) is smoothed lightly
in millimetres (so anisotropic voxels are smoothed equally in space), its positive part is
cut into top-percentile bands (disjoint: the top 1% core and the top 1-5% rim), and each
band is split into connected components with scikit-image. Each component is one region
with its volume (from the affine's determinant), its share of the total positive
attribution (of the unsmoothed map, so shares do not depend on the smoothing) and its
centroid in RAS millimetres. Regions are numbered 1..N by share, which is also their
label in the labelmap, so the labelmap, the legend and ``prediction.json`` agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.filters import gaussian
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from ..errors import InputError

BAND_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.10, 0.10),  # strongest band: red
    (1.00, 0.60, 0.00),  # next band: orange
    (1.00, 0.90, 0.30),  # further bands: yellow
)
"""Colour of each evidence band, strongest first (RGB in [0, 1])."""
DEFAULT_BANDS: tuple[float, ...] = (1.0, 5.0)
"""Evidence bands when none are asked for: the top 1% core and the top 1-5% rim."""


@dataclass
class Region:
    """One connected evidence region of one band."""

    label: int  # value in the labelmap (1 = largest share)
    name: str  # "Evidence for <class> — region 1, 2.4 mL, 31%"
    band: str  # "top 1%" or "top 5%"
    volume_ml: float
    share: float  # fraction of the map's total positive attribution inside the region
    centroid_ras: tuple[float, float, float]
    n_voxels: int
    color: tuple[float, float, float]


def check_bands(bands: Sequence[float]) -> tuple[float, ...]:
    """The evidence bands as floats; ``ValueError`` unless they are increasing percentages in
    (0, 100] (the one rule for ``evidence_regions`` and the ``--bands`` option)."""
    out = tuple(float(b) for b in bands)
    if not out or any(not 0 < b <= 100 for b in out) or list(out) != sorted(set(out)):
        raise ValueError(f"bands must be increasing percentages in (0, 100], got {out}")
    return out


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det| of the affine's 3x3 part (mm^3) / 1000."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def smooth_in_mm(array: np.ndarray, affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing with a sigma given in mm (converted per axis from the spacing)."""
    if sigma_mm <= 0:
        return np.asarray(array, dtype=np.float32)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    sigma = tuple(float(sigma_mm / s) for s in spacing)
    return gaussian(
        np.asarray(array, dtype=np.float32), sigma=sigma, mode="constant", preserve_range=True
    ).astype(np.float32)


def _band_masks(values: np.ndarray, bands: tuple[float, ...]) -> list[np.ndarray]:
    """Disjoint masks of the top ``bands[i]`` percent of the positive voxels (ties included)."""
    positive = values[values > 0]
    masks: list[np.ndarray] = []
    taken = np.zeros(values.shape, dtype=bool)
    for percent in bands:
        if positive.size == 0:
            masks.append(np.zeros(values.shape, dtype=bool))
            continue
        n_keep = max(1, int(round(percent / 100.0 * positive.size)))
        n_keep = min(n_keep, positive.size)
        threshold = np.partition(positive, positive.size - n_keep)[positive.size - n_keep]
        mask = (values >= threshold) & (values > 0) & ~taken
        taken |= mask
        masks.append(mask)
    return masks


def _format_ml(volume_ml: float) -> str:
    if volume_ml >= 10:
        return f"{volume_ml:.0f}"
    return f"{volume_ml:.1f}" if volume_ml >= 0.1 else f"{volume_ml:.2f}"


def _band_name(percent: float) -> str:
    return f"top {percent:g}%"


def evidence_regions(
    attribution: np.ndarray,
    affine: np.ndarray,
    class_name: str,
    *,
    bands: tuple[float, ...] = DEFAULT_BANDS,
    smooth_mm: float = 2.0,
    min_volume_ml: float = 0.02,
    max_regions: int = 20,
) -> tuple[np.ndarray, list[Region]]:
    """Labelmap (int16, same shape as ``attribution``) of evidence regions, and their list.

    ``bands`` are cumulative top percentages of the positive voxels (1.0, 5.0: the top 1%
    core, then the rest of the top 5%); ``smooth_mm`` is the Gaussian sigma in mm (0: none);
    components smaller than ``min_volume_ml`` are dropped as specks; at most ``max_regions``
    regions (those with the largest shares) are kept. Regions are sorted by share.
    """
    values = np.asarray(attribution, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if values.ndim != 3:
        raise InputError(f"attribution must be a 3-D map, got shape {values.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError("affine must be a finite 4x4 matrix")
    if not np.all(np.isfinite(values)):
        raise InputError("attribution map holds NaN or infinite values")
    try:
        bands = check_bands(bands)
    except ValueError as exc:
        raise InputError(str(exc)) from None

    voxel_ml = voxel_volume_ml(affine)
    weights = np.clip(values, 0.0, None)
    total = float(weights.sum(dtype=np.float64))
    smoothed = smooth_in_mm(values, affine, smooth_mm)

    candidates: list[dict] = []
    for b, mask in enumerate(_band_masks(smoothed, bands)):
        if not mask.any():
            continue
        components = connected_components(mask, connectivity=3)
        for props in regionprops(components):
            n_voxels = int(props.area)
            if n_voxels * voxel_ml < min_volume_ml:
                continue
            coords = props.coords
            mass = float(weights[coords[:, 0], coords[:, 1], coords[:, 2]].sum(dtype=np.float64))
            candidates.append(
                {
                    "band": b,
                    "coords": coords,
                    "n": n_voxels,
                    "share": mass / total if total > 0 else 0.0,
                    "centroid": np.asarray(props.centroid, dtype=np.float64),
                }
            )
    candidates.sort(key=lambda c: (-c["share"], c["band"], -c["n"]))
    candidates = candidates[:max_regions]

    labelmap = np.zeros(values.shape, dtype=np.int16)
    regions: list[Region] = []
    for rank, cand in enumerate(candidates, start=1):
        coords = cand["coords"]
        labelmap[coords[:, 0], coords[:, 1], coords[:, 2]] = rank
        volume_ml = cand["n"] * voxel_ml
        ras = affine[:3, :3] @ cand["centroid"] + affine[:3, 3]
        regions.append(
            Region(
                label=rank,
                name=(
                    f"Evidence for {class_name} — region {rank}, "
                    f"{_format_ml(volume_ml)} mL, {100 * cand['share']:.0f}%"
                ),
                band=_band_name(bands[cand["band"]]),
                volume_ml=float(volume_ml),
                share=float(cand["share"]),
                centroid_ras=(float(ras[0]), float(ras[1]), float(ras[2])),
                n_voxels=int(cand["n"]),
                color=BAND_COLORS[min(cand["band"], len(BAND_COLORS) - 1)],
            )
        )
    return labelmap, regions


# Names of the template's region labels (preprocess.region_map.LABELS), as clinicians say
# them for dissemination in space.
LOCATION_NAMES = {
    1: "periventricular",
    2: "juxtacortical",
    3: "infratentorial",
    4: "deep grey matter",
    5: "other white matter",
}
_MIDLINE_MM = 4.0
_SEARCH_MM = 8.0


def anatomical_location(centroid_mni: np.ndarray) -> str:
    """Where an MNI point lies: side and region of the template's region map, e.g.
    "left periventricular"; the nearest labelled voxel within 8 mm when the point falls on
    CSF, and "outside the brain parenchyma" when none is that close."""
    from ..preprocess.region_map import template_maps  # the template's region map

    anat = template_maps(2)
    xyz = np.asarray(centroid_mni, dtype=np.float64)[:3]
    ijk = np.linalg.inv(anat.affine) @ np.r_[xyz, 1.0]
    centre = np.rint(ijk[:3]).astype(int)
    reach = int(np.ceil(_SEARCH_MM / anat.voxel_mm))
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, anat.label_map.shape)
    if np.any(hi <= lo):
        return "outside the brain parenchyma"
    box = anat.label_map[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    found = np.argwhere(box > 0)
    if len(found) == 0:
        return "outside the brain parenchyma"
    distance = np.linalg.norm((found + lo - ijk[:3]) * anat.voxel_mm, axis=1)
    if distance.min() > _SEARCH_MM:
        return "outside the brain parenchyma"
    label = int(box[tuple(found[int(np.argmin(distance))])])
    side = "midline" if abs(xyz[0]) < _MIDLINE_MM else ("right" if xyz[0] > 0 else "left")
    return f"{side} {LOCATION_NAMES[label]}"


def name_by_anatomy(
    regions: list[Region], class_name: str, to_template: np.ndarray
) -> list[Region]:
    """The regions renamed by location ("Evidence for <class> — left periventricular, 2.4 mL, 31%");
    ``to_template`` maps the patient's RAS mm to MNI mm (the inverse of the registration)."""
    out = []
    for r in regions:
        mni = to_template @ np.r_[np.asarray(r.centroid_ras, dtype=np.float64), 1.0]
        where = anatomical_location(mni[:3])
        name = (
            f"Evidence for {class_name} — {where}, "
            f"{_format_ml(r.volume_ml)} mL, {100 * r.share:.0f}%"
        )
        out.append(dataclasses.replace(r, name=name))
    return out
