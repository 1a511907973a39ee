"""Multi-contrast cases: the first channel is preprocessed, the others follow its transform.

A case of a multi-contrast panel is one patient in one scanner session, so its images are
meant to share the patient's RAS space. Registering each contrast to the template on its
own would give each a slightly different transform (and ``ModelGrid`` centres each volume on
its own foreground); the channels would then disagree voxel by voxel. Here only the panel's
first channel (the reference) goes through the preprocessing (``ModelGrid`` or
``Preprocessor``, their public ``to_model``); every other channel is resampled onto the same
model grid with the transform that sample records (``affine``, and for the clinical-scan
stage ``matrix``: template -> patient RAS), then standardised on its own intensities: inside
the reference's brain mask for the clinical-scan stage, above its own foreground threshold on
the plain grid. With the clinical-scan stage's bias correction each channel gets its own N4
field (each sequence has its own bias: the coil's sensitivity and the sequence's own
inhomogeneity).

Before it follows, each extra channel is checked against the reference
(``coregistration.fit_channel``): a patient who moved between series is aligned by the fitted
rigid motion, composed into that channel's resampling; a channel no rigid motion fits (another
patient's or session's series) is fused as recorded and named in a warning. The figures go
into the reference sample's ``quality["channels"]`` (by channel name) and its warnings, so
they reach ``prediction.json`` with the stage's own.

A missing optional channel is an all-zero plane and ``present`` says so (the model reads the
flag; see ``model.fusion.ImageEncoder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..data.imaging import Volume, _to_sitk, foreground_threshold
from .bias import field_on_grid, log_bias_field
from .coregistration import ChannelFit, ReferenceRegion, fit_channel, reference_region
from .intensity import standardise


@dataclass
class ChannelSample:
    """All channels of one case on the model grid, and the reference channel's sample."""

    array: np.ndarray  # float32 [C, *grid.shape]
    reference: object  # the first channel's GridSample / PreprocessedSample (maps results back)
    present: tuple[bool, ...]  # per channel: False = not acquired (an all-zero plane)
    fits: dict[str, ChannelFit] = field(default_factory=dict)  # per checked extra channel

    @property
    def warnings(self) -> list[str]:
        """The channels' co-registration warnings, in channel order."""
        return [w for f in self.fits.values() for w in f.warnings]


def grid_to_patient(sample: object) -> np.ndarray:
    """4x4 model-grid voxel -> patient RAS mm of a reference sample (either preprocessing)."""
    affine = np.asarray(sample.affine, dtype=np.float64)  # type: ignore[attr-defined]
    matrix = getattr(sample, "matrix", None)  # clinical-scan stage: template -> patient
    return affine if matrix is None else np.asarray(matrix, dtype=np.float64) @ affine


def follow_reference(
    preprocessing, reference: object, volume: Volume, motion: np.ndarray | None = None
) -> np.ndarray:
    """``volume`` on the reference's model grid through the reference's transform, standardised.

    ``preprocessing`` is the ``ModelGrid`` or ``Preprocessor`` that made ``reference``;
    ``motion`` (4x4, reference patient RAS -> this channel's RAS; the identity when None) is
    the patient's movement between the two series (``ChannelFit.applied``).
    """
    shape = tuple(preprocessing.shape)
    to_patient = grid_to_patient(reference)
    if motion is not None:
        to_patient = np.asarray(motion, np.float64) @ to_patient
    to_voxel = np.linalg.inv(np.asarray(volume.affine, np.float64)) @ to_patient
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
        values = values / field_on_grid(field, to_patient, shape)
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


def reference_of(
    reference: object, plane: np.ndarray, volume: Volume, name: str
) -> ReferenceRegion:
    """The reference channel prepared for the co-registration check: its region on the model
    grid is the brain mask (clinical-scan stage) or its foreground (plain grid), read from
    ``plane``, the reference on the model grid."""
    brain = getattr(reference, "brain", None)
    if brain is not None:
        region, what = np.asarray(brain, bool), "brain"
    else:
        z = plane
        stats = getattr(reference, "intensity", {}) or {}
        if {"threshold", "mean", "std"} <= set(stats):
            cut = (float(stats["threshold"]) - float(stats["mean"])) / float(stats["std"])
        else:
            cut = float(z.min())
        region, what = z > cut, "foreground"
    return reference_region(name, volume, region, grid_to_patient(reference), what)


def channels_to_model(
    preprocessing,
    volumes: Sequence[Volume | None],
    names: Sequence[str] | None = None,
    *,
    coregister: bool = True,
) -> ChannelSample:
    """The case's channels (panel order; None = not acquired) on the model grid.

    The first volume is required: it is preprocessed by ``preprocessing.to_model``; the others
    follow its transform (:func:`follow_reference`); a None is a zero plane, not present.
    ``names`` (the panel's channel names; default "1", "2", ...) name the channels in the
    co-registration check's figures and warnings; ``coregister=False`` skips the check (every
    channel is then taken as co-registered, as recorded).
    """
    if not volumes or volumes[0] is None:
        raise ValueError("the first (reference) channel is required")
    labels = [str(n) for n in names] if names is not None else []
    if len(labels) != len(volumes):
        labels = [str(i + 1) for i in range(len(volumes))]
    reference = preprocessing.to_model(volumes[0])
    t = reference.tensor
    first = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    shape = tuple(preprocessing.shape)
    planes = [np.asarray(first, np.float32).reshape(shape)]
    present = [True]
    fits: dict[str, ChannelFit] = {}
    region: ReferenceRegion | None = None
    for name, volume in zip(labels[1:], volumes[1:]):
        if volume is None:
            planes.append(np.zeros(shape, np.float32))
            present.append(False)
            continue
        motion = None
        if coregister:
            if region is None:
                region = reference_of(reference, planes[0], volumes[0], labels[0])
            fits[name] = fit_channel(region, volume, name)
            motion = fits[name].applied  # the identity unless the fit is applied
        planes.append(follow_reference(preprocessing, reference, volume, motion))
        present.append(True)
    stacked = ChannelSample(np.stack(planes), reference, tuple(present), fits)
    if fits:  # onto the reference sample: its quality and warnings reach prediction.json
        quality = getattr(reference, "quality", None)
        if isinstance(quality, dict):
            quality["channels"] = {n: f.to_dict() for n, f in fits.items()}
        notes = getattr(reference, "warnings", None)
        if isinstance(notes, list):
            notes.extend(stacked.warnings)
    return stacked
