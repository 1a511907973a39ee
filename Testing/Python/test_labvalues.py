"""Lab-sheet strings become numbers in the panel's unit, with censoring and missingness."""

import math

import pytest

from autoimmuneai.data.labvalues import LabValueError, format_lab_value, parse_lab_value
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


def test_second_panel_needs_no_code():
    ra = load_panel("rheumatoid_arthritis")
    assert ra.classes == ("RA", "PsA", "OA")
    assert parse_lab_value("45 kIU/L", ra.feature("rf")).value == 45.0
    assert ra.feature("anti_ccp").is_positive(parse_lab_value("85", ra.feature("anti_ccp")).value)
