"""Generate the demo cohort: assign classes and splits, sample and render cases in parallel,
write NIfTI volumes, ``manifest.csv``, ``truth.csv`` and ``cohort.json``.

Determinism: the cohort seed is split with ``SeedSequence.spawn`` into one stream for class
and split assignment and one per case, so every file is the same for the same seed whatever
the number of workers (tables are written with fixed formatting: byte-identical).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import csv_text, write_text, write_with
from ..errors import InputError
from ..processes import pool_context
from .anatomy import LABELS, load_anatomy
from .config import SynthConfig
from .head import load_head
from .latent import CaseLatent, sample_case
from .render import OutputGrid, output_grid, render_case
from .scan import render_scan
from .serology import FEATURES

MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id", "image_flair", "mask_lesions", *FEATURES, "age", "sex", "diagnosis",
    "event_time", "event", "split",
)  # fmt: skip
TRUTH_COLUMNS: tuple[str, ...] = (
    "case_id", "diagnosis",
    *(f"{p}_{r}" if p == "n" else f"vol_{r}_ml" for r in LABELS.values() for p in ("n", "vol")),
    "n_total", "vol_total_ml", "age", "sex", "atrophy", "autoimmune", "complement_low",
    *(f"true_{f}" for f in FEATURES),
    "true_log_hazard", "true_event_time", "censor_time",
)  # fmt: skip


def template_resolution(voxel_size: float) -> int:
    """Template grid used for a requested output voxel size (1 mm template below 1.5 mm)."""
    return 1 if voxel_size < 1.5 else 2


def assign_classes(
    rng: np.random.Generator, n_cases: int, cfg: SynthConfig
) -> tuple[list[str], list[str]]:
    """Class of every case (largest-remainder allocation of the class fractions, shuffled)
    and a split stratified by class (about train/val/test = 60/20/20)."""
    classes = cfg.classes
    frac = np.array([cfg.class_fractions[c] for c in classes], float)
    frac /= frac.sum()
    exact = frac * n_cases
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n_cases - counts.sum()]:
        counts[k] += 1
    labels = np.repeat(np.arange(len(classes)), counts)
    labels = labels[rng.permutation(n_cases)]
    split = np.empty(n_cases, dtype=object)
    names = list(cfg.split_fractions)
    sfrac = np.array([cfg.split_fractions[s] for s in names], float)
    sfrac /= sfrac.sum()
    for k in range(len(classes)):
        members = np.flatnonzero(labels == k)
        members = members[rng.permutation(members.size)]
        bounds = np.round(np.cumsum(sfrac) * members.size).astype(int)
        start = 0
        for name, stop in zip(names, bounds):
            split[members[start:stop]] = name
            start = stop
    return [classes[k] for k in labels], [str(s) for s in split]


def case_ids(n_cases: int) -> list[str]:
    width = max(4, len(str(n_cases)))
    return [f"syn{i + 1:0{width}d}" for i in range(n_cases)]


def _plan(n_cases: int, seed: int, cfg: SynthConfig) -> list[tuple[str, str, str, Any]]:
    root = np.random.SeedSequence(seed)
    assign_seed, *case_seeds = root.spawn(n_cases + 1)
    diagnoses, splits = assign_classes(np.random.default_rng(assign_seed), n_cases, cfg)
    return list(zip(case_ids(n_cases), diagnoses, splits, case_seeds))


def sample_latent_cohort(
    n_cases: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    resolution: int = 2,
    *,
    keep_maps: bool = False,
) -> list[tuple[CaseLatent, str]]:
    """The latent cases (no images) of the cohort ``generate_cohort`` would write, with splits.

    Same seed and config give the same latents as ``generate_cohort`` at this template
    resolution (tests and the difficulty benchmark use it to sample many cases quickly).
    The template-space lesion drawings are dropped unless ``keep_maps`` (5 MB per case).
    """
    cfg = config or SynthConfig()
    anat = load_anatomy(resolution)
    out = []
    for cid, dx, split, s in _plan(n_cases, seed, cfg):
        latent = sample_case(s, cid, dx, anat, cfg)
        if not keep_maps:
            latent.maps = None
        out.append((latent, split))
    return out


def _csv(rows: Iterable[dict[str, object]], columns: tuple[str, ...]) -> str:
    """Manifest / truth CSV text through the product's one CSV writer (spreadsheet-safe)."""
    return csv_text(rows, columns)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    write_with(path, lambda tmp: nib.save(img, tmp))
    _readable(path)


def _readable(path: Path) -> None:
    """Atomic writes create 0600 temporaries; outputs are ordinary shared files."""
    os.chmod(path, 0o644)


# Work shared with worker processes (set before the pool starts; forked workers inherit it).
_JOB: dict[str, Any] = {}


def _init_worker(job: dict[str, Any]) -> None:
    _JOB.update(job)
    load_anatomy(job["resolution"])


def _make_case(task: tuple[str, str, str, Any]) -> tuple[dict[str, object], dict[str, object]]:
    case_id, diagnosis, split, seed = task
    cfg: SynthConfig = _JOB["config"]
    grid: OutputGrid = _JOB["grid"]
    out: Path = _JOB["out_dir"]
    anat = load_anatomy(_JOB["resolution"])
    latent = sample_case(seed, case_id, diagnosis, anat, cfg)
    image_rel = f"images/{case_id}_flair.nii.gz"
    mask_rel = f"masks/{case_id}_lesions.nii.gz"
    scan_truth: dict[str, object] = {}
    if _JOB.get("anatomy") == "head":
        scan = render_scan(latent, anat, cfg)
        brain_rel = f"masks/{case_id}_brain.nii.gz"
        _save_nifti(out / image_rel, scan.image, scan.grid.affine)
        _save_nifti(out / mask_rel, scan.lesions, scan.grid.affine)
        _save_nifti(out / brain_rel, scan.brain, scan.grid.affine)
        scan_truth = {
            "acquisition": scan.acquisition,
            "template_to_image_ras": np.round(scan.pose, 6).tolist(),
            "pitch_roll_yaw_deg": [round(a, 3) for a in scan.angles_deg],
            "brain_mask": brain_rel,
        }
    else:
        image, mask = render_case(latent, anat, grid, cfg)
        _save_nifti(out / image_rel, image, grid.affine)
        _save_nifti(out / mask_rel, mask, grid.affine)
    row: dict[str, object] = {
        "case_id": case_id,
        "image_flair": image_rel,
        "mask_lesions": mask_rel,
    }
    row.update(latent.labs)
    row.update(
        age=int(math.floor(latent.age)),
        sex=latent.sex,
        diagnosis=diagnosis,
        event_time=f"{latent.survival.event_time:.2f}",
        event=latent.survival.event,
        split=split,
    )
    truth = latent.truth_row()
    if scan_truth:
        truth["_scan"] = scan_truth
    return row, truth


def _versions() -> dict[str, str]:
    import nibabel
    import nilearn
    import scipy

    from .. import __version__

    return {
        "autoimmuneai": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "nilearn": nilearn.__version__,
    }


def _run(
    tasks: list,
    workers: int,
    job: dict[str, Any],
    init: Callable[[dict[str, Any]], None] = _init_worker,
    make: Callable[[Any], tuple[dict, dict]] = _make_case,
) -> Iterator[tuple[dict, dict]]:
    """``make(task)`` of every task in order, ``workers`` processes each set up by ``init(job)``
    (one generator per disease family passes its own pair)."""
    if workers <= 1:
        init(job)
        yield from map(make, tasks)
        return
    load_anatomy(job["resolution"])  # forked workers inherit the cached anatomy
    chunk = max(1, min(8, len(tasks) // (4 * workers)))
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context(),
        initializer=init,
        initargs=(job,),
    ) as pool:
        yield from pool.map(make, tasks, chunksize=chunk)


def _check_options(
    n_cases: int, seed: int, voxel_size: float, oblique_deg: float, anatomy: str
) -> None:
    """One-line errors for options outside what the generator renders."""
    if not isinstance(n_cases, int) or n_cases < 1:
        raise InputError(f"--cases must be a positive whole number, not {n_cases!r}")
    if not (0.5 <= float(voxel_size) <= 6.0):
        raise InputError(f"--voxel-size must be between 0.5 and 6 mm, not {voxel_size!r}")
    if not (-60.0 <= float(oblique_deg) <= 60.0):
        raise InputError(f"--oblique must be between -60 and 60 degrees, not {oblique_deg!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative whole number, not {seed!r}")
    if anatomy not in ("brain", "head"):
        raise InputError(f"--anatomy must be 'brain' or 'head', not {anatomy!r}")


def _prepare_folder(out: Path) -> None:
    """The output folder with its ``images/`` and ``masks/`` (an existing file is refused)."""
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", file=out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)


def _collect(
    results: Iterable[tuple[dict, dict]],
) -> tuple[list[dict], list[dict], dict[str, object]]:
    """Manifest rows, truth rows and (head scans only) each case's scan truth, in case order."""
    rows, truths, scans = [], [], {}
    for row, truth in results:
        scan_truth = truth.pop("_scan", None)
        if scan_truth:
            scans[str(row["case_id"])] = scan_truth
        rows.append(row)
        truths.append(truth)
    return rows, truths, scans


def _cohort_meta(
    cfg: SynthConfig,
    rows: list[dict],
    grid: OutputGrid,
    resolution: int,
    options: dict[str, object],
) -> dict[str, object]:
    """``cohort.json``: how the cohort was made (options, template, grid, config, versions)."""
    return {
        "generator": "autoimmuneai synth",
        **options,
        "template": f"MNI152 (nilearn), {resolution} mm",
        "grid": {"shape": list(grid.shape), "affine": grid.affine.round(6).tolist()},
        "labels": {str(k): v for k, v in LABELS.items()},
        "classes": {c: sum(r["diagnosis"] == c for r in rows) for c in cfg.classes},
        "splits": {s: sum(r["split"] == s for r in rows) for s in cfg.split_fractions},
        "versions": _versions(),
        "config": cfg.to_dict(),
    }


def _write_tables(
    out: Path,
    rows: list[dict],
    truths: list[dict],
    scans: dict[str, object],
    meta: dict[str, object],
    manifest_columns: tuple[str, ...] = MANIFEST_COLUMNS,
    truth_columns: tuple[str, ...] = TRUTH_COLUMNS,
) -> Path:
    """``scans.json`` (head scans), ``truth.csv``, ``cohort.json`` and, last, ``manifest.csv``."""
    if scans:
        write_text(out / "scans.json", json.dumps(scans, indent=1) + "\n")
        _readable(out / "scans.json")
    manifest = out / "manifest.csv"
    write_text(out / "truth.csv", _csv(truths, truth_columns))
    _readable(out / "truth.csv")
    write_text(out / "cohort.json", json.dumps(meta, indent=1) + "\n")
    write_text(manifest, _csv(rows, manifest_columns))
    for path in (out / "cohort.json", manifest):
        _readable(path)
    return manifest


def generate_cohort(
    out_dir: Path,
    n_cases: int = 400,
    seed: int = 0,
    *,
    voxel_size: float = 2.0,
    oblique_deg: float = 0.0,
    anisotropic: bool = False,
    workers: int | None = None,
    progress: bool = True,
    config: SynthConfig | None = None,
    anatomy: str = "head",
) -> Path:
    """Write the synthetic demo cohort to ``out_dir`` and return the manifest's path.

    ``anatomy="head"`` (the default) renders clinical scans (``scan.render_scan``: whole
    head, head pose, mixed acquisitions, scanner scale; ``voxel_size``, ``oblique_deg`` and
    ``anisotropic`` do not apply) and writes ``masks/<case>_brain.nii.gz`` (true brain) and
    ``scans.json`` (acquisition and true template -> image pose of every case); ``"brain"``
    keeps the skull-stripped upright images on one grid.

    ``images/<case>_flair.nii.gz`` (int16 FLAIR-like), ``masks/<case>_lesions.nii.gz``
    (labels: 1 periventricular, 2 juxtacortical, 3 infratentorial, 4 deep grey, 5 other),
    ``manifest.csv`` (lab-sheet strings), ``truth.csv`` (latent variables), ``cohort.json``.
    """
    _check_options(n_cases, seed, voxel_size, oblique_deg, anatomy)
    cfg = config or SynthConfig()
    out = Path(out_dir)
    _prepare_folder(out)
    resolution = template_resolution(float(voxel_size))
    anat = load_anatomy(resolution)
    grid = output_grid(anat, float(voxel_size), float(oblique_deg), bool(anisotropic), cfg)
    tasks = _plan(n_cases, seed, cfg)
    workers = workers or min(os.cpu_count() or 1, 8)
    workers = max(1, min(int(workers), n_cases))
    if anatomy == "head":
        resolution = 2  # one anatomy for every acquisition: the same brains at any voxel size
        load_anatomy(resolution)
        load_head(resolution)  # before the workers fork: they inherit it
    job = {
        "config": cfg,
        "grid": grid,
        "out_dir": out,
        "resolution": resolution,
        "anatomy": anatomy,
    }
    results = _run(tasks, workers, job)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=n_cases, desc="synth", unit="case", file=sys.stderr)
    rows, truths, scans = _collect(results)
    options = {
        "seed": seed,
        "n_cases": n_cases,
        "voxel_size": float(voxel_size),
        "oblique_deg": float(oblique_deg),
        "anisotropic": bool(anisotropic),
        "anatomy": anatomy,
    }
    meta = _cohort_meta(cfg, rows, grid, resolution, options)
    return _write_tables(out, rows, truths, scans, meta)
