"""Benchmark of the small-cohort targets (issue 18) with the real network, on a large fresh cohort.

``run``: generates the default demo cohort (240 cases, split 144 / 45 / 50 by the generator),
trains the default first-look model on it exactly as ``autoimmuneai demo`` does
(``workflows.demo.training_settings``), generates a held-out cohort of ``--heldout`` cases
with another seed, and evaluates the bundle on both: the demo's own 50-case test split and
every case of the fresh cohort (``workflows.evaluate.evaluate_bundle`` on the test split;
``evaluate_predictions``, the function it calls, on the fresh cohort's stored outputs). It
stores the network's logits, log-hazards, lesion read-out and hidden features and the
serology baseline's outputs of every case in ``arrays_s<seed>.npz``, so calibration,
conformal and risk variants can be measured offline (``analyse``) without retraining. A
finished bundle is reused.

``cross``: for a bundle trained with ``--train-options '{"folds": 5}'`` (issue 18), the
validation-only calibration and sets that ``train`` without folds would store for the same
final network against the cross-conformal ones it stored (calibration map and threshold from
the out-of-fold outputs of every development case), each map with each threshold source and
set rule, on the fresh cohort and on the demo's test split, with bootstrap intervals, and the
extra training time of the folds. A third threshold source, the fresh cases themselves (each
rule fitted in-sample on the cases it is measured on), is the floor under every calibration:
the set size the network's own scores need for each coverage, free of calibration noise.

    python Testing/Benchmarks/bench_small_cohort.py run --seed 0 --work /tmp/sc --tag _f5 \
        --train-options '{"folds": 5}'
    python Testing/Benchmarks/bench_small_cohort.py cross --work /tmp/sc --arrays 'arrays_s0_f5.npz'

``run --default-train --cases 400`` trains as ``autoimmuneai train`` does without options
(issue 18's 400-case targets) instead of the demo's first-look settings; ``--heldout-seed``
fixes the fresh cohort (e.g. 1000 for every training seed).

``analyse``: on the stored arrays, each calibration variant (temperature checked on folds of
the validation cases as ``train`` does, always applied, vector scaling) and each conformal
variant, measured on the fresh held-out cohort; plus the estimation noise of every figure at
the demo's test size: the spread of the same figure over random 50-case draws from the
held-out cohort, and the ECE a perfectly calibrated model would show on 50 cases
(``stats.calibration.ece_if_calibrated``).

    python Testing/Benchmarks/bench_small_cohort.py run --seed 0 --work /tmp/sc --out sc0.json
    python Testing/Benchmarks/bench_small_cohort.py analyse --work /tmp/sc

Without a command (as ``make bench`` runs it) it does both in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HELDOUT_SEED_OFFSET = 1000
DEMO_CASES = 240


def _cohort(work: Path, name: str, n: int, seed: int) -> Path:
    """The manifest of a generated cohort, generated once (generation is deterministic)."""
    from autoimmuneai.synth import generate_cohort

    manifest = work / name / "manifest.csv"
    if not manifest.is_file():
        generate_cohort(work / name, n, seed, progress=False)
    return manifest


def _headline(m: dict) -> dict:
    conf = m["conformal"]
    sero = m["baselines"].get("serology_only", {})
    return {
        "n": m["n_cases"],
        "balanced_accuracy": m["diagnosis"]["balanced_accuracy"],
        "ece": m["diagnosis"]["ece"],
        "ece_before_calibration": m["diagnosis"]["ece_before_calibration"],
        "mean_set_size": conf["mean_set_size"],
        "coverage": conf["coverage"],
        "per_class_coverage": conf["per_class_coverage"],
        "class_conditional": conf["class_conditional"],
        "c_index": m["progression"]["c_index"],
        "serology_c_index": (sero.get("progression") or {}).get("c_index"),
        "serology_balanced_accuracy": (sero.get("diagnosis") or {}).get("balanced_accuracy"),
        "targets": m.get("targets"),
    }


def _arrays(bundle_dir: Path, manifests: dict[str, Path], cache: Path) -> dict[str, np.ndarray]:
    """Fused and serology-baseline outputs, labels and follow-up of every case, per cohort part."""
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.data.dataset import build_arrays
    from autoimmuneai.inference.batch import infer
    from autoimmuneai.model.bundle import load_bundle
    from autoimmuneai.stats.baselines import BaselineInputs, baseline_outputs

    bundle = load_bundle(bundle_dir)
    out: dict[str, np.ndarray] = {"temperature": np.array(bundle.temperature)}
    for part, manifest in manifests.items():
        cohort = load_cohort(manifest, panel=bundle.panel)
        arrays = build_arrays(cohort, bundle.grid, bundle.encoder, cache_dir=cache / part)
        captured: dict[str, list] = {"readout": [], "hidden": []}
        hooks = [
            bundle.model.image_encoder.register_forward_hook(
                lambda _m, _i, o, c=captured: c["readout"].append(o[2].detach().double().numpy())
            ),
            bundle.model.trunk.register_forward_hook(
                lambda _m, _i, o, c=captured: c["hidden"].append(o.detach().double().numpy())
            ),
        ]
        res = infer(bundle, arrays, which="fused")
        for h in hooks:
            h.remove()
        out[f"{part}_readout"] = np.concatenate(captured["readout"])
        out[f"{part}_hidden"] = np.concatenate(captured["hidden"])
        values, missing = cohort.lab_matrix()
        inputs = BaselineInputs(
            bundle.encoder.transform(values, missing), values, cohort.truth_table()
        )
        sero = baseline_outputs(
            {"serology_only": bundle.baselines["serology_only"]}, inputs, bundle.panel
        )["serology_only"]
        times, events = cohort.survival()
        out[f"{part}_logits"] = np.asarray(res.logits, dtype=np.float64)
        out[f"{part}_risk"] = np.asarray(res.risk, dtype=np.float64)
        out[f"{part}_labels"] = cohort.labels()
        out[f"{part}_split"] = np.array([c.split or "" for c in cohort.cases])
        out[f"{part}_times"], out[f"{part}_events"] = times, events
        out[f"{part}_sero_probs"] = np.asarray(sero.probs)  # type: ignore[union-attr]
        out[f"{part}_sero_risk"] = np.asarray(sero.risk)  # type: ignore[union-attr]
        out[f"{part}_serology"] = inputs.encoded
        out[f"{part}_case_ids"] = np.array([c.case_id for c in cohort.cases])
    return out


def _heldout_metrics(bundle_dir: Path, arrays: dict[str, np.ndarray]) -> dict:
    """``evaluate``'s metrics of the fresh cohort from the stored arrays (no second pass over
    its images): the same ``evaluate_predictions`` with the bundle's temperature and sets."""
    from autoimmuneai.model.bundle import load_bundle
    from autoimmuneai.stats.baselines import ModelOutputs
    from autoimmuneai.stats.calibration import softmax
    from autoimmuneai.workflows.evaluate import evaluate_predictions

    bundle = load_bundle(bundle_dir)
    logits = arrays["heldout_logits"]
    sero = ModelOutputs(arrays["heldout_sero_probs"], arrays["heldout_sero_risk"])
    counts = bundle.metadata["training"]["n_cases"]
    metrics, _ = evaluate_predictions(
        list(bundle.panel.classes), logits, softmax(logits, bundle.temperature),
        arrays["heldout_labels"], arrays["heldout_risk"], arrays["heldout_times"],
        arrays["heldout_events"], bundle.conformal, bundle.baseline_hazard,
        tuple(bundle.risk_cutoffs), {"serology_only": sero},
        n_training=int(counts["train"]) + int(counts["val"]),
    )  # fmt: skip
    return metrics


def run(args: argparse.Namespace) -> dict:
    """Generate, train the default demo model (unless its bundle is finished), evaluate on the
    test split and on a fresh cohort, store the arrays."""
    from autoimmuneai.training.trainer import TrainConfig, train_bundle
    from autoimmuneai.workflows.demo import demo_config, training_settings
    from autoimmuneai.workflows.evaluate import evaluate_bundle

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"seed": args.seed, "load_average_start": os.getloadavg()[0]}
    t = time.perf_counter()
    demo = _cohort(work, f"demo_s{args.seed}", args.cases, args.seed)
    figures["synth_seconds"] = round(time.perf_counter() - t, 1)
    if args.default_train:  # `autoimmuneai train` as it is called without options
        settings: dict = {"seed": args.seed}
    else:
        settings = training_settings(demo_config(args.cases, args.seed, False, None))
    settings.update(json.loads(args.train_options))
    cfg = TrainConfig(**settings)
    if args.threads:
        cfg.threads = args.threads
    bundle_dir = work / f"bundle_s{args.seed}{args.tag}"
    meta_path = bundle_dir / "configs" / "metadata.json"
    if not meta_path.is_file():
        t = time.perf_counter()
        train_bundle(demo, bundle_dir, cfg, resume=args.resume, progress=sys.stderr.isatty())
        figures["train_seconds"] = round(time.perf_counter() - t, 1)
    held_seed = args.seed + HELDOUT_SEED_OFFSET if args.heldout_seed is None else args.heldout_seed
    held = _cohort(work, f"heldout_s{held_seed}", args.heldout, held_seed)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    figures["train_config"] = meta["training"]["config"]
    figures["n_cases"] = meta["training"]["n_cases"]
    figures["calibration"] = meta["training"]["calibration"]
    figures["epochs"] = {k: meta["training"]["fused"][k] for k in ("epochs_run", "best_epoch")}
    figures["fused_train_seconds"] = meta["training"]["fused"]["seconds"]
    m = evaluate_bundle(bundle_dir, demo, work / f"eval_test_s{args.seed}{args.tag}",
                        split="test", progress=False)  # fmt: skip
    figures["test"] = _headline(m)
    arrays = _arrays(bundle_dir, {"dev": demo, "heldout": held}, work / "cache")
    np.savez(work / f"arrays_s{args.seed}{args.tag}.npz", **arrays)
    figures["heldout"] = _headline(_heldout_metrics(bundle_dir, arrays))
    figures["load_average_end"] = os.getloadavg()[0]
    return figures


# --------------------------------------------------------------------------- offline analysis


def _metrics(probs: np.ndarray, y: np.ndarray, cp) -> dict:
    """Held-out figures of one variant: BA, log loss, ECE, sets, coverage (overall, per class)."""
    from sklearn.metrics import balanced_accuracy_score, log_loss

    from autoimmuneai.stats.calibration import expected_calibration_error
    from autoimmuneai.stats.conformal import coverage, mean_set_size

    sets = cp.predict_sets(probs)
    per_class = [coverage(sets[y == k], y[y == k]) for k in range(probs.shape[1])]
    return {
        "balanced_accuracy": round(float(balanced_accuracy_score(y, probs.argmax(1))), 4),
        "log_loss": round(float(log_loss(y, probs, labels=range(probs.shape[1]))), 4),
        "ece": round(expected_calibration_error(probs, y), 4),
        "mean_set": round(mean_set_size(sets), 3),
        "coverage": round(coverage(sets, y), 3),
        "class_coverage": [round(v, 3) for v in per_class],
        "worst_class_coverage": round(min(per_class), 3),
        "mondrian": bool(cp.class_conditional),
    }


def _noise(probs: np.ndarray, y: np.ndarray, cp, n: int, draws: int = 300) -> dict:
    """Spread of the figures over random ``n``-case draws from the held-out cohort (with
    replacement when ``n`` is the whole cohort: its bootstrap interval)."""
    from autoimmuneai.stats.calibration import ece_if_calibrated, expected_calibration_error
    from autoimmuneai.stats.conformal import coverage, mean_set_size

    rng = np.random.default_rng(0)
    sets = cp.predict_sets(probs)
    rows = []
    for _ in range(draws):
        i = rng.choice(len(y), n, replace=n >= len(y))  # all cases: a bootstrap
        rows.append(
            (expected_calibration_error(probs[i], y[i]), mean_set_size(sets[i]),
             coverage(sets[i], y[i]))
        )  # fmt: skip
    a = np.array(rows)
    lo, hi = np.percentile(a, [2.5, 97.5], axis=0)
    return {
        "n": n,
        "ece_mean_sd": [round(a[:, 0].mean(), 4), round(a[:, 0].std(), 4)],
        "ece_95": [round(lo[0], 4), round(hi[0], 4)],
        "set_95": [round(lo[1], 3), round(hi[1], 3)],
        "coverage_95": [round(lo[2], 3), round(hi[2], 3)],
        "ece_if_calibrated": ece_if_calibrated(probs[rng.choice(len(y), n, replace=False)]),
    }


def _oof_linear(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of the linear pipeline on ``x`` (stratified folds)."""
    from sklearn.model_selection import StratifiedKFold

    from autoimmuneai.stats.baselines import linear_pipeline

    out = np.zeros((len(y), int(y.max()) + 1))
    for rest, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        out[held] = linear_pipeline().fit(x[rest], y[rest]).predict_proba(x[held])
    return out


def _variants(d: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (calibration probabilities, their labels, held-out probabilities)."""
    from autoimmuneai.stats.baselines import linear_pipeline
    from autoimmuneai.stats.calibration import (
        choose_calibration,
        choose_temperature,
        fit_temperature,
        fit_vector_scaling,
        softmax,
    )

    split, y = d["dev_split"], d["dev_labels"]
    val, tr = split == "val", split == "train"
    lv, lh = d["dev_logits"][val], d["heldout_logits"]
    t_chk, _ = choose_temperature(lv, y[val])
    t_all = fit_temperature(lv, y[val])
    w, b = fit_vector_scaling(lv, y[val])
    chosen = choose_calibration(lv, y[val])
    out = {
        f"choose_calibration ({chosen.kind})": (
            softmax(chosen.apply(lv)),
            y[val],
            softmax(chosen.apply(lh)),
        ),  # fmt: skip
        "stored (fold-checked T)": (softmax(lv, t_chk), y[val], softmax(lh, t_chk)),
        f"T fitted on val ({t_all:.2f})": (softmax(lv, t_all), y[val], softmax(lh, t_all)),
        "vector scaling on val": (softmax(lv * w + b), y[val], softmax(lh * w + b)),
    }

    def stack(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
        return softmax(w[0] * a + w[1] * b)

    from scipy.optimize import minimize

    ls_v, ls_h = (
        np.log(np.clip(d["dev_sero_probs"][val], 1e-9, 1)),
        np.log(np.clip(d["heldout_sero_probs"], 1e-9, 1)),
    )

    def nll(w: np.ndarray) -> float:
        p = stack(lv, ls_v, w)
        return float(-np.log(p[np.arange(len(p)), y[val]] + 1e-12).mean())

    w_st = minimize(nll, np.array([1.0, 0.0]), method="Nelder-Mead").x
    out[f"stack fused {w_st[0]:.2f} + serology {w_st[1]:.2f} (val)"] = (
        stack(lv, ls_v, w_st), y[val], stack(lh, ls_h, w_st),
    )  # fmt: skip
    for name, cols in (("readout+labs", ("readout", "serology")),):
        xd = np.hstack([d[f"dev_{c}"] for c in cols])
        xh = np.hstack([d[f"heldout_{c}"] for c in cols])
        oof = _oof_linear(xd, y, 5, 0)
        full = linear_pipeline().fit(xd, y).predict_proba(xh)
        out[f"linear on {name}, OOF over train+val"] = (oof, y, full)
        oof_tr = _oof_linear(xd[tr], y[tr], 5, 0)
        del oof_tr
    return out


def _risk_variants(d: dict) -> dict:
    """C-index on the fresh cohort: the stored head, the serology Cox, the head after the
    calibration map ``train`` now chooses, and covariate heads refitted on train."""
    import torch

    from autoimmuneai.model.risk_head import fit_class_log_hazards, fit_covariate_log_hazards
    from autoimmuneai.stats.calibration import choose_calibration
    from autoimmuneai.stats.survival import concordance

    tr, va = d["dev_split"] == "train", d["dev_split"] == "val"
    th, eh = d["heldout_times"], d["heldout_events"]

    def tt(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64))

    out = {
        "stored head": round(concordance(th, d["heldout_risk"], eh), 4),
        "serology Cox": round(concordance(th, d["heldout_sero_risk"], eh), 4),
        "stored + serology Cox": round(
            concordance(th, d["heldout_risk"] + d["heldout_sero_risk"], eh), 4
        ),
    }
    chosen = choose_calibration(d["dev_logits"][va], d["dev_labels"][va])
    if chosen.kind != "identity":  # train refolds the map and refits the class log-hazards
        a = fit_class_log_hazards(
            tt(chosen.apply(d["dev_logits"][tr])), tt(d["dev_times"][tr]), tt(d["dev_events"][tr])
        )
        lp = torch.log_softmax(tt(chosen.apply(d["heldout_logits"])), dim=1)
        risk = torch.logsumexp(lp + a.double(), dim=1).numpy()
        out[f"after choose_calibration ({chosen.kind})"] = round(concordance(th, risk, eh), 4)
    for l2 in (1.0, 0.1, 0.03, 0.01, 0.003):
        a, w = fit_covariate_log_hazards(
            tt(d["dev_logits"][tr]), tt(d["dev_serology"][tr]), tt(d["dev_times"][tr]),
            tt(d["dev_events"][tr]), l2,
        )  # fmt: skip

        def eta(part: str, sel=slice(None), a=a, w=w) -> np.ndarray:
            lp = torch.log_softmax(tt(d[f"{part}_logits"][sel]), dim=1)
            x = tt(d[f"{part}_serology"][sel])
            return (torch.logsumexp(lp + a.double(), dim=1) + x @ w.double()).numpy()

        out[f"covariate head l2={l2}"] = {
            "val": round(concordance(d["dev_times"][va], eta("dev", va), d["dev_events"][va]), 4),
            "heldout": round(concordance(th, eta("heldout"), eh), 4),
        }
    return out


def analyse(args: argparse.Namespace) -> dict:
    """Every calibration / conformal variant of the stored arrays, on the fresh cohort."""
    from autoimmuneai.stats.conformal import fit_conformal, fit_default_conformal

    report: dict = {}
    for path in sorted(args.work.glob(args.arrays)):
        d = dict(np.load(path))
        yh = d["heldout_labels"]
        rows: dict = {}
        for name, (pc, yc, ph) in _variants(d).items():
            rows[name] = {
                "n_calibration": int(len(yc)),
                "default sets": _metrics(ph, yh, fit_default_conformal(pc, yc)),
                "marginal LAC": _metrics(ph, yh, fit_conformal(pc, yc, method="lac")),
            }
        stored = _variants(d)["stored (fold-checked T)"]
        cp = fit_default_conformal(stored[0], stored[1])
        rows["noise at 50 cases (stored)"] = _noise(stored[2], yh, cp, 50)
        rows["noise at 400 cases (stored)"] = _noise(stored[2], yh, cp, min(400, len(yh)))
        rows["c_index"] = _risk_variants(d)
        report[path.stem] = rows
    return report


def _raw_logits(logits: np.ndarray, check: dict) -> np.ndarray:
    """The final network's logits before the vector scaling ``train`` folded into it."""
    if check.get("map") == "vector":
        return (logits - np.array(check["vector_shift"])) / np.array(check["vector_scale"])
    return logits


def _set_rules(probs: np.ndarray, y: np.ndarray, folds: int) -> dict:
    """The default set rule (``train``'s class floor), plain Mondrian by the class counts, and
    marginal, Mondrian and the floor forced."""
    from autoimmuneai.stats.conformal import cross_conformal, fit_default_conformal
    from autoimmuneai.training.trainer import TrainConfig

    floor = TrainConfig().class_alpha()
    rules = {
        "default": fit_default_conformal(probs, y, class_alpha=floor),
        "Mondrian by counts": fit_default_conformal(probs, y),
        "marginal": fit_default_conformal(probs, y, class_conditional=False),
        "mondrian": fit_default_conformal(probs, y, class_conditional=True),
        "floor": fit_default_conformal(probs, y, class_conditional=True, class_alpha=floor),
    }
    return {k: cross_conformal(cp, folds) if folds > 1 else cp for k, cp in rules.items()}


def analyse_cross(args: argparse.Namespace) -> dict:
    """Validation-only against cross-conformal calibration of the same final network."""
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.stats.calibration import choose_calibration, softmax
    from autoimmuneai.training.trainer import _map_on_final_network

    report: dict = {}
    for path in sorted(args.work.glob(args.arrays)):
        d = dict(np.load(path))
        bundle_dir = args.work / path.stem.replace("arrays_", "bundle_")
        training = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["training"]
        cv = training.get("cross_validation") or {}
        if "out_of_fold" not in cv:
            continue
        check = training["calibration"]["temperature_check"]
        ids = d.get("dev_case_ids")
        if ids is None:  # arrays written before the ids were stored: the manifest's order
            ids = np.array([c.case_id for c in load_cohort(training["cohort"]).cases])
        row = {str(c): i for i, c in enumerate(ids)}
        oof = cv["out_of_fold"]
        order = np.array([row[c] for c in oof["case_ids"]])
        y_oof = d["dev_labels"][order]
        z_oof = np.array(oof["logits"], dtype=np.float64)
        split, y_dev = d["dev_split"], d["dev_labels"]
        val, test = split == "val", split == "test"
        raw_dev = _raw_logits(d["dev_logits"], check)
        raw_held = _raw_logits(d["heldout_logits"], check)
        maps = {"val map": choose_calibration(raw_dev[val], y_dev[val])}
        oof_map, final = _map_on_final_network(
            choose_calibration(z_oof, y_oof), raw_dev[val], y_dev[val], len(y_oof)
        )
        maps["OOF map"] = oof_map
        rows: dict = {
            "maps": {
                name: {"kind": m.kind, "temperature": m.temperature, **m.record}
                for name, m in maps.items()
            },
            "oof_map_final_check": final,
            "cv_seconds": cv.get("seconds"),
            "fused_seconds": training["fused"]["seconds"],
            "train_seconds": training["seconds"],
            "n_oof": len(y_oof),
            "n_val": int(val.sum()),
        }
        for map_name, m in maps.items():
            p_val = softmax(m.apply(raw_dev[val]))
            p_oof = softmax(m.apply(z_oof))
            p_held, p_test = softmax(m.apply(raw_held)), softmax(m.apply(raw_dev[test]))
            sources = {
                "val sets": _set_rules(p_val, y_dev[val], 0),
                "cross sets": _set_rules(p_oof, y_oof, int(cv["folds"])),
                # fitted on the very cases they are measured on: no calibration noise and no
                # mismatch between networks, so the smallest sets this network can give
                "fresh sets (in-sample)": _set_rules(p_held, d["heldout_labels"], 0),
            }
            for source, rules in sources.items():
                for rule, cp in rules.items():
                    name = f"{map_name} + {source} ({rule})"
                    rows[name] = {
                        "heldout": _metrics(p_held, d["heldout_labels"], cp),
                        "test": _metrics(p_test, y_dev[test], cp),
                        "heldout_bootstrap": _noise(
                            p_held, d["heldout_labels"], cp, len(d["heldout_labels"])
                        ),
                        "guarantee": cp.guarantee,
                    }
        report[path.stem] = rows
    return report


def cross_lines(report: dict) -> list[str]:
    """One line per map, threshold source and set rule, on the fresh cohort and the test split."""
    lines = []
    for stem, rows in report.items():
        lines.append(f"== {stem}: {json.dumps(rows['maps'], default=str)[:400]}")
        for key in ("cv_seconds", "fused_seconds", "train_seconds", "n_oof", "n_val"):
            lines.append(f"  {key}: {rows[key]}")
        lines.append(f"  oof map on final: {json.dumps(rows['oof_map_final_check'])}")
        for name, row in rows.items():
            if not (isinstance(row, dict) and "heldout" in row):
                continue
            h, t, b = row["heldout"], row["test"], row["heldout_bootstrap"]
            set_95, cov_95 = ("-".join(f"{v:.3f}" for v in b[k]) for k in ("set_95", "coverage_95"))
            lines.append(
                f"  {name:48s} fresh n={b['n']}: ECE {h['ece']:.3f} set {h['mean_set']:.2f} "
                f"({set_95}) cov {h['coverage']:.3f} ({cov_95}) classes "
                f"{h['class_coverage']} | test: ECE {t['ece']:.3f} set {t['mean_set']:.2f} "
                f"cov {t['coverage']:.3f} worst {t['worst_class_coverage']:.3f}"
                f"{' M' if h['mondrian'] else ''}"
            )
    return lines


def summary_lines(report: dict) -> list[str]:
    """One line per variant and set rule: BA, log loss, ECE, mean set, coverage, worst class."""
    lines = []
    for stem, rows in report.items():
        lines.append(f"== {stem}")
        for name, row in rows.items():
            if not (isinstance(row, dict) and "default sets" in row):
                lines.append(f"  {name}: {json.dumps(row)}")
                continue
            for rule in ("default sets", "marginal LAC"):
                m = row[rule]
                lines.append(
                    f"  {name[:46]:46s} {rule:12s} BA {m['balanced_accuracy']:.3f} "
                    f"NLL {m['log_loss']:.3f} ECE {m['ece']:.3f} set {m['mean_set']:.2f} "
                    f"cov {m['coverage']:.3f} worst {m['worst_class_coverage']:.3f}"
                    f"{' M' if m['mondrian'] else ''}"
                )
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "command", nargs="?", default="both", choices=["run", "analyse", "cross", "both"],
        help="run: generate, train, evaluate, store the arrays; analyse: the calibration, "
        "conformal and risk variants of stored arrays; cross: validation-only against "
        "cross-conformal sets of a bundle trained with folds; both (default, as make bench "
        "runs it)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=DEMO_CASES)
    p.add_argument("--heldout", type=int, default=400, help="cases of the fresh cohort")
    p.add_argument(
        "--heldout-seed", type=int, default=None,
        help=f"synth seed of the fresh cohort (default: --seed + {HELDOUT_SEED_OFFSET})",
    )  # fmt: skip
    p.add_argument(
        "--default-train", action="store_true",
        help="train as `autoimmuneai train` does by default instead of the demo's settings",
    )  # fmt: skip
    p.add_argument("--train-options", default="{}", help="JSON of TrainConfig fields to change")
    p.add_argument("--tag", default="", help="suffix of the bundle and arrays (variants)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted training")
    p.add_argument("--arrays", default="arrays_s*.npz", help="analyse: glob in --work")
    p.add_argument("--work", type=Path, default=None, help="cohorts, bundles, arrays (temp)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="bench_small_cohort_"))
    figures: dict = {}
    if args.command in ("run", "both"):
        figures["run"] = run(args)
    if args.command in ("analyse", "both"):
        figures["analysis"] = analyse(args)
        print("\n".join(summary_lines(figures["analysis"])), file=sys.stderr)
    if args.command == "cross":
        figures["cross"] = analyse_cross(args)
        print("\n".join(cross_lines(figures["cross"])), file=sys.stderr)
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
