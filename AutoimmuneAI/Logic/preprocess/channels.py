"""Multi-contrast cases: the first channel is preprocessed, the others follow its transform.

A case of a multi-contrast panel (FLAIR, T1, T1-Gd) is one patient in one scanner session,
so its images share the patient's RAS space. Registering each contrast on its own would give
each a slightly different transform (and ``ModelGrid`` centres each volume on its own
foreground); the channels would then disagree voxel by voxel. Here only the panel's first
channel (the reference) goes through the preprocessing (``ModelGrid`` or ``Preprocessor``,
their public ``to_model``); every other channel is resampled onto the same model grid with
the transform that sample records (``affine``, and for the clinical-scan stage ``matrix``:
template -> patient RAS), then standardised on its own intensities: inside the reference's
brain mask for the clinical-scan stage, above its own foreground threshold on the plain grid.
With the clinical-scan stage's bias correction each channel gets its own N4 field (each
sequence has its own bias: the coil's sensitivity and the sequence's own inhomogeneity).
A missing optional channel is an all-zero plane and ``present`` says so (the model reads the
flag; see ``model.fusion.ImageEncoder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..data.imaging import Volume, _to_sitk, foreground_threshold
from .bias import field_on_grid, log_bias_field
from .intensity import standardise


@dataclass
class ChannelSample:
    """All channels of one case on the model grid, and the reference channel's sample."""

    array: np.ndarray  # float32 [C, *grid.shape]
    reference: object  # the first channel's GridSample / PreprocessedSample (maps results back)
    present: tuple[bool, ...]  # per channel: False = not acquired (an all-zero plane)


def grid_to_patient(sample: object) -> np.ndarray:
    """4x4 model-grid voxel -> patient RAS mm of a reference sample (either preprocessing)."""
    affine = np.asarray(sample.affine, dtype=np.float64)  # type: ignore[attr-defined]
    matrix = getattr(sample, "matrix", None)  # clinical-scan stage: template -> patient
    return affine if matrix is None else np.asarray(matrix, dtype=np.float64) @ affine


def follow_reference(preprocessing, reference: object, volume: Volume) -> np.ndarray:
    """``volume`` on the reference's model grid through the reference's transform, standardised.

    ``preprocessing`` is the ``ModelGrid`` or ``Preprocessor`` that made ``reference``.
    """
    shape = tuple(preprocessing.shape)
    to_voxel = np.linalg.inv(np.asarray(volume.affine, np.float64)) @ grid_to_patient(reference)
    source = np.asarray(volume.array, dtype=np.float32)
    factor = float(preprocessing.spacing) / np.asarray(volume.spacing, dtype=np.float64)
    if factor.max() >= 1.5:  # anti-aliasing before shrinking a fine image (as both stages do)
        sigma = [float(max(0.0, (f - 1.0) / 2.0)) for f in factor]
        source = ndi.gaussian_filter(source, sigma, mode="nearest", truncate=3.0)
    values = ndi.affine_transform(
        source, to_voxel[:3, :3], to_voxel[:3, 3], output_shape=shape, order=1, cval=0.0
    ).astype(np.float32)
    brain = getattr(reference, "brain", None)
    if brain is not None and getattr(preprocessing, "bias", False):  # its own N4 field
        image = _to_sitk(np.asarray(volume.array, np.float32), volume.affine)
        field = log_bias_field(image, levels=int(getattr(preprocessing, "bias_levels", 1)))
        values = values / field_on_grid(field, grid_to_patient(reference), shape)
    if brain is not None:  # clinical-scan stage: z inside the reference's brain mask
        idx = np.indices(shape).reshape(3, -1).T.astype(np.float64)
        src = idx @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        inside = np.all((src >= -0.5) & (src <= np.asarray(volume.shape) - 0.5), axis=1)
        usable = np.asarray(brain, bool) & inside.reshape(shape)
        z, _ = standardise(values, usable if usable.sum() >= 100 else np.asarray(brain, bool))
        return z
    threshold = foreground_threshold(np.asarray(volume.array, dtype=np.float32))
    chosen = values[values > threshold]
    if chosen.size < 2:
        chosen = values.reshape(-1)
    std = float(chosen.std())
    return ((values - float(chosen.mean())) / (std if std > 1e-6 else 1.0)).astype(np.float32)


def channels_to_model(preprocessing, volumes: Sequence[Volume | None]) -> ChannelSample:
    """The case's channels (panel order; None = not acquired) on the model grid.

    The first volume is required: it is preprocessed by ``preprocessing.to_model``; the others
    follow its transform (:func:`follow_reference`); a None is a zero plane, not present.
    """
    if not volumes or volumes[0] is None:
        raise ValueError("the first (reference) channel is required")
    reference = preprocessing.to_model(volumes[0])
    t = reference.tensor
    first = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    shape = tuple(preprocessing.shape)
    planes = [np.asarray(first, np.float32).reshape(shape)]
    present = [True]
    for volume in volumes[1:]:
        if volume is None:
            planes.append(np.zeros(shape, np.float32))
            present.append(False)
        else:
            planes.append(follow_reference(preprocessing, reference, volume))
            present.append(True)
    return ChannelSample(np.stack(planes), reference, tuple(present))
