"""Benchmark of the preprocessing stage on the generator's clinical scans (truth carried along).

For every acquisition (3D 1 mm, 2D axial 4-6 mm, 3D 2 mm) it renders whole-head scans with a
random head pose, scanner scale/offset and bias field, runs ``Preprocessor.to_model`` and
measures against the generator's truth: brain-mask Dice (template mask mapped back vs the true
brain), registration error in mm at the lesion voxels and over the brain (estimated vs true
template -> image pose; the truth leaves out the generator's smooth 2 mm deformation), the
same at the lesions against the deformed truth (for the estimate and for the true pose
itself: what no affine map can reach), the quality figures, warnings, and seconds per case
(wall clock, this machine's threads).

    python Testing/Benchmarks/bench_preprocess.py [--cases-per-acquisition 4] [--seed 11]

With ``--model`` it measures the model instead: the default ``train`` (clinical-scan stage
included) on a generated whole-head cohort (``--train-cases``), then every held-out patient
(``--test-cases``) rendered as each of ``VARIANTS`` (the clean brain-only image, skull and
neck, tilt, 1 mm with scanner scale and bias, 2D 5 mm, all at once): agreement with the clean
image's prediction (also over the patients whose clean call is not a near-tie), total
variation of the probabilities, evidence on a lesion (top evidence region's centroid within
10 mm of a lesion voxel), accuracy and its drop. With ``--work`` the cohort, the bundle and
the per-patient rows (``model_rows.jsonl``) are kept, and a rerun resumes.

    python Testing/Benchmarks/bench_preprocess.py --model [--train-cases 150] [--test-cases 40]
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


def _deformed_errors(scan, matrix: np.ndarray) -> tuple[float, float]:
    """Mean distance (mm) at the lesion voxels between each voxel and the point to which
    ``matrix``, and the true pose, send the template point the voxel truly shows (pose and
    the generator's smooth deformation inverted): what an affine map misses of the anatomy,
    the deformation's own share included."""
    ijk = np.argwhere(scan.lesions > 0)
    if len(ijk) == 0 or scan.lesion_template_mm is None:
        return float("nan"), float("nan")
    ras = np.c_[ijk, np.ones(len(ijk))] @ scan.grid.affine.T
    shown = np.c_[scan.lesion_template_mm, np.ones(len(ijk))]
    by_matrix = np.linalg.norm(shown @ matrix.T - ras, axis=1).mean()
    by_pose = np.linalg.norm(shown @ scan.pose.T - ras, axis=1).mean()
    return float(by_matrix), float(by_pose)


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
    parser.add_argument("--model", action="store_true", help="model-level figures instead")
    parser.add_argument("--train-cases", type=int, default=150)
    parser.add_argument("--test-cases", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=None, help="default: train's")
    parser.add_argument("--grid", choices=["default", "first_look"], default="default")
    parser.add_argument("--work", type=Path, default=None, help="keep cohort and bundle here")
    parser.add_argument("--test-limit", type=int, default=None, help="render only N test patients")
    args = parser.parse_args()
    if args.model:
        result = model_level(args)
        print(json.dumps(result["figures"], indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        return 0
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
            deformed, pose_deformed = _deformed_errors(scan, sample.matrix)
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
                    "error_at_lesions_with_deformation_mm": round(deformed, 2),
                    "true_pose_error_at_lesions_with_deformation_mm": round(pose_deformed, 2),
                    "warnings": sample.warnings,
                    **sample.quality,
                }
            )
            r = rows[-1]
            print(
                f"{acquisition:9s} {case_id} {r['shape']} pose {r['pitch_roll_yaw_deg']}: "
                f"{r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU), Dice {r['dice']:.3f}, error {r['error_at_lesions_mm']:.2f} "
                f"mm at lesions / {r['error_over_brain_mm']:.2f} mm over the brain, "
                f"{r['error_at_lesions_with_deformation_mm']:.2f} mm at lesions deformed "
                f"(true pose {r['true_pose_error_at_lesions_with_deformation_mm']:.2f}), "
                f"NCC {r['registration_ncc']:.2f}"
                f"{' thorough' if r.get('registration_thorough') else ''}, "
                f"warnings {len(r['warnings'])}",
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
            "error_at_lesions_with_deformation_mm_mean": round(
                float(np.nanmean([r["error_at_lesions_with_deformation_mm"] for r in sel])), 2
            ),
            "true_pose_error_at_lesions_with_deformation_mm_mean": round(
                float(
                    np.nanmean([r["true_pose_error_at_lesions_with_deformation_mm"] for r in sel])
                ),
                2,
            ),
            "cases_thorough": sum(bool(r.get("registration_thorough")) for r in sel),
            "cases_with_warnings": sum(bool(r["warnings"]) for r in sel),
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "cases": rows}, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------- model level

# Scan settings of each variant of the same held-out patient (the synth defaults otherwise):
# no pose, scale or bias unless the variant is about it.
_STILL = {"pitch_deg": 0.0, "roll_deg": 0.0, "yaw_deg": 0.0, "shift_mm": [0.0, 0.0, 0.0],
          "scanner_scale": [1.0, 1.0], "offset_frac": [0.0, 0.0], "bias": 0.0}  # fmt: skip
VARIANTS: dict[str, dict | None] = {
    "clean": None,  # the brain-only generator image (2 mm, upright, skull-stripped)
    "skull_neck": {**_STILL, "acquisitions": {"3d_2mm": 1.0}},
    "tilt": {
        **_STILL,
        "acquisitions": {"3d_2mm": 1.0},
        "pitch_deg": 20.0,
        "roll_deg": 10.0,
        "yaw_deg": 10.0,
    },  # fmt: skip
    "1mm_scanner_bias": {
        "pitch_deg": 0.0,
        "roll_deg": 0.0,
        "yaw_deg": 0.0,
        "acquisitions": {"3d_1mm": 1.0},
    },  # fmt: skip
    "2d_5mm": {**_STILL, "acquisitions": {"2d_axial": 1.0}, "slice_mm": [5.0, 5.0]},
    "all": {},  # synth's clinical-scan defaults: pose, mixed acquisitions, scale and bias
}


def _render_variant(latent, anat, cfg: SynthConfig, scan: dict | None):
    """(Volume, lesion mask) of one patient as ``scan`` renders it (None: brain only)."""
    import copy

    from autoimmuneai.synth.render import output_grid, render_case

    if scan is None:
        grid = output_grid(anat, 2.0, 0.0, False, cfg)
        image, lesions = render_case(latent, anat, grid, cfg)
        return Volume(image.astype(np.float32), grid.affine), lesions > 0
    variant = copy.deepcopy(cfg)
    variant.scan.update(copy.deepcopy(scan))
    s = render_scan(latent, anat, variant)
    return Volume(s.image.astype(np.float32), s.grid.affine), s.lesions > 0


def _top_region_on_lesion(predictor, prepared, volume: Volume, lesions: np.ndarray) -> bool:
    """Whether the top evidence region's centroid (integrated gradients, predicted class, on
    the patient's voxels) lies within 10 mm of a lesion voxel."""
    from autoimmuneai.explain.attribution import explain
    from autoimmuneai.explain.regions import evidence_regions

    bundle = predictor.bundle
    e = explain(bundle.model, prepared.image, prepared.serology, encoder=bundle.encoder,
                labs=prepared.labs)  # fmt: skip
    native = bundle.grid.to_input(e.image_map, prepared.sample)
    _, regions = evidence_regions(native, volume.affine, e.target_name)
    ijk = np.argwhere(lesions)
    if not regions or len(ijk) == 0:
        return False
    ras = np.c_[ijk, np.ones(len(ijk))] @ volume.affine.T
    top = np.asarray(regions[0].centroid_ras)
    return bool(np.linalg.norm(ras[:, :3] - top, axis=1).min() <= 10.0)


def model_level(args: argparse.Namespace) -> dict:
    """Train the default model on generated head scans, then render each held-out patient as
    every variant and compare its prediction and evidence with the clean image's."""
    import tempfile

    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.inference.predictor import Predictor
    from autoimmuneai.synth import generate_cohort
    from autoimmuneai.training.trainer import TrainConfig, train_bundle

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_preprocess_"))
    n = args.train_cases + args.test_cases
    cfg = SynthConfig(split_fractions={"train": 0.8 * args.train_cases / n,
                                       "val": 0.2 * args.train_cases / n,
                                       "test": args.test_cases / n})  # fmt: skip
    manifest = work / "cohort" / "manifest.csv"
    if not manifest.is_file():
        generate_cohort(work / "cohort", n, args.seed, config=cfg, progress=False)
    bundle_dir = work / "bundle"
    rows_file = work / "model_rows.jsonl"  # one line per patient and variant: a rerun resumes
    if not (bundle_dir / "configs" / "metadata.json").is_file():
        train_config = TrainConfig(seed=args.seed)  # the default train, stage included
        if args.epochs:
            train_config.epochs = args.epochs
        if args.grid == "first_look":
            train_config.grid_shape, train_config.grid_spacing = (48, 60, 48), 3.3
        train_bundle(manifest, bundle_dir, train_config, progress=False)
        rows_file.unlink(missing_ok=True)  # rows of an earlier bundle
    predictor = Predictor(bundle_dir)
    cohort = load_cohort(manifest, predictor.panel)
    anat = load_anatomy(2)
    plan = {case_id: (dx, s) for case_id, dx, _, s in _plan(n, args.seed, cfg)}
    saved = (
        [json.loads(line) for line in rows_file.read_text().splitlines()]
        if rows_file.is_file()
        else []
    )
    tested = [c for c in cohort.cases if c.split == "test"][: args.test_limit]
    tested_ids = {c.case_id for c in tested}
    rows = [r for r in saved if r["case_id"] in tested_ids]
    done = {r["case_id"] for r in rows}
    for case in tested:
        if case.case_id in done:
            continue
        dx, seed = plan[case.case_id]
        latent = sample_case(seed, case.case_id, dx, anat, cfg)
        patient: list[dict] = []
        for name, scan in VARIANTS.items():
            volume, lesions = _render_variant(latent, anat, cfg, scan)
            prepared = predictor.prepare(volume, case.labs)
            p = predictor.predict_prepared(prepared, case.case_id)
            patient.append({
                "case_id": case.case_id, "variant": name, "truth": dx,
                "probabilities": p.probabilities, "predicted": p.predicted,
                "evidence_on_lesion": (
                    _top_region_on_lesion(predictor, prepared, volume, lesions)
                    if lesions.any() else None
                ),
            })  # fmt: skip
        rows.extend(patient)
        with rows_file.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in patient))
        print(f"{case.case_id}: " + ", ".join(f"{r['variant']} {r['predicted']}"
              for r in patient), flush=True)  # fmt: skip
    return {"work": str(work), "figures": _model_figures(rows), "cases": rows}


DECIDED_MARGIN = 0.05  # clean top-two probability gap below which the clean call is a tie


def _margin(probabilities: dict[str, float]) -> float:
    top = sorted(probabilities.values(), reverse=True)
    return top[0] - top[1]


def _by_class(rows: list[dict]) -> dict[str, str]:
    """Evidence on a lesion per true diagnosis, as "hits/patients with a lesion": the image
    carries the call for some diseases and the labs for others, and a mean hides which."""
    out = {}
    for dx in sorted({r["truth"] for r in rows}):
        on = [r["evidence_on_lesion"] for r in rows if r["truth"] == dx]
        on = [x for x in on if x is not None]
        out[dx] = f"{sum(on)}/{len(on)}"
    return out


def _model_figures(rows: list[dict]) -> dict:
    """Per variant: agreement with the clean image's prediction (over every patient, and over
    the patients whose clean call is not a tie: agreement on a near-tie measures a coin flip),
    total variation of the probabilities (mean and 90th percentile), evidence on a lesion,
    accuracy and its drop from the clean image."""
    clean = {r["case_id"]: r for r in rows if r["variant"] == "clean"}
    decided = {c for c, r in clean.items() if _margin(r["probabilities"]) >= DECIDED_MARGIN}
    out = {}
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        if not sel:
            continue
        tv = [0.5 * sum(abs(r["probabilities"][c] - clean[r["case_id"]]["probabilities"][c])
                        for c in r["probabilities"]) for r in sel]  # fmt: skip
        on = [r["evidence_on_lesion"] for r in sel if r["evidence_on_lesion"] is not None]
        accuracy = float(np.mean([r["predicted"] == r["truth"] for r in sel]))
        clean_accuracy = float(np.mean([c["predicted"] == c["truth"] for c in clean.values()]))
        out[name] = {
            "cases": len(sel),
            "agreement_with_clean": round(float(np.mean(
                [r["predicted"] == clean[r["case_id"]]["predicted"] for r in sel])), 3),
            "decided_cases": sum(r["case_id"] in decided for r in sel),
            "agreement_decided": round(float(np.mean(
                [r["predicted"] == clean[r["case_id"]]["predicted"]
                 for r in sel if r["case_id"] in decided] or [np.nan])), 3),
            "mean_total_variation": round(float(np.mean(tv)), 3),
            "total_variation_p90": round(float(np.percentile(tv, 90)), 3),
            "evidence_on_lesion": round(float(np.mean(on)), 3) if on else None,
            "evidence_on_lesion_by_class": _by_class(sel),
            "accuracy": round(accuracy, 3),
            "accuracy_drop": round(clean_accuracy - accuracy, 3),
        }  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
