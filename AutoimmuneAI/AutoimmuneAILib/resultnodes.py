"""Result nodes built from ``prediction.json``: the differential, survival and lab charts.

With ``--explain`` the package writes these tables itself and ``autoimmuneai.output.mrml`` imports
them; a prediction without explanation has only ``prediction.json``, and these builders turn
it into the same roles (``probabilities``, ``probability_chart``, ``survival``,
``survival_chart``, ``lab_contributions``, ``lab_chart``) so the module shows every result the
same way. Real MRML classes (``slicer-core`` or Slicer itself); no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import vtk

NUMERIC_KEYS = ("contribution", "attribution", "score", "delta")


def _table(scene, name: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence]):
    """A vtkMRMLTableNode with typed columns (``"str"`` or ``"float"``) filled with ``rows``."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    arrays = []
    for column_name, kind in columns:
        array = vtk.vtkStringArray() if kind == "str" else vtk.vtkDoubleArray()
        array.SetName(column_name)
        table.AddColumn(array)
        arrays.append((array, kind))
    for row in rows:
        for (array, kind), value in zip(arrays, row):
            if kind == "str":
                array.InsertNextValue(str(value))
            else:
                array.InsertNextValue(float(value))
    table.SetNumberOfRows(len(rows))
    node.SetAndObserveTable(table)
    for column_name, kind in columns:
        node.SetColumnType(column_name, vtk.VTK_STRING if kind == "str" else vtk.VTK_DOUBLE)
    return node


def _chart(scene, name: str, tableNode, x: str, y: str, plotType: str, labels: str = ""):
    """A plot chart with one series of ``tableNode``'s columns ``x`` against ``y``."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} series")
    series.SetAndObserveTableNodeID(tableNode.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    if labels:
        series.SetLabelColumnName(labels)
    if plotType == "bar":
        series.SetPlotType(series.PlotTypeBar)
    else:
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleSolid)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(x)
    chart.SetYAxisTitle(y)
    return chart, series


def addDifferentialNodes(scene, prediction: dict, prefix: str) -> dict:
    """Table (class, probability, in prediction set) and a bar chart of the probabilities."""
    classes = list(prediction.get("classes") or prediction["probabilities"].keys())
    in_set = set(prediction.get("prediction_set", []))
    rows = [
        (i, c, float(prediction["probabilities"][c]), 1.0 if c in in_set else 0.0)
        for i, c in enumerate(classes)
    ]
    table = _table(
        scene,
        f"{prefix} differential",
        [("index", "float"), ("class", "str"), ("probability", "float"), ("in_set", "float")],
        rows,
    )
    chart, _ = _chart(
        scene, f"{prefix} probabilities", table, "index", "probability", "bar", "class"
    )
    chart.SetYAxisRange(0.0, 1.0)
    return {"probabilities": table, "probability_chart": chart}


def addSurvivalNodes(scene, prediction: dict, prefix: str) -> dict:
    """Table and line chart of the predicted progression-free probability over time."""
    survival = prediction.get("survival") or {}
    # DESIGN.md names the keys times/probabilities; predict.py writes times_months/probability.
    times = [float(t) for t in survival.get("times", survival.get("times_months", []))]
    probs = [float(p) for p in survival.get("probabilities", survival.get("probability", []))]
    if not times or len(times) != len(probs):
        return {}
    table = _table(
        scene,
        f"{prefix} survival",
        [("months", "float"), ("progression_free", "float")],
        list(zip(times, probs)),
    )
    group = prediction.get("risk_group", "")
    title = f"{prefix} survival ({group} risk)" if group else f"{prefix} survival"
    chart, _ = _chart(scene, title, table, "months", "progression_free", "line")
    chart.SetYAxisRange(0.0, 1.0)
    return {"survival": table, "survival_chart": chart}


def labContributionRows(prediction: dict) -> list[tuple[str, float]]:
    """(label, signed contribution) pairs from ``lab_contributions``, largest effect first."""
    rows = []
    for item in prediction.get("lab_contributions", []) or []:
        if not isinstance(item, dict):
            continue
        name = str(item.get("label") or item.get("feature") or item.get("name") or "?")
        value = next((item[k] for k in NUMERIC_KEYS if isinstance(item.get(k), (int, float))), None)
        if value is not None and math.isfinite(float(value)):
            rows.append((name, float(value)))
    rows.sort(key=lambda r: -abs(r[1]))
    return rows


def addLabContributionNodes(scene, prediction: dict, prefix: str) -> dict:
    """Table and bar chart of how each lab value pushed the explained class up or down."""
    rows = labContributionRows(prediction)
    if not rows:
        return {}
    table = _table(
        scene,
        f"{prefix} lab contributions",
        [("index", "float"), ("feature", "str"), ("contribution", "float")],
        [(i, name, value) for i, (name, value) in enumerate(rows)],
    )
    chart, _ = _chart(
        scene, f"{prefix} lab contributions", table, "index", "contribution", "bar", "feature"
    )
    return {"lab_contributions": table, "lab_chart": chart}


def probabilityChanges(before: dict, after: dict) -> list[tuple[str, float, float, float]]:
    """(class, before, after, after - before) for a what-if comparison, largest change first."""
    pb, pa = before["probabilities"], after["probabilities"]
    rows = [(c, float(pb[c]), float(pa[c]), float(pa[c]) - float(pb[c])) for c in pb]
    rows.sort(key=lambda r: -abs(r[3]))
    return rows
