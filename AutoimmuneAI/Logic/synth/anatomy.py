"""Real anatomy for the demo cohort: the MNI152 template and tissue maps that nilearn ships.

Everything is computed once per template resolution (and cached): tissue probability maps
(grey matter, white matter, CSF), the ventricles, distance maps, and the region maps that
lesions are placed in (periventricular, juxtacortical, infratentorial with pons / middle
cerebellar peduncles / area postrema, deep grey, periependymal, corticospinal tract...).
Regions come from tissue maps plus MNI coordinates, since no atlas is available offline;
they are approximate by design and only need to put lesions where a radiologist expects them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

# The region labels and the tissue zones are the template's (preprocess.region_map), shared
# with the naming of evidence regions; LABELS and REGION_NAMES stay importable from here.
from ..preprocess.region_map import (
    LABELS,
    REGION_NAMES,
    TemplateGrid,
    TissueZones,
    template_maps,
)

__all__ = ["LABELS", "REGION_NAMES", "Anatomy", "load_anatomy", "region_label_at"]

# Corticospinal tract centre line in MNI mm (one hemisphere; mirrored for the other):
# precentral gyrus -> corona radiata -> posterior limb of internal capsule -> cerebral
# peduncle -> pons -> medulla.
_CST_LINE = np.array(
    [[30, -22, 58], [26, -18, 40], [24, -14, 24], [20, -14, 8], [14, -20, -8], [10, -24, -24],
     [6, -30, -40], [4, -36, -52]],
    dtype=float,
)  # fmt: skip


@dataclass
class Anatomy:
    """Template-space maps on a cropped MNI grid (float32 arrays indexed [i, j, k])."""

    resolution: int
    affine: np.ndarray  # voxel -> MNI/RAS mm of the cropped grid
    brain: np.ndarray  # bool brain mask
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray  # bool lateral + third ventricles
    dist_ventricle: np.ndarray  # mm from the lateral/third ventricles
    dist_cortex: np.ndarray  # mm from cortical grey matter
    dist_outside: np.ndarray  # mm from outside the brain mask
    ventricle_normal: np.ndarray  # (3, ...) unit vector pointing away from the ventricles (RAS)
    label_map: np.ndarray  # uint8 region label 1..5 of every parenchymal voxel (0 elsewhere)
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name -> flat voxel indices
    world: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (N, 3) all voxels
    brain_near: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    ventricle_center_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    lesion_tissue: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.brain.shape
        return i, j, k

    @property
    def voxel_mm(self) -> float:
        return float(self.resolution)

    def center_mm(self) -> np.ndarray:
        """Centre of the brain mask in MNI mm (used as the pivot of global transforms)."""
        idx = np.argwhere(self.brain).mean(axis=0)
        return (self.affine @ np.append(idx, 1.0))[:3]

    def bounds_mm(self, margin: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """RAS bounding box of the brain mask, widened by ``margin`` mm."""
        idx = np.argwhere(self.brain)
        corners = np.stack([idx.min(axis=0), idx.max(axis=0)])
        ras = (self.affine[:3, :3] @ corners.T).T + self.affine[:3, 3]
        return ras.min(axis=0) - margin, ras.max(axis=0) + margin


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point to a polyline."""
    best = np.full(len(points), np.inf, dtype=np.float32)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        best = np.minimum(best, d)
    return best


def _regions(
    g: TemplateGrid, zn: TissueZones, label_map: np.ndarray, dist_vent: np.ndarray
) -> dict[str, np.ndarray]:
    """The lesion placement regions (flat voxel indices inside the brain)."""
    x, y, z = g.x, g.y, g.z
    wm_core, supra, parenchyma, dist_cortex = zn.wm_core, zn.supra, zn.parenchyma, zn.dist_cortex
    cst_dist = np.minimum(
        _polyline_distance(g.world, _CST_LINE),
        _polyline_distance(g.world, _CST_LINE * [-1, 1, 1]),
    ).reshape(g.brain.shape)
    third_v = (np.abs(x) < 5) & (y > -28) & (y < 2) & (z > -12) & (z < 14)
    fourth_v = (np.abs(x) < 6) & (y > -54) & (y < -36) & (z > -42) & (z < -20)

    def idx(m: np.ndarray) -> np.ndarray:
        return np.flatnonzero((m & g.brain).ravel()).astype(np.int64)

    regions = {
        # Touching the lateral ventricles (ovoid lesions reach the ventricle wall).
        "periventricular": idx(wm_core & supra & (dist_vent > 1.0) & (dist_vent <= 6.0)),
        # Caps: frontal and occipital horn tips.
        "pv_caps": idx(
            wm_core & supra & (dist_vent > 1.0) & (dist_vent <= 5.0) & ((y > 8) | (y < -36))
        ),
        "juxtacortical": idx(wm_core & supra & (dist_cortex > 1.0) & (dist_cortex <= 4.5)),
        "deep_wm": idx(
            wm_core & supra & (dist_vent > 11.0) & (dist_cortex > 5.5) & (label_map == 5)
        ),
        "callosal": idx(wm_core & (np.abs(x) < 8) & (z > 8) & (z < 30) & (y > -40) & (y < 30)),
        "deep_grey": idx(label_map == 4),
        "infratentorial": idx(zn.infratent & parenchyma),
        "pons": idx(parenchyma & (np.abs(x) < 12) & (y > -38) & (y < -14) & (z > -44) & (z < -18)),
        "pons_peripheral": idx(
            parenchyma
            & (np.abs(x) >= 6)
            & (np.abs(x) < 13)
            & (y > -38)
            & (y < -14)
            & (z > -42)
            & (z < -18)
        ),
        "mcp": idx(
            wm_core
            & (np.abs(x) > 12)
            & (np.abs(x) < 26)
            & (y > -52)
            & (y < -30)
            & (z > -40)
            & (z < -20)
        ),
        "area_postrema": idx(parenchyma & g.near((0, -44, -50), 6.0)),
        "periependymal": idx(
            parenchyma
            & (dist_vent > 0)
            & ((ndi.binary_dilation(third_v | fourth_v, iterations=2)) & ~third_v & ~fourth_v)
        ),
        "diencephalic": idx(
            parenchyma & (np.abs(x) < 12) & (y > -22) & (y < 4) & (z > -14) & (z < 4)
        ),
        "cst": idx(parenchyma & (cst_dist <= 4.0) & (z > -40)),
        "hemispheric_wm": idx(wm_core & supra & (dist_vent > 4.0) & (dist_cortex > 3.0)),
    }
    for name, ix in regions.items():
        if ix.size == 0:
            raise RuntimeError(f"anatomy region {name!r} is empty at {g.resolution} mm")
    return regions


@functools.lru_cache(maxsize=2)
def load_anatomy(resolution: int = 2) -> Anatomy:
    """Template maps and region maps at ``resolution`` mm (1 or 2), cropped to the brain."""
    maps = template_maps(resolution)
    g, gm, wm, zones, label_map = maps.grid, maps.gm, maps.wm, maps.zones, maps.label_map
    brain, csf, dist_outside = g.brain, maps.csf, maps.dist_outside
    vent, dist_vent, normal = maps.ventricles, maps.dist_ventricle, maps.ventricle_normal
    return Anatomy(
        resolution=resolution,
        affine=g.affine,
        brain=brain,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        ventricles=vent,
        dist_ventricle=dist_vent,
        dist_cortex=zones.dist_cortex,
        dist_outside=dist_outside,
        ventricle_normal=normal,
        label_map=label_map,
        regions=_regions(g, zones, label_map, dist_vent),
        world=g.world,
        # The brain grown by 7 mm: output voxels that map outside it are background.
        brain_near=(ndi.distance_transform_edt(~brain, sampling=g.sampling) <= 7.0).astype(
            np.uint8
        ),
        ventricle_center_mm=g.world[np.flatnonzero(vent.ravel())].mean(axis=0).astype(float),
        # Lesions show in parenchyma only (FLAIR suppresses CSF): weight 0 in CSF, 1 in tissue.
        lesion_tissue=np.clip((gm + wm - 0.25) / 0.5, 0.0, 1.0).astype(np.float32),
    )


def region_label_at(anat: Anatomy, flat_index: int) -> int:
    """Region label (1..5) of a template voxel; 5 ("other") where the map has none."""
    lab = int(anat.label_map.ravel()[flat_index])
    return lab if lab else 5
