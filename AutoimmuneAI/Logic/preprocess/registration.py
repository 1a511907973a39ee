"""Rigid then affine registration of a patient image to the MNI152 template (SimpleITK).

The template is the fixed image and the patient image the moving one, so the result maps
template (= model grid) points to patient points: exactly what resampling the patient onto
the model grid needs, and its inverse maps results back. The metric is Mattes mutual
information sampled inside the template's brain grown by 2-4 mm, so the skull, scalp, eyes
and neck of the patient image weigh nothing unless the brain is misplaced onto them (a
wider ring, 6-12 mm, let the scale drift until the template brain filled the skull).

Initialisation, which decides whether a tilted head with a neck in the field of view lands
right: the brain's centre is guessed from the head's vertex (the top of the foreground, which
a neck does not move) and the centre of the upper head, at a few depths below the vertex, and
each guess is tried at several pitches (roll and yaw are left to the optimiser: +-10 degrees
lie inside its reach); the metric is evaluated at every start on 8 mm images, the best start
of each depth is optimised as rigid + isotropic scale (a similarity: heads differ in size, and
a rigid fit of a brain 10% larger than the template lands in a wrong minimum) at the smoothed
8 mm level only, and the best of those (by the 4 mm metric) alone at the 4 mm level, then
refined as an affine transform, kept only when the metric improves (template brain sampled at
4 mm: enough for the 2.5-3.3 mm model grid). The coarse-first order keeps one costly 4 mm
optimisation per case instead of one per start. No optimiser is written here: SimpleITK's
``ImageRegistrationMethod`` does the work.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .template import load_template

# RAS <-> LPS for 4x4 matrices (its own inverse).
_F = np.diag([-1.0, -1.0, 1.0, 1.0])
PITCHES_DEG = (-30.0, -15.0, 0.0, 15.0, 30.0)
ROLLS_DEG = (0.0,)
DEPTHS_MM = (70.0, 80.0, 90.0)  # template brain centre below the top of the head
N_REFINED = 3  # starts optimised at the coarse level


@dataclass(frozen=True)
class Effort:
    """Optimiser iterations of the coarse similarity, fine similarity and affine stages, and
    the share of the metric mask's voxels sampled per iteration."""

    coarse: int
    fine: int
    affine: int
    sampling: float


# The fast search: on the generator's heads as accurate as the thorough effort (the figures
# are in the CHANGELOG) at 0.65-0.8 of its CPU; the thorough search keeps the full effort.
FAST = Effort(coarse=40, fine=40, affine=40, sampling=0.25)
THOROUGH = Effort(coarse=50, fine=50, affine=60, sampling=0.5)
# ``thorough``: the search for a case the fast one got wrong (the pipeline asks for it when
# the result correlates poorly with the template): rolls too, twice the coarse starts, each
# from three initial sizes (a small head started at the template's size can grow the brain
# into the skull, scale 1.17 for a true 0.93), the best two at the fine level
THOROUGH_ROLLS_DEG = (-10.0, 0.0, 10.0)
THOROUGH_SCALES = (0.9, 1.0, 1.1)
THOROUGH_REFINED, THOROUGH_FINE = 6, 2
GROW_MM = (4.0, 2.0)  # metric mask: template brain grown by this much (mm) at 8 and 4 mm


@dataclass
class Registration:
    """Result of ``register``: template RAS mm -> patient RAS mm, and how it was found."""

    matrix: np.ndarray  # 4x4
    metric: float  # final Mattes MI at 4 mm (negative; lower is better)
    rigid_matrix: np.ndarray  # 4x4 after the rigid + isotropic scale stage
    start: dict = field(default_factory=dict)  # the chosen start (pitch, roll, depth)

    def to_dict(self) -> dict:
        return {
            "template_to_image_ras": np.round(self.matrix, 6).tolist(),
            "metric_mattes_mi": round(float(self.metric), 6),
            "start": self.start,
        }


def shrink(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Block-average ``image`` to voxels of about ``spacing_mm`` (never finer than it is)."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    if max(factors) == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)


def _foreground_points(image: sitk.Image) -> np.ndarray:
    """LPS mm of the voxels above the Otsu threshold of ``image``."""
    array = sitk.GetArrayViewFromImage(image)  # [k, j, i]
    values = array.ravel()
    high = np.percentile(values, 99.5)
    from skimage.filters import threshold_otsu

    threshold = threshold_otsu(np.clip(values, values.min(), high))
    kji = np.argwhere(array > threshold)
    if len(kji) == 0:
        kji = np.argwhere(array >= array.max())
    ijk = kji[:, ::-1].astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    return ijk @ (direction * spacing).T + np.asarray(image.GetOrigin())


def _centre_guesses(points: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Candidate LPS positions of the template brain centre: below the vertex at each depth,
    laterally at the centre of the upper head (the neck does not pull it)."""
    z = points[:, 2]
    vertex = float(np.percentile(z, 99.7))
    upper = points[z > vertex - 110.0]
    xy = np.median(upper[:, :2], axis=0)
    return [(d, np.array([xy[0], xy[1], vertex - d])) for d in DEPTHS_MM]


def _euler(centre_lps: np.ndarray, pitch: float, roll: float, target: np.ndarray):
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in centre_lps])
    t.SetRotation(math.radians(pitch), math.radians(roll), 0.0)
    t.SetTranslation([float(v) for v in np.asarray(target) - centre_lps])
    return t


def _method(
    fixed_mask: sitk.Image,
    iterations: int,
    sampling: float | None,
    seed: int = 1,
    learning_rate: float = 2.0,
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricFixedMask(fixed_mask)
    if sampling is None:
        reg.SetMetricSamplingStrategy(reg.NONE)
    else:
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=0.01,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    return reg


# The transforms registration produces and reads back (SimpleITK's base Transform has no
# matrix getters): the Euler starts, the similarity and the affine results.
_MatrixOffset = sitk.Euler3DTransform | sitk.Similarity3DTransform | sitk.AffineTransform


def _matrix_ras(transform: _MatrixOffset) -> np.ndarray:
    """4x4 RAS matrix of a SimpleITK matrix-offset transform (Euler / affine), LPS inside."""
    t = transform
    if isinstance(t, sitk.CompositeTransform):  # pragma: no cover - not produced here
        raise TypeError("composite transforms are flattened before this point")
    a = np.asarray(t.GetMatrix()).reshape(3, 3)
    c = np.asarray(t.GetCenter())
    tr = np.asarray(t.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + tr - a @ c
    return _F @ m @ _F


def _as_affine(transform: _MatrixOffset) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(transform.GetCenter())
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    return affine


def _similarity(transform: _MatrixOffset) -> sitk.Similarity3DTransform:
    sim = sitk.Similarity3DTransform()
    sim.SetCenter(transform.GetCenter())
    sim.SetMatrix(transform.GetMatrix())
    sim.SetTranslation(transform.GetTranslation())
    return sim


def _evaluate(template, moving: sitk.Image, transform: sitk.Transform) -> float:
    probe = _method(template.metric_mask, 1, 0.5)
    probe.SetInitialTransform(transform, inPlace=False)
    return float(probe.MetricEvaluate(template.image, moving))


def _scored_starts(
    t8, m8: sitk.Image, m4: sitk.Image, rolls: tuple[float, ...] = ROLLS_DEG
) -> list[tuple]:
    """Every start (pitch x roll x depth below the vertex), scored by the metric at 8 mm."""
    centre = template_centre_lps()
    probe = _method(t8.metric_mask, 1, None)
    scored = []
    guesses = _centre_guesses(_foreground_points(m4))
    for (depth, target), pitch, roll in itertools.product(guesses, PITCHES_DEG, rolls):
        transform = _euler(centre, pitch, roll, target)
        probe.SetInitialTransform(transform, inPlace=False)
        try:
            value = probe.MetricEvaluate(t8.image, m8)
        except RuntimeError:  # too few samples map inside the image
            continue
        scored.append((value, pitch, roll, depth, transform))
    if not scored:
        raise RuntimeError("no initial pose maps the template into the image")
    scored.sort(key=lambda s: s[0])
    # the best start of each depth first (the 8 mm metric often ranks one wrong depth's
    # starts above every start of the right one), then the rest in order
    firsts = [
        next(s for s in scored if s[3] == d) for d in DEPTHS_MM if any(t[3] == d for t in scored)
    ]
    return firsts + [s for s in scored if not any(s is f for f in firsts)]


def _refine_similarity(
    t4,
    m4: sitk.Image,
    scored: list[tuple],
    n_refined: int = N_REFINED,
    n_fine: int = 1,
    effort: Effort = FAST,
    scales: tuple[float, ...] = (1.0,),
) -> tuple:
    """The best starts as rigid + isotropic scale (heads differ in size by 10% and more):
    ``n_refined`` starts, each from every initial size in ``scales``, at the coarse, smoothed
    8 mm level (cheap), then only the best ``n_fine`` of those, by the 4 mm metric, at the
    4 mm level (the costly one)."""
    coarse = []
    for (_, pitch, roll, depth, transform), scale in itertools.product(scored[:n_refined], scales):
        try:
            sim = _coarse_similarity(t4, m4, transform, effort, scale)
            value = _evaluate(t4, m4, sim)
        except RuntimeError:
            continue
        start = {"pitch_deg": pitch, "roll_deg": roll, "depth_mm": depth, "path": "similarity"}
        if len(scales) > 1:
            start["initial_scale"] = scale
        coarse.append((value, sim, start))
    if not coarse:
        raise RuntimeError("registration failed from every start")
    coarse.sort(key=lambda c: c[0])
    best = None
    for _, sim, start in coarse:
        try:
            fine = _method(t4.metric_mask, effort.fine, effort.sampling)
            fine.SetInitialTransform(sim, inPlace=True)
            fine.Execute(t4.image, m4)
            value = _evaluate(t4, m4, sim)
        except RuntimeError:
            continue
        if best is None or value < best[0]:
            best = (value, sim, start)
        n_fine -= 1
        if n_fine <= 0:
            break
    if best is None:
        raise RuntimeError("registration failed from every start")
    return best


def _coarse_similarity(
    t4, m4: sitk.Image, start: _MatrixOffset, effort: Effort = FAST, scale: float = 1.0
) -> sitk.Similarity3DTransform:
    """Similarity from ``start`` (template size times ``scale``) at the smoothed 8 mm level
    of the 4 mm images."""
    sim = _similarity(start)
    sim.SetScale(float(scale))
    coarse = _method(t4.metric_mask, effort.coarse, effort.sampling)
    coarse.SetShrinkFactorsPerLevel([2])
    coarse.SetSmoothingSigmasPerLevel([4.0])
    coarse.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    coarse.SetInitialTransform(sim, inPlace=True)
    coarse.Execute(t4.image, m4)
    return sim


def _refine_affine(
    t4, m4: sitk.Image, sim: _MatrixOffset, value: float, effort: Effort = FAST
) -> tuple:
    """A full affine from the similarity result, kept only if the metric improves."""
    aff = _as_affine(sim)
    reg = _method(t4.metric_mask, effort.affine, effort.sampling, learning_rate=1.0)
    reg.SetInitialTransform(aff, inPlace=True)
    try:
        reg.Execute(t4.image, m4)
        value_aff = _evaluate(t4, m4, aff)
    except RuntimeError:
        return sim, value
    return (aff, value_aff) if value_aff <= value else (sim, value)


def register(
    moving: sitk.Image, *, affine: bool = True, threads: int | None = None, thorough: bool = False
) -> Registration:
    """Register ``moving`` (a float LPS SimpleITK image, any geometry) to the template;
    ``thorough`` searches more starts (see ``THOROUGH_*``) at several times the cost."""
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    t8, t4 = load_template(8.0, GROW_MM[0]), load_template(4.0, GROW_MM[1])
    m8, m4 = shrink(moving, 8.0), shrink(moving, 4.0)
    effort = THOROUGH if thorough else FAST
    if thorough:
        scored = _scored_starts(t8, m8, m4, THOROUGH_ROLLS_DEG)
        value, sim, start = _refine_similarity(
            t4, m4, scored, THOROUGH_REFINED, THOROUGH_FINE, effort, THOROUGH_SCALES
        )
    else:
        value, sim, start = _refine_similarity(t4, m4, _scored_starts(t8, m8, m4))
    start["thorough"] = thorough
    result: _MatrixOffset = sim
    if affine:
        result, value = _refine_affine(t4, m4, sim, value, effort)
    return Registration(
        matrix=_matrix_ras(result), metric=float(value), rigid_matrix=_matrix_ras(sim), start=start
    )


def template_centre_lps() -> np.ndarray:
    """LPS mm of the template brain's centre of mass (the pivot of every start)."""
    return np.array(_template_centre())


@functools.lru_cache(maxsize=1)
def _template_centre() -> tuple[float, float, float]:
    t4 = load_template(4.0, 6.0)
    ijk = np.argwhere(sitk.GetArrayViewFromImage(t4.brain))[:, ::-1].mean(axis=0)
    point = t4.brain.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return (float(point[0]), float(point[1]), float(point[2]))
