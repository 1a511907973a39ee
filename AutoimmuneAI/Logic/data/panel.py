"""Panels: the JSON files that define a diagnostic task (classes, image channels, lab features).

A panel is data, not code: a user adds a disease family by adding a JSON file to
``Resources/Panels/`` (or passing its path). Everything downstream (parsing, the model's
inputs, the Slicer form) reads the panel instead of hard-coding features.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

KINDS = ("binary", "titer", "continuous", "categorical")
DEFAULT_PANEL = "cns_autoimmune"


def panels_dir() -> Path:
    """The folder of built-in panels (``AutoimmuneAI/Resources/Panels``)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Panels"


@dataclass(frozen=True)
class Feature:
    """One lab or demographic feature of a panel, in its canonical unit."""

    name: str
    label: str
    kind: str
    unit: str = ""
    units: dict[str, float] = field(default_factory=dict)  # alias -> factor to canonical unit
    range: tuple[float, float] | None = None
    missing_allowed: bool = True
    positive_at: float | None = None  # titres: reciprocal dilution that counts as positive
    reference_low: float | None = None
    reference_high: float | None = None
    log: bool = False  # encode as log1p (skewed values)
    categories: tuple[str, ...] = ()
    category_aliases: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def unit_factor(self, unit: str) -> float | None:
        """Factor that converts a value in ``unit`` to the canonical unit (None: unknown unit)."""
        norm = _norm_unit(unit)
        if norm == _norm_unit(self.unit):
            return 1.0
        for alias, factor in self.units.items():
            if _norm_unit(alias) == norm:
                return float(factor)
        return None

    def is_positive(self, value: float) -> bool:
        """Whether a parsed value counts as positive/abnormal for rule baselines and summaries."""
        if self.kind == "binary":
            return value >= 0.5
        if self.kind == "titer":
            return value >= (self.positive_at if self.positive_at is not None else 1.0)
        if self.reference_high is not None:
            return value > self.reference_high
        if self.reference_low is not None:
            return value < self.reference_low
        return False


def _norm_unit(unit: str) -> str:
    return unit.strip().lower().replace("µ", "u").replace("μ", "u").replace(" ", "")


@dataclass(frozen=True)
class Panel:
    """A diagnostic task: class names, image channels and lab features."""

    name: str
    title: str
    version: str
    classes: tuple[str, ...]
    class_descriptions: dict[str, str]
    channels: tuple[str, ...]
    features: tuple[Feature, ...]
    description: str = ""
    source: str = ""
    # channels a case may lack (a zero image plus a missing flag); never the first one, the
    # reference the others are registered with
    optional_channels: tuple[str, ...] = ()
    channel_descriptions: dict[str, str] = field(default_factory=dict)
    # the published diagnostic rules on the labs (``criteria`` section, checked by
    # :func:`check_criteria`); None: the panel has none and the criteria baseline is absent
    criteria: dict | None = field(default=None, compare=False, repr=False)
    # the progression endpoint that event_time / event record (name, label, description)
    endpoint: dict[str, str] = field(default_factory=dict, compare=False)
    # the JSON the panel was built from, so that a panel read from a bundle (no file of its
    # own) can be stored in another bundle
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"panel {self.name!r} has no feature {name!r}")

    def class_index(self, name: str) -> int:
        return self.classes.index(name)

    @property
    def required_channels(self) -> tuple[str, ...]:
        """The channels every case must have (the first one always among them)."""
        return tuple(c for c in self.channels if c not in self.optional_channels)

    def to_dict(self) -> dict:
        """The panel as stored in a bundle (enough to rebuild it): the JSON it was built from."""
        if self.raw:
            return copy.deepcopy(self.raw)
        return json.loads(Path(self.source).read_text(encoding="utf-8")) if self.source else {}


def load_panel(name_or_path: str | Path = DEFAULT_PANEL) -> Panel:
    """Load a built-in panel by name (``cns_autoimmune``) or any panel JSON by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = panels_dir() / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in panels_dir().glob("*.json")))
        raise InputError(f"no such panel (built-in panels: {known})", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"panel is not valid JSON ({exc})", file=path) from None
    return panel_from_dict(data, source=path)


def panel_from_dict(data: dict, source: str | Path = "") -> Panel:
    """Build and check a panel from its JSON object."""
    where = str(source) or "panel"
    try:
        classes = tuple(c["name"] for c in data["classes"])
        descriptions = {c["name"]: c.get("description", "") for c in data["classes"]}
        channel_list = [c if isinstance(c, dict) else {"name": str(c)} for c in data["channels"]]
        channels = tuple(str(c["name"]) for c in channel_list)
        optional = tuple(str(c["name"]) for c in channel_list if c.get("optional", False))
        features = tuple(_feature_from_dict(f) for f in data["features"])
        panel = Panel(
            name=str(data["name"]),
            title=str(data.get("title", data["name"])),
            version=str(data.get("version", "1")),
            classes=classes,
            class_descriptions=descriptions,
            channels=channels,
            features=features,
            description=str(data.get("description", "")),
            source=str(source),
            optional_channels=optional,
            channel_descriptions={
                str(c["name"]): str(c.get("description", "")) for c in channel_list
            },
            criteria=copy.deepcopy(data["criteria"]) if data.get("criteria") else None,
            endpoint={
                "name": "progression",
                "label": "progression",
                **{str(k): str(v) for k, v in data.get("endpoint", {}).items()},
            },
            raw=copy.deepcopy(data),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"panel is malformed: {exc!r}", file=where) from None
    _check_channels(panel, where)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise InputError("panel needs at least two distinct classes", file=where)
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise InputError("panel has duplicate feature names", file=where)
    for f in features:
        if f.kind not in KINDS:
            raise InputError(
                f"feature {f.name!r} has unknown kind {f.kind!r} (one of {KINDS})", file=where
            )
        if f.kind == "categorical" and not f.categories:
            raise InputError(f"categorical feature {f.name!r} lists no categories", file=where)
    if panel.criteria is not None:
        problem = check_criteria(panel.criteria, panel)
        if problem:
            raise InputError(f"panel criteria: {problem}", file=where)
    return panel


def _check_channels(panel: Panel, where: str) -> None:
    channels = panel.channels
    if not channels:
        raise InputError("panel declares no image channels", file=where)
    if len(set(channels)) != len(channels):
        raise InputError("panel has duplicate channel names", file=where)
    bad = [c for c in channels if not re.fullmatch(r"[a-z][a-z0-9_]*", c)]
    if bad:
        raise InputError(
            f"channel name {bad[0]!r} must be lower-case letters, digits and _ "
            "(it becomes the manifest column image_<channel>)",
            file=where,
        )
    if channels[0] in panel.optional_channels:
        raise InputError(
            f"the first channel {channels[0]!r} cannot be optional: the other channels are "
            "registered with it",
            file=where,
        )


CRITERIA_OPS = (">=", ">", "<=", "<")
THRESHOLD_FIELDS = ("positive_at", "reference_high", "reference_low")


def check_criteria(criteria: dict, panel: Panel) -> str:
    """The first problem of a panel's ``criteria`` section, or "" when it is sound.

    The section (docs/contracts.md, *Panel criteria*) has ``markers`` (name -> feature, op,
    threshold: a number or the name of the feature's ``positive_at`` / ``reference_high`` /
    ``reference_low``), optional ``scores`` (name -> ``domains``: lists of items ``{"all" |
    "any": [markers], "points": n}``; each domain gives the points of its first item met),
    ordered ``rules`` (``class`` and ``all``: markers or ``{"score", "at_least"}``), the
    ``default`` class when no rule fires, and optional ``risk_markers`` (``label``, ``any``).
    """
    try:
        return _criteria_problem(criteria, panel)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"malformed ({exc!r})"


def _criteria_problem(criteria: dict, panel: Panel) -> str:
    """The first problem of ``criteria`` ("" if none), key by key: markers, scores, rules,
    default, risk markers."""
    markers = criteria["markers"]
    scores = criteria.get("scores", {})
    return (
        _markers_problem(markers, panel)
        or _scores_problem(scores, markers)
        or _rules_problem(criteria["rules"], markers, scores, panel)
        or (
            f"default class {criteria['default']!r} is not a class of the panel"
            if criteria["default"] not in panel.classes
            else ""
        )
        or _risk_markers_problem(criteria.get("risk_markers", []), markers)
    )


def _markers_problem(markers: object, panel: Panel) -> str:
    if not isinstance(markers, dict) or not markers:
        return "'markers' must name at least one marker"
    for name, m in markers.items():
        if m["feature"] not in panel.feature_names:
            return f"marker {name!r} reads unknown feature {m['feature']!r}"
        if m.get("op", ">=") not in CRITERIA_OPS:
            return f"marker {name!r} has op {m.get('op')!r} (one of {', '.join(CRITERIA_OPS)})"
        th = m["threshold"]
        if isinstance(th, str):
            if th not in THRESHOLD_FIELDS:
                return f"marker {name!r} threshold {th!r} is neither a number nor one of {THRESHOLD_FIELDS}"
            if getattr(panel.feature(m["feature"]), th) is None:
                return f"marker {name!r}: feature {m['feature']!r} has no {th}"
        else:
            float(th)
    return ""


def _scores_problem(scores: dict, markers: dict) -> str:
    for name, sc in scores.items():
        for domain in sc["domains"]:
            for item in domain:
                used = item.get("all", item.get("any"))
                if not used or any(u not in markers for u in used):
                    return f"score {name!r} uses an unknown marker or no marker ({used})"
                float(item["points"])
    return ""


def _rules_problem(rules: list, markers: dict, scores: dict, panel: Panel) -> str:
    if not rules:
        return "'rules' is empty"
    for i, rule in enumerate(rules):
        if rule["class"] not in panel.classes:
            return f"rule {i + 1} names unknown class {rule['class']!r}"
        for cond in rule["all"]:
            if isinstance(cond, str):
                if cond not in markers:
                    return f"rule {i + 1} uses unknown marker {cond!r}"
            elif cond["score"] not in scores:
                return f"rule {i + 1} uses unknown score {cond['score']!r}"
            else:
                float(cond["at_least"])
    return ""


def _risk_markers_problem(risk_markers: list, markers: dict) -> str:
    for rm in risk_markers:
        if not rm.get("any") or any(u not in markers for u in rm["any"]):
            return f"risk marker {rm.get('label')!r} uses an unknown marker or none"
    return ""


def _feature_from_dict(d: dict) -> Feature:
    rng = d.get("range")
    return Feature(
        name=str(d["name"]),
        label=str(d.get("label", d["name"])),
        kind=str(d["kind"]),
        unit=str(d.get("unit", "")),
        units={str(k): float(v) for k, v in d.get("units", {}).items()},
        range=(float(rng[0]), float(rng[1])) if rng else None,
        missing_allowed=bool(d.get("missing_allowed", True)),
        positive_at=_opt_float(d.get("positive_at")),
        reference_low=_opt_float(d.get("reference_low")),
        reference_high=_opt_float(d.get("reference_high")),
        log=bool(d.get("log", False)),
        categories=tuple(str(c) for c in d.get("categories", ())),
        category_aliases={str(k).lower(): str(v) for k, v in d.get("category_aliases", {}).items()},
        description=str(d.get("description", "")),
    )


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]
