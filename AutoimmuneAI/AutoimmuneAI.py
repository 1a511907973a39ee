"""AutoimmuneAI: MRI + serology differential diagnosis and progression risk, with evidence.

The 3D Slicer scripted module. This file registers the module, binds the panel to the
parameter node and hands the work to ``AutoimmuneAILib`` (logic without Qt, tested outside
Slicer) and to the ``autoimmuneai`` package in ``Logic/`` (the same code as the command line).

Slicer 5.10, 5.12 and the preview are supported. The library needs Python 3.10+, so this file
imports only ``AutoimmuneAILib.compat`` until the version check has passed: in Slicer 5.8
(Python 3.9) the module loads, says in one line why it cannot run, and does nothing else.
Keep this file free of Python 3.10+ syntax (the test suite parses it as Python 3.9).
"""

from __future__ import annotations

import logging
import os
import tempfile
import types
from pathlib import Path

import qt
import slicer
import vtk
from AutoimmuneAILib.compat import runningSlicerVersion, unsupportedReason
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
DEMO_NODE_PREFIX = "AutoimmuneAIDemo"  # demo volumes: "AutoimmuneAIDemo FLAIR", one per channel


def unsupported():
    """Why this Slicer cannot run the module ("" when it can): the start-up version check."""
    return unsupportedReason(runningSlicerVersion(slicer.app))


_LIBRARY = None


def _lib():
    """The module's library, imported on first use (only after the version check passed)."""
    global _LIBRARY
    if _LIBRARY is None:
        from AutoimmuneAILib import demo, install, labform, logic, parameters, widgethelpers

        _LIBRARY = types.SimpleNamespace(
            demo=demo,
            install=install,
            labform=labform,
            logic=logic,
            parameters=parameters,
            widgethelpers=widgethelpers,
        )
    return _LIBRARY


class AutoimmuneAI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AutoimmuneAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoimmuneAI team (AutoimmuneAI)"]
        reason = unsupported()
        self.parent.helpText = (
            _(
                "Differential diagnosis (calibrated probabilities and a conformal prediction set) "
                "and progression risk from brain MRI (one selector per image channel of the "
                "model's panel, e.g. FLAIR, T1, T1-Gd) and lab values (a form generated from the "
                "same panel), with the evidence shown as segments on the patient's own image and "
                "a chart of how each lab value pushed the decision.<br><br><b>"
            )
            + _(DISCLAIMER)
            + "</b>"
        )
        self.parent.acknowledgementText = _(
            "Built on MONAI, Captum, lifelines, scikit-learn, scikit-image and 3D Slicer. "
            "The demo data are synthetic, generated on the MNI152 template shipped by nilearn."
        )
        if reason:
            logging.error(reason)
            self.parent.helpText = reason + "<br><br>" + self.parent.helpText
            return
        slicer.app.connect("startupCompleted()", registerSampleData)


# -- dependencies and the demo: shared by the panel's "Load demo case" and Sample Data -----------
def ensureDependencies():
    """Install the module's Python packages after one confirmation; True when all are present."""
    installer = _lib().install.DependencyInstaller(confirm=slicer.util.confirmOkCancelDisplay)
    return installer.ensure()


def _demoDirectory(panel):
    """The demo folder of ``panel`` in Slicer's cache: one per panel (``demoWorkDir``)."""
    return _lib().demo.demoWorkDir(Path(slicer.app.cachePath) / "AutoimmuneAI" / "demo", panel)


def _demoChoices():
    """The demos to offer (``demoChoices``); the default panel's alone when the generators'
    packages cannot be imported yet (they are installed on first use)."""
    demo = _lib().demo
    try:
        return demo.demoChoices()
    except ImportError as exc:
        logging.warning("AutoimmuneAI: only the default demo is offered (%s)", exc)
        return [demo.DemoChoice(demo.defaultDemoPanel(), _("AutoimmuneAI demo"))]


def startDemo(onLoaded, onProgress=None, onLine=None, onEnded=None, panel=None):
    """Prepare ``panel``'s demo case in the background (default: the default panel's), then
    load and show its volumes.

    Dependencies are installed first (one confirmation). The cohort and the demo model are
    made by a background process (progress through ``onProgress``/``onLine``; the returned
    Job's ``cancel()`` stops it); once done, one volume per channel of the case is added with
    a display node, the reference channel's is shown in the slice views, and
    ``onLoaded(demo, volumes)`` runs (``volumes``: channel -> node, the reference first).
    ``onEnded(job)`` runs in every case (done, failed or cancelled). Returns the Job, or None
    when the user declined.
    """
    lib = _lib()
    if not ensureDependencies():
        return None

    def finished(job):
        try:
            if isinstance(job.error, lib.logic.ProcessingCancelled):
                slicer.util.showStatusMessage(_("Demo cancelled."), 3000)
            elif job.error is not None:
                slicer.util.errorDisplay(
                    _("Cannot prepare the demo case: {reason}").format(reason=job.error)
                )
            else:
                volumes = lib.demo.loadDemoVolumes(slicer.mrmlScene, job.result, DEMO_NODE_PREFIX)
                reference = next(iter(volumes.values()))
                slicer.util.setSliceViewerLayers(background=reference, fit=True)
                onLoaded(job.result, volumes)
        finally:
            if onEnded is not None:
                onEnded(job)

    return lib.demo.prepareDemo(
        _demoDirectory(panel),
        logic=AutoimmuneAILogic(),
        panel=panel,
        waitForCompletion=False,
        onProgress=onProgress,
        onLine=onLine,
        onFinished=finished,
    )


def registerSampleData():
    """One Sample Data entry per demo (``demoChoices``: "AutoimmuneAI demo" for the default
    panel, "AutoimmuneAI demo: <panel title>" for the others), generated on demand (nothing
    downloaded).

    Sample Data calls a custom downloader only from its button, with the source, and ignores
    what it returns (``SampleData.py``): the downloader starts the background demo with a
    progress dialog whose Cancel stops it, and the volumes are shown once they are ready.
    """
    import SampleData

    def generate(source, panel=None, title=""):
        dialog = slicer.util.createProgressDialog(
            windowTitle=_("AutoimmuneAI demo") + (": " + title if title else ""),
            labelText=_("Generating the demo case and model (a few minutes)..."),
            maximum=100,
        )

        def progress(p):
            dialog.value = int(round(100 * p.fraction))

        def line(text):
            dialog.labelText = text[-100:]

        job = None
        with slicer.util.tryWithErrorDisplay(_("Cannot prepare the demo case.")):
            job = startDemo(
                lambda demo, volumes: None,
                onProgress=progress,
                onLine=line,
                onEnded=lambda job: dialog.close(),
                panel=panel,
            )
        if job is None:
            dialog.close()
        else:
            dialog.connect("canceled()", job.cancel)

    thumbnail = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "AutoimmuneAI.png")
    for index, choice in enumerate(_demoChoices()):
        default = index == 0  # the default panel's entry keeps the name it always had
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="AutoimmuneAI",
            sampleName=_("AutoimmuneAI demo") + ("" if default else ": " + choice.title),
            uris="autoimmuneai-synth://demo" + ("" if default else "/" + choice.panel),
            fileNames=f"{DEMO_NODE_PREFIX}-{choice.panel}.nii.gz",
            nodeNames=f"{DEMO_NODE_PREFIX} {choice.panel}",
            thumbnailFileName=thumbnail,
            customDownloader=lambda source, c=choice, d=default: generate(
                source, c.panel, "" if d else c.title
            ),
        )


def AutoimmuneAILogic():
    """The module's logic on Slicer's scene; jobs started without waiting poll on a Qt timer.

    See ``AutoimmuneAILib/logic.py`` for ``process``, ``processCohort`` and ``whatIf``.
    """
    return _lib().parameters.AutoimmuneAISlicerLogic()


class AutoimmuneAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._completerPanel = None
        self.job = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        reason = unsupported()
        if reason:
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        lib = _lib()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoimmuneAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoimmuneAILogic()
        self.form = lib.widgethelpers.SerologyForm(
            self.ui.serologyFormLayout, onChanged=self._onSerologyChanged
        )
        # The image selectors follow the panel as the form does (the .ui's selector: channel 1).
        self.channels = lib.widgethelpers.ChannelSelectors(
            self.ui.inputsFormLayout,
            self.ui.inputVolumeLabel,
            self.ui.inputVolumeSelector,
            onChanged=self._updateButtons,
        )
        self.results = lib.widgethelpers.ResultsView(self.ui)
        # "Load demo case" offers one demo per panel that ships a cohort generator.
        for choice in _demoChoices():
            self.ui.demoPanelComboBox.addItem(choice.title, choice.panel)
        # One completer for the "explain class" field; its list changes with the panel.
        self.classNames = qt.QStringListModel()
        self.completer = qt.QCompleter(self.classNames, self.ui.targetClassLineEdit)
        self.ui.targetClassLineEdit.setCompleter(self.completer)

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
        if self.logic is not None:
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
        self.channels.loadFrom(inputParameterNode.parameterNode if inputParameterNode else None)
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
            self._onParameterNodeModified()

    # -- state ---------------------------------------------------------------------------
    def _panel(self):
        bundle = self._parameterNode.bundlePath if self._parameterNode else None
        if not bundle or str(bundle) in ("", "."):
            return None
        try:
            return _lib().logic.panelForBundle(bundle)
        except Exception:
            return None

    def _onParameterNodeModified(self, caller=None, event=None):
        edit = self.ui.bundlePathLineEdit
        if edit.currentPath == "." and str(self._parameterNode.bundlePath) == ".":
            # An unset Path parameter reads "."; show "no bundle chosen", not the working folder.
            # Path("") is Path("."): the parameter does not change, so nothing fires again.
            edit.currentPath = ""
        panel = self._panel()
        if panel is not None:
            self.channels.build(panel)
            self.form.build(panel)
            self.form.loadFrom(self._parameterNode.serologyTable)
            self._fillWhatIfFeatures(panel)
            if self._completerPanel != panel.name:
                self.classNames.setStringList(list(panel.classes))
                self._completerPanel = panel.name
        self._updateButtons()

    def _onSerologyChanged(self):
        self.form.saveTo(self._parameterNode.serologyTable)
        errors = self.form.errors()
        self.ui.serologyStatusLabel.text = "; ".join(errors.values())
        self._updateButtons()

    def _volumes(self):
        """Channel -> volume node of the selectors (what Run and What-if hand to the logic)."""
        return self.channels.volumes(self._parameterNode.inputVolume)

    def _updateButtons(self):
        p = self._parameterNode
        running = self.job is not None and not self.job.done
        panel = self._panel() if p else None
        problem = _lib().labform.channelProblem(self._volumes(), panel) if panel else ""
        ready = bool(p and panel is not None and not problem and not self.form.errors())
        self.ui.runButton.enabled = ready and not running
        self.ui.whatIfButton.enabled = ready and not running and self.results.result is not None
        self.ui.demoButton.enabled = not running
        self.ui.demoPanelComboBox.enabled = not running
        self.ui.cancelButton.enabled = running
        if ready:
            self.ui.runButton.toolTip = _("Predict and explain in a background process.")
        elif problem:
            self.ui.runButton.toolTip = problem
        else:
            self.ui.runButton.toolTip = _(
                "Select the volumes and a model bundle, and correct the lab values marked in red."
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
            if not ensureDependencies():
                return
            p = self._parameterNode
            self.results.clear()
            self._startJob(
                self.logic.process(
                    self._volumes(),
                    self.form.values(),
                    p.bundlePath,
                    explain=True,
                    waitForCompletion=False,
                    caseId=p.caseId or "case",
                    targetClass=targetClass or p.targetClass or None,
                    method=p.attributionMethod,
                    alpha=p.conformalAlpha,
                    bands=p.evidenceBands,
                    qualityNodes=p.showQualityNodes,
                    onProgress=self._onProgress,
                    onLine=self._onLine,
                    onFinished=self._onFinished,
                )
            )

    def _startJob(self, job, text=None):
        self.job = job
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = text or _("Running...")
        self._updateButtons()

    def _endJob(self):
        self.job = None
        self.ui.progressBar.visible = False
        self._updateButtons()

    def _onProgress(self, progress):
        self.ui.progressBar.value = int(round(100 * progress.fraction))

    def _onLine(self, line):
        logging.info(line)
        self.ui.statusLabel.text = line[-120:]

    def _onFinished(self, job):
        self._endJob()
        if isinstance(job.error, _lib().logic.ProcessingCancelled):
            self.ui.statusLabel.text = _("Cancelled.")
        elif job.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Prediction failed: {reason}").format(reason=job.error))
        else:
            self.ui.statusLabel.text = _("Done.")
            self.results.show(job.result)

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
                self._endJob()
                if job.error is not None:
                    self.ui.whatIfLabel.text = str(job.error)
                    self.ui.statusLabel.text = _("Failed.")
                else:
                    self.ui.statusLabel.text = _("Done.")
                    self.results.showWhatIf(feature, value, job.result.prediction)

            self._startJob(
                self.logic.whatIf(
                    self._volumes(), self.form.values(), p.bundlePath, feature, value,
                    waitForCompletion=False, onFinished=finished,
                )
            )  # fmt: skip

    def onCohortChanged(self, path):
        self.ui.cohortCaseComboBox.clear()
        if not path or not os.path.isfile(path):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot read the cohort file.")):
            if not ensureDependencies():  # reading a manifest needs pandas (and openpyxl)
                return
            self.ui.cohortCaseComboBox.addItems(_lib().labform.caseIds(path))
            panel = self._panel()
            warnings = _lib().labform.cohortWarnings(path, panel) if panel is not None else []
            if warnings:
                slicer.util.warningDisplay("\n".join(warnings), windowTitle=_("Cohort file"))

    def onLoadCase(self):
        with slicer.util.tryWithErrorDisplay(_("Cannot load the case's lab values.")):
            panel = self._panel()
            if panel is None:
                raise ValueError(_("Select a model bundle first: it defines the lab panel."))
            if not ensureDependencies():
                return
            caseId = self.ui.cohortCaseComboBox.currentText
            self.form.setValues(
                _lib().labform.readCohortCase(self.ui.cohortPathLineEdit.currentPath, caseId, panel)
            )
            self._parameterNode.caseId = caseId

    def onDemo(self):
        with slicer.util.tryWithErrorDisplay(_("Cannot prepare the demo case.")):
            panel = self.ui.demoPanelComboBox.currentData or None

            def loaded(demo, volumes):
                p = self._parameterNode
                p.bundlePath = demo.bundlePath
                p.inputVolume = next(iter(volumes.values()))  # the reference channel
                p.caseId = demo.caseId
                self._onParameterNodeModified()  # selectors and form follow the bundle's panel
                self.channels.setVolumes(volumes)
                self.form.setValues(demo.serology)
                self.ui.cohortPathLineEdit.currentPath = str(demo.manifestPath)
                self.ui.statusLabel.text = _("Demo case loaded: press Run.")

            def ended(job):
                self._endJob()
                if job.error is not None:
                    self.ui.statusLabel.text = _("Demo not loaded.")

            job = startDemo(
                loaded, onProgress=self._onProgress, onLine=self._onLine, onEnded=ended, panel=panel
            )
            if job is not None:
                self._startJob(job, _("Generating the demo case and model (a few minutes)..."))


class AutoimmuneAITest(ScriptedLoadableModuleTest):
    """Runs the demo cases end to end: the same scenario as Testing/Python/test_slicer_module.py
    (the default panel) and test_slicer_demo_panels.py (the others).

    Works in a scene of its own per demo, so the user's scene (its nodes and where it is
    saved) is left as it was.
    """

    def runTest(self):
        self.test_DemoScenario()
        self.test_OtherDemoScenarios()

    def test_DemoScenario(self, panel=None):
        reason = unsupported()
        if reason:
            self.skipTest(reason)
        lib = _lib()
        self.delayDisplay(
            "Generating the {} demo case, training a small model, predicting".format(
                panel or "default"
            )
        )
        workDir = Path(tempfile.mkdtemp(prefix="AutoimmuneAITest-"))
        logic = lib.logic.AutoimmuneAILogic(scene=slicer.vtkMRMLScene())
        result, reloaded = lib.demo.runDemoScenario(workDir, logic=logic, panel=panel)
        self.assertIn(result.predicted, result.classes)
        self.assertGreater(reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.delayDisplay("Test passed")

    def test_OtherDemoScenarios(self):
        """Every other panel that ships a generator (multi-channel ones hand over a mapping)."""
        if unsupported():
            self.skipTest(unsupported())
        for choice in _lib().demo.demoChoices()[1:]:
            self.test_DemoScenario(choice.panel)
