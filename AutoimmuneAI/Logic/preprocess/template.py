"""The MNI152 template that patient images are registered to, as SimpleITK images (cached).

nilearn ships the ICBM 2009a symmetric template (``mni_icbm152_*_tal_nlin_sym_09a``) with its
grey- and white-matter probability maps and brain mask: skull-stripped, so registration
compares the brain only (the metric is sampled inside the template's brain mask grown by a
few mm, and the patient's skull and neck fall outside it). The reference image is FLAIR-like
(white matter 1, grey matter 1.25, CSF 0.12), built from the tissue maps: mutual information
does not need the contrasts to match, but a reference with the contrast of the scans makes
the metric smoother. The template space is the model grid's space (MNI RAS mm).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..data.imaging import _to_sitk

# FLAIR-like contrast of the reference (relative to white matter).
_WM, _GM, _CSF = 1.0, 1.25, 0.12
CENTRE_MM = (0.0, -18.0, 8.0)  # MNI RAS centre of the brain's bounding box (the model grid's)


@dataclass(frozen=True)
class Template:
    """Reference image, brain mask and a metric mask (brain grown), LPS SimpleITK images."""

    image: sitk.Image  # float32 FLAIR-like
    brain: sitk.Image  # uint8 brain mask
    metric_mask: sitk.Image  # uint8 brain mask grown by ``grow_mm``
    affine: np.ndarray  # voxel -> RAS of the arrays below
    brain_array: np.ndarray  # bool [i, j, k]
    image_array: np.ndarray  # float32 [i, j, k]


@functools.lru_cache(maxsize=4)
def load_template(spacing_mm: float = 2.0, grow_mm: float = 6.0) -> Template:
    """The template resampled to ``spacing_mm`` (block-averaged from the 2 mm maps)."""
    from nilearn import datasets  # heavy import, only when the template is first needed

    mask_img = datasets.load_mni152_brain_mask(resolution=2)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32)
    brain = np.asarray(mask_img.get_fdata(), np.float32) > 0.5
    affine = np.asarray(mask_img.affine, np.float64)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    image = np.where(brain, _WM * wm + _GM * gm + _CSF * csf, 0.0).astype(np.float32)
    factor = float(spacing_mm) / 2.0
    if factor > 1.0:  # coarser: smooth then sample every ``factor`` voxels
        image = ndi.gaussian_filter(image, (factor - 1.0) / 2.0 + 0.5, mode="constant")
        keep = ndi.gaussian_filter(brain.astype(np.float32), (factor - 1.0) / 2.0 + 0.5) >= 0.5
        step = np.arange(0, brain.shape[0], factor)
        coords = np.stack(
            np.meshgrid(*[np.arange(0, n - 0.5, factor) for n in brain.shape], indexing="ij")
        )
        image = ndi.map_coordinates(image, coords, order=1).astype(np.float32)
        brain = ndi.map_coordinates(keep.astype(np.uint8), coords, order=0).astype(bool)
        del step
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] * factor
    grown = ndi.distance_transform_edt(~brain, sampling=np.linalg.norm(affine[:3, :3], axis=0))
    metric = grown <= grow_mm
    return Template(
        image=_to_sitk(image, affine),
        brain=_to_sitk(brain.astype(np.uint8), affine),
        metric_mask=_to_sitk(metric.astype(np.uint8), affine),
        affine=affine,
        brain_array=brain,
        image_array=image,
    )
