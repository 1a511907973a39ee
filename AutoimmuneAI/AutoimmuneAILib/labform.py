"""The serology form, without Qt: rows from the panel, checks in place, storage in a table node.

The widget draws one line edit per row and shows each row's ``check`` result beside it; the
values also live in a ``vtkMRMLTableNode`` so that they are saved with the scene and a
reopened scene shows the same patient. Values stay the strings the user typed ("1:160",
"neg", "95 mg/dL"): the package parses them the same way it parses a lab sheet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoimmuneai.data.labvalues import LabValue, format_lab_value, parse_lab_value
from autoimmuneai.data.panel import Feature, Panel
from autoimmuneai.errors import InputError

TABLE_COLUMNS = ("feature", "label", "value", "unit")


@dataclass(frozen=True)
class FormRow:
    """What the form shows for one feature."""

    name: str
    label: str  # "AQP4-IgG"
    unit: str  # shown beside the entry ("" when unitless)
    placeholder: str  # an example of an accepted entry
    tooltip: str  # description, accepted units and the plausible range


@dataclass(frozen=True)
class EntryCheck:
    """The result of checking one typed value: parsed value, or the reason it was refused."""

    value: LabValue | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def display(self, feature: Feature) -> str:
        """What the form shows beside the entry: the parsed value or the reason."""
        if self.error:
            return self.error
        assert self.value is not None
        return format_lab_value(self.value, feature)


@dataclass(frozen=True)
class ChannelRow:
    """One image selector of the module panel: a channel the panel declares."""

    name: str  # the manifest column is image_<name>
    label: str  # "FLAIR volume:", "T1 volume (optional):"
    tooltip: str  # the channel's description from the panel
    optional: bool  # may stay empty (the model sees a missing-channel flag)


def channelRows(panel: Panel) -> list[ChannelRow]:
    """One selector per panel channel, in panel order (the first one is the reference)."""
    rows = []
    for name in panel.channels:
        optional = name in panel.optional_channels
        label = f"{name.upper().replace('_', ' ')} volume{' (optional)' if optional else ''}:"
        tooltip = panel.channel_descriptions.get(name, "") or f"the {name} image"
        rows.append(ChannelRow(name, label, tooltip, optional))
    return rows


def formRows(panel: Panel) -> list[FormRow]:
    """One row per panel feature, in panel order."""
    return [_row(f) for f in panel.features]


def _row(feature: Feature) -> FormRow:
    unit = "" if feature.unit in ("", "ratio", "titer") else feature.unit
    if feature.kind == "titer":
        placeholder = "e.g. 1:160 or neg"
    elif feature.kind == "binary":
        placeholder = "pos / neg"
    elif feature.kind == "categorical":
        placeholder = " / ".join(feature.categories)
    else:
        placeholder = f"e.g. {feature.reference_high:g}" if feature.reference_high else "number"
    tips = [feature.description or feature.label]
    aliases = [u for u in dict.fromkeys([feature.unit, *feature.units]) if u]
    if aliases and feature.kind == "continuous":
        tips.append("Units accepted: " + ", ".join(aliases))
    if feature.range is not None and feature.kind in ("continuous", "titer"):
        tips.append(
            f"Plausible range: {feature.range[0]:g} to {feature.range[1]:g} {unit}".rstrip()
        )
    tips.append("Leave empty if not done." if feature.missing_allowed else "Required.")
    return FormRow(feature.name, feature.label, unit, placeholder, "\n".join(tips))


def checkEntry(raw: str, feature: Feature) -> EntryCheck:
    """Parse one typed value the way the package parses a lab sheet; keep the reason if refused."""
    try:
        return EntryCheck(parse_lab_value(raw, feature))
    except (ValueError, InputError) as exc:
        return EntryCheck(None, str(exc))


def checkSerology(values: dict[str, str], panel: Panel) -> dict[str, EntryCheck]:
    """Check every panel feature (absent keys count as empty); unknown keys are an error."""
    unknown = sorted(set(values) - set(panel.feature_names))
    if unknown:
        raise InputError(
            f"not a feature of panel {panel.name!r}: {', '.join(unknown)}", field=unknown[0]
        )
    return {f.name: checkEntry(str(values.get(f.name, "") or ""), f) for f in panel.features}


def requireValid(values: dict[str, str], panel: Panel) -> None:
    """Raise InputError naming the first refused value (scripts get the same checks as the form)."""
    for name, check in checkSerology(values, panel).items():
        if not check.ok:
            raise InputError(check.error, field=name)


def readCohortCase(manifestPath: str | Path, caseId: str, panel: Panel) -> dict[str, str]:
    """The raw serology strings of one case of a cohort manifest ("load from cohort file")."""
    from autoimmuneai.data.cohort import read_manifest

    table = read_manifest(manifestPath)
    if "case_id" not in table.columns:
        raise InputError("manifest has no case_id column", file=manifestPath, field="case_id")
    rows = table[table["case_id"].astype(str).str.strip() == str(caseId).strip()]
    if rows.empty:
        raise InputError(f"no case {caseId!r} in the manifest", file=manifestPath, field="case_id")
    row = rows.iloc[0]
    return {f.name: str(row[f.name]) for f in panel.features if f.name in table.columns}


def cohortWarnings(manifestPath: str | Path, panel: Panel) -> list[str]:
    """Columns of the manifest the panel does not know (with the closest panel feature) and labs
    missing on every row: shown when a cohort file is picked, as ``validate`` prints them."""
    from autoimmuneai.data.cohort import cohort_warnings

    return cohort_warnings(manifestPath, panel)


def caseIds(manifestPath: str | Path) -> list[str]:
    """The case ids of a manifest, in file order (for the "load from cohort file" picker)."""
    from autoimmuneai.data.cohort import read_manifest

    table = read_manifest(manifestPath)
    if "case_id" not in table.columns:
        raise InputError("manifest has no case_id column", file=manifestPath, field="case_id")
    return [str(c) for c in table["case_id"]]


def writeTable(tableNode, values: dict[str, str], panel: Panel) -> None:
    """Store the typed values in ``tableNode`` (a vtkMRMLTableNode), one row per feature."""
    import vtk

    table = vtk.vtkTable()
    columns = {}
    for name in TABLE_COLUMNS:
        column = vtk.vtkStringArray()
        column.SetName(name)
        table.AddColumn(column)
        columns[name] = column
    for feature in panel.features:
        columns["feature"].InsertNextValue(feature.name)
        columns["label"].InsertNextValue(feature.label)
        columns["value"].InsertNextValue(str(values.get(feature.name, "") or ""))
        columns["unit"].InsertNextValue(feature.unit)
    tableNode.SetAndObserveTable(table)
    tableNode.SetAttribute("AutoimmuneAI.panel", panel.name)
    tableNode.Modified()


def readTable(tableNode) -> dict[str, str]:
    """The values stored by ``writeTable`` (features with an empty value are left out)."""
    table = tableNode.GetTable() if tableNode is not None else None
    if table is None or table.GetColumnByName("feature") is None:
        return {}
    names = table.GetColumnByName("feature")
    raw = table.GetColumnByName("value")
    out = {}
    for i in range(table.GetNumberOfRows()):
        value = raw.GetValue(i).strip()
        if value:
            out[names.GetValue(i)] = value
    return out
