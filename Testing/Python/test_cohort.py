"""Manifests: formats, row/column errors, path safety, and the arrays handed to the model."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from autoimmuneai.data.cohort import (
    case_id_slug,
    closest_column,
    cohort_warnings,
    load_cohort,
    read_manifest,
    single_case_cohort,
)
from autoimmuneai.data.panel import load_panel
from autoimmuneai.data.serology import SerologyEncoder
from autoimmuneai.errors import InputError
from autoimmuneai.workflows.validate import validate_manifest

PANEL = load_panel("cns_autoimmune")


def _image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((8, 9, 10), np.float32)
    data[2:5, 3:6, 4:7] = 1.0
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path.relative_to(path.parent.parent))


def _rows(tmp_path: Path, n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "case_id": f"c{i}",
                "image_flair": _image(tmp_path / "images" / f"c{i}.nii.gz"),
                "aqp4_igg": ["1:160", "neg", ""][i % 3],
                "mog_igg": "neg",
                "ocb": ["pos", "neg", ""][i % 3],
                "c3": ["95 mg/dL", "1,1", "<0.5"][i % 3],
                "age": str(30 + i),
                "sex": "F",
                "diagnosis": ["NMOSD", "SVD", "MS"][i % 3],
                "event_time": "12.5",
                "event": "1",
            }
        )
    return rows


def _write(tmp_path: Path, rows: list[dict], name="manifest.csv", sep=",") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


def test_loads_values_labels_and_survival(tmp_path):
    cohort = load_cohort(_write(tmp_path, _rows(tmp_path)))
    assert cohort.case_ids == ["c0", "c1", "c2"]
    values, missing = cohort.lab_matrix()
    j = PANEL.feature_names.index
    assert values[0, j("aqp4_igg")] == 160.0 and values[1, j("aqp4_igg")] == 0.0
    assert missing[2, j("aqp4_igg")] and missing[:, j("esr")].all()  # column absent -> missing
    assert values[0, j("c3")] == pytest.approx(0.95)
    assert values[2, j("c3")] == pytest.approx(0.25)  # "<0.5": half the limit
    assert cohort.cases[2].labs["c3"].censor == "<"
    assert list(cohort.labels()) == [1, 4, 0]
    times, events = cohort.survival()
    assert times.tolist() == [12.5] * 3 and events.tolist() == [1.0] * 3


@pytest.mark.parametrize(("name", "sep"), [("m.tsv", "\t"), ("m.csv", ";")])
def test_tsv_and_semicolons(tmp_path, name, sep):
    cohort = load_cohort(_write(tmp_path, _rows(tmp_path), name, sep))
    assert len(cohort) == 3


def test_bom_and_excel(tmp_path):
    rows = _rows(tmp_path)
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(rows).to_csv(index=False).encode())
    assert load_cohort(path).case_ids == ["c0", "c1", "c2"]
    xlsx = tmp_path / "m.xlsx"
    pd.DataFrame(rows).to_excel(xlsx, index=False)
    assert load_cohort(xlsx).cases[0].labs["aqp4_igg"].value == 160.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[1].update(case_id="c0"), r"row 3, column case_id: duplicate case_id 'c0'"),
        (lambda r: r[1].update(case_id="C0"), r"row 3, column case_id: duplicate"),
        (lambda r: r[0].update(case_id="../x"), r"row 2, column case_id"),
        (
            lambda r: r[0].update(diagnosis="Lupus"),
            r"row 2, column diagnosis: unknown class 'Lupus'",
        ),
        (lambda r: r[1].update(c3="lots"), r"row 3, column c3: C3: 'lots' is not a number"),
        (lambda r: r[1].update(c3="95 mmol/L"), r"row 3, column c3: C3: unknown unit"),
        (lambda r: r[2].update(esr="999"), r"row 4, column esr: ESR: '999' is implausible"),
        (
            lambda r: r[0].update(event_time="-3"),
            r"row 2, column event_time: event_time must be >= 0",
        ),
        (lambda r: r[0].update(event="2"), r"row 2, column event: event must be 0"),
        (
            lambda r: r[0].update(image_flair="images/nope.nii.gz"),
            r"row 2, column image_flair: image not found",
        ),
        (
            lambda r: r[0].update(image_flair="../../etc/passwd"),
            r"row 2, column image_flair: path '../../etc/passwd' points outside",
        ),
    ],
)
def test_row_errors_name_row_and_column(tmp_path, edit, message):
    rows = _rows(tmp_path)
    for r in rows:
        r["esr"] = "20"
    edit(rows)
    path = _write(tmp_path, rows)
    with pytest.raises(InputError, match=message):
        load_cohort(path)
    lenient = load_cohort(path, strict=False)
    assert len(lenient.cases) == 2 and len(lenient.failed) == 1


def test_outside_root_allowed_explicitly(tmp_path):
    outside = tmp_path / "elsewhere" / "img.nii.gz"
    _image(outside)
    rows = _rows(tmp_path / "cohort")
    rows[0]["image_flair"] = str(outside)
    path = _write(tmp_path / "cohort", rows)
    with pytest.raises(InputError, match="outside"):
        load_cohort(path)
    assert load_cohort(path, allow_outside_root=True).cases[0].images["flair"] == outside.resolve()


def test_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="manifest is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("case_id,image_flair\n", encoding="utf-8")
    with pytest.raises(InputError, match="no cases"):
        read_manifest(tmp_path / "header.csv")
    rows = _rows(tmp_path)
    for r in rows:
        del r["image_flair"]
    with pytest.raises(InputError, match="column image_flair: required column is missing"):
        load_cohort(_write(tmp_path, rows))


def test_validate_reports_every_problem(tmp_path):
    rows = _rows(tmp_path)
    rows[0]["c3"] = "lots"
    rows[2]["diagnosis"] = "Lupus"
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"not an image")
    report = validate_manifest(_write(tmp_path, rows))
    assert not report.usable
    text = report.render()
    assert "row 2, column c3" in text and "row 4, column diagnosis" in text
    assert "cases per class" in text and "missing per feature" in text


def test_serology_encoder_layout_and_missing_indicators(tmp_path):
    cohort = load_cohort(_write(tmp_path, _rows(tmp_path)))
    values, missing = cohort.lab_matrix()
    encoder = SerologyEncoder(PANEL).fit(values, missing)
    x = encoder.transform(values, missing)
    assert x.shape == (3, encoder.n_encoded) and x.dtype == np.float32
    cols = encoder.feature_columns()
    aqp4_value, aqp4_missing = cols["aqp4_igg"][0], cols["aqp4_igg"][-1]
    assert x[2, aqp4_missing] == 1.0 and x[2, aqp4_value] == 0.0
    assert x[0, aqp4_value] > x[1, aqp4_value]  # 1:160 above negative after log + standardising
    sex_f = encoder.columns.index("sex=F")
    assert x[:, sex_f].tolist() == [1.0, 1.0, 1.0]
    again = SerologyEncoder.from_dict(encoder.to_dict(), PANEL).transform(values, missing)
    np.testing.assert_array_equal(x, again)


def test_misspelt_lab_column_is_named_with_the_closest_feature(tmp_path):
    """``AQP4`` instead of ``aqp4_igg``: validate names it, suggests the panel column, and
    warns that AQP4-IgG is missing on every row (the model would see it as not done)."""
    rows = _rows(tmp_path)
    for row in rows:
        row["AQP4"] = row.pop("aqp4_igg")
        row["patient_ref"] = "x"
    manifest = _write(tmp_path, rows)
    report = validate_manifest(manifest)
    assert report.usable  # a warning, not a row problem
    assert "column AQP4: unknown column, ignored; did you mean aqp4_igg?" in report.warnings
    assert "column patient_ref: unknown column, ignored (not a panel feature)" in report.warnings
    assert any(
        w.startswith("column aqp4_igg: AQP4-IgG is not in the manifest") for w in report.warnings
    )
    # esr and crp are absent from these rows too: one warning each, nothing for present labs.
    missing = {w.split(":")[0] for w in report.warnings if "not done for every case" in w}
    assert missing == {f"column {n}" for n in ("aqp4_igg", "igg_index", "csf_wbc", "ana",
                       "anti_dsdna", "anti_sm", "c4", "antiphospholipid", "anti_ro", "esr",
                       "crp")}  # fmt: skip
    text = report.render()
    assert "did you mean aqp4_igg?" in text and "usable, but read the warnings above." in text
    assert cohort_warnings(manifest) == load_cohort(manifest).warnings  # the Slicer module's call


def test_a_lab_empty_on_every_row_is_a_warning(tmp_path):
    rows = _rows(tmp_path)
    for row in rows:
        row["mog_igg"] = ""
    warnings = load_cohort(_write(tmp_path, rows)).warnings
    assert any(w.endswith("column mog_igg: MOG-IgG is empty on every row; the model sees it as "
                          "not done for every case") for w in warnings), warnings  # fmt: skip


@pytest.mark.parametrize(
    ("column", "expected"),
    [("AQP4", "aqp4_igg"), ("MOG", "mog_igg"), ("Anti-dsDNA", "anti_dsdna"), ("IgG idx", "igg_index"),
     ("CSF white cells", "csf_wbc"), ("diagnsis", "diagnosis"), ("mrn", None)],
)  # fmt: skip
def test_closest_column(column, expected):
    known = ["case_id", "image_flair", *PANEL.feature_names, "diagnosis", "event_time", "event"]
    assert closest_column(column, PANEL, known) == expected


def test_single_case_from_the_command_line(tmp_path):
    image = tmp_path / "scan_01.nii.gz"
    _image(tmp_path / "x" / "scan_01.nii.gz")
    (tmp_path / "x" / "scan_01.nii.gz").rename(image)
    labs = {"aqp4_igg": "1:160", "ocb": "neg", "age": "41", "sex": "F"}
    cohort = single_case_cohort(image, labs, PANEL)
    (case,) = cohort.cases
    assert case.case_id == "scan_01" and case.row is None and case.images["flair"] == image
    assert case.labs["aqp4_igg"].value == 160.0 and case.labs["ocb"].value == 0.0
    assert case.labs["esr"].missing
    with pytest.raises(InputError) as bad:
        single_case_cohort(image, {"AQP4": "1:160"}, PANEL)
    assert (
        str(bad.value)
        == "option --lab: 'AQP4' is not a lab of panel cns_autoimmune; did you mean aqp4_igg?"
    )
    with pytest.raises(InputError) as bad:
        single_case_cohort(image, {**labs, "c3": "lots"}, PANEL)
    assert str(bad.value).startswith("option --lab c3: ")
    with pytest.raises(InputError) as bad:
        single_case_cohort(image, {"aqp4_igg": "1:160"}, PANEL)
    assert str(bad.value) == "option --lab age: Age is required but missing"
    with pytest.raises(InputError, match="image not found"):
        single_case_cohort(tmp_path / "none.nii.gz", {}, PANEL)


def test_case_id_slug():
    assert case_id_slug("My Scan (2).nii") == "My_Scan__2_.nii"
    assert case_id_slug("=HYPERLINK(x)") == "HYPERLINK_x"
    assert case_id_slug("...") == "case"


def test_missing_required_column_suggests_the_misspelt_one(tmp_path):
    rows = _rows(tmp_path)
    for row in rows:
        row["Age"] = row.pop("age")
    with pytest.raises(InputError) as bad:
        load_cohort(_write(tmp_path, rows))
    assert str(bad.value).endswith("column age: required column is missing (did you mean Age?)")
