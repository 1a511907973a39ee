"""Benchmark of the small-cohort statistics: conformal methods, temperature check, by cohort size.

A stand-in for the trained network that costs seconds instead of minutes: the oracle's inputs
(latent lesion features and parsed labs of the demo generator, ``bench_synth``) and the
project's linear pipeline (``stats.baselines.linear_pipeline``), whose balanced accuracy on
this generator (about 0.80-0.84) is close to the fused network's. For each cohort size
(training / validation cases as in the default demo and in ``train`` on 400 cases) it draws
``--repeats`` cohorts from a large latent sample, fits on the training cases, calibrates on
the validation cases exactly as ``train`` does (``choose_temperature``, then each conformal
method) and measures on ``--heldout`` further cases: marginal coverage, the coverage of every
class (mean and 10th percentile over repeats of the worst class), mean set size, ECE.

    python Testing/Benchmarks/bench_conformal.py --repeats 40 --out conformal.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_synth import latent_tables, lesion_features, serology_features  # noqa: E402

from autoimmuneai.stats.baselines import linear_pipeline  # noqa: E402
from autoimmuneai.stats.calibration import (  # noqa: E402
    choose_temperature,
    expected_calibration_error,
    softmax,
)
from autoimmuneai.stats.conformal import (  # noqa: E402
    ConformalPredictor,
    coverage,
    fit_conformal,
    fit_default_conformal,
    mean_set_size,
)
from autoimmuneai.synth import SynthConfig  # noqa: E402

SIZES = {
    "default demo (144 train / 48 val)": (144, 48),
    "train on 400 generated cases (239 / 82)": (239, 82),
    "train on 400 (267 / 133)": (267, 133),
}
CLASS_ALPHA = 0.15  # train's default per-class floor (TrainConfig.class_coverage 0.85)
# each set rule as a fit of (validation probabilities, labels, alpha, seed)
METHODS: dict[str, Callable[[np.ndarray, np.ndarray, float, int], ConformalPredictor]] = {
    "RAPS (0.05, 1), marginal (before)": lambda p, y, a, s: fit_conformal(
        p, y, alpha=a, seed=s, method="raps", lam=0.05, k_reg=1
    ),
    "APS, marginal": lambda p, y, a, s: fit_conformal(p, y, alpha=a, seed=s, method="aps"),
    "LAC, marginal": lambda p, y, a, s: fit_conformal(
        p, y, alpha=a, seed=s, method="lac", class_conditional=False
    ),
    "LAC, Mondrian": lambda p, y, a, s: fit_conformal(
        p, y, alpha=a, seed=s, method="lac", class_conditional=True
    ),
    "LAC, 85% floor per class (forced)": lambda p, y, a, s: fit_conformal(
        p, y, alpha=a, seed=s, method="lac", class_conditional=True, class_alpha=CLASS_ALPHA
    ),
    "Mondrian when every class has >= 19 (the default before)": lambda p, y, a, s: (
        fit_default_conformal(p, y, alpha=a, seed=s)
    ),
    "default (LAC; 85% floor per class when every class has >= 13)": lambda p, y, a, s: (
        fit_default_conformal(p, y, alpha=a, seed=s, class_alpha=CLASS_ALPHA)
    ),
}


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    manifest, truth = latent_tables(n, seed, SynthConfig())
    truth = truth.set_index("case_id").loc[manifest["case_id"]].reset_index()
    xa, xb = lesion_features(truth), serology_features(manifest)
    xa.index = xb.index
    x = np.hstack([xa.to_numpy(float), xb.to_numpy(float)])
    classes = sorted(set(manifest["diagnosis"]))
    y = np.array([classes.index(d) for d in manifest["diagnosis"]])
    return x, y


def _one(x, y, train, val, test, alpha: float, seed: int) -> dict:
    pipe = linear_pipeline().fit(x[train], y[train])
    # log-probabilities as logits: temperature scaling acts on them as on a network's logits
    lv = np.log(np.clip(pipe.predict_proba(x[val]), 1e-12, 1))
    lt = np.log(np.clip(pipe.predict_proba(x[test]), 1e-12, 1))
    t, check = choose_temperature(lv, y[val], seed=seed)
    pv, pt = softmax(lv, t), softmax(lt, t)
    out = {
        "temperature_applied": check["applied"],
        "ece_t1": expected_calibration_error(softmax(lt), y[test]),
        "ece_chosen": expected_calibration_error(pt, y[test]),
        "balanced_accuracy": float(
            np.mean([(pt[y[test] == k].argmax(1) == k).mean() for k in np.unique(y)])
        ),
    }
    for name, fit_rule in METHODS.items():
        cp = fit_rule(pv, y[val], alpha, seed)
        sets = cp.predict_sets(pt, rng=np.random.default_rng(seed))
        per_class = [coverage(sets[y[test] == k], y[test][y[test] == k]) for k in np.unique(y)]
        out[name] = {
            "coverage": coverage(sets, y[test]),
            "worst_class": float(np.min(per_class)),
            "per_class": per_class,
            "mean_size": mean_set_size(sets),
            "mondrian": bool(cp.class_conditional),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--heldout", type=int, default=3000)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    x, y = _features(args.heldout + 4000, args.seed)
    rng = np.random.default_rng(args.seed)
    figures: dict = {"repeats": args.repeats, "heldout": args.heldout, "alpha": args.alpha}
    for label, (n_train, n_val) in SIZES.items():
        runs = []
        for r in range(args.repeats):
            perm = rng.permutation(len(y))
            test, rest = perm[: args.heldout], perm[args.heldout :]
            train, val = rest[:n_train], rest[n_train : n_train + n_val]
            runs.append(_one(x, y, train, val, test, args.alpha, args.seed + r))
        block: dict = {
            "balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in runs])),
            "temperature_applied_share": float(np.mean([r["temperature_applied"] for r in runs])),
            "ece_t1": float(np.mean([r["ece_t1"] for r in runs])),
            "ece_chosen": float(np.mean([r["ece_chosen"] for r in runs])),
        }
        for name in METHODS:
            rs = [r[name] for r in runs]
            block[name] = {
                "coverage": round(float(np.mean([m["coverage"] for m in rs])), 3),
                "per_class_mean": np.round(np.mean([m["per_class"] for m in rs], 0), 3).tolist(),
                "worst_class_mean": round(float(np.mean([m["worst_class"] for m in rs])), 3),
                "worst_class_p10": round(
                    float(np.quantile([m["worst_class"] for m in rs], 0.1)), 3
                ),
                "mean_size": round(float(np.mean([m["mean_size"] for m in rs])), 3),
                "mondrian_share": float(np.mean([m["mondrian"] for m in rs])),
            }
        figures[label] = block
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
