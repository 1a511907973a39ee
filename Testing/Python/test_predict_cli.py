"""``autoimmuneai predict`` as the README runs it: relative paths, explain, and the case folder."""

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_rows

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


def _run(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


LABS = {"aqp4_igg": "1:160", "ocb": "neg", "age": "41", "sex": "F"}


def test_one_case_without_a_manifest(tmp_path, cohort_copy, tiny_bundle):
    """``predict --image --lab ...`` and ``--labs labs.json`` give the manifest's prediction."""
    manifest, rows = cohort_copy(tmp_path / "cohort", n=1)
    image = manifest.parent / rows[0]["image_flair"]
    row = {**{k: "" for k in rows[0]}, "case_id": "ref", "image_flair": rows[0]["image_flair"]}
    write_rows(tmp_path / "cohort" / "one.csv", [{**row, **LABS}], list(row))
    rc, _, err = _run(["predict", "--bundle", tiny_bundle, "--cohort",
                       tmp_path / "cohort" / "one.csv", "--out", tmp_path / "ref", "--no-snapshot"])  # fmt: skip
    assert rc == 0, err
    reference = json.loads((tmp_path / "ref" / "ref" / "prediction.json").read_text("utf-8"))

    labs = [x for k, v in LABS.items() for x in ("--lab", f"{k}={v}")]
    rc, out, err = _run(["predict", "--bundle", tiny_bundle, "--image", image, *labs,
                         "--out", tmp_path / "a", "--no-snapshot"])  # fmt: skip
    assert rc == 0, err
    case_id = image.name.split(".")[0]
    one = json.loads((tmp_path / "a" / case_id / "prediction.json").read_text("utf-8"))
    assert one["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)
    assert "1 case(s) predicted" in out

    (tmp_path / "labs.json").write_text(json.dumps({**LABS, "age": 41, "esr": None}), "utf-8")
    rc, _, err = _run(["predict", "--bundle", tiny_bundle, "--image", image, "--labs",
                       tmp_path / "labs.json", "--case-id", "p7", "--out", tmp_path / "b",
                       "--no-snapshot"])  # fmt: skip
    assert rc == 0, err
    two = json.loads((tmp_path / "b" / "p7" / "prediction.json").read_text("utf-8"))
    assert two["case_id"] == "p7"
    assert two["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)

    rc, _, err = _run(["predict", "--bundle", tiny_bundle, "--image", image, "--lab", "AQP4=1:160",
                       "--out", tmp_path / "c"])  # fmt: skip
    assert rc == 2
    assert err.strip().endswith("option --lab: 'AQP4' is not a lab of panel cns_autoimmune; "
                                "did you mean aqp4_igg?")  # fmt: skip


def test_failing_one_case_prints_the_reason(tmp_path, tiny_bundle):
    image = tmp_path / "dot.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), image)
    labs = [x for k, v in LABS.items() for x in ("--lab", f"{k}={v}")]
    rc, out, _ = _run(["predict", "--bundle", tiny_bundle, "--image", image, *labs,
                       "--out", tmp_path / "o"])  # fmt: skip
    assert rc == 3
    assert "1 failed" in out
    assert f"case dot, option --image: {image}: is a single voxel (shape (1, 1, 1))" in out, out


def test_alpha_error_names_the_option(tmp_path, cohort_copy, tiny_bundle):
    manifest, _ = cohort_copy(tmp_path / "cohort", n=1)
    rc, _, err = _run(["predict", "--bundle", tiny_bundle, "--cohort", manifest,
                       "--out", tmp_path / "o", "--alpha", "1.5"])  # fmt: skip
    assert rc == 2
    assert "error: option --alpha: " in err and "column" not in err, err


def test_predict_warns_about_a_misspelt_lab_column(tmp_path, cohort_copy, tiny_bundle):
    manifest, rows = cohort_copy(tmp_path / "cohort", n=2)
    for row in rows:
        row["AQP4"] = row.pop("aqp4_igg")
    write_rows(manifest, rows, list(rows[0]))
    rc, out, _ = _run(["predict", "--bundle", tiny_bundle, "--cohort", manifest,
                       "--out", tmp_path / "o", "--no-snapshot"])  # fmt: skip
    assert rc == 0
    assert "column AQP4: unknown column, ignored; did you mean aqp4_igg?" in out
    assert "column aqp4_igg: AQP4-IgG is not in the manifest" in out
