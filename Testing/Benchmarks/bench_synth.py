"""Benchmark of the synthetic demo cohort: generation speed and the three difficulty figures.

Difficulty = balanced accuracy of a simple classifier (scikit-learn LogisticRegression,
balanced class weights), trained on the train+val split and scored on the held-out test split:
(a) latent lesion features only (per-region lesion counts and volumes, age, atrophy),
(b) serology only (lab strings parsed as the product parses them, plus missingness flags),
(c) both ("oracle"). Also reported: the best single feature's balanced accuracy (no single
feature should separate any class).

Figures are measured on the generated cohort (N cases, with images) and, for a stable
estimate, on a larger latent-only sample of the same generator (no images).

    python Testing/Benchmarks/bench_synth.py --cases 400 --workers 2 --out synth.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autoimmuneai.data.labvalues import parse_lab_value
from autoimmuneai.data.panel import load_panel
from autoimmuneai.synth import SynthConfig, generate_cohort, sample_latent_cohort
from autoimmuneai.synth.anatomy import REGION_NAMES
from autoimmuneai.synth.serology import FEATURES

LESION_COLUMNS = [f"n_{r}" for r in REGION_NAMES] + [f"vol_{r}_ml" for r in REGION_NAMES]


def lesion_features(truth: pd.DataFrame) -> pd.DataFrame:
    """Latent lesion features: log counts and volumes per region and in total, age, atrophy."""
    cols = [*LESION_COLUMNS, "n_total", "vol_total_ml"]
    x = np.log1p(truth[cols].astype(float))
    x["age"] = truth["age"].astype(float)
    x["atrophy"] = truth["atrophy"].astype(float)
    return x


def serology_features(manifest: pd.DataFrame) -> pd.DataFrame:
    """Parsed lab values (log scale where skewed; '<x' as x/2) plus one missing flag each."""
    panel = load_panel("cns_autoimmune")
    out = {}
    for name in FEATURES:
        feat = panel.feature(name)
        values, missing = [], []
        for raw in manifest[name].tolist():
            lv = parse_lab_value(raw, feat)
            v = lv.value
            if not lv.missing and lv.censor == "<":
                v = v / 2.0
            if not lv.missing and (feat.kind == "titer" or feat.log):
                v = math.log1p(v)
            values.append(v)
            missing.append(float(lv.missing))
        out[name] = values
        out[f"{name}_missing"] = missing
    return pd.DataFrame(out, index=manifest.index)


def _fit_score(x: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    med = x[train].median()
    xf = x.fillna(med).fillna(0.0)
    model = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000, C=1.0)
    )
    model.fit(xf[train], y[train])
    return float(balanced_accuracy_score(y[test], model.predict(xf[test])))


def _cv_score(x: pd.DataFrame, y: np.ndarray) -> float:
    """5-fold stratified cross-validated balanced accuracy (steadier than one small test split)."""
    scores = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        tr, te = np.zeros(len(y), bool), np.zeros(len(y), bool)
        tr[train], te[test] = True, True
        scores.append(_fit_score(x, y, tr, te))
    return float(np.mean(scores))


def difficulty(manifest: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Balanced accuracy of (a) lesions, (b) serology, (c) both, and the best single feature,
    on the held-out test split and by 5-fold cross-validation."""
    truth = truth.set_index("case_id").loc[manifest["case_id"]].reset_index()
    y = manifest["diagnosis"].to_numpy()
    train = manifest["split"].isin(["train", "val"]).to_numpy()
    test = (manifest["split"] == "test").to_numpy()
    xa = lesion_features(truth)
    xb = serology_features(manifest)
    xa.index = xb.index
    both = pd.concat([xa, xb], axis=1)
    single = max(_fit_score(both[[c]], y, train, test) for c in both.columns)
    return {
        "lesions_only": round(_fit_score(xa, y, train, test), 3),
        "serology_only": round(_fit_score(xb, y, train, test), 3),
        "oracle_both": round(_fit_score(both, y, train, test), 3),
        "best_single_feature": round(single, 3),
        "cv5_lesions_only": round(_cv_score(xa, y), 3),
        "cv5_serology_only": round(_cv_score(xb, y), 3),
        "cv5_oracle_both": round(_cv_score(both, y), 3),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
    }


def latent_tables(n_cases: int, seed: int, cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest-like and truth tables of latent cases (no images)."""
    rows, truths = [], []
    for lat, split in sample_latent_cohort(n_cases, seed, cfg):
        rows.append(
            {"case_id": lat.case_id, **lat.labs, "diagnosis": lat.diagnosis, "split": split}
        )
        truths.append(lat.truth_row())
    return pd.DataFrame(rows).fillna(""), pd.DataFrame(truths)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the generator's workers)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=400, help="cases to generate with images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--anatomy",
        choices=["brain", "head"],
        default="brain",
        help="brain: skull-stripped images at --voxel-size; head: synth's default clinical scans "
        "(their own acquisition mix, so --voxel-size does not apply)",
    )
    ap.add_argument("--voxel-size", type=float, default=2.0)
    ap.add_argument("--latent-cases", type=int, default=5000, help="latent-only sample size")
    ap.add_argument("--keep", type=Path, default=None, help="write the cohort here (kept)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    cfg = SynthConfig()
    result: dict = {"cpu_count": os.cpu_count(), "workers": args.workers}
    if args.latent_cases:
        t0 = time.perf_counter()
        manifest, truth = latent_tables(args.latent_cases, args.seed + 1, cfg)
        result["latent_sample"] = {
            "n_cases": args.latent_cases,
            "seconds": round(time.perf_counter() - t0, 1),
            **difficulty(manifest, truth),
        }
    if args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep or Path(tmp) / "cohort"
            t0 = time.perf_counter()
            cpu0 = _cpu_seconds()
            path = generate_cohort(
                out, args.cases, args.seed, voxel_size=args.voxel_size, workers=args.workers,
                progress=False, config=cfg, anatomy=args.anatomy,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            cpu = _cpu_seconds() - cpu0
            manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
            truth = pd.read_csv(path.parent / "truth.csv")
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            result["cohort"] = {
                "n_cases": args.cases,
                "anatomy": args.anatomy,
                "voxel_size_mm": args.voxel_size if args.anatomy == "brain" else None,
                "seconds_total": round(seconds, 1),
                "seconds_per_case_wall": round(seconds / args.cases, 3),
                "cpu_seconds_per_case": round(cpu / args.cases, 3),
                "projected_seconds_on_free_cores": round(cpu / args.workers, 1),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "megabytes": round(size / 1e6, 1),
                **difficulty(manifest, truth),
            }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
