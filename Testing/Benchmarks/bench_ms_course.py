"""Benchmark of the MS course cohort's difficulty: labs only, image truth only, both (an oracle).

Latent cases of ``synth --panel ms_course`` (no images; the same draws as the generator) are
split 60/40 (stratified); on the held-out part this reports, for (a) the labs and clinical
values as the product parses them (``data.labvalues``, log for NfL / GFAP, mean-imputed, plus
missingness flags), (b) what a perfect reading of the three contrasts gives (lesion counts
per region, enhancing lesions, black holes, atrophy) and (c) both: balanced accuracy and
macro AUROC of a balanced logistic regression (scikit-learn), SPMS-vs-RRMS AUROC, and the
c-index of a Cox model (lifelines, small ridge) for 6-month confirmed disability worsening.

    python Testing/Benchmarks/bench_ms_course.py --cases 3000 --out ms_course.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autoimmuneai.data.labvalues import model_value, parse_lab_value
from autoimmuneai.data.panel import load_panel
from autoimmuneai.synth.anatomy import LABELS, load_anatomy
from autoimmuneai.synth.ms_course import MSCourseConfig, plan, sample_course_case


def latent_table(n: int, seed: int) -> pd.DataFrame:
    """One row per latent case: parsed labs (+ missing flags), image truth, outcome."""
    panel = load_panel("ms_course")
    cfg = MSCourseConfig()
    base = cfg.base_config()
    anat = load_anatomy(2)
    rows = []
    for cid, dx, split, s in plan(n, seed, cfg):
        case = sample_course_case(s, cid, dx, split, anat, cfg, base)
        labs = {**case.labs, "age": str(int(case.age)), "sex": case.sex}
        row: dict[str, object] = {"diagnosis": dx}
        for f in panel.features:
            lab = parse_lab_value(labs.get(f.name, ""), f)
            value = np.nan if lab.missing else model_value(lab)
            if f.log and np.isfinite(value):
                value = math.log1p(value)
            row[f"lab_{f.name}"] = value
            row[f"lab_{f.name}_missing"] = float(lab.missing)
        counts = dict.fromkeys(LABELS.values(), 0)
        for spec in case.lesions:
            counts[LABELS[spec.label]] += 1
        for name, k in counts.items():
            row[f"img_n_{name}"] = math.log1p(k)
        row["img_n_enhancing"] = math.log1p(sum(case.enhancing))
        row["img_n_black_holes"] = math.log1p(sum(case.black_hole))
        row["img_atrophy"] = case.atrophy
        row["time"], row["event"] = case.survival.event_time, case.survival.event
        rows.append(row)
    return pd.DataFrame(rows)


def _scores(table: pd.DataFrame, columns: list[str], train, test, classes) -> dict:
    y = table["diagnosis"].to_numpy()
    pipe = make_pipeline(
        SimpleImputer(strategy="mean", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=5000),
    )
    x = table[columns].to_numpy(dtype=float)
    pipe.fit(x[train], y[train])
    p = pipe.predict_proba(x[test])
    order = list(pipe.classes_)
    yt = y[test]
    rr = np.isin(yt, ["RRMS", "SPMS"])
    sp = p[rr][:, order.index("SPMS")] / (
        p[rr][:, order.index("SPMS")] + p[rr][:, order.index("RRMS")]
    )
    xs = pd.DataFrame(
        StandardScaler()
        .fit(SimpleImputer().fit_transform(x[train]))
        .transform(SimpleImputer().fit(x[train]).transform(x)),
        columns=columns,
    )
    xs = xs.loc[:, xs.iloc[train].std() > 1e-9]
    cox = CoxPHFitter(penalizer=0.1).fit(
        pd.concat([xs.iloc[train].reset_index(drop=True),
                   table[["time", "event"]].iloc[train].reset_index(drop=True)], axis=1),
        "time", "event",
    )  # fmt: skip
    risk = cox.predict_partial_hazard(xs.iloc[test]).to_numpy()
    return {
        "balanced_accuracy": round(balanced_accuracy_score(yt, np.array(order)[p.argmax(1)]), 4),
        "macro_auroc": round(roc_auc_score(yt, p, multi_class="ovr", labels=order), 4),
        "spms_vs_rrms_auroc": round(roc_auc_score(yt[rr] == "SPMS", sp), 4),
        "c_index": round(
            concordance_index(table["time"].iloc[test], -risk, table["event"].iloc[test]), 4
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = latent_table(args.cases, args.seed)
    seconds = time.perf_counter() - t0
    idx = np.arange(len(table))
    train, test = train_test_split(
        idx, test_size=0.4, stratify=table["diagnosis"], random_state=args.seed
    )
    labs = [c for c in table.columns if c.startswith("lab_")]
    image = [c for c in table.columns if c.startswith("img_")]
    classes = sorted(table["diagnosis"].unique())
    result = {
        "cases": args.cases,
        "held_out": len(test),
        "latent_seconds_per_case": round(seconds / args.cases, 4),
        "labs_only": _scores(table, labs, train, test, classes),
        "image_truth_only": _scores(table, image, train, test, classes),
        "oracle_both": _scores(table, labs + image, train, test, classes),
        "classes": table["diagnosis"].value_counts().to_dict(),
        "event_rate": round(float(table["event"].mean()), 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
