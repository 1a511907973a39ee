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

# Lesion labels written to masks/<case>_lesions.nii.gz (and the truth table's region names).
LABELS: dict[int, str] = {
    1: "periventricular",
    2: "juxtacortical",
    3: "infratentorial",
    4: "deep_grey",
    5: "other",
}
REGION_NAMES: tuple[str, ...] = tuple(LABELS.values())

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
        return tuple(self.brain.shape)  # type: ignore[return-value]

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


def _load_templates(resolution: int) -> tuple[np.ndarray, ...]:
    from nilearn import datasets  # heavy import, only when anatomy is first needed

    imgs = (
        datasets.load_mni152_brain_mask(resolution=resolution),
        datasets.load_mni152_gm_template(resolution=resolution),
        datasets.load_mni152_wm_template(resolution=resolution),
    )
    affine = np.asarray(imgs[0].affine, dtype=np.float64)
    arrays = [np.asarray(im.get_fdata(), dtype=np.float32) for im in imgs]
    return affine, *arrays


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point to a polyline."""
    best = np.full(len(points), np.inf, dtype=np.float32)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        best = np.minimum(best, d)
    return best


@dataclass
class _Grid:
    """The cropped template grid: brain mask, affine and the MNI mm of every voxel."""

    resolution: int
    affine: np.ndarray
    brain: np.ndarray
    world: np.ndarray  # (N, 3) float32, C order
    x: np.ndarray  # MNI mm of every voxel, one array per axis (grid shape)
    y: np.ndarray
    z: np.ndarray

    @property
    def sampling(self) -> tuple[float, float, float]:
        vox = float(self.resolution)
        return (vox, vox, vox)

    def near(self, center: tuple[float, float, float], radius: float) -> np.ndarray:
        """Voxels within ``radius`` mm of an MNI point."""
        c = np.asarray(center)
        return ((self.x - c[0]) ** 2 + (self.y - c[1]) ** 2 + (self.z - c[2]) ** 2) <= radius**2


@dataclass
class _Zones:
    """Tissue zones the label map and the lesion regions are cut from."""

    parenchyma: np.ndarray  # grey or white matter
    wm_core: np.ndarray
    supra: np.ndarray  # supratentorial parenchyma
    infratent: np.ndarray  # cerebellum and brainstem
    deep_box: np.ndarray  # the box around the basal ganglia and thalami
    deep_grey: np.ndarray
    dist_cortex: np.ndarray  # mm from cortical grey matter


def _crop(
    affine: np.ndarray, brain: np.ndarray, gm: np.ndarray, wm: np.ndarray, resolution: int
) -> tuple[_Grid, np.ndarray, np.ndarray]:
    """Crop to the brain's bounding box plus a margin (less work for every case); grey and
    white matter maps masked by the brain."""
    lo = np.maximum(np.argwhere(brain).min(axis=0) - 3, 0)
    hi = np.minimum(np.argwhere(brain).max(axis=0) + 4, brain.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    brain, gm, wm = brain[sl], gm[sl] * brain[sl], wm[sl] * brain[sl]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    ijk = np.indices(brain.shape).reshape(3, -1).T
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)
    x, y, z = (world[:, a].reshape(brain.shape) for a in range(3))
    return _Grid(resolution, affine, brain, world, x, y, z), gm, wm


def _ventricles(g: _Grid, csf: np.ndarray, dist_outside: np.ndarray) -> np.ndarray:
    """Lateral + third ventricles: CSF deep inside the brain, above the tentorium, near the
    midline, without specks."""
    vox = float(g.resolution)
    vent = (csf > 0.5) & (dist_outside > 12.0) & (np.abs(g.x) < 40) & (g.z > -12) & (g.z < 40)
    vent = ndi.binary_opening(vent, iterations=1) if g.resolution == 1 else vent
    lab, n = ndi.label(vent)
    if n:
        sizes = ndi.sum(vent, lab, index=np.arange(1, n + 1))
        keep = np.arange(1, n + 1)[sizes >= max(20.0 / vox**3, 0.05 * sizes.max())]
        vent = np.isin(lab, keep)
    return vent


def _ventricle_distance(g: _Grid, vent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mm from the ventricles and the unit direction (3, ...) away from the nearest
    ventricle voxel (RAS): Dawson's fingers point along it."""
    dist_vent, nearest = ndi.distance_transform_edt(~vent, sampling=g.sampling, return_indices=True)
    near_ijk = nearest.reshape(3, -1).T
    near_world = near_ijk @ g.affine[:3, :3].T + g.affine[:3, 3]
    normal = g.world - near_world
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
    normal = normal.T.reshape((3, *g.brain.shape)).astype(np.float32)
    return dist_vent.astype(np.float32), normal


def _zones(g: _Grid, gm: np.ndarray, wm: np.ndarray, dist_outside: np.ndarray) -> _Zones:
    """Deep grey, infratentorial and cortical zones (cortical grey matter is grey matter near
    the brain surface; deep grey is far from it)."""
    x, y, z = g.x, g.y, g.z
    gm_core = gm > 0.5
    deep_box = (np.abs(x) < 30) & (y > -38) & (y < 26) & (z > -12) & (z < 21)
    deep_grey = gm_core & deep_box & (dist_outside > 14.0)
    infratent = g.brain & (
        ((y < -34) & (z < -10 + 0.35 * (-34 - y)) & (z < 6))  # cerebellum (under the tentorium)
        | ((np.abs(x) < 16) & (y < -8) & (y > -48) & (z < -10))  # brainstem
    )
    cortex = gm_core & ~deep_grey & ~infratent
    dist_cortex = ndi.distance_transform_edt(~cortex, sampling=g.sampling).astype(np.float32)
    parenchyma = g.brain & (gm + wm > 0.5)
    return _Zones(
        parenchyma=parenchyma,
        wm_core=wm > 0.5,
        supra=parenchyma & ~infratent,
        infratent=infratent,
        deep_box=deep_box,
        deep_grey=deep_grey,
        dist_cortex=dist_cortex,
    )


def _label_map(
    zn: _Zones, gm: np.ndarray, dist_vent: np.ndarray, dist_outside: np.ndarray
) -> np.ndarray:
    """Every parenchymal voxel's region label 1..5 (later assignments take priority)."""
    supra = zn.supra
    label_map = np.zeros(supra.shape, np.uint8)
    pv_band = supra & (dist_vent <= 10.0)
    jc_band = supra & zn.wm_core & (zn.dist_cortex <= 5.0)
    label_map[supra] = 5
    label_map[jc_band] = 2
    label_map[pv_band] = 1
    label_map[
        zn.deep_grey
        | (supra & (gm > 0.45) & zn.deep_box & (dist_vent > 3.0) & (dist_outside > 14.0))
    ] = 4
    label_map[zn.infratent & zn.parenchyma] = 3
    label_map[~zn.parenchyma] = 0
    return label_map


def _regions(
    g: _Grid, zn: _Zones, label_map: np.ndarray, dist_vent: np.ndarray
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
    if resolution not in (1, 2):
        raise ValueError("template resolution must be 1 or 2 mm")
    affine, mask, gm, wm = _load_templates(resolution)
    g, gm, wm = _crop(affine, mask > 0.5, gm, wm, resolution)
    brain = g.brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    dist_outside = ndi.distance_transform_edt(brain, sampling=g.sampling).astype(np.float32)
    vent = _ventricles(g, csf, dist_outside)
    dist_vent, normal = _ventricle_distance(g, vent)
    zones = _zones(g, gm, wm, dist_outside)
    label_map = _label_map(zones, gm, dist_vent, dist_outside)
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
