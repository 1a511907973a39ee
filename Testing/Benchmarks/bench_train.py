"""Benchmark ``autoimmuneai train``: wall time, peak memory, training speed and metrics.

Trains the fused model, the image-only model and every baseline on a cohort (generating
the demo cohort first when ``--cohort`` is not given) and prints JSON figures; with
``--evaluate`` also evaluates the bundle on the held-out test split. Targets (issue 3):
400 cases on 2 cores in under 12 minutes with peak memory under 4 GB.

    python Testing/Benchmarks/bench_train.py --cohort demo_out/cohort/manifest.csv --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _evaluation(
    bundle_dir: Path, cohort: Path, out: Path, split: str | None, figures: dict
) -> dict:
    """``evaluate`` on ``cohort`` (one split or every case): headline figures and the targets."""
    from autoimmuneai.workflows.evaluate import evaluate_bundle

    t = time.perf_counter()
    m = evaluate_bundle(bundle_dir, cohort, out, split=split, progress=False)
    figures[f"evaluate_{split or 'heldout'}_seconds"] = round(time.perf_counter() - t, 1)
    pick = ("balanced_accuracy", "macro_auroc", "ece")
    test: dict = {"fused": {k: m["diagnosis"].get(k) for k in pick}}
    test["fused"]["c_index"] = m.get("progression", {}).get("c_index")
    test["conformal"] = m.get("conformal")
    test["risk_groups"] = {
        k: m.get("progression", {}).get(k) for k in ("risk_groups", "risk_cutoffs", "logrank")
    }
    test["targets"] = m.get("targets")
    for name, b in (m.get("baselines") or {}).items():
        if isinstance(b, dict) and "diagnosis" in b:
            test[name] = {k: b["diagnosis"].get(k) for k in pick}
            test[name]["c_index"] = (b.get("progression") or {}).get("c_index")
    return test


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", type=Path, default=None, help="manifest (default: generate)")
    p.add_argument("--cases", type=int, default=400, help="cases to generate without --cohort")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: temp)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--fusion", default="film", choices=["film", "concat"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--evaluate", action="store_true", help="also evaluate on the test split")
    p.add_argument(
        "--heldout",
        type=Path,
        default=None,
        help="also evaluate on every case of this separate cohort (a fresh synth cohort)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    from autoimmuneai.training.trainer import TrainConfig, train_bundle
    from autoimmuneai.workflows.demo import PeakMemory

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    figures: dict = {"cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    cohort = args.cohort
    if cohort is None:
        from autoimmuneai.synth import generate_cohort

        t = time.perf_counter()
        cohort = generate_cohort(work / "cohort", args.cases, args.seed, progress=False)
        figures["synth_seconds"] = round(time.perf_counter() - t, 1)
    bundle_dir = args.bundle or work / "bundle"
    cfg = TrainConfig(seed=args.seed, fusion=args.fusion, folds=args.folds, threads=args.threads)
    if args.epochs is not None:
        cfg.epochs = args.epochs

    t = time.perf_counter()
    with PeakMemory() as memory:  # this process and its workers, sampled while training runs
        train_bundle(cohort, bundle_dir, cfg, progress=sys.stderr.isatty())
    train_seconds = time.perf_counter() - t
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    tr = meta["training"]
    figures.update(
        cohort=str(cohort),
        n_cases=tr["n_cases"],
        train_seconds=round(train_seconds, 1),
        train_minutes=round(train_seconds / 60, 2),
        peak_memory_mb=round(memory.peak_mb, 1),
        torch_threads=__import__("torch").get_num_threads(),
        fused={
            k: tr["fused"][k] for k in ("epochs_run", "best_epoch", "seconds", "cases_per_second")
        },
        image_only={
            k: tr["image_only"][k]
            for k in ("epochs_run", "best_epoch", "seconds", "cases_per_second")
        },
        calibration=tr["calibration"],
        validation=tr["validation"],
        cross_validation=tr.get("cross_validation"),
        targets={
            "train_under_12_min": train_seconds < 12 * 60,
            "peak_memory_under_4_gb": memory.peak_mb < 4096,
        },
    )
    if args.evaluate:
        figures["test"] = _evaluation(bundle_dir, cohort, work / "evaluation", "test", figures)
    if args.heldout:
        figures["heldout"] = _evaluation(bundle_dir, args.heldout, work / "heldout", None, figures)
    figures["load_average_end"] = os.getloadavg()[0]
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
