"""The serology form, without Qt: rows from the panel, checks in place, storage in a table node.

The widget draws one line edit per row and shows each row's ``check`` result beside it; the
values also live in a ``vtkMRMLTableNode`` so that they are saved with the scene and a
reopened scene shows the same patient. Values stay the strings the user typed ("1:160",
"neg", "95 mg/dL"): the package parses them the same way it parses a lab sheet.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        if optional:
            tooltip += "\nMay stay empty: the model then reads the channel as not acquired."
        rows.append(ChannelRow(name, label, tooltip, optional))
    return rows


def channelVolumes(volumes, panel: Panel) -> dict[str, object]:
    """The volume node of each channel that has one, in panel order; refused in one line.

    ``volumes`` is one volume node (the panel's first channel: the call a single-channel panel
    always had) or a mapping channel name -> volume node or None (None: an optional channel not
    acquired). Refused: a name that is not a channel of the panel, something that is not a
    volume node or one without image data, a node under a parent transform (its voxels would
    be written without it, out of register with the other channels and the results), and a
    required channel without a node.
    """
    if volumes is None or hasattr(volumes, "GetImageData"):
        given = {panel.channels[0]: volumes}
    elif isinstance(volumes, Mapping):
        given = {str(k).strip().lower(): v for k, v in volumes.items()}
    else:
        raise InputError(
            f"expected a volume node or a mapping channel -> volume node, got "
            f"{type(volumes).__name__}"
        )
    unknown = [c for c in given if c not in panel.channels]
    if unknown:
        raise InputError(
            f"{unknown[0]!r} is not an image channel of panel {panel.name!r} "
            f"({', '.join(panel.channels)})"
        )
    out = {}
    for row in channelRows(panel):
        node = given.get(row.name)
        if node is None:
            if not row.optional:
                raise InputError(missingChannelMessage(row, panel))
            continue
        if not hasattr(node, "GetImageData"):
            raise InputError(
                f"channel {row.name!r}: expected a volume node, got {type(node).__name__}"
            )
        if node.GetImageData() is None:
            raise InputError(f"channel {row.name!r}: volume {node.GetName()!r} has no image data")
        if node.GetParentTransformNode() is not None:
            raise InputError(
                f"channel {row.name!r}: volume {node.GetName()!r} is under a transform; "
                "harden it first (Data module: right-click the volume, Harden transform)"
            )
        out[row.name] = node
    return out


def missingChannelMessage(row: ChannelRow, panel: Panel) -> str:
    """The one line said when a required channel has no volume (widget and scripts alike)."""
    return (
        f"no volume for channel {row.name!r}: panel {panel.name!r} requires it "
        f"(select the {row.label.rstrip(':')})"
    )


def channelProblem(volumes, panel: Panel) -> str:
    """Why these volumes cannot run ("" when they can): what the Run button's tooltip says."""
    try:
        channelVolumes(volumes, panel)
    except InputError as exc:
        return str(exc)
    return ""


CHANNEL_ROLE_PREFIX = "AutoimmuneAI.channel."  # node reference role of a channel's volume


def storeChannelVolume(parameterNode, channel: str, volumeNode) -> None:
    """Remember the volume chosen for ``channel`` on the module's parameter node (a
    vtkMRMLScriptedModuleNode): a node reference, so it is saved with the scene."""
    role = CHANNEL_ROLE_PREFIX + channel
    nodeId = volumeNode.GetID() if volumeNode is not None else None
    if parameterNode.GetNodeReferenceID(role) != nodeId:
        parameterNode.SetNodeReferenceID(role, nodeId)


def storedChannelVolume(parameterNode, channel: str):
    """The volume stored for ``channel`` by :func:`storeChannelVolume` (None when none)."""
    if parameterNode is None:
        return None
    return parameterNode.GetNodeReference(CHANNEL_ROLE_PREFIX + channel)


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
