"""``autoimmuneai predict`` as the README runs it: relative paths, explain, and the case folder."""

import json
from pathlib import Path

import pytest

from autoimmuneai.cli import main


def test_predict_explain_with_relative_output_folder(
    tmp_path, monkeypatch, cohort_copy, tiny_bundle
):
    manifest, rows = cohort_copy(tmp_path / "cohort", n=1)
    monkeypatch.chdir(tmp_path)
    status = main(
        ["predict", "--bundle", str(tiny_bundle), "--cohort", "cohort/" + manifest.name,
         "--out", "pred", "--explain", "--no-snapshot"]
    )  # fmt: skip
    assert status == 0
    case_dir = Path("pred") / rows[0]["case_id"]
    for name in ("prediction.json", "attribution.nii.gz", "evidence.seg.nrrd", "scene.mrml"):
        assert (case_dir / name).is_file(), name
    assert not list(case_dir.glob(".tmp-*"))  # staging folders are gone
    prediction = json.loads((case_dir / "prediction.json").read_text(encoding="utf-8"))
    assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-4
    assert set(prediction["prediction_set"]) <= set(prediction["classes"])
    explanation = prediction["explanation"]
    assert explanation["method"] == "integrated_gradients"
    assert 8 <= explanation["n_steps"] <= 32 and explanation["relative_delta"] >= 0
    converged = explanation["relative_delta"] <= 0.05
    assert converged != any("did not converge" in w for w in prediction["warnings"])
    scene = (case_dir / "scene.mrml").read_text(encoding="utf-8")
    assert "pred/" not in scene  # the scene refers to its files relative to itself


def test_alpha_and_bands_options(tmp_path, monkeypatch, cohort_copy, tiny_bundle):
    manifest, rows = cohort_copy(tmp_path / "cohort", n=1)
    argv = ["predict", "--bundle", str(tiny_bundle), "--cohort", str(manifest), "--explain",
            "--no-snapshot"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a"), "--alpha", "0.4", "--bands", "2,10"]) == 0
    prediction = json.loads(
        (tmp_path / "a" / rows[0]["case_id"] / "prediction.json").read_text(encoding="utf-8")
    )
    assert prediction["alpha"] == 0.4
    assert {r["band"] for r in prediction["regions"]} <= {"top 2%", "top 10%"}
    with pytest.raises(SystemExit) as bad:
        main([*argv, "--out", str(tmp_path / "b"), "--bands", "5,1"])
    assert bad.value.code == 2
    assert main([*argv, "--out", str(tmp_path / "c"), "--alpha", "1.5"]) == 2
