"""The co-registration check of a multi-contrast case's channels, on the generator's images.

A case of the MS course generator is rendered (its contrasts share the patient's space, as in
one scanner session); one extra channel is then "moved": its header gets a known rigid motion
while its voxels stay, as when the patient moves between two series. The check must recover
that motion, align the channel before fusing (the aligned plane matches the unmoved one), leave
a co-registered channel as it is without a warning, and refuse a channel that no rigid motion
fits (a flipped series) with a warning that names it. Both preprocessings: the plain grid
(skull-stripped images, foreground) and the clinical-scan stage (whole head, brain mask).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from autoimmuneai.data.imaging import Volume, foreground_threshold
from autoimmuneai.preprocess.channels import (
    channels_to_model,
    follow_reference,
    grid_to_patient,
    reference_of,
)
from autoimmuneai.preprocess.coregistration import APPLY_MM, fit_channel
from autoimmuneai.preprocess.model_grid import ModelGrid

NAMES = ["flair", "t1", "t1gd"]


def _render(head: bool) -> dict[str, Volume]:
    """One MS course case at 3 mm: skull-stripped on the generator's grid, or a whole-head
    scan (3 mm slices, one sample per slice: the cheapest clinical scan)."""
    from autoimmuneai.synth.anatomy import load_anatomy
    from autoimmuneai.synth.ms_course import (
        MSCourseConfig,
        plan,
        render_course_case,
        sample_course_case,
    )
    from autoimmuneai.synth.render import output_grid

    cfg = MSCourseConfig()
    cfg.missing.update(t1=0.0, t1gd=1.0 if head else 0.0)
    base = cfg.base_config()
    base.scan.update(
        acquisitions={"2d_axial": 1.0}, slice_mm=[3.0, 3.0], inplane_mm=[3.0, 3.0], slice_samples=1
    )
    anat = load_anatomy(2)
    case_id, course, split, seed = plan(2, 0, cfg)[0]
    case = sample_course_case(seed, case_id, course, split, anat, cfg, base)
    grid = None if head else output_grid(anat, 3.0, 0.0, False, base)
    rendered = render_course_case(case, anat, grid, cfg, base)
    out = {}
    for name, result in rendered.items():
        if head:
            out[name] = Volume(result.image.astype(np.float32), result.grid.affine)
        else:
            out[name] = Volume(result[0].astype(np.float32), grid.affine)
    return out


def _moved(volume: Volume, centre: np.ndarray) -> tuple[Volume, np.ndarray]:
    """``volume`` with its header moved by 5 degrees (about an oblique axis through
    ``centre``) and 4 mm; voxels unchanged. Returns it and the motion (reference RAS ->
    moved channel RAS)."""
    axis = np.array([1.0, 0.4, 0.3]) / np.linalg.norm([1.0, 0.4, 0.3])
    rotation = Rotation.from_rotvec(np.radians(5.0) * axis).as_matrix()
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre - rotation @ centre + np.array([2.4, -2.4, 2.0])  # 4.0 mm
    return Volume(volume.array, motion @ volume.affine), motion


def _points(volume: Volume) -> np.ndarray:
    ijk = np.argwhere(volume.array > foreground_threshold(volume.array))[::20]
    return ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _error_mm(fitted: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    a = points @ fitted[:3, :3].T + fitted[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).mean())


def _displacement(motion: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points @ motion[:3, :3].T + motion[:3, 3] - points, axis=1)


def _corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


@pytest.fixture(scope="module")
def brain_case() -> dict[str, Volume]:
    return _render(head=False)


def test_a_moved_channel_is_found_aligned_and_named_on_the_plain_grid(brain_case):
    flair, t1, t1gd = (brain_case[n] for n in NAMES)
    points = _points(flair)
    moved, motion = _moved(t1, points.mean(axis=0))
    grid = ModelGrid((48, 56, 48), 3.0)
    as_recorded = channels_to_model(grid, [flair, t1, t1gd], NAMES, coregister=False)
    out = channels_to_model(grid, [flair, moved, t1gd], NAMES)

    fit, other = out.fits["t1"], out.fits["t1gd"]
    assert fit.status == "aligned" and fit.aligned
    assert _error_mm(fit.matrix, motion, points) < 1.0
    truth = _displacement(motion, points)
    assert abs(fit.motion_mm_mean - truth.mean()) < 1.0, (fit.motion_mm_mean, truth.mean())
    assert abs(fit.motion_mm_max - truth.max()) < 1.5, (fit.motion_mm_max, truth.max())
    assert fit.similarity_after > fit.similarity_before + 0.1
    assert fit.coverage > 0.99
    # the unmoved channel of the same call: left as recorded, no warning
    assert other.status == "co-registered" and not other.aligned
    assert other.motion_mm_max < APPLY_MM
    assert out.warnings == [
        f"channel t1 moved {fit.motion_mm_max:.1f} mm against flair between series: "
        "aligned before fusing"
    ]
    # the figures reach the case's quality record (prediction.json) and its warnings
    quality = out.reference.quality["channels"]  # type: ignore[attr-defined]
    assert set(quality) == {"t1", "t1gd"}
    assert quality["t1"]["aligned"] is True and quality["t1gd"]["aligned"] is False
    for key in ("coverage", "motion_mm_mean", "motion_mm_max", "similarity_after"):
        assert isinstance(quality["t1"][key], float)
    assert out.reference.warnings == out.warnings  # type: ignore[attr-defined]

    # on the model grid the aligned channel is the channel as if the patient had not moved
    head = as_recorded.array[0] > np.percentile(as_recorded.array[0], 60)
    aligned = _corr(out.array[1], as_recorded.array[1], head)
    blind = _corr(follow_reference(grid, out.reference, moved), as_recorded.array[1], head)
    assert aligned > 0.98 and blind < aligned - 0.1, (aligned, blind)
    np.testing.assert_array_equal(out.array[2], as_recorded.array[2])
    assert as_recorded.fits == {} and as_recorded.warnings == []  # coregister=False: no check


def test_a_flipped_or_cut_channel_is_refused_or_flagged_in_one_line(brain_case):
    flair, t1 = brain_case["flair"], brain_case["t1"]
    grid = ModelGrid((48, 56, 48), 3.0)
    flipped = Volume(t1.array[:, :, ::-1].copy(), t1.affine)  # a series stored upside down
    cut_k = t1.shape[2] // 2  # the lower half of the brain outside the field of view
    cut_affine = t1.affine.copy()
    cut_affine[:3, 3] += cut_affine[:3, 2] * cut_k
    cut = Volume(t1.array[:, :, cut_k:].copy(), cut_affine)
    out = channels_to_model(grid, [flair, flipped, cut], NAMES)
    wrong, partial = out.fits["t1"], out.fits["t1gd"]
    assert wrong.status == "mismatch" and not wrong.aligned
    (mismatch,) = [w for w in out.warnings if "channel t1 " in w]
    assert mismatch.startswith("channel t1 does not match flair (")
    assert mismatch.endswith("check that both series are of the same patient and session")
    # not applied: the flipped series is fused as recorded
    np.testing.assert_array_equal(out.array[1], follow_reference(grid, out.reference, flipped))
    # a channel that covers part of the brain: the same patient, its coverage flagged
    assert partial.status == "co-registered" and partial.motion_mm_max < APPLY_MM
    assert 0.3 < partial.coverage < 0.8, partial.coverage
    assert [w for w in out.warnings if "t1gd" in w] == [
        f"channel t1gd covers only {partial.coverage:.0%} of the foreground in flair"
    ]
    assert all("\n" not in w for w in out.warnings)


def test_a_channel_that_cannot_be_registered_is_fused_as_recorded_and_named(brain_case):
    import json

    flair, t1 = brain_case["flair"], brain_case["t1"]
    elsewhere = t1.affine.copy()
    elsewhere[:3, 3] += 400.0  # a header that puts the series far from the reference
    grid = ModelGrid((24, 28, 24), 6.0)
    out = channels_to_model(grid, [flair, Volume(t1.array, elsewhere)], NAMES[:2])
    fit = out.fits["t1"]
    assert fit.status == "failed" and not fit.aligned and fit.coverage == 0.0
    assert out.warnings == [
        "channel t1 could not be registered onto flair (the two images do not overlap): fused "
        "as recorded; check that both series are of the same patient and session",
        "channel t1 covers only 0% of the foreground in flair",
    ]
    record = json.loads(json.dumps(out.reference.quality, allow_nan=False))  # type: ignore[attr-defined]
    assert record["channels"]["t1"]["motion_mm_max"] is None


def test_the_clinical_scan_stage_aligns_a_moved_channel_inside_the_brain_mask():
    from autoimmuneai.preprocess.pipeline import Preprocessor

    case = _render(head=True)
    flair, t1 = case["flair"], case["t1"]
    pre = Preprocessor(shape=(40, 48, 40), spacing=4.0, bias=False)
    moved, motion = _moved(t1, _points(flair).mean(axis=0))
    out = channels_to_model(pre, [flair, moved, None], NAMES)
    sample = out.reference
    brain = sample.brain  # type: ignore[attr-defined]
    ijk = np.argwhere(brain)
    to_patient = grid_to_patient(sample)
    points = ijk @ to_patient[:3, :3].T + to_patient[:3, 3]
    fit = out.fits["t1"]
    assert fit.status == "aligned" and set(out.fits) == {"t1"}  # the absent channel: no fit
    assert _error_mm(fit.matrix, motion, points) < 1.0
    assert abs(fit.motion_mm_max - _displacement(motion, points).max()) < 1.0
    assert out.present == (True, True, False)
    quality = sample.quality  # type: ignore[attr-defined]
    assert quality["channels"]["t1"]["aligned"] is True and "registration_ncc" in quality
    assert [w for w in sample.warnings if w.startswith("channel t1 moved")]  # type: ignore[attr-defined]
    # the same channel unmoved: a motion below the threshold, no warning; and on the grid
    # the aligned moved channel matches it inside the brain
    region = reference_of(sample, out.array[0], flair, "flair")
    still = fit_channel(region, t1, "t1")
    assert still.status == "co-registered" and still.motion_mm_max < APPLY_MM
    assert still.warnings == []
    recorded = follow_reference(pre, sample, t1)
    blind = follow_reference(pre, sample, moved)
    aligned = _corr(out.array[1], recorded, brain)
    assert aligned > 0.97 and _corr(blind, recorded, brain) < aligned - 0.1
