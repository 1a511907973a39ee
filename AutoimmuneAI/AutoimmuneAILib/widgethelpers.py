"""Qt pieces of the module panel: the image selectors, the serology form and the results view.

Thin by design: what to show comes from ``labform`` and ``PredictionResult`` (tested outside
Slicer); this file only puts it into widgets and Slicer's views.
"""

from __future__ import annotations

import qt
import slicer

from autoimmuneai.data.panel import Panel

from .labform import (
    channelRows,
    checkEntry,
    formRows,
    readTable,
    storeChannelVolume,
    storedChannelVolume,
    writeTable,
)
from .logic import PredictionResult, probabilityChanges
from .quality import QUALITY_STYLES

BAD_STYLE = "background-color: #ffd6d6;"
SET_COLOR = "#d8ecff"


class ChannelSelectors:
    """One volume selector per panel channel (``labform.channelRows``), rebuilt with the panel.

    The reference (first) channel is the .ui's selector, the first row of the inputs form,
    bound to the parameter node's ``inputVolume``: only its label and tooltip follow the panel.
    The other channels' selectors are made here, in rows right below it, and remember their
    volume on the parameter node (``labform.storeChannelVolume``: saved with the scene). They
    all offer "none": whether a channel may stay empty is ``labform.channelProblem``'s call.
    """

    def __init__(self, layout: qt.QFormLayout, referenceLabel, referenceSelector, onChanged=None):
        self.layout = layout
        self.referenceLabel = referenceLabel
        self.referenceSelector = referenceSelector
        self.onChanged = onChanged
        self.panel: Panel | None = None
        self.selectors: dict = {}  # channel -> qMRMLNodeComboBox (all but the reference)
        self.parameterNode = None  # the vtkMRMLScriptedModuleNode under the wrapper
        self._loading = False

    def build(self, panel: Panel) -> None:
        """Replace the selectors with those of ``panel`` (nothing to do for the same channels)."""
        if self.panel is not None and channelRows(self.panel) == channelRows(panel):
            self.panel = panel
            return
        for selector in self.selectors.values():
            self.layout.removeRow(selector)  # deletes the selector and its label
        self.panel, self.selectors = panel, {}
        reference, *others = channelRows(panel)
        self.referenceLabel.text = reference.label
        self.referenceSelector.toolTip = reference.tooltip
        for index, row in enumerate(others):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.noneEnabled = True  # never pick some volume of the scene on its own
            selector.noneDisplay = "(not acquired)" if row.optional else "(select a volume)"
            selector.toolTip = row.tooltip
            selector.setMRMLScene(slicer.mrmlScene)
            self.layout.insertRow(1 + index, row.label, selector)
            selector.connect(
                "currentNodeChanged(vtkMRMLNode*)",
                lambda node, name=row.name: self._changed(name, node),
            )
            self.selectors[row.name] = selector
        self.loadFrom(self.parameterNode)

    def loadFrom(self, parameterNode) -> None:
        """Show the volumes stored on ``parameterNode`` (a reopened scene, a new panel)."""
        self.parameterNode = parameterNode
        self._loading = True
        try:
            for name, selector in self.selectors.items():
                selector.setCurrentNode(storedChannelVolume(parameterNode, name))
        finally:
            self._loading = False

    def setVolumes(self, volumes) -> None:
        """Select ``volumes`` (channel -> node, e.g. a loaded demo case) in the channels'
        selectors; a channel the mapping lacks is set to none. The reference channel is the
        parameter node's ``inputVolume``, which the caller sets. Stored and announced as a
        user's choice is (``onChanged``), so Run's state follows."""
        for name, selector in self.selectors.items():
            selector.setCurrentNode(volumes.get(name))

    def _changed(self, name: str, node) -> None:
        if self._loading:
            return
        if self.parameterNode is not None:
            storeChannelVolume(self.parameterNode, name, node)
        if self.onChanged:
            self.onChanged()

    def volumes(self, referenceVolume):
        """Channel -> selected volume node (None when empty), the reference channel first; the
        reference volume alone while no panel is known (the logic reads it as channel 1)."""
        if self.panel is None:
            return referenceVolume
        out = {self.panel.channels[0]: referenceVolume}
        out.update({name: s.currentNode() for name, s in self.selectors.items()})
        return out


class SerologyForm:
    """One line edit per panel feature, with the unit beside it and bad values flagged in place."""

    def __init__(self, layout: qt.QFormLayout, onChanged=None) -> None:
        self.layout = layout
        self.onChanged = onChanged
        self.panel: Panel | None = None
        self.edits: dict[str, qt.QLineEdit] = {}
        self.notes: dict[str, qt.QLabel] = {}

    def build(self, panel: Panel) -> None:
        """Replace the rows with those of ``panel`` (keeps values of features that remain)."""
        if self.panel is not None and panel.name == self.panel.name and self.edits:
            return
        previous = self.values()
        while self.layout.rowCount() > 0:
            self.layout.removeRow(0)
        self.panel, self.edits, self.notes = panel, {}, {}
        for row in formRows(panel):
            edit = qt.QLineEdit()
            edit.placeholderText = row.placeholder
            edit.toolTip = row.tooltip
            edit.text = previous.get(row.name, "")
            note = qt.QLabel(row.unit)
            note.toolTip = row.tooltip
            line = qt.QHBoxLayout()
            line.addWidget(edit, 1)
            line.addWidget(note)
            self.layout.addRow(f"{row.label}:", line)
            edit.connect("textChanged(QString)", lambda _text, name=row.name: self._check(name))
            self.edits[row.name], self.notes[row.name] = edit, note
        for name in self.edits:
            self._check(name, notify=False)

    def _check(self, name: str, notify: bool = True) -> None:
        feature = self.panel.feature(name)
        edit, note = self.edits[name], self.notes[name]
        result = checkEntry(edit.text, feature)
        edit.styleSheet = "" if result.ok else BAD_STYLE
        unit = "" if feature.unit in ("", "ratio", "titer") else feature.unit
        note.text = unit if result.ok else "invalid"
        edit.toolTip = (
            result.error if not result.ok else formRows(self.panel)[self._index(name)].tooltip
        )
        if notify and self.onChanged:
            self.onChanged()

    def _index(self, name: str) -> int:
        return list(self.panel.feature_names).index(name)

    def values(self) -> dict[str, str]:
        return {name: edit.text.strip() for name, edit in self.edits.items() if edit.text.strip()}

    def errors(self) -> dict[str, str]:
        out = {}
        for name, edit in self.edits.items():
            result = checkEntry(edit.text, self.panel.feature(name))
            if not result.ok:
                out[name] = result.error
        return out

    def setValues(self, values: dict[str, str]) -> None:
        for name, edit in self.edits.items():
            edit.text = values.get(name, "")

    def saveTo(self, tableNode) -> None:
        if tableNode is not None and self.panel is not None:
            writeTable(tableNode, self.values(), self.panel)

    def loadFrom(self, tableNode) -> None:
        if tableNode is not None and tableNode.GetTable() is not None:
            values = readTable(tableNode)
            if values:
                self.setValues(values)


class ResultsView:
    """Puts a PredictionResult into the panel's widgets and Slicer's slice, 3D and plot views."""

    def __init__(self, ui) -> None:
        self.ui = ui
        self.result: PredictionResult | None = None

    def clear(self) -> None:
        """Forget the shown result and remove its nodes (the input volume stays)."""
        if self.result is not None:
            for role, node in self.result.nodes.items():
                if role == "image" or node is None or node.GetScene() is None:
                    continue
                scene = node.GetScene()
                if node.IsA("vtkMRMLPlotChartNode"):
                    series = [
                        node.GetNthPlotSeriesNode(i)
                        for i in range(node.GetNumberOfPlotSeriesNodes())
                    ]
                    for item in series:
                        scene.RemoveNode(item)
                scene.RemoveNode(node)
        self.result = None
        self.ui.differentialTableWidget.setRowCount(0)
        for label in (
            self.ui.riskLabel,
            self.ui.modalityShareLabel,
            self.ui.qualityLabel,
            self.ui.warningsLabel,
            self.ui.whatIfLabel,
        ):
            label.text = ""
        self.ui.qualityLabel.styleSheet = ""

    def show(self, result: PredictionResult) -> None:
        self.result = result
        table = self.ui.differentialTableWidget
        probs = result.probabilities
        ordered = sorted(probs, key=lambda c: -probs[c])
        table.setRowCount(len(ordered))
        for row, name in enumerate(ordered):
            inSet = name in result.predictionSet
            cells = (name, f"{probs[name]:.1%}", "yes" if inSet else "")
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                if inSet:
                    item.setBackground(qt.QBrush(qt.QColor(SET_COLOR)))
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        risk = f"{result.riskScore:.2f}" if result.riskScore is not None else "n/a"
        self.ui.riskLabel.text = (
            f"Progression risk: <b>{result.riskGroup or 'n/a'}</b> (score {risk})"
        )
        share = result.modalityShare
        self.ui.modalityShareLabel.text = (
            "Decision based on: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items())
            if share
            else ""
        )
        quality = result.quality  # words and state from quality.qualityReport
        self.ui.qualityLabel.text = quality.text
        self.ui.qualityLabel.styleSheet = QUALITY_STYLES[quality.state]
        self.ui.warningsLabel.text = "\n".join(f"\u26a0 {w}" for w in result.otherWarnings)
        self.showEvidence()
        self.showChart("probability_chart")

    def showEvidence(self) -> None:
        """Image in the background, evidence segments over it in 2D and as surfaces in 3D."""
        nodes = self.result.nodes if self.result else {}
        image, segmentation = nodes.get("image"), nodes.get("segmentation")
        if image is not None:
            slicer.util.setSliceViewerLayers(background=image, fit=True)
        if segmentation is not None:
            segmentation.CreateDefaultDisplayNodes()
            segmentation.CreateClosedSurfaceRepresentation()
            segmentation.GetDisplayNode().SetVisibility(True)
            slicer.util.resetThreeDViews()

    def showChart(self, role: str) -> None:
        chart = self.result.nodes.get(role) if self.result else None
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def showWhatIf(self, feature: str, value: str, after: dict) -> None:
        if not self.result:
            return
        rows = probabilityChanges(self.result.prediction, after)
        lines = [f"{c}: {b:.1%} \u2192 {a:.1%} ({d:+.1%})" for c, b, a, d in rows]
        self.ui.whatIfLabel.text = f"With {feature} = {value}:\n" + "\n".join(lines)
