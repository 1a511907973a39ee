"""Render one case's FLAIR-like volume and lesion labelmap on the output grid.

The output grid is any oriented, possibly anisotropic grid (its affine is the real geometry);
for each output voxel the renderer finds the template point it shows, through the subject's
head pose and size, a smooth random deformation and ventricle enlargement with atrophy, and
samples the template-space image (tissue contrast, cortical thinning, lesions) there. Bias
field and Rician noise are added on the output grid. All random draws that shape the anatomy
come before any draw whose size depends on the grid, so the same case rendered on an oblique
or anisotropic grid shows the same brain at the same RAS positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .anatomy import Anatomy
from .config import SynthConfig
from .latent import CaseLatent
from .lesions import draw_lesions


@dataclass(frozen=True)
class OutputGrid:
    """Shape and voxel -> RAS affine of the written volumes."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def world(self) -> np.ndarray:
        """(N, 3) float64 RAS coordinates of every voxel, C order."""
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        return (self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]).T


def rotation(axis: np.ndarray | list[float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    u = np.asarray(axis, float)
    u = u / np.linalg.norm(u)
    t = math.radians(degrees)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def output_grid(
    anat: Anatomy,
    voxel_size: float = 2.0,
    oblique_deg: float = 0.0,
    anisotropic: bool = False,
    cfg: SynthConfig | None = None,
) -> OutputGrid:
    """A grid covering the brain at ``voxel_size`` mm, optionally oblique / anisotropic."""
    cfg = cfg or SynthConfig()
    factors = np.asarray(cfg.imaging["anisotropic_factors"] if anisotropic else [1, 1, 1], float)
    spacing = voxel_size * factors
    rot = rotation(cfg.imaging["oblique_axis"], oblique_deg) if oblique_deg else np.eye(3)
    lo, hi = anat.bounds_mm(margin=8.0)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    local = corners @ rot  # coordinates along the grid axes (columns of rot)
    lmin, lmax = local.min(axis=0), local.max(axis=0)
    ni, nj, nk = (int(math.ceil((b - a) / s)) + 1 for a, b, s in zip(lmin, lmax, spacing))
    shape = (ni, nj, nk)
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing  # column j = axis j scaled by its spacing
    affine[:3, 3] = rot @ lmin
    return OutputGrid(shape=shape, affine=affine)


def _poly2(p: np.ndarray) -> np.ndarray:
    """Quadratic polynomial basis (N, 9) of normalised coordinates (no constant term)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    return np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)


@dataclass
class _Subject:
    """The per-case draws that shape the anatomy, and the template-space source image."""

    src: np.ndarray
    labels: np.ndarray
    occupancy: np.ndarray
    c_wm: float
    scale: float
    noise_frac: float
    pose: np.ndarray  # 3x3 rotation of the brain (template -> image), about ``center``
    size: float
    lattice: np.ndarray
    bias_coef: np.ndarray
    atrophy: float


def _subject(latent: CaseLatent, anat: Anatomy, cfg: SynthConfig, rng: np.random.Generator):
    im = cfg.imaging
    # --- draws that shape the anatomy (fixed count, independent of the grid) ---
    contrast = rng.normal(size=2)
    scale = im["scale"] * math.exp(im["scale_sd"] * rng.normal())
    noise_frac = rng.uniform(*im["noise"])
    pose_axis = rng.normal(size=3)
    pose_deg = im["rotate_deg"] * rng.normal()
    size = 1.0 + im["scale_pct"] / 100.0 * rng.normal()
    lo, hi = anat.bounds_mm(margin=40.0)
    step = im["deform_spacing_mm"]
    lattice_shape = tuple(int(math.ceil((b - a) / step)) + 1 for a, b in zip(lo, hi))
    lattice = rng.normal(size=(3, *lattice_shape)) * im["deform_mm"]
    bias_coef = rng.normal(size=9) / 3.0

    # --- template-space image: tissue contrast, cortical thinning, lesions ---
    c_wm = im["wm"]
    c_gm = im["gm"] * math.exp(im["contrast_sd"] * contrast[0])
    c_csf = im["csf"] * math.exp(2 * im["contrast_sd"] * contrast[1])
    thin = np.clip(im["sulcal_gain"] * latent.atrophy * np.exp(-anat.dist_outside / 6.0), 0, 0.9)
    gm_lost = anat.gm * thin
    tissue = c_wm * anat.wm + c_gm * (anat.gm - gm_lost) + c_csf * (anat.csf + gm_lost)
    maps = latent.maps if latent.maps is not None else draw_lesions(latent.lesions, anat)
    occ = maps.occupancy
    src = (tissue * (1.0 - occ) + c_wm * maps.signal).astype(np.float32)
    return _Subject(
        src=src,
        labels=maps.labels,
        occupancy=occ,
        c_wm=c_wm,
        scale=scale,
        noise_frac=noise_frac,
        pose=rotation(pose_axis, pose_deg),
        size=size,
        lattice=lattice,
        bias_coef=bias_coef,
        atrophy=float(latent.atrophy),
    )


def _coarse_grid(grid: OutputGrid) -> tuple[tuple[int, ...], np.ndarray]:
    """A coarse version of ``grid`` (nodes about 4 mm apart, the same extent) and the RAS mm
    of its nodes (N, 3)."""
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    coarse_shape = tuple(
        max(2, int(math.ceil((n - 1) * s / 4.0)) + 1) for n, s in zip(grid.shape, spacing)
    )
    pos = [np.linspace(0.0, n - 1.0, m) for n, m in zip(grid.shape, coarse_shape)]
    ijk = np.stack(np.meshgrid(*pos, indexing="ij")).reshape(3, -1)
    world = (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]).T
    return coarse_shape, world


def _template_points(
    subject: _Subject,
    anat: Anatomy,
    cfg: SynthConfig,
    world: np.ndarray,
    pose: np.ndarray,
    shift: np.ndarray,
) -> np.ndarray:
    """The template point (MNI mm, (N, 3)) that each RAS point shows: the inverse of the head
    pose (rotate, then scale about the brain centre, then shift), the smooth deformation
    (cubic B-spline on a coarse world lattice) and ventricle enlargement with atrophy."""
    im = cfg.imaging
    lo, _ = anat.bounds_mm(margin=40.0)
    center = anat.center_mm()
    pts = center + (world - center - shift) @ pose / subject.size
    lat_idx = (pts - lo) / im["deform_spacing_mm"]
    for a in range(3):
        pts[:, a] += ndi.map_coordinates(subject.lattice[a], lat_idx.T, order=3, mode="nearest")
    rel = pts - anat.ventricle_center_mm
    w = np.exp(-0.5 * ((rel / np.array([16.0, 30.0, 16.0])) ** 2).sum(axis=1))
    pts -= (im["ventricle_gain"] * subject.atrophy * w)[:, None] * rel
    return pts


def _candidates(
    grid: OutputGrid, coarse_shape: tuple[int, ...], inside_c: np.ndarray
) -> np.ndarray:
    """Output voxels whose nearest coarse node maps into the brain (grown by 7 mm, more than a
    voxel's distance to its nearest node; all others are background) as flat indices."""
    nearest = [
        np.rint(np.arange(n) * (m - 1) / max(n - 1, 1)).astype(np.intp)
        for n, m in zip(grid.shape, coarse_shape)
    ]
    inside = inside_c.reshape(coarse_shape)[np.ix_(*nearest)]
    return np.flatnonzero(inside)


def _linear_weights(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower coarse node and weight of the upper one for each of ``n`` fine voxels along an
    axis whose ``m`` coarse nodes span the same extent (node ``c`` at voxel c (n-1)/(m-1))."""
    ratio = np.float32((m - 1) / (n - 1)) if n > 1 else np.float32(0.0)
    pos = (np.arange(n, dtype=np.float32) * ratio).astype(np.float64)
    low = np.clip(np.floor(pos).astype(np.intp), 0, m - 2)
    return low, pos - low


def _at_candidates(coarse: np.ndarray, shape: tuple[int, ...], cand: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of coarse-grid fields ``coarse`` (C, *coarse_shape) at the
    flat output voxels ``cand`` of a grid of ``shape``: (C, M) float32. The coarse nodes lie
    on the output grid's axes, so the interpolation is separable: the last two axes are
    interpolated over the whole (small) coarse-by-fine slab, the first only at the
    candidates (a few times faster than ``map_coordinates`` at every candidate)."""
    n0, n1, n2 = shape
    slab = coarse.astype(np.float64)
    for axis, n in ((3, n2), (2, n1)):
        low, frac = _linear_weights(n, slab.shape[axis])
        w_shape = [1] * slab.ndim
        w_shape[axis] = n
        frac = frac.reshape(w_shape)
        slab = (
            np.take(slab, low, axis=axis) * (1.0 - frac) + np.take(slab, low + 1, axis=axis) * frac
        )
    flat = slab.astype(np.float32).reshape(slab.shape[0], -1)  # float32 gathers are faster
    low, frac = _linear_weights(n0, coarse.shape[1])
    i, jk = np.divmod(cand, n1 * n2)
    below = low[i] * (n1 * n2) + jk
    above = below + n1 * n2
    f = frac[i].astype(np.float32)
    out = np.empty((flat.shape[0], cand.size), np.float32)
    for c, values in enumerate(flat):
        out[c] = values[below] * (1.0 - f) + values[above] * f
    return out


# Bits of the packed nearest-neighbour lookup (``_label_codes``): the lesion label grown by
# one voxel, the lesion label itself (labels are 1-5: three bits each) and the true brain.
_GROWN, _OWN_SHIFT, _BRAIN_BIT = 0b111, 3, 6


def _label_codes(subject: _Subject, head=None) -> np.ndarray:
    """One uint8 per template voxel packing what ``_truth`` looks up by nearest neighbour: the
    lesion label grown by one voxel (for the rim), the label itself and, on the padded head
    grid when ``head`` is given, the true brain (one lookup instead of three)."""
    labels = subject.labels.astype(np.uint8)
    codes = ndi.grey_dilation(labels, size=3) | (labels << _OWN_SHIFT)
    if head is None:
        return codes
    out = head.brain.astype(np.uint8) << _BRAIN_BIT
    inner = tuple(slice(int(a), int(a) + n) for a, n in zip(head.pad, codes.shape))
    out[inner] |= codes
    return out


def _head_source(subject: _Subject, head) -> np.ndarray:
    """The subject's template image inside the head's tissues on the padded head grid: linear
    interpolation of this sum equals the sum of the two interpolations (one lookup, not two)."""
    out = head.image.copy()
    inner = tuple(slice(int(a), int(a) + n) for a, n in zip(head.pad, subject.src.shape))
    out[inner] += subject.src
    return out


def _truth(
    subject: _Subject, codes: np.ndarray, at: np.ndarray, vox: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion labels and the true brain at the candidates: ``codes`` (``_label_codes``) looked
    up at ``at`` (its grid's voxel coordinates), the lesion where the interpolated occupancy at
    template voxel coordinates ``vox`` is >= 0.5 (a sub-voxel boundary that does not depend on
    the grid), labelled by its own label or else the nearest one."""
    code = ndi.map_coordinates(codes, at, order=0, cval=0, prefilter=False)
    near = code & _GROWN
    out = np.zeros(near.shape, np.uint8)
    sub = np.flatnonzero(near)
    if sub.size:
        occ_at = ndi.map_coordinates(
            subject.occupancy, vox[:, sub], order=1, cval=0.0, prefilter=False
        )
        own = (code[sub] >> _OWN_SHIFT) & _GROWN
        label = np.where(own > 0, own, near[sub])
        out[sub] = np.where(occ_at >= 0.5, label, 0)
    return out, (code >> _BRAIN_BIT) & 1


def _sample(
    subject: _Subject,
    anat: Anatomy,
    grid: OutputGrid,
    cfg: SynthConfig,
    *,
    pose: np.ndarray,
    shift: np.ndarray,
    bias_gain: float,
    head=None,
    sources: tuple[np.ndarray, np.ndarray] | None = None,
    truth: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Noise-free signal (float32, before scanner scale), lesion labels and, with ``head``, the
    true brain mask (uint8) of one subject on ``grid``; without ``truth`` only the signal.

    ``sources`` are the image and label codes to look up (``_head_source`` and
    ``_label_codes``; computed here when not given: a caller sampling one subject several
    times passes them). Where each output voxel looks in the template is smooth, so it is
    computed on a coarse version of the output grid and interpolated (much faster)."""
    coarse_shape, world = _coarse_grid(grid)
    pts = _template_points(subject, anat, cfg, world, pose, shift)
    inv = np.linalg.inv(anat.affine)
    vox_c = (pts @ inv[:3, :3].T + inv[:3, 3]).T.reshape((3, *coarse_shape)).astype(np.float32)
    if head is None:
        inside_c = ndi.map_coordinates(anat.brain_near, vox_c.reshape(3, -1), order=0, cval=0)
    else:
        at_head = vox_c.reshape(3, -1) + head.pad[:, None].astype(np.float32)
        inside_c = ndi.map_coordinates(head.near, at_head, order=0, cval=0)
    if sources is None:
        image_src = subject.src if head is None else _head_source(subject, head)
        sources = (image_src, _label_codes(subject, head))
    center = anat.center_mm()
    bias_c = np.exp(bias_gain * (_poly2((world - center) / 80.0) @ subject.bias_coef))
    cand = _candidates(grid, coarse_shape, inside_c)
    # Trilinear interpolation of the template coordinates and the bias at the candidates.
    fields = np.concatenate([vox_c, bias_c.reshape((1, *coarse_shape)).astype(np.float32)])
    vox_bias = _at_candidates(fields, grid.shape, cand)
    vox, bias = vox_bias[:3], vox_bias[3]
    n_out = int(np.prod(grid.shape))
    img = np.zeros(n_out, np.float32)
    at_src = vox if head is None else vox + head.pad[:, None].astype(np.float32)
    value = ndi.map_coordinates(sources[0], at_src, order=1, cval=0.0, prefilter=False)
    img[cand] = value * bias
    if not truth:
        return img.reshape(grid.shape), None, None
    labels, in_brain = _truth(subject, sources[1], at_src, vox)
    mask = np.zeros(n_out, np.uint8)
    mask[cand] = labels
    brain: np.ndarray | None = None
    if head is not None:
        flat_brain = np.zeros(n_out, np.uint8)
        flat_brain[cand] = in_brain
        brain = flat_brain.reshape(grid.shape)
    return img.reshape(grid.shape), mask.reshape(grid.shape), brain


def _acquire(
    signal: np.ndarray, subject: _Subject, rng: np.random.Generator, scale: float, offset: float
) -> np.ndarray:
    """Scanner scale, Rician noise and offset; int16 like a scanner's output."""
    signal = signal * np.float32(scale)
    sigma = np.float32(subject.noise_frac * scale * subject.c_wm)
    n1 = rng.standard_normal(signal.size, dtype=np.float32).reshape(signal.shape) * sigma
    n2 = rng.standard_normal(signal.size, dtype=np.float32).reshape(signal.shape) * sigma
    out = np.sqrt((signal + n1) ** 2 + n2**2) + np.float32(offset)
    return np.clip(np.rint(out), 0, 32767).astype(np.int16)


def render_case(
    latent: CaseLatent, anat: Anatomy, grid: OutputGrid, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The brain-only FLAIR volume (int16) and lesion labelmap (uint8) of one case on ``grid``."""
    rng = np.random.default_rng(latent.image_seed)
    subject = _subject(latent, anat, cfg, rng)
    img, mask, _ = _sample(
        subject, anat, grid, cfg, pose=subject.pose, shift=np.zeros(3),
        bias_gain=cfg.imaging["bias"],
    )  # fmt: skip
    assert mask is not None
    return _acquire(img, subject, rng, subject.scale, 0.0), mask
