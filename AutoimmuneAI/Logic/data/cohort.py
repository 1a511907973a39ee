"""Cohort manifests: read CSV/TSV/XLSX, check every row against the panel, parse lab values.

Row numbers are those a spreadsheet shows (the header is row 1, the first case row 2), so a
message such as ``manifest.csv, row 7, column lab_a: ...`` points at the cell to fix.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import unescape_cell
from ..errors import InputError
from .labvalues import LabValue, LabValueError, model_value, parse_lab_value
from .panel import Panel, load_panel

CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TRUTH_FILE = "truth.csv"
# Columns the manifest contract defines besides the images and the panel's lab features.
OPTIONAL_COLUMNS = ("diagnosis", "event_time", "event", "split", "mask_lesions", "series")


def case_id_slug(text: str) -> str:
    """``text`` made a valid case id (and a safe file or HTML id): other characters -> ``_``.

    The one slug rule for case ids derived from file or node names and for ids in pages.
    """
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    cleaned = cleaned.strip("._-")[:128]
    return cleaned if cleaned and CASE_ID_PATTERN.match(cleaned) else "case"


@dataclass
class Case:
    """One validated manifest row."""

    case_id: str
    row: int | None  # the spreadsheet row; None for a case given on the command line
    images: dict[str, Path]
    labs: dict[str, LabValue]
    diagnosis: str | None = None
    event_time: float | None = None
    event: int | None = None
    split: str | None = None
    mask_lesions: Path | None = None
    # channel -> DICOM series description pattern (``series`` / ``series_<channel>`` columns,
    # ``--series``): which series of a study folder to read (``imaging.load_volume``)
    series: dict[str, str] = field(default_factory=dict)


@dataclass
class Cohort:
    """The usable cases of a manifest, plus every problem found (one InputError each)."""

    path: Path
    panel: Panel
    cases: list[Case]
    problems: list[InputError] = field(default_factory=list)
    failed: dict[str, InputError] = field(default_factory=dict)  # case_id -> first problem
    warnings: list[str] = field(default_factory=list)  # see manifest_warnings

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def subset(self, case_ids: list[str] | set[str]) -> Cohort:
        keep = set(case_ids)
        return Cohort(self.path, self.panel, [c for c in self.cases if c.case_id in keep])

    def lab_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Values [n, features] in canonical units and the missing mask.

        Categorical values are category indices. A value reported below an assay limit
        ("<10") is taken as half the limit and ">800" keeps the bound (``model_value``).
        """
        names = self.panel.feature_names
        values = np.full((len(self.cases), len(names)), np.nan)
        missing = np.ones_like(values, dtype=bool)
        for i, case in enumerate(self.cases):
            for j, name in enumerate(names):
                lab = case.labs.get(name)
                if lab is None or lab.missing:
                    continue
                values[i, j] = model_value(lab)
                missing[i, j] = False
        return values, missing

    def labels(self) -> np.ndarray:
        """Class indices [n] (-1 where the diagnosis is unknown)."""
        return np.array(
            [self.panel.class_index(c.diagnosis) if c.diagnosis else -1 for c in self.cases],
            dtype=np.int64,
        )

    def survival(self) -> tuple[np.ndarray, np.ndarray]:
        """Follow-up time (months) and event indicator, NaN where not recorded."""
        times = np.array([np.nan if c.event_time is None else c.event_time for c in self.cases])
        events = np.array([np.nan if c.event is None else float(c.event) for c in self.cases])
        return times, events

    def splits(self) -> np.ndarray:
        return np.array([c.split or "" for c in self.cases], dtype=object)

    def truth_table(self) -> pd.DataFrame | None:
        """The generator's latent truth beside the manifest (synthetic cohorts), by case_id."""
        path = self.root / TRUTH_FILE
        if not path.is_file():
            return None
        table = pd.read_csv(path, dtype={"case_id": str}).set_index("case_id")
        return table.reindex(self.case_ids)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest as strings: CSV or TSV (delimiter sniffed, BOM removed) or XLSX."""
    path = Path(path)
    if not path.exists():
        raise InputError("manifest not found", file=path)
    if path.is_dir():
        raise InputError("manifest is a directory, not a file", file=path)
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            table = pd.read_excel(path, dtype=str, keep_default_na=False)
        else:
            table = pd.read_csv(
                path,
                sep=_sniff_delimiter(path),
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                skipinitialspace=True,
            )
    except pd.errors.EmptyDataError:
        raise InputError("manifest is empty", file=path) from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read manifest ({reason})", file=path) from None
    table.columns = [unescape_cell(str(c).strip().lstrip("\ufeff")) for c in table.columns]
    if table.empty:
        raise InputError("manifest has no cases", file=path)
    # A CSV this product wrote marks formula-like text with an apostrophe (atomic.write_csv).
    return table.fillna("").apply(
        lambda col: col.map(lambda v: unescape_cell(v) if isinstance(v, str) else v)
    )


def manifest_warnings(table: pd.DataFrame, panel: Panel, path: str | Path) -> list[str]:
    """One line per column the panel does not know and per lab feature missing on every row.

    A misspelt lab column (``IGGINDEX`` for ``igg_idx``) would otherwise be ignored without a
    word, and the model would see that lab as "not done" for every case. Unknown columns are
    named with the closest panel column ("did you mean igg_idx?"); a feature whose column is
    absent or empty on every row is named with its label. Used by ``validate``, ``predict``
    and the Slicer module (through :func:`cohort_warnings`).
    """
    known = ["case_id", *[f"image_{ch}" for ch in panel.channels], *OPTIONAL_COLUMNS]
    known += [f"series_{ch}" for ch in panel.channels] + list(panel.feature_names)
    lines: list[str] = []
    for column in table.columns:
        if column in known:
            continue
        guess = closest_column(column, panel, known)
        hint = f"; did you mean {guess}?" if guess else " (not a panel feature)"
        lines.append(f"{path}, column {column}: unknown column, ignored{hint}")
    for feature in panel.features:
        present = feature.name in table.columns
        if present and table[feature.name].astype(str).str.strip().ne("").any():
            continue
        why = "is empty on every row" if present else "is not in the manifest"
        lines.append(
            f"{path}, column {feature.name}: {feature.label} {why}; the model sees it as "
            "not done for every case"
        )
    return lines


def closest_column(column: str, panel: Panel, known: list[str]) -> str | None:
    """The known column closest to ``column`` (by name or feature label), or None.

    Compared case- and punctuation-blind (``IGGINDEX`` ~ ``igg_idx`` ~ "IgG-Idx") with
    difflib's similarity ratio.
    """

    def norm(text: str) -> str:
        return re.sub(r"[^0-9a-z]", "", text.lower())

    candidates: dict[str, str] = {norm(k): k for k in known}
    candidates.update({norm(f.label): f.name for f in panel.features if norm(f.label)})
    target = norm(column)
    if not target:
        return None
    if target in candidates:
        return candidates[target]
    prefixed = [name for key, name in candidates.items() if key.startswith(target)]
    if len(prefixed) == 1 and len(target) >= 3:
        return prefixed[0]
    match = difflib.get_close_matches(target, list(candidates), n=1, cutoff=0.6)
    return candidates[match[0]] if match else None


def cohort_warnings(manifest: str | Path, panel: Panel | str | Path | None = None) -> list[str]:
    """:func:`manifest_warnings` for a manifest file (for callers without a loaded cohort)."""
    panel = panel if isinstance(panel, Panel) else load_panel(panel or "cns_autoimmune")
    return manifest_warnings(read_manifest(manifest), panel, manifest)


def _sniff_delimiter(path: Path) -> str:
    """The delimiter of the header line: tab, semicolon (European Excel) or comma."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    counts = {sep: header.count(sep) for sep in ("\t", ";", ",")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def single_case_cohort(
    image: str | Path,
    labs: Mapping[str, object],
    panel: Panel | str | Path | None = None,
    *,
    case_id: str | None = None,
    option: str = "--lab",
    series: str | None = None,
) -> Cohort:
    """A one-case cohort from the command line: an image file and ``{feature: lab text}``.

    The labs are parsed exactly as manifest cells are; a name the panel does not know is
    refused with the closest feature ("did you mean igg_idx?"), and features not given are
    missing. The case id defaults to the image's file name without its suffixes. ``series``
    chooses one series of a DICOM study folder by its description (``--series``).
    """
    panel = panel if isinstance(panel, Panel) else load_panel(panel or "cns_autoimmune")
    if len(panel.channels) != 1:
        raise InputError(
            f"panel {panel.name!r} needs {len(panel.channels)} images "
            f"({', '.join(panel.channels)}); use a manifest (--cohort)",
            field="--image",
        )
    path = Path(image).resolve()
    if not path.exists():
        raise InputError("image not found", file=image, field="--image")
    known = list(panel.feature_names)
    for name in labs:
        if name not in known:
            guess = closest_column(name, panel, known)
            hint = f"; did you mean {guess}?" if guess else f" (panel labs: {', '.join(known)})"
            raise InputError(f"{name!r} is not a lab of panel {panel.name}{hint}", field=option)
    parsed: dict[str, LabValue] = {}
    for feature in panel.features:
        try:
            parsed[feature.name] = parse_lab_value(labs.get(feature.name, ""), feature)
        except LabValueError as exc:
            raise InputError(str(exc), field=f"{option} {feature.name}") from None
    if case_id is None:
        case_id = case_id_slug(path.name.split(".")[0])
    elif not CASE_ID_PATTERN.match(case_id):
        raise InputError(
            f"case id {case_id!r} may use only letters, digits, '.', '_' and '-'",
            field="--case-id",
        )
    chosen = {panel.channels[0]: series} if series else {}
    case = Case(case_id, None, {panel.channels[0]: path}, parsed, series=chosen)
    return Cohort(path, panel, [case])


def load_cohort(
    manifest: str | Path,
    panel: Panel | str | Path | None = None,
    *,
    check_images: bool = True,
    read_images: bool = False,
    allow_outside_root: bool = False,
    require_labels: bool = False,
    strict: bool = True,
) -> Cohort:
    """Load and check a manifest.

    With ``strict`` the first problem raises an InputError; otherwise rows with problems are
    left out of ``cases`` and recorded in ``problems`` and ``failed`` (batch work goes on).
    ``read_images`` opens every image fully (slow; the ``validate`` command does it).
    """
    path = Path(manifest)
    panel = panel if isinstance(panel, Panel) else load_panel(panel or "cns_autoimmune")
    table = read_manifest(path)
    problems: list[InputError] = []
    failed: dict[str, InputError] = {}
    _check_columns(table, panel, path, require_labels)

    cases: list[Case] = []
    seen: dict[str, int] = {}
    for offset, record in enumerate(table.to_dict(orient="records")):
        row = offset + 2
        parsed = _parse_row(
            record,
            row,
            path,
            panel,
            seen,
            check_images,
            read_images,
            allow_outside_root,
            require_labels,
        )
        case_id = str(record.get("case_id", "")).strip()
        if isinstance(parsed, Case):
            cases.append(parsed)
        else:
            problems.extend(parsed)
            if case_id and case_id not in failed:
                failed[case_id] = parsed[0]
            if strict:
                raise parsed[0]
    warnings = manifest_warnings(table, panel, path)
    return Cohort(path, panel, cases, problems, failed, warnings)


def _check_columns(table: pd.DataFrame, panel: Panel, path: Path, require_labels: bool) -> None:
    required = ["case_id", *[f"image_{ch}" for ch in panel.required_channels]]
    required += [f.name for f in panel.features if not f.missing_allowed]
    if require_labels:
        required.append("diagnosis")
    known = ["case_id", *[f"image_{ch}" for ch in panel.channels], *OPTIONAL_COLUMNS]
    known += [f"series_{ch}" for ch in panel.channels] + list(panel.feature_names)
    for column in required:
        if column not in table.columns:
            near = [c for c in table.columns if closest_column(str(c), panel, known) == column]
            if near:
                hint = f"did you mean {near[0]}?"
            else:
                hint = f"found: {', '.join(map(str, table.columns[:8]))}"
            raise InputError(f"required column is missing ({hint})", file=path, field=column)


def _parse_row(
    record: dict,
    row: int,
    path: Path,
    panel: Panel,
    seen: dict[str, int],
    check_images: bool,
    read_images: bool,
    allow_outside_root: bool,
    require_labels: bool,
) -> Case | list[InputError]:
    """One manifest row as a Case, or every problem it has (one check per column)."""
    problems: list[InputError] = []

    def problem(field_name: str, reason: str) -> None:
        problems.append(InputError(reason, file=path, row=row, field=field_name))

    case_id = str(record.get("case_id", "")).strip()
    _check_case_id(case_id, row, seen, problem)

    series = _series_patterns(record, panel, problem)
    images: dict[str, Path] = {}
    for channel in panel.channels:
        column = f"image_{channel}"
        if channel in panel.optional_channels and not str(record.get(column, "") or "").strip():
            continue  # an optional channel not acquired: a zero image and a missing flag
        image = _resolve_path(record.get(column, ""), path, allow_outside_root, problem, column)
        if image is not None:
            if check_images:
                _check_image(image, read_images, problem, column, series.get(channel))
            images[channel] = image
    mask = None
    if str(record.get("mask_lesions", "")).strip():
        mask = _resolve_path(
            record["mask_lesions"], path, allow_outside_root, problem, "mask_lesions"
        )

    labs: dict[str, LabValue] = {}
    for feature in panel.features:
        try:
            labs[feature.name] = parse_lab_value(record.get(feature.name, ""), feature)
        except LabValueError as exc:
            problem(feature.name, str(exc))

    diagnosis = _diagnosis(record, panel, require_labels, problem)
    event_time, event = _follow_up(record, problem, problems)
    if problems:
        return problems
    split = str(record.get("split", "")).strip().lower() or None
    return Case(case_id, row, images, labs, diagnosis, event_time, event, split, mask, series)


def _series_patterns(record: dict, panel: Panel, problem) -> dict[str, str]:
    """The row's DICOM series patterns: ``series`` for the first channel, ``series_<channel>``
    for any channel; each must be a valid regular expression."""
    found: dict[str, str] = {}
    columns = [("series", panel.channels[0])] + [(f"series_{c}", c) for c in panel.channels]
    for column, channel in columns:
        text = str(record.get(column, "") or "").strip()
        if not text:
            continue
        try:
            re.compile(text)
        except re.error as exc:
            problem(column, f"series pattern {text!r} is not a valid regular expression ({exc})")
            continue
        found[channel] = text
    return found


def _check_case_id(case_id: str, row: int, seen: dict[str, int], problem) -> None:
    """Non-empty, safe as a folder name, and unique ignoring case (``seen``: id -> row)."""
    if not case_id:
        problem("case_id", "case_id is empty")
    elif not CASE_ID_PATTERN.match(case_id):
        problem("case_id", f"case_id {case_id!r} may use only letters, digits, '.', '_' and '-'")
    elif case_id.lower() in seen:
        problem(
            "case_id",
            f"duplicate case_id {case_id!r} (first on row {seen[case_id.lower()]}; "
            "case ids must differ also ignoring case, as output folders)",
        )
    else:
        seen[case_id.lower()] = row


def _diagnosis(record: dict, panel: Panel, require_labels: bool, problem) -> str | None:
    """The row's class name (one of the panel's), or None when not given."""
    diagnosis = str(record.get("diagnosis", "")).strip() or None
    if diagnosis is not None and diagnosis not in panel.classes:
        problem(
            "diagnosis", f"unknown class {diagnosis!r} (panel classes: {', '.join(panel.classes)})"
        )
    elif diagnosis is None and require_labels:
        problem("diagnosis", "diagnosis is empty")
    return diagnosis


def _follow_up(
    record: dict, problem, problems: list[InputError]
) -> tuple[float | None, int | None]:
    """``event_time`` (months, >= 0) and ``event`` (0/1); on a row with no other problem
    (``problems`` empty) one given without the other is a problem too."""
    event_time = _optional_number(record.get("event_time", ""), "event_time", problem)
    if event_time is not None and event_time < 0:
        problem("event_time", f"event_time must be >= 0 months, got {event_time:g}")
    event = None
    raw_event = str(record.get("event", "")).strip()
    if raw_event in ("0", "1", "0.0", "1.0"):
        event = int(float(raw_event))
    elif raw_event:
        problem("event", f"event must be 0 (censored) or 1 (progressed), got {raw_event!r}")
    if (event is None) != (event_time is None) and not problems:
        missing = "event" if event is None else "event_time"
        problem(missing, "event_time and event must be given together")
    return event_time, event


def _resolve_path(
    raw: object, manifest: Path, allow_outside_root: bool, problem, column: str
) -> Path | None:
    text = str(raw).strip()
    if not text:
        problem(column, "image path is empty")
        return None
    root = manifest.parent.resolve()
    candidate = Path(text)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not allow_outside_root and not resolved.is_relative_to(root):
        problem(
            column,
            f"path {text!r} points outside the cohort folder {root} "
            "(refused; pass --allow-outside-root to permit it)",
        )
        return None
    return resolved


def _check_image(
    image: Path, read_images: bool, problem, column: str, series: str | None = None
) -> None:
    if not image.exists():
        problem(column, f"image not found: {image}")
        return
    if read_images:
        from .imaging import load_volume  # imaging is heavier; only when asked

        try:
            load_volume(image, series=series)
        except InputError as exc:
            problem(column, exc.reason)
    elif image.is_dir() and not any(image.iterdir()):
        problem(column, f"image folder is empty: {image}")


def _optional_number(raw: object, column: str, problem) -> float | None:
    text = str(raw).strip().replace(",", ".")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        problem(column, f"{column} must be a number, got {str(raw).strip()!r}")
        return None
    if not math.isfinite(value):
        problem(column, f"{column} must be finite, got {text!r}")
        return None
    return value
