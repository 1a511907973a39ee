"""Parse the strings of real lab sheets into numbers in the panel's canonical unit.

Handles titres ("1:160"), censored values ("<10", ">800": the bound is kept and flagged),
qualitative results ("neg", "positive"), decimal commas ("2,5"), values with a unit in the
string ("95 mg/dL" for C3 in g/L) and blanks (missing). Implausible values are refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .panel import Feature

MISSING_WORDS = {
    "",
    "na",
    "n/a",
    "nan",
    "none",
    "null",
    "-",
    "--",
    "missing",
    "not done",
    "nd",
    "?",
}
NEGATIVE_WORDS = {
    "neg",
    "negative",
    "not detected",
    "nondetected",
    "absent",
    "no",
    "-ve",
    "0",
    "n",
    "false",
}
POSITIVE_WORDS = {"pos", "positive", "detected", "present", "yes", "+", "+ve", "1", "y", "true"}

_NUMBER = r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?"
_CENSORED = re.compile(rf"^(?P<op><=|>=|<|>|≤|≥)?\s*(?P<num>{_NUMBER})\s*(?P<unit>.*)$")
_TITER = re.compile(r"^(?P<op><=|>=|<|>|≤|≥)?\s*1\s*:\s*(?P<num>\d+(?:[.,]\d+)?)$")


@dataclass(frozen=True)
class LabValue:
    """One parsed lab result: ``value`` in the canonical unit (NaN when missing)."""

    value: float
    missing: bool = False
    censor: str = ""  # "" exact, "<" at most the value, ">" at least the value
    raw: str = ""

    @staticmethod
    def absent(raw: str = "") -> LabValue:
        return LabValue(math.nan, True, "", raw)


class LabValueError(ValueError):
    """A lab string that cannot be read; the message is the reason (no location)."""


def parse_lab_value(raw: object, feature: Feature) -> LabValue:
    """Parse one cell of a lab sheet for ``feature``; raise LabValueError with the reason."""
    text = _clean(raw)
    if text.lower() in MISSING_WORDS and not (feature.kind == "binary" and text in {"0", "-"}):
        if not feature.missing_allowed:
            raise LabValueError(f"{feature.label} is required but missing")
        return LabValue.absent(text)
    if feature.kind == "binary":
        return _check(_parse_binary(text, feature), feature)
    if feature.kind == "categorical":
        return _parse_categorical(text, feature)
    if feature.kind == "titer":
        return _check(_parse_titer(text, feature), feature)
    return _check(_parse_continuous(text, feature), feature)


def model_value(lab: LabValue) -> float:
    """The number the model sees for a parsed, present lab value, in the canonical unit.

    A value reported below an assay's limit ("<10") is taken as half the limit, the usual
    convention for left-censored labs; ">800" keeps its bound. Training (``Cohort.lab_matrix``)
    and prediction (``Predictor.prepare``) both call this, so the two cannot drift apart.
    """
    if lab.missing:
        raise ValueError("a missing lab value has no model value")
    return lab.value / 2.0 if lab.censor == "<" else lab.value


def format_lab_value(value: LabValue, feature: Feature) -> str:
    """A short human-readable form of a parsed value, in the panel's unit."""
    if value.missing:
        return "missing"
    if feature.kind == "binary":
        return "positive" if value.value >= 0.5 else "negative"
    if feature.kind == "categorical":
        return feature.categories[int(value.value)]
    if feature.kind == "titer":
        if value.value <= 0:
            return "negative"
        return f"{value.censor}1:{value.value:g}"
    unit = f" {feature.unit}" if feature.unit and feature.unit != "ratio" else ""
    return f"{value.censor}{value.value:.3g}{unit}"


def _clean(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, float) and math.isnan(raw):
        return ""
    text = str(raw).replace("\u00a0", " ").strip()
    return " ".join(text.split())


def _parse_binary(text: str, feature: Feature) -> LabValue:
    low = text.lower()
    if low in NEGATIVE_WORDS or low == "-":
        return LabValue(0.0, False, "", text)
    if low in POSITIVE_WORDS:
        return LabValue(1.0, False, "", text)
    raise LabValueError(f"{feature.label}: {text!r} is not a qualitative result (expected pos/neg)")


def _parse_categorical(text: str, feature: Feature) -> LabValue:
    low = text.lower()
    for i, cat in enumerate(feature.categories):
        if low == cat.lower():
            return LabValue(float(i), False, "", text)
    alias = feature.category_aliases.get(low)
    if alias is not None and alias in feature.categories:
        return LabValue(float(feature.categories.index(alias)), False, "", text)
    raise LabValueError(f"{feature.label}: {text!r} is not one of {', '.join(feature.categories)}")


def _parse_titer(text: str, feature: Feature) -> LabValue:
    low = text.lower()
    if low in NEGATIVE_WORDS:
        return LabValue(0.0, False, "", text)
    if low in POSITIVE_WORDS:
        # Positive without a titre: at least the positivity cut-off.
        return LabValue(float(feature.positive_at or 1.0), False, ">", text)
    match = _TITER.match(text.replace(" ", ""))
    if match:
        value = _to_float(match.group("num"))
        return LabValue(value, False, _op(match.group("op")), text)
    match = _CENSORED.match(text)
    if match and match.group("unit").strip().lower() in ("", "titer", "titre"):
        return LabValue(_to_float(match.group("num")), False, _op(match.group("op")), text)
    raise LabValueError(f"{feature.label}: {text!r} is not a titre (expected e.g. 1:160 or neg)")


def _parse_continuous(text: str, feature: Feature) -> LabValue:
    match = _CENSORED.match(text)
    if not match:
        raise LabValueError(f"{feature.label}: {text!r} is not a number")
    value = _to_float(match.group("num"))
    unit = match.group("unit").strip()
    if unit:
        factor = feature.unit_factor(unit)
        if factor is None:
            accepted = ", ".join(dict.fromkeys([feature.unit, *feature.units])) or "none"
            raise LabValueError(f"{feature.label}: unknown unit {unit!r} (accepted: {accepted})")
        value *= factor
    return LabValue(value, False, _op(match.group("op")), text)


def _to_float(num: str) -> float:
    num = num.strip()
    if "," in num and "." not in num:
        num = num.replace(",", ".")  # decimal comma
    else:
        num = num.replace(",", "")  # thousands separator
    return float(num)


def _op(op: str | None) -> str:
    return {"<=": "<", "≤": "<", ">=": ">", "≥": ">"}.get(op or "", op or "")


def _check(value: LabValue, feature: Feature) -> LabValue:
    if not math.isfinite(value.value):
        raise LabValueError(f"{feature.label}: {value.raw!r} is not a finite number")
    if feature.range is not None:
        lo, hi = feature.range
        if not lo <= value.value <= hi:
            unit = f" {feature.unit}" if feature.unit else ""
            raise LabValueError(
                f"{feature.label}: {value.raw!r} is implausible (outside {lo:g}-{hi:g}{unit})"
            )
    return value
