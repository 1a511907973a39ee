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
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..data.imaging import _to_sitk

# FLAIR-like contrast of the reference (relative to white matter).
_WM, _GM, _CSF = 1.0, 1.25, 0.12


@dataclass(frozen=True)
class Template:
    """Reference image, brain mask and a metric mask (brain grown), LPS SimpleITK images."""

    image: sitk.Image  # float32 FLAIR-like
    brain: sitk.Image  # uint8 brain mask
    metric_mask: sitk.Image  # uint8 brain mask grown by ``grow_mm``
    affine: np.ndarray  # voxel -> RAS of the arrays below
    brain_array: np.ndarray  # bool [i, j, k]
    image_array: np.ndarray  # float32 [i, j, k]


def _data_file(name: str) -> Path:
    import nilearn  # the package only, not nilearn.datasets (a slow import)

    return Path(nilearn.__file__).parent / "datasets" / "data" / name


@functools.lru_cache(maxsize=1)
def _maps_2mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, grey- and white-matter maps at 2 mm (2x2x2 block means of the 1 mm files)
    and their affine. The mask is nilearn's (template above 0.2)."""
    arrays = []
    affine = None
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(_data_file(f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")))
        if not isinstance(img, nib.spatialimages.SpatialImage):  # nilearn ships NIfTI files
            raise TypeError(f"MNI152 {name} map is not a volume image")
        data = np.asarray(img.dataobj, dtype=np.float32)
        if name == "t1":
            data = (data > 0.2).astype(np.float32)
            affine = np.asarray(img.affine, np.float64)
        n = [d // 2 * 2 for d in data.shape]
        data = data[: n[0], : n[1], : n[2]]
        arrays.append(data.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).mean(axis=(1, 3, 5)))
    assert affine is not None
    coarse = affine.copy()
    coarse[:3, :3] = affine[:3, :3] * 2.0
    coarse[:3, 3] = affine[:3, :3] @ np.full(3, 0.5) + affine[:3, 3]
    mask, gm, wm = arrays
    return mask >= 0.5, gm, wm, coarse


@functools.lru_cache(maxsize=4)
def load_template(spacing_mm: float = 2.0, grow_mm: float = 6.0) -> Template:
    """The template at ``spacing_mm`` (block means of the 2 mm maps for coarser grids)."""
    brain, gm, wm, affine = _maps_2mm()
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    image = np.where(brain, _WM * wm + _GM * gm + _CSF * csf, 0.0).astype(np.float32)
    factor = int(round(float(spacing_mm) / 2.0))
    if factor > 1:
        n = [d // factor * factor for d in brain.shape]
        shape = (n[0] // factor, factor, n[1] // factor, factor, n[2] // factor, factor)
        image = image[: n[0], : n[1], : n[2]].reshape(shape).mean(axis=(1, 3, 5))
        soft = brain[: n[0], : n[1], : n[2]].astype(np.float32).reshape(shape)
        brain = soft.mean(axis=(1, 3, 5)) >= 0.5
        coarse = affine.copy()
        coarse[:3, :3] = affine[:3, :3] * factor
        coarse[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
        affine = coarse
    grown = ndi.distance_transform_edt(~brain, sampling=np.linalg.norm(affine[:3, :3], axis=0))
    metric = grown <= grow_mm
    return Template(
        image=_to_sitk(image.astype(np.float32), affine),
        brain=_to_sitk(brain.astype(np.uint8), affine),
        metric_mask=_to_sitk(metric.astype(np.uint8), affine),
        affine=affine,
        brain_array=brain,
        image_array=image.astype(np.float32),
    )
