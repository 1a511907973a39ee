"""The head around the template brain: CSF, skull with marrow, scalp fat, skin, eyes and neck.

nilearn's MNI152 template is skull-stripped, so the tissues outside the brain are modelled
here in template space, on the anatomy grid padded to hold a whole head and the top of the
neck: layers by distance from the brain mask (subarachnoid CSF, inner table, marrow, outer
table, scalp fat, skin), two orbits with dark vitreous in bright orbital fat, a face block and
a neck cylinder of muscle wrapped in fat around a dark vertebral column. FLAIR-like values
are relative to white matter (= 1). Hospital FLAIR shows all of this around the brain; the
brain extraction of ``preprocess`` must remove it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .anatomy import load_anatomy

# Padding of the anatomy grid (mm) below / above the brain's box along R, A, S.
_PAD_LO_MM = (30.0, 30.0, 80.0)
_PAD_HI_MM = (30.0, 40.0, 26.0)

# Layers by distance outside the brain mask (upper edge in mm, FLAIR value relative to WM).
LAYERS: tuple[tuple[str, float, float], ...] = (
    ("csf", 2.0, 0.10),
    ("inner_table", 3.5, 0.04),
    ("marrow", 6.5, 0.85),
    ("outer_table", 8.0, 0.04),
    ("scalp_fat", 13.0, 1.65),
    ("skin", 14.5, 0.75),
)


@dataclass
class Head:
    """Template-space tissues outside the brain on the padded anatomy grid."""

    affine: np.ndarray  # voxel -> MNI mm of the padded grid
    pad: np.ndarray  # voxel offset of the anatomy grid inside the padded grid
    image: np.ndarray  # float32 FLAIR-like value of non-brain tissue (0 inside the brain)
    fat: np.ndarray  # float32 share of fat (scanner-dependent brightness), 0..1
    near: np.ndarray  # uint8: the head grown by 6 mm (voxels outside it are air)
    brain: np.ndarray  # bool brain mask on the padded grid (ground truth for extraction)


def _smooth_union(*parts: np.ndarray) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = np.maximum(out, p)
    return out


@functools.lru_cache(maxsize=2)
def load_head(resolution: int = 2) -> Head:
    """The head model at the anatomy's ``resolution`` (cached)."""
    anat = load_anatomy(resolution)
    vox = float(resolution)
    lo = np.ceil(np.asarray(_PAD_LO_MM) / vox).astype(int)
    hi = np.ceil(np.asarray(_PAD_HI_MM) / vox).astype(int)
    shape = tuple(int(n + a + b) for n, a, b in zip(anat.shape, lo, hi))
    brain = np.zeros(shape, bool)
    brain[tuple(slice(a, a + n) for a, n in zip(lo, anat.shape))] = anat.brain
    affine = anat.affine.copy()
    affine[:3, 3] = anat.affine[:3, 3] - anat.affine[:3, :3] @ lo
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    x, y, z = (world[a].reshape(shape) for a in range(3))
    dist = ndi.distance_transform_edt(~brain, sampling=(vox,) * 3).astype(np.float32)

    # Skull and scalp follow the brain above the skull base; below it they end.
    image = np.zeros(shape, np.float32)
    fat = np.zeros(shape, np.float32)
    inner = 0.0
    cranium = z > -60.0
    for name, outer, value in LAYERS:
        layer = (dist > inner) & (dist <= outer) & cranium
        image[layer] = value
        if name in ("scalp_fat", "marrow"):
            fat[layer] = 1.0 if name == "scalp_fat" else 0.5
        inner = outer
    # Face: an ellipsoid of muscle and fat in front of and below the frontal lobes.
    face = (((x / 62.0) ** 2 + ((y - 48.0) / 42.0) ** 2 + ((z + 40.0) / 38.0) ** 2) <= 1.0) & (
        dist > 3.5
    )
    image[face & (image == 0)] = 0.8
    # Neck: an elliptic cylinder under the skull base, muscle inside a fat ring.
    r_neck = np.sqrt((x / 56.0) ** 2 + ((y + 18.0) / 52.0) ** 2)
    neck = (r_neck <= 1.0) & (z < -30.0) & (dist > 2.0)
    image[neck & (image == 0)] = 0.7
    ring = neck & (r_neck > 0.86)
    image[ring] = 1.6
    fat[ring] = 1.0
    column = (np.sqrt(x**2 + (y + 34.0) ** 2) <= 11.0) & (z < -55.0)
    image[column & neck] = 0.05
    # Orbits: dark vitreous in a sphere, bright fat around it.
    for side in (-1.0, 1.0):
        r = np.sqrt((x - side * 32.0) ** 2 + (y - 56.0) ** 2 + (z + 34.0) ** 2)
        orbit_fat = (r <= 17.0) & (dist > 2.0)
        image[orbit_fat] = 1.5
        fat[orbit_fat] = 1.0
        image[(r <= 11.5) & (dist > 2.0)] = 0.08
        fat[(r <= 11.5) & (dist > 2.0)] = 0.0
    image[brain] = 0.0
    fat[brain] = 0.0
    # Soften the hard edges a little (partial volume of the template grid).
    image = ndi.gaussian_filter(image, 0.6, mode="constant").astype(np.float32)
    image[brain] = 0.0
    head = (image > 0.02) | brain
    head = ndi.binary_fill_holes(head)
    near = ndi.binary_dilation(head, iterations=max(1, int(round(6.0 / vox))))
    return Head(
        affine=affine,
        pad=lo.astype(np.float64),
        image=image,
        fat=fat.astype(np.float32),
        near=near.astype(np.uint8),
        brain=brain,
    )
