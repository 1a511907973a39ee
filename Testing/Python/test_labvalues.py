"""Lab-sheet strings become numbers in the panel's unit, with censoring and missingness."""

import math

import numpy as np
import pytest
from example_panel import write_example_panel

from autoimmuneai.data.labvalues import (
    LabValueError,
    format_lab_value,
    model_value,
    parse_lab_value,
)
from autoimmuneai.data.panel import load_panel

PANEL = load_panel("cns_autoimmune")


def parse(feature: str, raw):
    return parse_lab_value(raw, PANEL.feature(feature))


@pytest.mark.parametrize(
    ("feature", "raw", "value", "censor"),
    [
        ("aqp4_igg", "1:160", 160.0, ""),
        ("aqp4_igg", "1 : 640", 640.0, ""),
        ("aqp4_igg", "neg", 0.0, ""),
        ("aqp4_igg", "Negative", 0.0, ""),
        ("aqp4_igg", "<1:10", 10.0, "<"),
        ("ana", ">1:1280", 1280.0, ">"),
        ("ana", "pos", 80.0, ">"),  # positive without titre: at least the cut-off
        ("ocb", "positive", 1.0, ""),
        ("ocb", "POS", 1.0, ""),
        ("ocb", "neg", 0.0, ""),
        ("anti_sm", "negative", 0.0, ""),
        ("crp", "<5", 5.0, "<"),
        ("crp", ">800", 800.0, ">"),
        ("crp", "1.2 mg/dL", 12.0, ""),
        ("c3", "2,5", 2.5, ""),
        ("c3", "95 mg/dL", 0.95, ""),
        ("c3", "950 mg/L", 0.95, ""),
        ("c4", "0,12 g/L", 0.12, ""),
        ("csf_wbc", "12 /µL", 12.0, ""),
        ("csf_wbc", "12 cells/uL", 12.0, ""),
        ("esr", "≥ 40", 40.0, ">"),
        ("age", "34", 34.0, ""),
        ("sex", "F", 0.0, ""),
        ("sex", "male", 1.0, ""),
    ],
)
def test_string_forms(feature, raw, value, censor):
    parsed = parse(feature, raw)
    assert not parsed.missing
    assert parsed.value == pytest.approx(value)
    assert parsed.censor == censor
    assert parsed.raw == raw.strip()


@pytest.mark.parametrize("raw", ["", "  ", None, float("nan"), "NA", "n/a", "not done"])
def test_blanks_are_missing(raw):
    parsed = parse("esr", raw)
    assert parsed.missing and math.isnan(parsed.value)


@pytest.mark.parametrize(
    ("feature", "raw", "fragment"),
    [
        ("esr", "abc", "not a number"),
        ("esr", "900", "implausible"),
        ("c3", "-1", "implausible"),
        ("c3", "95 mmol/L", "unknown unit 'mmol/L'"),
        ("ocb", "maybe", "expected pos/neg"),
        ("aqp4_igg", "strong", "not a titre"),
        ("sex", "x", "not one of F, M"),
        ("age", "", "required"),
    ],
)
def test_bad_values_are_refused_with_reason(feature, raw, fragment):
    with pytest.raises(LabValueError, match=fragment.replace("(", r"\(")):
        parse(feature, raw)


def test_format_round_trip():
    assert format_lab_value(parse("aqp4_igg", "1:640"), PANEL.feature("aqp4_igg")) == "1:640"
    assert format_lab_value(parse("ocb", "pos"), PANEL.feature("ocb")) == "positive"
    assert format_lab_value(parse("c3", "95 mg/dL"), PANEL.feature("c3")) == "0.95 g/L"
    assert format_lab_value(parse("esr", ""), PANEL.feature("esr")) == "missing"


def test_second_panel_needs_no_code(tmp_path):
    """A panel file the package has never seen loads by path and parses its own units."""
    other = load_panel(write_example_panel(tmp_path))
    assert other.classes == ("RA", "PsA", "OA") and other.channels == ("t1",)
    assert parse_lab_value("45 kIU/L", other.feature("rf")).value == 45.0
    assert parse_lab_value("1.2 mg/dL", other.feature("crp")).value == pytest.approx(12.0)
    assert other.feature("anti_ccp").is_positive(
        parse_lab_value("85", other.feature("anti_ccp")).value
    )
    assert not other.feature("anti_ccp").is_positive(
        parse_lab_value("12", other.feature("anti_ccp")).value
    )


def test_a_panel_read_from_a_bundle_can_be_stored_again(tmp_path):
    """A panel built from JSON alone (as a bundle's metadata holds it) keeps that JSON."""
    from example_panel import EXAMPLE_PANEL

    from autoimmuneai.data.panel import panel_from_dict

    panel = panel_from_dict(EXAMPLE_PANEL, source=f"{tmp_path / 'bundle'} (panel)")
    assert panel.to_dict() == EXAMPLE_PANEL
    assert panel_from_dict(panel.to_dict()).feature_names == panel.feature_names
    assert panel.to_dict() is not panel.to_dict()  # a copy: editing it leaves the panel alone


@pytest.mark.parametrize(
    ("feature", "raw", "expected"),
    [("crp", "<5", 2.5), ("crp", ">800", 800.0), ("crp", "12", 12.0), ("aqp4_igg", "<1:10", 5.0)],
)
def test_model_value_halves_a_lower_limit_and_keeps_an_upper_bound(feature, raw, expected):
    assert model_value(parse(feature, raw)) == pytest.approx(expected)


def test_model_value_refuses_a_missing_value():
    with pytest.raises(ValueError, match="missing"):
        model_value(parse("crp", ""))


def test_training_and_prediction_read_a_censored_lab_alike(
    tiny_cohort, tiny_bundle, cohort_copy, tmp_path
):
    """The cohort matrix (training) and the predictor (prediction) see the same number for "<5"."""
    from conftest import write_rows

    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.inference.predictor import Predictor

    manifest, rows = cohort_copy(tmp_path, n=1)
    rows[0]["crp"] = "<5"
    write_rows(manifest, rows, cohort_copy.columns)
    cohort = load_cohort(manifest)
    values, missing = cohort.lab_matrix()
    j = cohort.panel.feature_names.index("crp")
    assert values[0, j] == pytest.approx(2.5) and not missing[0, j]

    predictor = Predictor(tiny_bundle)
    labs = {name: rows[0][name] for name in predictor.panel.feature_names}
    prepared = predictor.prepare(load_volume(manifest.parent / rows[0]["image_flair"]), labs)
    np.testing.assert_allclose(prepared.values, values[0], equal_nan=True)
    np.testing.assert_array_equal(prepared.missing, missing[0])
