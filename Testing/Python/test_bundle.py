"""Bundles: round trip, inference, and refusal of tampered or mismatched bundles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from autoimmuneai.data.panel import load_panel
from autoimmuneai.data.serology import SerologyEncoder
from autoimmuneai.errors import BundleError
from autoimmuneai.inference.batch import infer
from autoimmuneai.model.bundle import (
    IMAGE_ONLY_FILE,
    METADATA,
    MODEL_FILE,
    load_bundle,
    save_bundle,
)
from autoimmuneai.model.fusion import FusionModel, ModelConfig
from autoimmuneai.preprocess.model_grid import ModelGrid
from autoimmuneai.stats.calibration import softmax
from autoimmuneai.stats.conformal import fit_conformal_tuned


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    """A small bundle written by ``save_bundle`` from a freshly initialised network."""
    panel = load_panel("cns_autoimmune")
    rng = np.random.default_rng(0)
    n_feat = len(panel.features)
    values = rng.uniform(0, 2, (30, n_feat))
    for j, f in enumerate(panel.features):
        if f.kind in ("binary", "categorical"):
            values[:, j] = rng.integers(0, 2, 30)
    missing = rng.uniform(size=(30, n_feat)) < 0.2
    encoder = SerologyEncoder(panel).fit(values, missing)
    cfg = ModelConfig(
        n_serology=encoder.n_encoded, n_classes=len(panel.classes), channels=(4, 8), strides=(2, 2)
    )
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    image_only = FusionModel(cfg.variant(use_serology=False)).eval()
    probs = rng.dirichlet(np.ones(len(panel.classes)), 100)
    labels = rng.integers(0, len(panel.classes), 100)
    conformal = fit_conformal_tuned(probs, labels, alpha=0.1)  # 30 tune, 70 calibrate
    return save_bundle(
        tmp_path / "bundle",
        panel=panel,
        grid=ModelGrid(shape=(16, 16, 16), spacing=10.0),
        encoder=encoder,
        model=model,
        image_only=image_only,
        temperature=1.7,
        conformal=conformal,
        baseline_hazard=(np.array([1.0, 5.0, 9.0]), np.array([0.1, 0.3, 0.35])),
        risk_cutoffs=(-0.2, 0.3),
        baselines={"criteria": {"kind": "criteria"}},
        training={"cohort": "synthetic", "validation": {"fused": {"balanced_accuracy": 0.5}}},
        image_only_temperature=1.2,
    )


def test_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, panel="cns_autoimmune")
    meta = json.loads((bundle_dir / METADATA).read_text(encoding="utf-8"))
    for key in ("version", "monai_version", "pytorch_version", "numpy_version"):
        assert meta[key]
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image", "serology"}
    assert set(fmt["outputs"]) == {"logits", "log_hazard"}
    assert set(meta["weights"]) == {MODEL_FILE, IMAGE_ONLY_FILE}
    assert bundle.temperature == 1.7 and bundle.risk_cutoffs == (-0.2, 0.3)
    assert bundle.grid.shape == (16, 16, 16)
    assert not bundle.model.training
    np.testing.assert_allclose(bundle.baseline_hazard[1], [0.1, 0.3, 0.35])
    card = (bundle_dir / "docs" / "README.md").read_text(encoding="utf-8")
    assert "Research only" in card
    assert (bundle.conformal.n_tuning, bundle.conformal.n_calibration) == (30, 70)
    assert "70 calibration cases" in card and "chosen on 30 other validation cases" in card
    # the reloaded network computes exactly what the saved one did
    torch.manual_seed(0)
    original = FusionModel(bundle.model.config).eval()
    image, serology = torch.randn(3, 1, 16, 16, 16), torch.randn(3, bundle.encoder.n_encoded)
    with torch.no_grad():
        expected = original(image, serology)
    out = infer(bundle, (image, serology))
    np.testing.assert_allclose(out.logits, expected.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(out.probs, softmax(out.logits, 1.7))
    np.testing.assert_allclose(out.probs.sum(1), 1.0)
    io = infer(bundle, (image, serology), which="image_only")
    assert io.temperature == 1.2 and io.risk.shape == (3,)


def test_modified_weights_are_refused(bundle_dir: Path) -> None:
    path = bundle_dir / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(bundle_dir)


def test_metadata_that_is_not_json_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / METADATA).write_text("{'not': json,", encoding="utf-8")
    with pytest.raises(BundleError, match="not valid JSON") as info:
        load_bundle(bundle_dir)
    assert "\n" not in str(info.value)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_never_run(bundle_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    evil = pickle.dumps({"state": _Payload(marker)})
    (bundle_dir / MODEL_FILE).write_bytes(evil)
    import hashlib

    meta = json.loads((bundle_dir / METADATA).read_text(encoding="utf-8"))
    meta["weights"][MODEL_FILE]["sha256"] = hashlib.sha256(evil).hexdigest()  # a careful forger
    (bundle_dir / METADATA).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_weight_path_outside_the_bundle_is_refused(bundle_dir: Path) -> None:
    meta = json.loads((bundle_dir / METADATA).read_text(encoding="utf-8"))
    meta["model"]["file"] = "../elsewhere.safetensors"
    meta["weights"]["../elsewhere.safetensors"] = meta["weights"][MODEL_FILE]
    (bundle_dir / METADATA).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_dir)


def test_panel_mismatch_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    panel_json = json.loads(Path(load_panel("cns_autoimmune").source).read_text(encoding="utf-8"))
    panel_json["classes"] = panel_json["classes"][:-1]
    panel_json.pop("criteria")  # its rules name the dropped class: the panel would not load
    other = tmp_path / "other_panel.json"
    other.write_text(json.dumps(panel_json), encoding="utf-8")
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle_dir, panel=other)


def test_missing_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_infer_on_a_cohort_matches_arrays(tiny_bundle: Path, tiny_cohort: Path) -> None:
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.data.dataset import build_arrays

    bundle = load_bundle(tiny_bundle)
    cohort = load_cohort(tiny_cohort, panel=bundle.panel).subset(
        [c.case_id for c in load_cohort(tiny_cohort).cases[:4]]
    )
    out = infer(bundle, cohort)
    arrays = build_arrays(cohort, bundle.grid, bundle.encoder, progress=False)
    again = infer(bundle, arrays)
    assert out.case_ids == cohort.case_ids
    np.testing.assert_allclose(out.logits, again.logits)
    assert np.isfinite(out.risk).all()
