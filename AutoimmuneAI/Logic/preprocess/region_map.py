"""The template-space region map: MNI152 tissue zones and the region label of every voxel.

The regions clinicians use for dissemination in space (periventricular, juxtacortical,
infratentorial, deep grey matter, other white matter) drawn on nilearn's MNI152 grey- and
white-matter maps with MNI coordinates, since no atlas ships offline; approximate by design.
Evidence regions are named with it (``explain.regions``) once the brain is in template space,
and the generator places and labels lesions with the same map (``synth.anatomy``), so a
lesion's label and the name of the evidence on it agree. Computed once per template
resolution (1 or 2 mm) and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


@dataclass
class TemplateGrid:
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
class TissueZones:
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
) -> tuple[TemplateGrid, np.ndarray, np.ndarray]:
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
    return TemplateGrid(resolution, affine, brain, world, x, y, z), gm, wm


def _ventricles(g: TemplateGrid, csf: np.ndarray, dist_outside: np.ndarray) -> np.ndarray:
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


def _ventricle_distance(g: TemplateGrid, vent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mm from the ventricles and the unit direction (3, ...) away from the nearest
    ventricle voxel (RAS): Dawson's fingers point along it."""
    dist_vent, nearest = ndi.distance_transform_edt(~vent, sampling=g.sampling, return_indices=True)
    near_ijk = nearest.reshape(3, -1).T
    near_world = near_ijk @ g.affine[:3, :3].T + g.affine[:3, 3]
    normal = g.world - near_world
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
    normal = normal.T.reshape((3, *g.brain.shape)).astype(np.float32)
    return dist_vent.astype(np.float32), normal


def _zones(
    g: TemplateGrid, gm: np.ndarray, wm: np.ndarray, dist_outside: np.ndarray
) -> TissueZones:
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
    return TissueZones(
        parenchyma=parenchyma,
        wm_core=wm > 0.5,
        supra=parenchyma & ~infratent,
        infratent=infratent,
        deep_box=deep_box,
        deep_grey=deep_grey,
        dist_cortex=dist_cortex,
    )


def _label_map(
    zn: TissueZones, gm: np.ndarray, dist_vent: np.ndarray, dist_outside: np.ndarray
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


@dataclass
class TemplateMaps:
    """The cropped template grid, its tissue maps and zones, and the region label map."""

    grid: TemplateGrid
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dist_outside: np.ndarray  # mm from outside the brain mask
    ventricles: np.ndarray
    dist_ventricle: np.ndarray
    ventricle_normal: np.ndarray
    zones: TissueZones
    label_map: np.ndarray  # uint8 region label 1..5 of every parenchymal voxel (0 elsewhere)

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> MNI RAS mm of the cropped grid."""
        return self.grid.affine

    @property
    def voxel_mm(self) -> float:
        return float(self.grid.resolution)


@functools.lru_cache(maxsize=2)
def template_maps(resolution: int = 2) -> TemplateMaps:
    """Tissue maps, zones and the region label map at ``resolution`` mm (1 or 2), cropped to
    the brain (cached)."""
    if resolution not in (1, 2):
        raise ValueError("template resolution must be 1 or 2 mm")
    affine, mask, gm, wm = _load_templates(resolution)
    g, gm, wm = _crop(affine, mask > 0.5, gm, wm, resolution)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * g.brain
    dist_outside = ndi.distance_transform_edt(g.brain, sampling=g.sampling).astype(np.float32)
    vent = _ventricles(g, csf, dist_outside)
    dist_vent, normal = _ventricle_distance(g, vent)
    zones = _zones(g, gm, wm, dist_outside)
    label_map = _label_map(zones, gm, dist_vent, dist_outside)
    return TemplateMaps(g, gm, wm, csf, dist_outside, vent, dist_vent, normal, zones, label_map)
