"""Out-of-distribution warnings: an unusual case gets a warning, not a silent answer."""

import numpy as np
from conftest import read_rows

from autoimmuneai.data.imaging import Volume, load_volume
from autoimmuneai.inference.predictor import Predictor


def _case(tiny_cohort):
    rows, _ = read_rows(tiny_cohort)
    row = rows[0]
    volume = load_volume(tiny_cohort.parent / row["image_flair"])
    labs = {f: row.get(f, "") for f in ("aqp4_igg", "mog_igg", "ocb", "age", "sex")}
    return volume, labs


def test_typical_case_has_no_warning(tiny_bundle, tiny_cohort):
    predictor = Predictor(tiny_bundle)
    volume, labs = _case(tiny_cohort)
    assert "training_distribution" in predictor.bundle.metadata
    assert predictor.predict(volume, labs).warnings == []


def test_unusual_scaling_voxel_size_and_lab_are_flagged(tiny_bundle, tiny_cohort):
    predictor = Predictor(tiny_bundle)
    volume, labs = _case(tiny_cohort)
    brighter = Volume(volume.array * 50.0, volume.affine)
    warnings = predictor.predict(brighter, labs).warnings
    assert any("intensity" in w for w in warnings), warnings

    thick = volume.affine.copy()
    thick[:3, 2] *= 4.0  # 4x thicker slices than any training image
    warnings = predictor.predict(Volume(volume.array[:, :, ::4].copy(), thick), labs).warnings
    assert any("voxel size" in w for w in warnings), warnings

    labs = dict(labs, age="109")
    warnings = predictor.predict(volume, labs).warnings
    assert any(w.startswith("Age 109") for w in warnings), warnings
    assert np.isfinite(predictor.predict(volume, labs).risk_score)
