"""Brain extraction: the template's brain mask carried to the patient by the registration.

Chosen by measurement on the generator's whole-head scans, where the true brain is known (the
Dice figure is in the README): after the similarity/affine registration the MNI152 brain
mask already fits the brain within the registration error, and it needs no weights, no
training and no downloads, so a bundle gets it for free. On the model grid (template space)
the mask is the template's own; ``native_mask`` maps it to the patient's voxels for the
optional mask output.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .template import load_template


def template_mask_on(grid_affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean template brain mask on a grid (voxel -> MNI RAS ``grid_affine``, ``shape``)."""
    t = load_template(2.0)
    m = np.linalg.inv(t.affine) @ grid_affine
    soft = ndi.affine_transform(
        t.brain_array.astype(np.float32), m[:3, :3], m[:3, 3], output_shape=shape, order=1
    )
    return soft >= 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
