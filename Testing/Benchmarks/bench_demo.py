"""Benchmark of the main job: demo wall time and peak memory per stage, per-case predict and
explain latency, batch throughput.

Usage::

    python Testing/Benchmarks/bench_demo.py --out bench_out/demo.json [--full] [--cases N]
        [--demo-dir DIR] [--reuse]

Runs ``autoimmuneai demo`` into ``--demo-dir`` (default ``<out folder>/demo_run``; with
``--reuse`` finished stages are kept), reads the per-stage figures from its
``stages.json``, then times, on the demo's own bundle and held-out test cases:

* per-case latency of predict (image load + model grid + model + calibration + conformal +
  survival) and of predict + explain (Captum attributions, evidence regions, Slicer files;
  with and without the snapshot), as medians over the cases;
* batch throughput of ``predict_cohort`` in cases per minute, without and with ``--explain``.

Prints the figures as JSON and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def stage_figures(demo_dir: Path) -> dict:
    """Wall time and peak memory of every demo stage, from its ``stages.json``."""
    stages = json.loads((demo_dir / "stages.json").read_text(encoding="utf-8"))
    per_stage = {
        name: {"seconds": s.get("seconds"), "peak_rss_mb": s.get("peak_rss_mb")}
        for name, s in stages.get("stages", {}).items()
    }
    return {
        "config": stages.get("config"),
        "total_seconds": round(sum(s["seconds"] or 0 for s in per_stage.values()), 1),
        "total_minutes": round(sum(s["seconds"] or 0 for s in per_stage.values()) / 60, 2),
        "peak_rss_mb": max((s["peak_rss_mb"] or 0 for s in per_stage.values()), default=None),
        "stages": per_stage,
    }


def test_case_ids(demo_dir: Path, limit: int) -> list[str]:
    with open(demo_dir / "evaluation" / "predictions.csv", newline="", encoding="utf-8") as f:
        ids = [row["case_id"] for row in csv.DictReader(f)]
    return ids[:limit]


def subset_manifest(manifest: Path, case_ids: list[str], name: str) -> Path:
    """A manifest of some rows, beside the original so relative image paths still resolve."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = [r for r in reader if r["case_id"] in set(case_ids)]
    target = manifest.with_name(name)
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return target


def latency_figures(demo_dir: Path, n_cases: int) -> dict:
    """Median per-case seconds of predict, predict+explain, and predict+explain+snapshot."""
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.inference.cohort_run import run_case
    from autoimmuneai.inference.predictor import Predictor

    predictor = Predictor(demo_dir / "bundle")
    ids = test_case_ids(demo_dir, n_cases)
    cohort = load_cohort(demo_dir / "cohort" / "manifest.csv", predictor.panel, check_images=False)
    cases = [c for c in cohort.cases if c.case_id in set(ids)]
    timings: dict[str, list[float]] = {"predict": [], "explain": [], "explain_snapshot": []}
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        for case in cases:
            for key, explain, snapshot in (
                ("predict", False, False),
                ("explain", True, False),
                ("explain_snapshot", True, True),
            ):
                target = work / key / case.case_id
                t0 = time.perf_counter()
                run_case(
                    predictor,
                    case,
                    target,
                    case.case_id,
                    explain=explain,
                    method=None,
                    target=None,
                    snapshot=snapshot,
                )
                timings[key].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "cases": len(cases),
        "predict_s_median": _median(timings["predict"]),
        "predict_explain_s_median": _median(timings["explain"]),
        "predict_explain_snapshot_s_median": _median(timings["explain_snapshot"]),
        "explain_only_s_median": _median(
            [e - p for e, p in zip(timings["explain"], timings["predict"])]
        ),
    }


def throughput_figures(demo_dir: Path, n_plain: int, n_explain: int) -> dict:
    """Cases per minute of the batch command, with and without explanations."""
    from autoimmuneai.inference.cohort_run import predict_cohort

    manifest = demo_dir / "cohort" / "manifest.csv"
    out: dict = {}
    for key, n, explain in (("predict", n_plain, False), ("predict_explain", n_explain, True)):
        ids = test_case_ids(demo_dir, n)
        sub = subset_manifest(manifest, ids, f".bench-{key}.csv")
        work = Path(tempfile.mkdtemp(prefix=f"bench-{key}-"))
        try:
            t0 = time.perf_counter()
            result = predict_cohort(demo_dir / "bundle", sub, work, explain=explain, progress=False)
            seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(work, ignore_errors=True)
            sub.unlink(missing_ok=True)
        out[key] = {
            "cases": len(result.rows),
            "failed": result.n_failed,
            "seconds": round(seconds, 2),
            "cases_per_minute": round(60.0 * len(result.rows) / seconds, 1) if seconds else None,
        }
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="resume/reuse an earlier demo run")
    parser.add_argument("--latency-cases", type=int, default=5)
    parser.add_argument("--batch-cases", type=int, default=20)
    parser.add_argument("--batch-explain-cases", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from autoimmuneai.workflows.demo import run_demo

    demo_dir = args.demo_dir or args.out.parent / "demo_run"
    t0 = time.perf_counter()
    run_demo(demo_dir, cases=args.cases, seed=args.seed, full=args.full, resume=args.reuse)
    figures = {
        "cpu_count": os.cpu_count(),
        "demo_command_seconds": round(time.perf_counter() - t0, 1),
        "demo": stage_figures(demo_dir),
        "latency": latency_figures(demo_dir, args.latency_cases),
        "throughput": throughput_figures(demo_dir, args.batch_cases, args.batch_explain_cases),
    }
    text = json.dumps(figures, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".tmp-{args.out.name}")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
