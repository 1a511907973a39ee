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

Under pytest-xdist (``make test`` runs ``-n 2``) the three are built once for the whole run,
not once per worker: the first worker that needs one builds it in the run's shared temporary
folder under a file lock while the other waits, then both read the same files
(``built_once``). Every test that needs the trained bundle or the demo folder is marked
``slow`` (``pytest -m "not slow"`` is the quick run).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

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


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]
) -> Path:
    """``build(folder)``'s result, computed once per test run however many xdist workers ask.

    Workers share the run's temporary folder (the parent of each worker's own); the first
    to take the lock builds into ``<shared>/<name>`` and records the result's path, the
    others wait on the lock and read it. A build that raised records nothing, so the next
    worker tries again and reports its own error.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if done.is_file():
            return Path(done.read_text(encoding="utf-8"))
        if folder.exists():
            shutil.rmtree(folder)  # what a failed build left
        folder.mkdir()
        result = Path(build(folder))
        done.write_text(str(result), encoding="utf-8")
        return result


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a tiny synthetic cohort (40 brain-only cases, 4 mm), generated once per
    run (the clinical-scan default is tested in test_preprocess_integration)."""
    from autoimmuneai.synth import generate_cohort

    def build(folder: Path) -> Path:
        return generate_cohort(
            folder / "cohort", TINY_CASES, TINY_SEED, voxel_size=TINY_VOXEL_MM, workers=2,
            anatomy="brain",
        )  # fmt: skip

    return built_once(tmp_path_factory, "tiny", build)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle folder trained on ``tiny_cohort`` (fused model + baselines), once per run."""
    from autoimmuneai.training.trainer import train_bundle

    def build(folder: Path) -> Path:
        return train_bundle(tiny_cohort, folder / "bundle", tiny_train_config())

    return built_once(tmp_path_factory, "tiny_bundle", build)


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

    def build(root: Path) -> Path:
        shutil.copytree(tiny_cohort.parent, root / "cohort")
        shutil.copytree(tiny_bundle, root / "bundle", ignore=shutil.ignore_patterns("checkpoints"))
        options = {
            "cases": TINY_CASES, "seed": TINY_SEED, "full": False, "epochs": TINY_DEMO["epochs"]
        }  # fmt: skip
        quality = {k: TINY_DEMO[k] for k in ("quality_cases", "quality_methods")}
        config = demo_config(**options, **quality)
        done = {"done": True, "seconds": 0.0, "peak_rss_mb": 0.0}
        stages = {"config": config.to_dict(), "stages": {"cohort": done, "train": done}}
        (root / STAGES_FILE).write_text(json.dumps(stages), encoding="utf-8")
        assert run_demo(root, **options, resume=True, **quality) == 0
        return root

    return built_once(tmp_path_factory, "tiny_demo", build)


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
