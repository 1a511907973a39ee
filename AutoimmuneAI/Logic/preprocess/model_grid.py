"""The model grid: a fixed RAS box that every volume is resampled into, and the way back.

A volume of any orientation, obliquity and spacing is resampled (trilinear, one
interpolation) by MONAI's invertible ``SpatialResample`` onto an axis-aligned RAS grid of
``shape`` voxels of ``spacing`` mm whose centre is the centre of the head (foreground), then
z-scored on the foreground. That single resampling does what Orientation + Spacing +
crop/pad would do, without compounding interpolation; an image much finer than the grid is
Gaussian-smoothed first against aliasing. MONAI's trace of it
(``applied_operations``) is kept in the ``GridSample`` so that ``to_input`` inverts it with
MONAI's own ``inverse``: any map on the model grid comes back on the input's own voxels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, SpatialResample
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys
from scipy.ndimage import gaussian_filter

from ..data.imaging import Volume, foreground_threshold, ras_to_voxel, voxel_to_ras

_CENTRING = "foreground"
_INTENSITY = "foreground_zscore"


@dataclass
class GridSample:
    """One volume on the model grid, with what is needed to map results back.

    ``tensor``: float32 ``[1, *grid.shape]``, intensity-normalised (a plain ``torch.Tensor``).
    ``affine``: model-grid voxel -> RAS mm. ``applied_operations``: MONAI's trace of the
    resampling (source affine and shape, interpolation), inverted by ``ModelGrid.to_input``.
    ``coverage``: fraction of the input's foreground that lies inside the grid (1.0 means
    the box cut nothing off). ``intensity``: threshold, mean and std used to normalise.
    ``quality`` and ``warnings``: empty for one image; a multi-contrast case records there
    the co-registration check of its other channels (``channels.channels_to_model``).
    """

    tensor: torch.Tensor
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    applied_operations: list = field(repr=False)
    centre: np.ndarray
    coverage: float
    intensity: dict
    quality: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelGrid:
    """An axis-aligned RAS box of ``shape`` voxels of ``spacing`` mm, centred per volume."""

    shape: tuple[int, int, int] = (64, 80, 64)
    spacing: float = 2.5

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"ModelGrid shape must be three positive sizes, got {self.shape}")
        if not float(self.spacing) > 0:
            raise ValueError(f"ModelGrid spacing must be positive, got {self.spacing}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", float(self.spacing))

    # -- geometry -------------------------------------------------------------------------

    def grid_affine(self, centre_ras: np.ndarray) -> np.ndarray:
        """Affine of the grid whose central point is ``centre_ras`` (RAS mm)."""
        affine = np.diag([self.spacing] * 3 + [1.0])
        half = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        affine[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - self.spacing * half
        return affine

    @property
    def extent_mm(self) -> np.ndarray:
        """Size of the box in mm along R, A, S."""
        return np.asarray(self.shape, dtype=np.float64) * self.spacing

    # -- forward --------------------------------------------------------------------------

    def to_model(self, volume: Volume) -> GridSample:
        """Resample ``volume`` onto the grid centred on its foreground and normalise it."""
        array = np.asarray(volume.array, dtype=np.float32)
        threshold = foreground_threshold(array)
        centre, coverage = self._centre_and_coverage(array, threshold, volume.affine)
        dst_affine = self.grid_affine(centre)

        sigma = self._antialias_sigma(volume.spacing)
        if sigma is not None:  # scipy's filter: far faster than a torch conv3d on the CPU
            array = gaussian_filter(array, sigma, mode="nearest", truncate=3.0)
        image = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(volume.affine))
        resampled = self._resampler()(
            image, dst_affine=torch.as_tensor(dst_affine), spatial_size=self.shape
        )
        if not isinstance(resampled, MetaTensor):  # a MetaTensor in, a MetaTensor out
            raise TypeError(f"SpatialResample returned {type(resampled).__name__}")
        values = resampled.as_tensor()
        chosen = values[values > threshold]
        if chosen.numel() < 2:  # nothing above threshold inside the box: use all of it
            chosen = values.reshape(-1)
        std_t, mean_t = torch.std_mean(chosen)
        mean, std = float(mean_t), float(std_t)
        std = std if std > 1e-6 else 1.0
        # MONAI's annotation of subtrahend/divisor omits the scalar its docs and code take
        normalised = NormalizeIntensity(subtrahend=mean, divisor=std)(values)  # type: ignore[arg-type]
        tensor = _plain(normalised).to(torch.float32).contiguous()
        return GridSample(
            tensor=tensor,
            affine=dst_affine,
            source_shape=volume.shape,
            source_affine=np.array(volume.affine, dtype=np.float64),
            applied_operations=list(resampled.applied_operations),
            centre=np.asarray(centre),
            coverage=coverage,
            intensity={"threshold": float(threshold), "mean": mean, "std": std},
        )

    # -- inverse --------------------------------------------------------------------------

    def to_input(
        self,
        model_map: np.ndarray | torch.Tensor,
        sample: GridSample,
        *,
        mode: Literal["linear", "nearest"] = "linear",
    ) -> np.ndarray:
        """Bring a map on the model grid back onto the input volume's own voxels.

        ``model_map`` has the grid's shape (leading singleton axes allowed). The result is a
        float32 array with the input volume's shape; voxels outside the grid are 0. Use
        ``mode="nearest"`` for labels.
        """
        if mode not in ("linear", "nearest"):
            raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
        if torch.is_tensor(model_map):
            data = _plain(model_map).detach().to("cpu", torch.float32)
        else:
            data = torch.from_numpy(np.asarray(model_map, dtype=np.float32))
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if tuple(data.shape) != self.shape:
            raise ValueError(f"map shape {tuple(data.shape)} is not the grid shape {self.shape}")
        operations = copy.deepcopy(sample.applied_operations)
        if mode == "nearest":
            operations = convert_applied_interp_mode(operations, mode="nearest")
        for operation in operations:
            # The resampler is rebuilt here, so the trace is matched by kind, not by id.
            operation[TraceKeys.ID] = TraceKeys.NONE
        image = MetaTensor(
            data[None].contiguous(),
            affine=torch.as_tensor(sample.affine),
            applied_operations=operations,
        )
        restored = self._resampler().inverse(image)
        out = _plain(restored)[0].numpy().astype(np.float32, copy=False)
        if out.shape != tuple(sample.source_shape):  # pragma: no cover - MONAI contract
            raise RuntimeError(f"inverse gave {out.shape}, expected {sample.source_shape}")
        return out

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-ready description, stored in model bundles as the preprocessing."""
        return {
            "shape": list(self.shape),
            "spacing": self.spacing,
            "space": "RAS",
            "centring": _CENTRING,
            "intensity": _INTENSITY,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelGrid:
        """Inverse of ``to_dict``; refuses a preprocessing this code does not implement
        (a bundle's preprocessing, either stage, is read by ``pipeline.preprocessing_from_dict``).
        """
        if "pipeline" in data:
            raise ValueError(f"the {data['pipeline']!r} preprocessing is not a plain ModelGrid")
        if data.get("centring", _CENTRING) != _CENTRING:
            raise ValueError(f"unsupported centring {data.get('centring')!r}")
        if data.get("intensity", _INTENSITY) != _INTENSITY:
            raise ValueError(f"unsupported intensity normalisation {data.get('intensity')!r}")
        if data.get("space", "RAS") != "RAS":
            raise ValueError(f"unsupported space {data.get('space')!r}")
        return cls(shape=data["shape"], spacing=float(data["spacing"]))  # __post_init__ checks it

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _resampler() -> SpatialResample:
        return SpatialResample(  # MONAI's DtypeLike annotation omits the torch dtypes it takes
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
            dtype=torch.float32,  # type: ignore[arg-type]
        )

    def _antialias_sigma(self, spacing: np.ndarray) -> list[float] | None:
        """Gaussian sigma (input voxels) against aliasing when shrinking a fine image."""
        factor = self.spacing / np.asarray(spacing, dtype=np.float64)
        if factor.max() < 1.5:
            return None
        return [float(max(0.0, (f - 1.0) / 2.0)) for f in factor]

    def _centre_and_coverage(
        self, array: np.ndarray, threshold: float, affine: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Centre (RAS) of the foreground's robust bounding box (0.5th to 99.5th percentile
        along R, A, S), and the share of the foreground inside the grid centred there."""
        step = max(1, int(round((array.size / 300_000) ** (1 / 3))))
        ijk: np.ndarray = np.argwhere(array[::step, ::step, ::step] > threshold) * step
        if len(ijk) == 0:  # nothing above threshold: centre of the field of view
            ijk = (np.asarray(array.shape, dtype=np.float64) - 1)[None] / 2
        ras = voxel_to_ras(affine, ijk)
        low, high = np.percentile(ras, [0.5, 99.5], axis=0)
        centre = (low + high) / 2.0
        grid = ras_to_voxel(self.grid_affine(centre), ras)
        inside = np.all((grid >= -0.5) & (grid <= np.asarray(self.shape) - 0.5), axis=1)
        return centre, float(inside.mean())


def _plain(tensor: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI's MetaTensor carries metadata we do not want here)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else torch.as_tensor(tensor)
