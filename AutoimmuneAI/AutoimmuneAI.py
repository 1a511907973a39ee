"""AutoimmuneAI: MRI + serology differential diagnosis and progression risk, with evidence.

The 3D Slicer scripted module. This file only registers the module, binds the panel to the
parameter node and hands the work to ``AutoimmuneAILib`` (logic without Qt, tested outside
Slicer) and to the ``autoimmuneai`` package in ``Logic/`` (the same code as the command line).
"""

import logging
import os
import tempfile
from pathlib import Path

import qt
import slicer
import vtk
from AutoimmuneAILib import logic as _logic  # also makes Logic/ importable as autoimmuneai
from AutoimmuneAILib.demo import loadDemoVolume, prepareDemo, runDemoScenario
from AutoimmuneAILib.install import DependencyInstaller
from AutoimmuneAILib.labform import caseIds, readCohortCase
from AutoimmuneAILib.parameters import AutoimmuneAIParameterNode
from AutoimmuneAILib.widgethelpers import ResultsView, SerologyForm
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DISCLAIMER = (
    "For research use only. Not a medical device: the output must not be used for "
    "diagnosis or treatment decisions."
)


class AutoimmuneAI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AutoimmuneAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoimmuneAI contributors"]
        self.parent.helpText = (
            _(
                "Differential diagnosis (calibrated probabilities and a conformal prediction set) "
                "and progression risk of CNS autoimmune and inflammatory disease from a FLAIR MRI "
                "and serology, with the evidence shown as segments on the patient's own image and "
                "a chart of how each lab value pushed the decision.<br><br><b>"
            )
            + _(DISCLAIMER)
            + "</b>"
        )
        self.parent.acknowledgementText = _(
            "Built on MONAI, Captum, lifelines, scikit-learn, scikit-image and 3D Slicer. "
            "The demo data are synthetic, generated on the MNI152 template shipped by nilearn."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A demo case in the Sample Data module, generated on demand (nothing is downloaded)."""
    import SampleData

    def generate(source):
        demo = prepareDemo(_demoDirectory())
        node = loadDemoVolume(slicer.mrmlScene, demo, source.nodeNames[0])
        return [node]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="AutoimmuneAI",
        sampleName="AutoimmuneAIDemoFLAIR",
        uris="autoimmuneai-synth://demo",
        fileNames="AutoimmuneAIDemoFLAIR.nii.gz",
        nodeNames="AutoimmuneAIDemoFLAIR",
        thumbnailFileName=os.path.join(
            os.path.dirname(__file__), "Resources", "Icons", "AutoimmuneAI.png"
        ),
        customDownloader=generate,
    )


def _demoDirectory() -> Path:
    return Path(slicer.app.cachePath) / "AutoimmuneAI" / "demo"


class AutoimmuneAILogic(_logic.AutoimmuneAILogic):
    """The module's logic on Slicer's scene; jobs started without waiting poll on a Qt timer.

    See ``AutoimmuneAILib/logic.py`` for ``process``, ``processCohort`` and ``whatIf``.
    """

    def __init__(self):
        super().__init__(scene=slicer.mrmlScene, scheduler=qt.QTimer.singleShot)

    def getParameterNode(self):
        return AutoimmuneAIParameterNode(super().getParameterNode())


class AutoimmuneAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoimmuneAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoimmuneAILogic()
        self.form = SerologyForm(self.ui.serologyFormLayout, onChanged=self._onSerologyChanged)
        self.results = ResultsView(self.ui)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.demoButton.connect("clicked(bool)", self.onDemo)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)
        self.ui.cohortPathLineEdit.connect("currentPathChanged(QString)", self.onCohortChanged)
        self.ui.whatIfButton.connect("clicked(bool)", self.onWhatIf)
        self.ui.differentialTableWidget.connect("cellDoubleClicked(int,int)", self.onExplainClass)
        self.ui.showProbabilitiesButton.connect(
            "clicked(bool)", lambda: self.results.showChart("probability_chart")
        )
        self.ui.showSurvivalButton.connect(
            "clicked(bool)", lambda: self.results.showChart("survival_chart")
        )
        self.ui.showLabContributionsButton.connect(
            "clicked(bool)", lambda: self.results.showChart("lab_chart")
        )
        self.initializeParameterNode()

    def cleanup(self):
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass(
                "vtkMRMLScalarVolumeNode"
            )
        if not self._parameterNode.serologyTable:
            self._parameterNode.serologyTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", "Serology"
            )

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
            self._onParameterNodeModified()

    # -- state ---------------------------------------------------------------------------
    def _panel(self):
        try:
            return _logic.panelForBundle(self._parameterNode.bundlePath)
        except Exception:
            return None

    def _onParameterNodeModified(self, caller=None, event=None):
        panel = self._panel()
        if panel is not None:
            self.form.build(panel)
            self.form.loadFrom(self._parameterNode.serologyTable)
            self._fillWhatIfFeatures(panel)
            completer = qt.QCompleter(list(panel.classes), self.ui.targetClassLineEdit)
            self.ui.targetClassLineEdit.setCompleter(completer)
        self._updateButtons()

    def _onSerologyChanged(self):
        self.form.saveTo(self._parameterNode.serologyTable)
        errors = self.form.errors()
        self.ui.serologyStatusLabel.text = "; ".join(errors.values())
        self._updateButtons()

    def _updateButtons(self):
        p = self._parameterNode
        running = self.job is not None and not self.job.done
        ready = bool(p and p.inputVolume and self._panel() is not None and not self.form.errors())
        self.ui.runButton.enabled = ready and not running
        self.ui.whatIfButton.enabled = ready and not running and self.results.result is not None
        self.ui.cancelButton.enabled = running
        self.ui.runButton.toolTip = (
            _("Predict and explain in a background process.")
            if ready
            else _("Select a volume and a model bundle, and correct the lab values marked in red.")
        )

    def _fillWhatIfFeatures(self, panel):
        box = self.ui.whatIfFeatureComboBox
        if box.count == len(panel.features):
            return
        box.clear()
        for feature in panel.features:
            box.addItem(feature.label, feature.name)

    # -- actions -------------------------------------------------------------------------
    def onRun(self, checked=False, targetClass=None):
        with slicer.util.tryWithErrorDisplay(_("Failed to start the prediction."), waitCursor=True):
            if not DependencyInstaller(confirm=slicer.util.confirmOkCancelDisplay).ensure():
                return
            p = self._parameterNode
            self.results.clear()
            self._startJob(
                self.logic.process(
                    p.inputVolume,
                    self.form.values(),
                    p.bundlePath,
                    explain=True,
                    waitForCompletion=False,
                    caseId=p.caseId or "case",
                    targetClass=targetClass or p.targetClass or None,
                    method=p.attributionMethod,
                    alpha=p.conformalAlpha,
                    bands=p.evidenceBands,
                    onProgress=self._onProgress,
                    onLine=self._onLine,
                    onFinished=self._onFinished,
                )
            )

    def _startJob(self, job):
        self.job = job
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = _("Running...")
        self._updateButtons()

    def _onProgress(self, progress):
        self.ui.progressBar.value = int(round(100 * progress.fraction))

    def _onLine(self, line):
        logging.info(line)
        self.ui.statusLabel.text = line[-120:]

    def _onFinished(self, job):
        self.ui.progressBar.visible = False
        self._updateButtons()
        if isinstance(job.error, _logic.ProcessingCancelled):
            self.ui.statusLabel.text = _("Cancelled.")
        elif job.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Prediction failed: {reason}").format(reason=job.error))
        else:
            self.ui.statusLabel.text = _("Done.")
            self.results.show(job.result)
        self.job = None
        self._updateButtons()

    def onCancel(self):
        if self.job is not None:
            self.job.cancel()

    def onExplainClass(self, row, column):
        """Double-click on a class: explain that class (re-runs the explanation overlay)."""
        item = self.ui.differentialTableWidget.item(row, 0)
        if item is not None and self.job is None:
            self._parameterNode.targetClass = item.text()
            self.onRun(targetClass=item.text())

    def onWhatIf(self):
        with slicer.util.tryWithErrorDisplay(_("What-if prediction failed."), waitCursor=True):
            feature = self.ui.whatIfFeatureComboBox.currentData
            value = self.ui.whatIfValueLineEdit.text
            p = self._parameterNode

            def finished(job):
                self.job = None
                self.ui.progressBar.visible = False
                self._updateButtons()
                if job.error is not None:
                    self.ui.whatIfLabel.text = str(job.error)
                else:
                    self.results.showWhatIf(feature, value, job.result.prediction)

            self._startJob(
                self.logic.whatIf(
                    p.inputVolume, self.form.values(), p.bundlePath, feature, value,
                    waitForCompletion=False, onFinished=finished,
                )
            )  # fmt: skip

    def onCohortChanged(self, path):
        self.ui.cohortCaseComboBox.clear()
        if path and os.path.isfile(path):
            with slicer.util.tryWithErrorDisplay(_("Cannot read the cohort file.")):
                self.ui.cohortCaseComboBox.addItems(caseIds(path))

    def onLoadCase(self):
        with slicer.util.tryWithErrorDisplay(_("Cannot load the case's lab values.")):
            panel = self._panel()
            if panel is None:
                raise ValueError(_("Select a model bundle first: it defines the lab panel."))
            caseId = self.ui.cohortCaseComboBox.currentText
            self.form.setValues(
                readCohortCase(self.ui.cohortPathLineEdit.currentPath, caseId, panel)
            )
            self._parameterNode.caseId = caseId

    def onDemo(self):
        with slicer.util.tryWithErrorDisplay(_("Cannot prepare the demo case."), waitCursor=True):
            if not DependencyInstaller(confirm=slicer.util.confirmOkCancelDisplay).ensure():
                return
            slicer.util.showStatusMessage(
                _("Generating the demo cohort and model (about a minute)...")
            )
            slicer.app.processEvents()
            demo = prepareDemo(_demoDirectory())
            volume = loadDemoVolume(slicer.mrmlScene, demo)
            p = self._parameterNode
            p.bundlePath = demo.bundlePath
            p.inputVolume = volume
            p.caseId = demo.caseId
            self._onParameterNodeModified()
            self.form.setValues(demo.serology)
            self.ui.cohortPathLineEdit.currentPath = str(demo.manifestPath)


class AutoimmuneAITest(ScriptedLoadableModuleTest):
    """Runs the demo case end to end: the same scenario as Testing/Python/test_slicer_module.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DemoScenario()

    def test_DemoScenario(self):
        self.delayDisplay("Generating the demo case, training a small model, predicting")
        workDir = Path(tempfile.mkdtemp(prefix="AutoimmuneAITest-"))
        result, reloaded = runDemoScenario(workDir, logic=AutoimmuneAILogic())
        self.assertIn(result.predicted, result.classes)
        self.assertGreater(reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.delayDisplay("Test passed")
