"""The co-registration check of a multi-contrast case: each extra channel fitted rigidly onto
the reference channel, the motion applied when it is real and refused when it is implausible.

The channels of one case are meant to share the patient's RAS space (one patient, one
session), but a patient moves between series by a few mm and degrees, and a wrong file (a
series of another patient or session) fits no rigid motion at all. Fusing either silently
puts one channel's anatomy on another's voxels. So every extra channel is registered onto
the reference channel as acquired (both in their own patient RAS space): a rigid (Euler)
transform, Mattes mutual information (the contrasts differ), sampled inside the reference's
region grown by ``GROW_MM`` (the brain mask of the clinical-scan stage, the foreground of the
plain grid: the region the model reads, and around it the brain's edge, skull and scalp, which
move with the brain and pin a rigid fit that the brain's inside alone leaves loose), on images
block-averaged to ``LEVEL_MM`` and a smoothed level twice as coarse above it, from the
identity (co-registered data starts at the optimum). SimpleITK's ``ImageRegistrationMethod``
does the optimisation.

The fit is judged on the reference's region (its points on the model grid, in patient mm):
the displacement of those points under the fitted motion (mean and max), the share of them
inside the channel's field of view (coverage), and a normalised similarity before and after
(mutual information over the smaller of the two entropies, 0 for independent images, 1 when
one determines the other). It is applied (``aligned``) when its largest displacement exceeds
``APPLY_MM`` and it is plausible; below that the channel is left as recorded (the data stay
as they were). It is refused, with a warning, when it moves the region by more than
``IMPLAUSIBLE_MM`` (no patient moves that far inside a head coil), when the images stay
unlike each other after it (similarity below ``SIMILARITY_MIN``: another patient, a flipped
or wrong series), or when it lowers the similarity by more than ``WORSE_BY`` (a fit off the
voxel grid loses a little similarity to interpolation even when it is right). Nothing here
names a panel's channels: the names come from the caller.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..data.imaging import Volume, _to_sitk, sitk_affine
from .registration import _F, _matrix_ras, _method, shrink

METHOD = "rigid_mattes_mi_v1"  # part of a cached multi-contrast image's key: a change refits
LEVEL_MM = 4.0  # the finest registration level (a smoothed level at twice this above it)
SMOOTHING_MM = (4.0, 2.0)  # Gaussian sigma of the coarse and fine levels
ITERATIONS = 40  # per level
SAMPLING = 0.25  # share of the metric mask's voxels sampled per iteration
HISTOGRAM_BINS = 32
GROW_MM = 8.0  # the metric mask: the reference region grown by this much

APPLY_MM = 1.0  # a fit that moves no region point further is not applied
IMPLAUSIBLE_MM = 15.0  # a fit that moves a region point further is refused
SIMILARITY_MIN = 0.15  # below this after the fit the channel does not match the reference
WORSE_BY = 0.02  # a fit that lowers the similarity by more is refused
COVERAGE_WARN = 0.95  # share of the reference region inside the channel's field of view
MAX_POINTS = 20_000  # region points used for the displacement and coverage figures


@dataclass
class ReferenceRegion:
    """The reference channel prepared once per case: its coarse image, the metric mask and
    the points (patient RAS mm) of the region every channel's fit is judged on."""

    name: str
    region: str  # what the region is, in words ("brain", "foreground")
    image: sitk.Image  # the reference channel block-averaged to LEVEL_MM (LPS)
    mask: sitk.Image  # the region on ``image``, grown by GROW_MM (uint8)
    points: np.ndarray  # [N, 3] RAS mm
    centre: np.ndarray  # RAS mm: the points' mean (the pivot of the rigid fit)


@dataclass
class ChannelFit:
    """The rigid fit of one channel onto the reference, and what was done with it.

    ``matrix`` maps reference patient RAS mm to the channel's RAS mm (the fitted motion);
    ``applied`` is that matrix when the fit was applied, else the identity."""

    name: str
    reference: str
    matrix: np.ndarray
    aligned: bool
    status: str  # "co-registered", "aligned", "mismatch" or "failed"
    motion_mm_mean: float
    motion_mm_max: float
    rotation_deg: float
    shift_mm: float  # displacement of the region's centre
    coverage: float
    similarity_before: float
    similarity_after: float
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def applied(self) -> np.ndarray:
        return self.matrix if self.aligned else np.eye(4)

    def to_dict(self) -> dict:
        """The figures for a case's quality record (JSON: a figure a failed fit lacks is
        null; no timing, so outputs stay reproducible)."""
        return {
            "reference": self.reference,
            "status": self.status,
            "aligned": self.aligned,
            "coverage": _figure(self.coverage, 4),
            "motion_mm_mean": _figure(self.motion_mm_mean, 2),
            "motion_mm_max": _figure(self.motion_mm_max, 2),
            "rotation_deg": _figure(self.rotation_deg, 2),
            "shift_mm": _figure(self.shift_mm, 2),
            "similarity_before": _figure(self.similarity_before, 4),
            "similarity_after": _figure(self.similarity_after, 4),
            "reference_to_channel_ras": np.round(self.matrix, 5).tolist(),
        }


def _figure(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def reference_region(
    name: str,
    volume: Volume,
    region_on_grid: np.ndarray,
    grid_to_patient: np.ndarray,
    region: str,
) -> ReferenceRegion:
    """The reference channel ``volume`` prepared for fitting the others: ``region_on_grid``
    (bool, the model grid) is the region the model reads, ``grid_to_patient`` the grid's
    voxel -> patient RAS mm map of the reference's sample."""
    image = shrink(_to_sitk(np.asarray(volume.array, np.float32), volume.affine), LEVEL_MM)
    to_grid = np.linalg.inv(grid_to_patient) @ sitk_affine(image)
    size = tuple(int(s) for s in image.GetSize())  # i, j, k
    on_image = ndi.affine_transform(
        np.asarray(region_on_grid, np.float32), to_grid[:3, :3], to_grid[:3, 3],
        output_shape=size, order=1, cval=0.0,
    ) >= 0.5  # fmt: skip
    if on_image.sum() < 50:  # the region lies (almost) outside the reference: its foreground
        array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
        on_image = array > np.percentile(array, 50.0)
    grown = ndi.binary_dilation(on_image, iterations=max(1, round(GROW_MM / LEVEL_MM)))
    mask = sitk.GetImageFromArray(np.ascontiguousarray(grown.transpose(2, 1, 0), np.uint8))
    mask.CopyInformation(image)
    ijk = np.argwhere(np.asarray(region_on_grid, bool)).astype(np.float64)
    if len(ijk) == 0:
        ijk = np.argwhere(on_image).astype(np.float64)
        to_patient = sitk_affine(image)
    else:
        to_patient = np.asarray(grid_to_patient, np.float64)
    step = max(1, int(math.ceil(len(ijk) / MAX_POINTS)))
    points = ijk[::step] @ to_patient[:3, :3].T + to_patient[:3, 3]
    return ReferenceRegion(name, region, image, mask, points, points.mean(axis=0))


def fit_channel(reference: ReferenceRegion, volume: Volume, name: str) -> ChannelFit:
    """Fit ``volume`` (channel ``name``) rigidly onto the reference, judge the fit, and say in
    one-line warnings what was done (see the module's docstring for the rules)."""
    start = time.perf_counter()
    moving = shrink(_to_sitk(np.asarray(volume.array, np.float32), volume.affine), LEVEL_MM)
    fixed = reference.image
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in (_F[:3, :3] @ reference.centre)])
    before = _similarity(fixed, moving, reference.mask, sitk.Euler3DTransform(transform))
    values = sitk.GetArrayViewFromImage(moving)
    if not float(values.max()) > float(values.min()):
        return _failed(reference, volume, name, before, "the image has no contrast", start)
    try:
        method = _method(reference.mask, ITERATIONS, SAMPLING)
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
    except RuntimeError as exc:  # e.g. no sample of the region inside the channel's image
        return _failed(reference, volume, name, before, _reason(exc), start)
    matrix = _matrix_ras(transform)
    after = _similarity(fixed, moving, reference.mask, transform)
    pts = reference.points
    moved = pts @ matrix[:3, :3].T + matrix[:3, 3]
    motion = np.linalg.norm(moved - pts, axis=1)
    mean_mm, max_mm = float(motion.mean()), float(motion.max())
    rotation = math.degrees(math.acos(float(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1))))
    shift = float(
        np.linalg.norm(matrix[:3, :3] @ reference.centre + matrix[:3, 3] - reference.centre)
    )
    ref, warnings = reference.name, []
    check = "check that both series are of the same patient and session"
    if max_mm > IMPLAUSIBLE_MM:
        status = "mismatch"
        warnings.append(
            f"channel {name} does not match {ref} (a rigid fit would move it {max_mm:.0f} mm): "
            f"{check}"
        )
    elif after < SIMILARITY_MIN:
        status = "mismatch"
        warnings.append(
            f"channel {name} does not match {ref} (similarity {after:.2f} after a rigid fit, "
            f"expected >= {SIMILARITY_MIN}): {check}"
        )
    elif max_mm > APPLY_MM and after < before - WORSE_BY:
        status = "mismatch"
        warnings.append(
            f"channel {name} does not match {ref} (a rigid fit of {max_mm:.1f} mm lowers the "
            f"similarity from {before:.2f} to {after:.2f}): {check}"
        )
    elif max_mm > APPLY_MM:
        status = "aligned"
        warnings.append(
            f"channel {name} moved {max_mm:.1f} mm against {ref} between series: "
            "aligned before fusing"
        )
    else:
        status = "co-registered"
    aligned = status == "aligned"
    coverage = _coverage(reference.points, matrix if aligned else np.eye(4), volume)
    if coverage < COVERAGE_WARN:
        warnings.append(
            f"channel {name} covers only {coverage:.0%} of the {reference.region} in {ref}"
        )
    return ChannelFit(
        name, ref, matrix, aligned, status, mean_mm, max_mm, rotation, shift, coverage,
        before, after, time.perf_counter() - start, warnings,
    )  # fmt: skip


def _failed(
    reference: ReferenceRegion,
    volume: Volume,
    name: str,
    before: float,
    reason: str,
    start: float,
) -> ChannelFit:
    coverage = _coverage(reference.points, np.eye(4), volume)
    warnings = [
        f"channel {name} could not be registered onto {reference.name} ({reason}): fused as "
        "recorded; check that both series are of the same patient and session"
    ]
    if coverage < COVERAGE_WARN:
        warnings.append(
            f"channel {name} covers only {coverage:.0%} of the {reference.region} in "
            f"{reference.name}"
        )
    nan = float("nan")
    return ChannelFit(
        name, reference.name, np.eye(4), False, "failed", nan, nan, nan, nan, coverage,
        before, nan, time.perf_counter() - start, warnings,
    )  # fmt: skip


def _reason(exc: RuntimeError) -> str:
    """ITK's message in a few words (its own text names classes and addresses)."""
    text = " ".join(str(exc).split())
    if "overlap" in text or "outside" in text:
        return "the two images do not overlap"
    text = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", text)
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 100 else sentence[:97] + "..."


def _coverage(points: np.ndarray, motion: np.ndarray, volume: Volume) -> float:
    """Share of ``points`` (reference RAS mm) inside ``volume``'s field of view under ``motion``."""
    to_voxel = np.linalg.inv(np.asarray(volume.affine, np.float64)) @ motion
    ijk = points @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(volume.shape) - 0.5), axis=1)
    return float(inside.mean()) if len(inside) else 0.0


def _similarity(
    fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform
) -> float:
    """Mutual information over the smaller entropy of the two images inside ``mask``, with
    ``moving`` through ``transform``; 0 when nothing of it lies inside the mask."""
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float("nan"))
    b = sitk.GetArrayViewFromImage(resampled)
    inside = sitk.GetArrayViewFromImage(mask).astype(bool) & np.isfinite(b)
    if inside.sum() < 50:
        return 0.0
    x = sitk.GetArrayViewFromImage(fixed)[inside].astype(np.float64)
    y = np.asarray(b[inside], np.float64)
    x = np.clip(x, *np.percentile(x, [0.5, 99.5]))
    y = np.clip(y, *np.percentile(y, [0.5, 99.5]))
    joint, _, _ = np.histogram2d(x, y, HISTOGRAM_BINS)
    p = joint / joint.sum()
    hx, hy, hxy = _entropy(p.sum(axis=1)), _entropy(p.sum(axis=0)), _entropy(p.ravel())
    smaller = min(hx, hy)
    return float((hx + hy - hxy) / smaller) if smaller > 1e-9 else 0.0


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
