"""The preprocessing stage end to end: a whole-head cohort, train with it, the bundle records it,
predict uses it and reports its quality, results come back in the patient's geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoimmuneai.model.bundle import load_bundle
from autoimmuneai.preprocess.pipeline import Preprocessor
from autoimmuneai.synth import SynthConfig, generate_cohort
from autoimmuneai.training.trainer import TrainConfig, train_bundle


@pytest.fixture(scope="module")
def head_cohort(tmp_path_factory) -> Path:
    cfg = SynthConfig()
    cfg.scan["acquisitions"] = {"3d_2mm": 0.5, "2d_axial": 0.5}
    cfg.scan["inplane_mm"] = [1.6, 1.6]
    out = tmp_path_factory.mktemp("heads")
    return generate_cohort(out, 10, 0, workers=2, progress=False, config=cfg)  # heads: default


def test_head_cohort_carries_the_truth(head_cohort: Path) -> None:
    root = head_cohort.parent
    scans = json.loads((root / "scans.json").read_text())
    assert len(scans) == 10
    assert {s["acquisition"] for s in scans.values()} <= {"3d_2mm", "2d_axial"}
    case, truth = next(iter(scans.items()))
    image = nib.load(root / f"images/{case}_flair.nii.gz")
    brain = nib.load(root / truth["brain_mask"])
    lesions = nib.load(root / f"masks/{case}_lesions.nii.gz")
    assert image.shape == brain.shape == lesions.shape
    assert np.allclose(image.affine, brain.affine)
    volume_ml = brain.get_fdata().sum() * np.prod(brain.header.get_zooms()) / 1000
    assert 1200 < volume_ml < 2600  # a brain, not a head
    head_voxels = (image.get_fdata() > 0.3 * np.percentile(image.get_fdata(), 99)).sum()
    assert head_voxels > 1.5 * brain.get_fdata().sum()  # skull, scalp and neck around it
    pose = np.asarray(truth["template_to_image_ras"])
    assert pose.shape == (4, 4) and abs(np.linalg.det(pose[:3, :3]) - 1) < 0.5
    # the same patients as the brain-only cohort: identical labs and diagnoses
    brain_only = generate_cohort(
        root / "brain_only", 10, 0, workers=1, progress=False, anatomy="brain"
    )
    assert (
        brain_only.read_text().split("\n")[1].split(",")[3:]
        == head_cohort.read_text().split("\n")[1].split(",")[3:]
    )


@pytest.mark.slow  # trains a model
def test_train_records_the_preprocessing_and_predict_uses_it(head_cohort: Path, tmp_path) -> None:
    assert TrainConfig().preprocessing == "mni152"
    config = TrainConfig(  # the default preprocessing: the clinical-scan stage
        epochs=1,
        grid_shape=(16, 20, 16),
        grid_spacing=10.0,
        channels=(4, 8),
        strides=(2, 2),
    )
    bundle_dir = train_bundle(head_cohort, tmp_path / "bundle", config, progress=False)
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    assert meta["preprocessing"]["grid"]["pipeline"] == "mni152_affine_v1"
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle.grid, Preprocessor)

    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.inference.predictor import Predictor

    cohort = load_cohort(head_cohort, panel=bundle.panel)
    case = cohort.cases[0]
    from autoimmuneai.data.imaging import load_volume

    volume = load_volume(case.images["flair"])
    predictor = Predictor(bundle)
    result = predictor.predict(volume, case.labs, case.case_id).to_json()
    quality = result["quality"]
    assert quality["registration_ncc"] > 0.35 and quality["brain_coverage"] > 0.99
    assert quality["warnings"] == []
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-5
    # a scanner that scales intensities 5x: the stage standardises them, so no intensity
    # warning (the brain-only bundles' check on raw intensities would fire)
    scaled = predictor.predict(
        type(volume)(volume.array * 5.0 + 300.0, volume.affine), case.labs, case.case_id
    ).to_json()
    assert not [w for w in scaled["warnings"] if "intensity" in w], scaled["warnings"]
    assert scaled["predicted"] == result["predicted"]
    prepared = predictor.prepare(volume, case.labs)
    back = bundle.grid.to_input(prepared.sample.tensor, prepared.sample)
    assert back.shape == volume.shape  # model-grid arrays come back on the patient's voxels


@pytest.mark.slow  # trains a model
def test_demo_renders_heads_and_trains_with_the_stage_by_default(tmp_path) -> None:
    """The demo path with its defaults (whole-head scans, the clinical-scan stage), only
    smaller: the cohort is heads of mixed acquisitions, the bundle records the stage, and the
    explained cases carry its quality figures."""
    from autoimmuneai.workflows.demo import FIRST_LOOK_ACQUISITIONS, run_demo

    small = {"grid_shape": (16, 20, 16), "grid_spacing": 10.0, "channels": (4, 8),
             "strides": (2, 2), "folds": 1}  # fmt: skip
    rc = run_demo(
        tmp_path / "demo", cases=24, seed=3, epochs=1, quality_cases=1,
        quality_methods=("integrated_gradients",), train_options=small,
    )  # fmt: skip
    assert rc == 0
    demo = tmp_path / "demo"
    cohort = json.loads((demo / "cohort" / "cohort.json").read_text())
    assert cohort["anatomy"] == "head"
    scans = json.loads((demo / "cohort" / "scans.json").read_text())
    assert {s["acquisition"] for s in scans.values()} <= set(FIRST_LOOK_ACQUISITIONS)
    assert len({s["acquisition"] for s in scans.values()}) >= 2  # a mix, not one kind
    meta = json.loads((demo / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["preprocessing"]["grid"]["pipeline"] == "mni152_affine_v1"
    predictions = list((demo / "cases").glob("*/prediction.json"))
    assert predictions
    for path in predictions:
        quality = json.loads(path.read_text())["quality"]
        assert quality["registration_ncc"] > 0.35, path
    assert not (demo / "cache").exists()  # the shared image cache goes when the demo ends
