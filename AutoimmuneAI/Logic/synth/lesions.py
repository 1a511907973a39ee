"""Class-specific white-matter lesions: sample their shape and place, draw them on the template.

A lesion is an ellipsoid with an orientation that depends on where it is (Dawson's fingers
point away from the ventricles, periventricular caps lie flat on them, corticospinal lesions
run along the tract), a rim that is sharp (MS) or soft and lobulated ("fluffy", MOGAD), and a
FLAIR gain. Lesions are drawn in template space, so the ground truth does not depend on the
output grid; the renderer then carries them through the subject's deformation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .anatomy import _CST_LINE, LABELS, Anatomy, region_label_at
from .config import SynthConfig


@dataclass(frozen=True)
class LesionSpec:
    """One latent lesion in template (MNI) millimetres."""

    recipe: str
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]  # 3 unit vectors (rows), same order as semi-axes
    edge_mm: float
    lobe: float
    lobe_phase: tuple[float, ...]  # 8 numbers that fix the irregular outline
    gain: float
    label: int  # region label 1..5 of the centre (anatomy.LABELS)

    @property
    def nominal_volume_ml(self) -> float:
        a, b, c = self.semi_axes_mm
        return float(4.0 / 3.0 * np.pi * a * b * c / 1000.0)


def _xyz(v: Iterable[float]) -> tuple[float, float, float]:
    """Three numbers as plain floats (a ValueError if there are not three)."""
    x, y, z = (float(c) for c in v)
    return x, y, z


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _frame(major: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal rows (major, second, third) with a random roll about the major axis."""
    u = _unit(major)
    v = rng.normal(size=3)
    v = _unit(v - (v @ u) * u)
    return np.stack([u, v, np.cross(u, v)])


def _cst_direction(point: np.ndarray) -> np.ndarray:
    line = _CST_LINE * ([-1, 1, 1] if point[0] < 0 else [1, 1, 1])
    best, direction = np.inf, np.array([0.0, 0.0, 1.0])
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip((point - a) @ ab / (ab @ ab), 0, 1)
        d = float(np.linalg.norm(point - (a + t * ab)))
        if d < best:
            best, direction = d, ab
    return _unit(direction)


def sample_count(rng: np.random.Generator, cls: str, age: float, cfg: SynthConfig) -> int:
    """Number of lesions: a normal scan with probability p_normal, else negative binomial."""
    p = cfg.lesions[cls]
    normal = rng.random() < p["p_normal"]
    mean = p["count_mean"] * float(np.exp(p["age_slope"] * (age - 64.0)))
    k = p["count_k"]
    n = int(rng.negative_binomial(k, k / (k + mean)))
    return 0 if normal else int(np.clip(max(n, 1), 1, cfg.max_lesions))


def sample_lesions(
    rng: np.random.Generator, cls: str, age: float, anat: Anatomy, cfg: SynthConfig
) -> list[LesionSpec]:
    """Draw the latent lesions of one case of class ``cls``."""
    n = sample_count(rng, cls, age, cfg)
    recipes = cfg.lesions[cls]["recipes"]
    names = list(recipes)
    weights = np.array([recipes[k] for k in names], float)
    chosen = rng.choice(len(names), size=n, p=weights / weights.sum()) if n else np.zeros(0, int)
    out = []
    for r in chosen:
        name = names[int(r)]
        rec = cfg.lesion_recipes[name]
        region = anat.regions[rec["region"]]
        flat = int(region[rng.integers(region.size)])
        center = anat.world[flat].astype(float) + rng.uniform(-0.5, 0.5, 3) * anat.voxel_mm
        diam = float(np.exp(np.log(rec["diam"][0]) + rec["diam"][1] * rng.normal()))
        major = diam / 2.0
        minor = major / float(rec["elong"])
        orient = rec["orient"]
        if orient == "radial":
            normal = anat.ventricle_normal.reshape(3, -1)[:, flat].astype(float)
            frame = _frame(normal, rng)
            semi = (major, minor, minor * rng.uniform(0.8, 1.0))
        elif orient == "cap":
            normal = anat.ventricle_normal.reshape(3, -1)[:, flat].astype(float)
            frame = _frame(normal, rng)[[1, 2, 0]]  # flat against the ventricle wall
            semi = (major, major * rng.uniform(0.6, 0.9), minor)
        elif orient == "cst":
            frame = _frame(_cst_direction(center), rng)
            semi = (major, minor, minor * rng.uniform(0.8, 1.0))
        else:
            frame = _frame(rng.normal(size=3), rng)
            semi = (major, minor * rng.uniform(1.0, 1.25), minor)
        gain = float(rec["gain"] * np.exp(cfg.imaging["lesion_gain_sd"] * rng.normal()))
        out.append(
            LesionSpec(
                recipe=name,
                center_mm=_xyz(center),
                semi_axes_mm=_xyz(semi),
                axes=tuple(_xyz(row) for row in frame),
                edge_mm=float(rec["edge"]),
                lobe=float(rec["lobe"]),
                lobe_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 8)),
                gain=gain,
                label=region_label_at(anat, flat),
            )
        )
    return out


@dataclass
class LesionMaps:
    """Lesions drawn on the template grid."""

    occupancy: np.ndarray  # float32 0..1, max over lesions
    signal: np.ndarray  # float32 occupancy * gain (FLAIR multiple of WM), max over lesions
    labels: np.ndarray  # uint8 region label of the voxels a lesion occupies (>= 0.5)
    voxel_mm: float  # template voxel size

    def region_volumes_ml(self) -> dict[str, float]:
        """Lesion volume per region label (mL) on the template grid."""
        vox_ml = self.voxel_mm**3 / 1000.0
        flat = self.labels.ravel()
        counts = np.bincount(flat[flat > 0], minlength=6)
        return {name: float(counts[k] * vox_ml) for k, name in LABELS.items()}


def _lobulation(d: np.ndarray, phase: tuple[float, ...]) -> np.ndarray:
    """Smooth irregularity in [-1, 1] as a function of direction (unit vectors, shape (3, N))."""
    p = np.asarray(phase)
    dirs = np.stack([np.cos(p[:4]) * np.sin(p[4:]), np.sin(p[:4]) * np.sin(p[4:]), np.cos(p[4:])])
    acc = np.zeros(d.shape[1], np.float32)
    for m in range(4):
        acc += np.cos(2.0 * (dirs[:, m] @ d) * (m + 1) + p[m]).astype(np.float32)
    return acc / 4.0


def draw_lesions(specs: list[LesionSpec], anat: Anatomy) -> LesionMaps:
    """Rasterise lesions on the template grid; lesions are kept out of CSF (no signal there)."""
    shape = anat.shape
    occ = np.zeros(shape, np.float32)
    sig = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    inv = np.linalg.inv(anat.affine)
    vox = anat.voxel_mm
    tissue = anat.lesion_tissue
    for s in specs:
        c = np.asarray(s.center_mm)
        reach = max(s.semi_axes_mm) * (1.0 + s.lobe) + 3.0 * s.edge_mm + vox
        lo = np.floor(inv[:3, :3] @ (c - reach) + inv[:3, 3]).astype(int)
        hi = np.ceil(inv[:3, :3] @ (c + reach) + inv[:3, 3]).astype(int) + 1
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        ijk = np.indices(hi - lo).reshape(3, -1) + lo[:, None]
        xyz = anat.affine[:3, :3] @ ijk + anat.affine[:3, 3:4] - c[:, None]
        local = np.asarray(s.axes) @ xyz  # coordinates along the lesion's axes
        q = local / np.asarray(s.semi_axes_mm)[:, None]
        r = np.sqrt((q**2).sum(axis=0))
        if s.lobe > 0:
            d = local / np.maximum(np.linalg.norm(local, axis=0), 1e-6)
            r = r / (1.0 + s.lobe * _lobulation(d, s.lobe_phase))
        scale = float(np.exp(np.mean(np.log(s.semi_axes_mm))))  # mm per unit of r
        lesion = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * scale / s.edge_mm, -30, 30)))
        lesion = (lesion.reshape(hi - lo) * tissue[sl]).astype(np.float32)
        better = (lesion >= 0.5) & (lesion > occ[sl])
        labels[sl][better] = s.label
        occ[sl] = np.maximum(occ[sl], lesion)
        sig[sl] = np.maximum(sig[sl], lesion * s.gain)
    return LesionMaps(occupancy=occ, signal=sig, labels=labels, voxel_mm=vox)
