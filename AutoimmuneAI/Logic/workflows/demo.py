"""``autoimmuneai demo``: the whole product in one command, resumable stage by stage.

Stages (each writes into its own folder under ``--out``)::

    cohort    synthetic cohort on the MNI152 brain           -> cohort/manifest.csv
    train     fused model + baselines as a model bundle       -> bundle/
    evaluate  held-out test split, all baselines, figures     -> evaluation/metrics.json
    quality   explanation quality (localisation, sanity, ...) -> evaluation/explain_quality.json
    explain   a handful of test cases, at least one per class -> cases/<case_id>/...
    report    self-contained HTML + every number as JSON      -> report.html, metrics.json

A stage is finished when ``stages.json`` (written atomically after the stage's outputs)
says so and its outputs exist; ``--resume`` skips finished stages and lets the unfinished
one continue from its own checkpoints (training epochs, completed case folders). Wall time
and peak memory of every stage are recorded in ``stages.json`` (the demo benchmark reads them).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..atomic import ensure_writable_folder, json_safe, unescape_cell, write_csv, write_text
from ..errors import InputError

log = logging.getLogger(__name__)

STAGES_FILE = "stages.json"
DEFAULT_CASES = 240
FULL_CASES = 1000
FULL_MIN_CASES = 400
# --full: 320 cases to train on, 160 to stop early, scale the temperature and calibrate the
# conformal sets, and 520 held out, so that the test figures are steady: on a small test
# split even a perfectly calibrated model shows a large ECE and the balanced accuracy moves
# by several points (the figures are in CHANGELOG.md)
FULL_SPLITS = {"train": 0.32, "val": 0.16, "test": 0.52}
EXPLAIN_MANIFEST = "explain_cases.csv"  # inside cohort/, so relative image paths still resolve
# "cache": the preprocessed model-grid images, shared by train and evaluate (each image is
# preprocessed once); removed when the demo finishes
OWNED = ("cohort", "bundle", "evaluation", "cases", "figures", "cache")
CACHE = "cache"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo was asked to do; a resumed run must ask for the same."""

    cases: int
    seed: int
    full: bool
    epochs: int | None
    quality_cases: int
    panel: str = "cns_autoimmune"
    quality_methods: tuple[str, ...] | None = None  # default: every method
    synth_options: dict = field(default_factory=dict)  # extra generate_cohort arguments
    train_options: dict = field(default_factory=dict)  # TrainConfig fields (smaller models)

    def to_dict(self) -> dict:
        return {
            "cases": self.cases,
            "seed": self.seed,
            "full": self.full,
            "epochs": self.epochs,
            "quality_cases": self.quality_cases,
            "quality_methods": list(self.quality_methods) if self.quality_methods else None,
            "panel": self.panel,
            "synth_options": json_safe(self.synth_options),
            "train_options": json_safe(self.train_options),
        }


def demo_config(
    cases: int | None,
    seed: int,
    full: bool,
    epochs: int | None,
    *,
    quality_cases: int | None = None,
    quality_methods: Sequence[str] | None = None,
    synth_options: dict | None = None,
    train_options: dict | None = None,
    panel: str = "cns_autoimmune",
) -> DemoConfig:
    """Resolve the defaults: 240 cases for a first look; with ``--full`` 1000, half held out."""
    n = cases if cases is not None else (FULL_CASES if full else DEFAULT_CASES)
    if full and n < FULL_MIN_CASES:
        raise InputError(f"--full needs at least {FULL_MIN_CASES} cases, got {n}", field="--cases")
    if n < 20:
        raise InputError(
            f"the demo needs at least 20 cases (train, calibration and test splits), got {n}",
            field="--cases",
        )
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}", field="--epochs")
    return DemoConfig(
        n,
        int(seed),
        bool(full),
        epochs,
        quality_cases=quality_cases or (10 if full else 3),
        quality_methods=tuple(quality_methods) if quality_methods else None,
        panel=str(panel),
        synth_options=dict(synth_options or {}),
        train_options=dict(train_options or {}),
    )


# --------------------------------------------------------------------------- bookkeeping


class StageLog:
    """``stages.json``: which stages finished, how long they took, how much memory they used."""

    def __init__(self, out: Path, config: DemoConfig, resume: bool) -> None:
        self.path = out / STAGES_FILE
        self.config = config
        old = _read_json(self.path) if self.path.is_file() else None
        if resume and old is not None and old.get("config") != config.to_dict():
            raise InputError(
                f"holds a demo run with other settings ({_settings(old.get('config', {}))}); "
                "rerun with the same settings, or without --resume to start again",
                file=self.path,
            )
        self.data: dict[str, Any] = (
            old
            if resume and old is not None
            else {"config": config.to_dict(), "stages": {}, "python": sys.version.split()[0]}
        )

    def done(self, name: str, outputs: list[Path]) -> bool:
        entry = self.data["stages"].get(name)
        return bool(entry and entry.get("done")) and all(p.exists() for p in outputs)

    def record(self, name: str, seconds: float, peak_mb: float, info: dict | None = None) -> None:
        self.data["stages"][name] = {
            "done": True,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_mb, 1),
            **(info or {}),
        }
        self.save()

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, allow_nan=False))


def _settings(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class PeakMemory:
    """Peak resident memory (MB) of this process and its children while the block runs,
    sampled every 50 ms (``current_rss_mb``)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        self.peak_mb = current_rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())


def current_rss_mb() -> float:
    """Resident memory (MiB) of this process plus its live child processes (psutil, every
    platform); a child that ends or is not readable while it is read counts as nothing."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / (1024.0 * 1024.0)


class Eta:
    """Time left for the demo, from measured costs only.

    Each stage has a reference cost (its share of the work, ``Stage.expected_s``). What a
    second of that reference costs on this machine is measured: by the stages finished in
    this run, and before any has finished by an earlier run's ``stages.json`` in the same
    folder (its seconds per case, scaled to this run's size). With neither, the time left is
    unknown (None) rather than guessed: the first stage's own progress bar shows its rate.
    """

    def __init__(self, expected: list[float], previous: list[float | None] | None = None) -> None:
        self.expected = list(expected)
        self.previous = list(previous) if previous is not None else [None] * len(expected)
        self.finished: dict[int, float] = {}
        self.skipped: set[int] = set()

    def skip(self, index: int) -> None:
        self.skipped.add(index)

    def done(self, index: int, seconds: float) -> None:
        self.finished[index] = seconds

    def remaining(self, index: int) -> float | None:
        """Seconds left when stage ``index`` (0-based) starts; None when nothing is measured."""
        left = [
            i
            for i in range(index, len(self.expected))
            if i not in self.skipped and i not in self.finished
        ]
        spent = sum(self.finished.values())
        planned = sum(self.expected[i] for i in self.finished)
        if planned > 0 and spent > 0:  # this run's own speed
            speed = spent / planned
            return sum(speed * self.expected[i] for i in left)
        if left and all(self.previous[i] is not None for i in left):
            return float(sum(self.previous[i] or 0.0 for i in left))
        return None


def previous_seconds(
    old: dict | None, stages: list[Stage], cases: int
) -> list[float | None] | None:
    """Each stage's measured seconds in an earlier run (its ``stages.json``), scaled to
    ``cases`` for the stages whose cost grows with the cohort; None where not recorded."""
    if not old:
        return None
    before = int((old.get("config") or {}).get("cases") or 0)
    recorded = old.get("stages") or {}
    out: list[float | None] = []
    for stage in stages:
        entry = recorded.get(stage.name) or {}
        seconds = entry.get("seconds")
        if not entry.get("done") or not isinstance(seconds, int | float) or seconds <= 0:
            out.append(None)
        elif stage.per_case and before > 0:
            out.append(float(seconds) * cases / before)
        else:
            out.append(float(seconds))
    return out


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    title: str
    outputs: list[Path]
    run: Callable[[bool], dict | None]  # run(resume) -> extra info for stages.json
    expected_s: float  # reference cost: the stage's share of the work, for the ETA (see Eta)
    per_case: bool = False  # the cost grows with the number of cases


def run_demo(
    out: str | Path,
    cases: int | None = None,
    seed: int = 0,
    full: bool = False,
    epochs: int | None = None,
    resume: bool = False,
    *,
    quality_cases: int | None = None,
    quality_methods: Sequence[str] | None = None,
    synth_options: dict | None = None,
    train_options: dict | None = None,
    panel: str = "cns_autoimmune",
) -> int:
    """Run (or resume) the whole demo into ``out``; return the exit status (0 on success).

    The keyword-only options shrink the run for tests and benchmarks: ``quality_cases`` and
    ``quality_methods`` limit the explanation-quality stage, ``synth_options``
    are passed to ``generate_cohort`` (e.g. ``voxel_size``), ``train_options`` set
    ``TrainConfig`` fields (e.g. a coarser ``grid_shape``).
    """
    config = demo_config(
        cases,
        seed,
        full,
        epochs,
        quality_cases=quality_cases,
        quality_methods=quality_methods,
        synth_options=synth_options,
        train_options=train_options,
        panel=panel,
    )
    out = Path(out).resolve()
    old = _read_json(out / STAGES_FILE) if (out / STAGES_FILE).is_file() else None
    _prepare_out(out, resume)
    stage_log = StageLog(out, config, resume)
    stage_log.save()
    stages = build_stages(out, config)
    log.info(
        "AutoimmuneAI demo: %d synthetic cases, seed %d -> %s (research use only; synthetic data)",
        config.cases,
        config.seed,
        out,
    )
    start = time.perf_counter()
    eta = Eta([s.expected_s for s in stages], previous_seconds(old, stages, config.cases))
    redo = not resume  # once a stage runs, every later stage runs too (it uses its outputs)
    for number, stage in enumerate(stages, start=1):
        label = f"[{number}/{len(stages)}] {stage.title}"
        if not redo and stage_log.done(stage.name, stage.outputs):
            log.info("%s: already finished, reused", label)
            eta.skip(number - 1)
            continue
        redo = True
        left = eta.remaining(number - 1)
        when = (
            f"about {_duration(left)} left"
            if left is not None
            else "time left measured after this stage"
        )
        log.info("%s ... (demo: %s)", label, when)
        t0 = time.perf_counter()
        with PeakMemory() as memory:
            info = stage.run(resume) or {}
        seconds = time.perf_counter() - t0
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
        stage_log.record(stage.name, seconds, memory.peak_mb, info)
        eta.done(number - 1, seconds)
        log.info("%s: done in %s (peak memory %.0f MB)", label, _duration(seconds), memory.peak_mb)
    stage_log.data["total_seconds"] = round(
        sum(s.get("seconds", 0.0) for s in stage_log.data["stages"].values()), 2
    )
    stage_log.save()
    _record_run_in_metrics(out / "metrics.json", stage_log.data)
    shutil.rmtree(out / CACHE, ignore_errors=True)  # every stage that reads it is done
    log.info(
        "demo finished in %s -> open %s",
        _duration(time.perf_counter() - start),
        out / "report.html",
    )
    return 0


def _record_run_in_metrics(metrics_path: Path, stages: dict) -> None:
    """Put the finished run's stages, the report stage included, into ``metrics.json``: the
    report stage writes that file before its own time is known."""
    from ..output.report import demo_run_summary

    if not metrics_path.is_file():
        return
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    summary = json_safe(demo_run_summary(stages))
    if metrics.get("demo_run") == summary:
        return  # a resumed run that recomputed nothing leaves the file as it was
    metrics["demo_run"] = summary
    write_text(metrics_path, json.dumps(json_safe(metrics), indent=2, allow_nan=False))


def build_stages(out: Path, config: DemoConfig) -> list[Stage]:
    """The demo's stages with their outputs and reference costs (relative, for the ETA)."""
    cohort_dir, bundle_dir = out / "cohort", out / "bundle"
    eval_dir, cases_dir = out / "evaluation", out / "cases"
    manifest = cohort_dir / "manifest.csv"
    n = config.cases

    def cohort(resume: bool) -> dict:
        from ..synth.families import generator_for

        if cohort_dir.exists():  # a half-written cohort: generation is deterministic, redo it
            shutil.rmtree(cohort_dir)
        generator_for(config.panel)(cohort_dir, n, config.seed, **synth_settings(config))
        return {"cases": n}

    def train(resume: bool) -> dict:
        from ..training.trainer import TrainConfig, train_bundle

        train_config = TrainConfig(**{"cache_dir": str(out / CACHE), **training_settings(config)})
        train_bundle(manifest, bundle_dir, train_config, resume=resume and bundle_dir.exists())
        return {"epochs": train_config.epochs}

    def evaluate(resume: bool) -> dict:
        from ..data.dataset import shared_image_cache
        from .evaluate import evaluate_bundle

        with shared_image_cache(out / CACHE):
            evaluate_bundle(bundle_dir, manifest, eval_dir, split="test")
        return {}

    def quality(resume: bool) -> dict:
        from ..explain.quality import METHODS, measure_explanation_quality

        measure_explanation_quality(
            bundle_dir,
            manifest,
            eval_dir,
            split="test",
            n_cases=config.quality_cases,
            methods=config.quality_methods or METHODS,
        )
        return {"cases": config.quality_cases}

    def explain(resume: bool) -> dict:
        from ..inference.cohort_run import predict_cohort

        chosen = write_explain_manifest(manifest, eval_dir, cohort_dir / EXPLAIN_MANIFEST)
        result = predict_cohort(
            bundle_dir, cohort_dir / EXPLAIN_MANIFEST, cases_dir, explain=True, resume=resume
        )
        if result.n_failed:
            reasons = "; ".join(f"{e['case_id']}: {e['reason']}" for e in result.errors)
            raise RuntimeError(f"explaining the demo cases failed: {reasons}")
        return {"cases": chosen, "seconds_per_case": round(result.seconds / max(1, len(chosen)), 2)}

    def report(resume: bool) -> dict:
        from ..output.report import build_report

        build_report(out)
        return {}

    quality_file = eval_dir / "explain_quality.json"
    methods = len(config.quality_methods) if config.quality_methods else 4
    # per case and method; Occlusion on the full model grid dominates with --full
    quality_cost = (5.0 if config.full else 1.2) * config.quality_cases * methods
    bundle_meta = bundle_dir / "configs" / "metadata.json"
    # evaluation preprocesses every test image (the training cache holds train and val only),
    # so its cost grows with the test split, about as a case's rendering does
    test_cases = n * float(synth_settings(config)["config"].split_fractions.get("test", 0.2))
    return [
        Stage("cohort", "generate the synthetic cohort", [manifest], cohort, 0.17 * n, True),
        Stage("train", "train the fused model and baselines", [bundle_meta], train, 0.65 * n, True),
        Stage(
            "evaluate",
            "evaluate on the test split",
            [eval_dir / "metrics.json"],
            evaluate,
            max(2.0, 0.17 * test_cases),
            True,
        ),
        Stage("quality", "measure explanation quality", [quality_file], quality, quality_cost),
        Stage(
            "explain",
            "explain test cases (one per class at least)",
            [cases_dir / "predictions.csv"],
            explain,
            10,
        ),
        Stage("report", "write the report", [out / "report.html", out / "metrics.json"], report, 2),
    ]


# The first-look demo trains on a coarser model grid (3.3 mm instead of 2.5 mm, covering
# the same 16 x 20 x 16 cm box) with early stopping, so that the whole run fits the quick
# start's time on 2 cores (the README gives it); ``--full`` uses the training defaults the
# targets are measured with.
FIRST_LOOK_TRAINING = {"grid_shape": (48, 60, 48), "grid_spacing": 3.3, "epochs": 40}
# The first-look demo's whole-head scans: every acquisition, but mostly 3D 2 mm (a 1 mm head
# and a 2D thick-slice one cost several times as much to render as a 2 mm one; the figures
# are in the README); ``--full`` keeps synth's own mix.
FIRST_LOOK_ACQUISITIONS = {"3d_2mm": 0.75, "2d_axial": 0.2, "3d_1mm": 0.05}


def synth_settings(config: DemoConfig) -> dict:
    """``generate_cohort`` options of this demo: the split and acquisition mix, then explicit
    options."""
    from ..synth.families import config_for

    options = dict(config.synth_options)
    if "config" not in options:
        fields = {"split_fractions": dict(FULL_SPLITS)} if config.full else {}
        synth = config_for(config.panel, **fields)
        if not config.full and hasattr(synth, "scan"):  # whole-head scans: the cheap mix
            synth.scan["acquisitions"] = dict(FIRST_LOOK_ACQUISITIONS)
        options["config"] = synth
    return options


def training_settings(config: DemoConfig) -> dict:
    """TrainConfig fields of this demo: first-look or full defaults, then explicit options."""
    settings = {"seed": config.seed, "panel": config.panel}
    if not config.full:
        settings.update(FIRST_LOOK_TRAINING)
    if config.epochs is not None:
        settings["epochs"] = config.epochs
    settings.update(config.train_options)
    return settings


def write_explain_manifest(manifest: Path, eval_dir: Path, target: Path) -> list[str]:
    """Pick evaluated test cases, at least one per class, and write them as a manifest.

    The chosen rows are copied verbatim (same columns) into ``target`` beside the cohort's
    manifest, so relative image paths stay valid. Returns the chosen case ids.
    """
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [unescape_cell(c) for c in reader.fieldnames or []]
        rows = [{unescape_cell(k): unescape_cell(v or "") for k, v in r.items()} for r in reader]
    evaluated = _evaluated_ids(eval_dir)
    pool = [r for r in rows if r["case_id"] in evaluated] or rows
    chosen: list[dict] = []
    by_class: dict[str, list[dict]] = {}
    for row in sorted(pool, key=lambda r: r["case_id"]):
        by_class.setdefault(row.get("diagnosis", ""), []).append(row)
    for label in sorted(by_class):
        chosen.append(by_class[label][0])
    extra = [r for r in sorted(pool, key=lambda r: r["case_id"]) if r not in chosen]
    chosen += extra[: max(0, 5 - len(chosen))]
    write_csv(target, chosen, columns)
    return [r["case_id"] for r in chosen]


def _evaluated_ids(eval_dir: Path) -> set[str]:
    path = eval_dir / "predictions.csv"
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {row["case_id"] for row in csv.DictReader(f)}


def _prepare_out(out: Path, resume: bool) -> None:
    """Create ``out``; without ``--resume`` clear an earlier demo's folders (only those)."""
    ensure_writable_folder(out)
    if resume:
        return
    ours = [out / name for name in OWNED if (out / name).exists()]
    if ours and not (out / STAGES_FILE).is_file():
        raise InputError(
            f"holds {', '.join(p.name for p in ours)} but is not a demo folder "
            f"(no {STAGES_FILE}); choose another --out",
            file=out,
        )
    if ours:
        log.info(
            "replacing the earlier demo output in %s (--resume keeps its finished stages)", out
        )
    for path in ours:
        shutil.rmtree(path)
    for name in ("report.html", "metrics.json", STAGES_FILE):
        (out / name).unlink(missing_ok=True)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
