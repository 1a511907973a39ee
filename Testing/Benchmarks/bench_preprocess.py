"""Benchmark of the preprocessing stage on the generator's clinical scans (truth carried along).

For every acquisition (3D 1 mm, 2D axial 4-6 mm, 3D 2 mm) it renders whole-head scans with a
random head pose, scanner scale/offset and bias field, runs ``Preprocessor.to_model`` and
measures against the generator's truth: brain-mask Dice (template mask mapped back vs the true
brain), registration error in mm at the lesion voxels and over the brain (estimated vs true
template -> image pose; the truth leaves out the generator's smooth 2 mm deformation), the
quality figures, warnings, and seconds per case (wall clock, this machine's threads).

    python Testing/Benchmarks/bench_preprocess.py [--cases-per-acquisition 4] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from autoimmuneai.data.imaging import Volume
from autoimmuneai.preprocess.brain_mask import dice
from autoimmuneai.preprocess.pipeline import Preprocessor
from autoimmuneai.preprocess.template import load_template
from autoimmuneai.synth.anatomy import load_anatomy
from autoimmuneai.synth.cohort import _plan
from autoimmuneai.synth.config import SynthConfig
from autoimmuneai.synth.latent import sample_case
from autoimmuneai.synth.scan import render_scan

ACQUISITIONS = ("3d_2mm", "2d_axial", "3d_1mm")


def _errors(scan, matrix: np.ndarray, brain_points: np.ndarray) -> tuple[float, float]:
    """Mean registration error (mm) at the lesion voxels and over the template brain."""
    over_brain = np.linalg.norm(brain_points @ matrix.T - brain_points @ scan.pose.T, axis=1)
    ijk = np.argwhere(scan.lesions > 0)
    if len(ijk) == 0:
        return float("nan"), float(over_brain.mean())
    ras = np.c_[ijk, np.ones(len(ijk))] @ scan.grid.affine.T
    template = ras @ np.linalg.inv(scan.pose).T
    at_lesions = np.linalg.norm(template @ matrix.T - ras, axis=1)
    return float(at_lesions.mean()), float(over_brain.mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-per-acquisition", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument(
        "--pitch-deg", type=float, default=None, help="head pitch range +- (default: synth's)"
    )
    parser.add_argument("--acquisitions", nargs="+", default=list(ACQUISITIONS))
    args = parser.parse_args()
    anat = load_anatomy(2)
    t = load_template(2.0)
    ijk = np.argwhere(t.brain_array)[::40]
    brain_points = np.c_[ijk, np.ones(len(ijk))] @ t.affine.T
    pre = Preprocessor()
    load_template(4.0, 2.0), load_template(8.0, 4.0)  # warm the caches (not timed)
    rows = []
    for k, acquisition in enumerate(args.acquisitions):
        cfg = SynthConfig()
        cfg.scan["acquisitions"] = {acquisition: 1.0}
        if args.pitch_deg is not None:
            cfg.scan["pitch_deg"] = args.pitch_deg
        plan = _plan(args.cases_per_acquisition, args.seed + k, cfg)
        for case_id, diagnosis, _, seed in plan:
            scan = render_scan(sample_case(seed, case_id, diagnosis, anat, cfg), anat, cfg)
            volume = Volume(scan.image.astype(np.float32), scan.grid.affine)
            start, cpu = time.perf_counter(), time.process_time()
            sample = pre.to_model(volume)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            start = time.perf_counter()
            native = pre.native_brain_mask(sample)
            seconds_back = time.perf_counter() - start
            at_lesions, over_brain = _errors(scan, sample.matrix, brain_points)
            rows.append(
                {
                    "acquisition": acquisition,
                    "case_id": case_id,
                    "shape": list(volume.shape),
                    "spacing": [round(float(s), 2) for s in volume.spacing],
                    "pitch_roll_yaw_deg": [round(a, 1) for a in scan.angles_deg],
                    "seconds": round(seconds, 2),
                    "cpu_seconds": round(cpu, 2),
                    "seconds_map_back": round(seconds_back, 2),
                    "dice": round(dice(native, scan.brain), 4),
                    "error_at_lesions_mm": round(at_lesions, 2),
                    "error_over_brain_mm": round(over_brain, 2),
                    "warnings": sample.warnings,
                    **sample.quality,
                }
            )
            r = rows[-1]
            print(
                f"{acquisition:9s} {case_id} {r['shape']} pose {r['pitch_roll_yaw_deg']}: "
                f"{r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU), Dice {r['dice']:.3f}, error {r['error_at_lesions_mm']:.2f} "
                f"mm at lesions / {r['error_over_brain_mm']:.2f} mm over the brain, "
                f"NCC {r['registration_ncc']:.2f}, warnings {len(r['warnings'])}",
                flush=True,
            )
    summary = {}
    for acquisition in args.acquisitions:
        sel = [r for r in rows if r["acquisition"] == acquisition]
        summary[acquisition] = {
            "cases": len(sel),
            "seconds_mean": round(float(np.mean([r["seconds"] for r in sel])), 2),
            "seconds_max": round(float(np.max([r["seconds"] for r in sel])), 2),
            "cpu_seconds_mean": round(float(np.mean([r["cpu_seconds"] for r in sel])), 2),
            "dice_min": round(float(np.min([r["dice"] for r in sel])), 4),
            "dice_mean": round(float(np.mean([r["dice"] for r in sel])), 4),
            "error_at_lesions_mm_mean": round(
                float(np.nanmean([r["error_at_lesions_mm"] for r in sel])), 2
            ),
            "error_at_lesions_mm_max": round(
                float(np.nanmax([r["error_at_lesions_mm"] for r in sel])), 2
            ),
            "cases_with_warnings": sum(bool(r["warnings"]) for r in sel),
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
