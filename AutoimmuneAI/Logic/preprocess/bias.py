"""Bias-field correction: N4 (SimpleITK) fitted on a shrunk copy of the image.

The field is smooth, so fitting it on voxels of about 12 mm costs a fraction of a full-size
fit and loses nothing the model grid (2.5-3.3 mm) could show. N4 refines its B-spline's
control-point lattice once per fitting level: with one level (4 control points per axis) it
removed only about a quarter of a generator-like quadratic field, with two about 85% (the
figures are in the CHANGELOG), so two is the default. The result is the log field on that
coarse grid; ``pipeline`` samples it where it samples the image and divides, so the
full-resolution image is never corrected voxel by voxel.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..data.imaging import _from_sitk
from .registration import shrink


def log_bias_field(
    image: sitk.Image, *, spacing_mm: float = 12.0, levels: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """N4's log bias field of ``image`` on a grid of about ``spacing_mm``: (array [i, j, k],
    RAS affine). The mask is the head (Otsu); outside it the field is extrapolated by N4's
    B-spline."""
    small = shrink(image, spacing_mm)
    small = sitk.Cast(small, sitk.sitkFloat32) + 1.0  # N4 needs positive values
    mask = sitk.OtsuThreshold(small, 0, 1, 200)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([20] * int(levels))
    n4.SetNumberOfHistogramBins(64)
    n4.SetConvergenceThreshold(1e-4)
    n4.Execute(small, mask)
    return _from_sitk(n4.GetLogBiasFieldAsImage(small))


def field_on_grid(
    field: tuple[np.ndarray, np.ndarray], grid_to_patient: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """The multiplicative bias field (float32) at the voxels of a grid whose voxel -> patient
    RAS mm map is ``grid_to_patient``: divide the image sampled there by it."""
    log_field, field_affine = field
    to_field = np.linalg.inv(field_affine) @ grid_to_patient
    log_b = ndi.affine_transform(
        log_field, to_field[:3, :3], to_field[:3, 3], output_shape=shape, order=1, mode="nearest"
    )
    return np.exp(log_b).astype(np.float32)
