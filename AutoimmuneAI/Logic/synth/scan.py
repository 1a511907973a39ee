"""A case as a hospital scanner would store it: whole head, head pose, acquisition, scanner scale.

``render_scan`` renders the subject of ``render.render_case`` inside the head of ``head.py``,
turned by a random head pose (pitch, roll, yaw) and shifted in a fixed scanner field of view
that also holds the top of the neck, on one of the configured acquisitions (3D at 1 mm, 2D
axial with thick slices whose slice profile is integrated over sub-slices, 3D at 2 mm), with a
strong bias field, a scanner scale and an offset. The lesion labels and the true brain mask
are carried through the same mapping, and the true template -> image pose is returned, so
tests and benchmarks can measure brain extraction and registration against the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy
from .config import SynthConfig
from .head import load_head
from .latent import CaseLatent
from .render import (
    OutputGrid,
    _acquire,
    _head_source,
    _label_codes,
    _sample,
    _subject,
    _template_points,
    rotation,
)


@dataclass
class Scan:
    """One rendered scan: image (int16), lesion labels and brain truth (uint8) on ``grid``."""

    image: np.ndarray
    lesions: np.ndarray
    brain: np.ndarray
    grid: OutputGrid
    acquisition: str
    pose: np.ndarray  # 4x4 template (MNI RAS mm) -> image RAS mm, rigid + size
    angles_deg: tuple[float, float, float]  # pitch, roll, yaw of the head
    # the template point (MNI mm) that each lesion voxel shows, in ``np.argwhere(lesions)``
    # order: ``pose`` and the smooth deformation, which ``pose`` leaves out, both inverted
    lesion_template_mm: np.ndarray | None = None


def head_pose(pitch: float, roll: float, yaw: float) -> np.ndarray:
    """Rotation of the head: pitch about R-L, roll about A-P, yaw about S-I (degrees)."""
    return rotation([0, 0, 1], yaw) @ rotation([0, 1, 0], roll) @ rotation([1, 0, 0], pitch)


def scanner_grid(spacing: np.ndarray, fov_mm: np.ndarray, fov_centre: np.ndarray) -> OutputGrid:
    """An axial, axis-aligned RAS grid of ``spacing`` covering ``fov_mm`` around ``fov_centre``."""
    spacing = np.asarray(spacing, float)
    ni, nj, nk = (int(math.ceil(f / s)) for f, s in zip(fov_mm, spacing))
    shape = (ni, nj, nk)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(fov_centre, float) - spacing * (np.asarray(shape) - 1) / 2.0
    return OutputGrid(shape=shape, affine=affine)


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def render_scan(latent: CaseLatent, anat: Anatomy, cfg: SynthConfig) -> Scan:
    """Render ``latent`` as a whole-head clinical scan (see the module docstring)."""
    sc = cfg.scan
    rng = np.random.default_rng(latent.image_seed)
    subject = _subject(latent, anat, cfg, rng)
    # Draws of the scan itself, after those that shape the anatomy (the same brain and lesions
    # as the brain-only image of the same case).
    pitch = float(rng.uniform(-1, 1) * sc["pitch_deg"])
    roll = float(rng.uniform(-1, 1) * sc["roll_deg"])
    yaw = float(rng.uniform(-1, 1) * sc["yaw_deg"])
    shift = rng.uniform(-1, 1, size=3) * np.asarray(sc["shift_mm"], float)
    acquisition = _choose(rng, sc["acquisitions"])
    scale = subject.scale * math.exp(rng.uniform(*np.log(sc["scanner_scale"])))
    offset = float(rng.uniform(*sc["offset_frac"])) * scale * subject.c_wm
    thickness = float(rng.uniform(*sc["slice_mm"]))
    inplane = float(rng.uniform(*sc["inplane_mm"]))

    pose3 = head_pose(pitch, roll, yaw) @ subject.pose
    head = load_head(anat.resolution)
    fov = np.asarray(sc["fov_mm"], float)
    centre = np.asarray(sc["fov_centre"], float)
    sources = (_head_source(subject, head), _label_codes(subject, head))
    kwargs = dict(pose=pose3, shift=shift, bias_gain=float(sc["bias"]), head=head, sources=sources)
    if acquisition == "2d_axial":
        grid = scanner_grid(np.array([inplane, inplane, thickness]), fov, centre)
        n_sub = int(sc["slice_samples"])
        total = np.zeros(grid.shape, np.float32)
        lesions = brain = None
        for m in range(n_sub):  # box slice profile, integrated at n_sub points
            dz = thickness * ((m + 0.5) / n_sub - 0.5)
            affine = grid.affine.copy()
            affine[2, 3] += dz
            middle = m == n_sub // 2  # the truth of the slice's centre
            img, les, br = _sample(
                subject, anat, OutputGrid(grid.shape, affine), cfg, truth=middle, **kwargs
            )
            total += img
            if middle:
                lesions, brain = les, br
        signal = total / n_sub
    else:
        spacing = 1.0 if acquisition == "3d_1mm" else 2.0
        grid = scanner_grid(np.full(3, spacing), fov, centre)
        signal, lesions, brain = _sample(subject, anat, grid, cfg, **kwargs)
    image = _acquire(signal, subject, rng, scale, offset)
    c = anat.center_mm()
    pose = np.eye(4)
    pose[:3, :3] = subject.size * pose3
    pose[:3, 3] = c + shift - subject.size * pose3 @ c
    assert lesions is not None and brain is not None
    ijk = np.argwhere(lesions > 0)
    world = np.c_[ijk, np.ones(len(ijk))] @ grid.affine.T
    lesion_template = _template_points(subject, anat, cfg, world[:, :3], pose3, shift)
    return Scan(
        image=image,
        lesions=lesions,
        brain=brain,
        grid=grid,
        acquisition=acquisition,
        pose=pose,
        angles_deg=(pitch, roll, yaw),
        lesion_template_mm=lesion_template,
    )
