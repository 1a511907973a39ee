"""Panels: the JSON files that define a diagnostic task (classes, image channels, lab features).

A panel is data, not code: a user adds a disease family by adding a JSON file to
``Resources/Panels/`` (or passing its path). Everything downstream (parsing, the model's
inputs, the Slicer form) reads the panel instead of hard-coding features.
"""

from __future__ import annotations

import copy
import json
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
        channels = tuple(c["name"] if isinstance(c, dict) else str(c) for c in data["channels"])
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
            raw=copy.deepcopy(data),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"panel is malformed: {exc!r}", file=where) from None
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
    return panel


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
