"""Shared fixtures: a tiny synthetic cohort and a tiny trained bundle, built once per session.

Both come from the real commands' functions (``synth.generate_cohort``,
``training.train_bundle``), only smaller: a few dozen cases at 4 mm, a small encoder on a
coarse model grid, a couple of epochs. They are meant to be cheap (well under a minute
together on 2 cores), not accurate. Tests must not modify them: copy what you change
(``cohort_copy`` does that for manifests and their images).

* ``tiny_cohort``: Path of the manifest (``.../cohort/manifest.csv``; ``truth.csv`` and the
  images beside it; the manifest has a ``split`` column).
* ``tiny_bundle``: Path of the bundle folder trained on ``tiny_cohort``.
* ``tiny_demo``: a finished demo folder (``cohort/``, ``bundle/``, ``evaluation/``,
  ``cases/``, ``report.html``, ``metrics.json``, ``stages.json``) made by ``run_demo`` from
  copies of the two.
* ``cohort_copy``: a function ``(dest, n=3, rows=None) -> (manifest, rows)`` copying a few
  cases (their image files included) into a new folder, returning the manifest path and the
  rows as dicts of strings, so a test can edit them and write them back with ``write_rows``.

Under pytest-xdist (``make test`` runs ``-n 2``) each worker builds these fixtures once, in
its own temporary folder (``tmp_path_factory`` is per worker), so no two workers write to
one path. Every test that needs the trained bundle or the demo folder is marked ``slow``
(``pytest -m "not slow"`` is the quick run).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

SLOW_FIXTURES = frozenset({"tiny_bundle", "tiny_demo", "toy"})
"""Fixtures that train a model (``toy``: test_explain's): a test that uses one, directly or
through another fixture, is slow."""
SLOW_MODULES = frozenset({"test_training", "test_distributed"})
"""Test files whose every test trains a model of its own."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that trains a model or needs the trained bundle or demo."""
    for item in items:
        module = getattr(item, "module", None)
        in_slow_module = module is not None and module.__name__ in SLOW_MODULES
        if in_slow_module or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


TINY_CASES = 40
TINY_SEED = 7
TINY_VOXEL_MM = 4.0


def tiny_train_config():
    """A TrainConfig that trains in seconds: small encoder, coarse grid, two epochs, the plain
    model grid (the tiny cohort is brain-only)."""
    from autoimmuneai.training.trainer import TrainConfig

    return TrainConfig(
        epochs=2,
        batch_size=8,
        patience=2,
        seed=TINY_SEED,
        channels=(4, 8, 16),
        strides=(2, 2, 2),
        grid_shape=(32, 40, 32),
        grid_spacing=5.0,
        preprocessing="model_grid",  # the tiny cohort is skull-stripped and upright
    )


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a tiny synthetic cohort (40 brain-only cases, 4 mm), generated once per
    session (the clinical-scan default is tested in test_preprocess_integration)."""
    from autoimmuneai.synth import generate_cohort

    base = tmp_path_factory.mktemp("tiny")
    manifest = generate_cohort(
        base / "cohort", TINY_CASES, TINY_SEED, voxel_size=TINY_VOXEL_MM, workers=2, anatomy="brain"
    )
    return Path(manifest)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_cohort: Path) -> Path:
    """Bundle folder trained on ``tiny_cohort`` (fused model + baselines), once per session."""
    from autoimmuneai.training.trainer import train_bundle

    out = tiny_cohort.parent.parent / "bundle"
    return Path(train_bundle(tiny_cohort, out, tiny_train_config()))


TINY_DEMO = {"quality_cases": 2, "quality_methods": ("integrated_gradients",), "epochs": 2}


@pytest.fixture(scope="session")
def tiny_demo(tiny_cohort: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A finished demo folder (``autoimmuneai demo`` layout, report included), built by the
    real ``run_demo`` resuming from copies of ``tiny_cohort`` and ``tiny_bundle``.

    The copies stand in for the cohort and train stages (marked finished in
    ``stages.json``); ``run_demo(..., resume=True)`` then runs evaluate, explanation
    quality, explain (one test case per class) and report for real.
    """
    import json

    from autoimmuneai.workflows.demo import STAGES_FILE, demo_config, run_demo

    root = tmp_path_factory.mktemp("tiny_demo")
    shutil.copytree(tiny_cohort.parent, root / "cohort")
    shutil.copytree(tiny_bundle, root / "bundle", ignore=shutil.ignore_patterns("checkpoints"))
    options = {"cases": TINY_CASES, "seed": TINY_SEED, "full": False, "epochs": TINY_DEMO["epochs"]}
    quality = {k: TINY_DEMO[k] for k in ("quality_cases", "quality_methods")}
    config = demo_config(**options, **quality)
    done = {"done": True, "seconds": 0.0, "peak_rss_mb": 0.0}
    stages = {"config": config.to_dict(), "stages": {"cohort": done, "train": done}}
    (root / STAGES_FILE).write_text(json.dumps(stages), encoding="utf-8")
    assert run_demo(root, **options, resume=True, **quality) == 0
    return root


def read_rows(manifest: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of a CSV manifest as dicts of strings, and its columns."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        return list(reader), list(reader.fieldnames or [])


def write_rows(
    manifest: Path, rows: list[dict[str, str]], columns: list[str], delimiter: str = ","
) -> Path:
    """Write manifest rows (missing keys left blank)."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, fieldnames=columns, delimiter=delimiter, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def cohort_copy(tiny_cohort: Path) -> Callable[..., tuple[Path, list[dict[str, str]]]]:
    """``copy(dest, n=3, case_ids=None)``: copy a few tiny-cohort cases (with images) to dest."""
    rows, columns = read_rows(tiny_cohort)
    src_root = tiny_cohort.parent

    def copy(
        dest: Path, n: int = 3, case_ids: list[str] | None = None
    ) -> tuple[Path, list[dict[str, str]]]:
        chosen = [r for r in rows if r["case_id"] in set(case_ids)] if case_ids else rows[:n]
        out = []
        for row in chosen:
            row = dict(row)
            for column in columns:
                if column.startswith(("image_", "mask_")) and row[column]:
                    target = dest / row[column]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src_root / row[column], target)
            out.append(row)
        truth = src_root / "truth.csv"
        if truth.is_file():
            shutil.copyfile(truth, dest / "truth.csv")
        return write_rows(dest / "manifest.csv", out, columns), out

    copy.columns = columns  # type: ignore[attr-defined]
    return copy
