"""AutoimmuneAILogic: one case or a whole cohort through the ``autoimmuneai`` command line.

The Logic works without any GUI (Slicer's Python console, ``Slicer --no-main-window
--python-script``, or plain Python on the ``slicer-core`` wheel) and without Qt. The model runs
in a background process (``<python> -m autoimmuneai predict``), the same code a researcher
runs on the command line, so the results are identical and the GUI never freezes; the
results are then imported into the MRML scene.

Usage (Slicer Python console)::

    from AutoimmuneAILib.logic import AutoimmuneAILogic
    logic = AutoimmuneAILogic()
    result = logic.process(getNode("FLAIR"), {"lab_a": "1:640", "lab_b": "neg"},
                           "/data/bundle", explain=True)
    result.predicted, result.predictionSet, result.nodes["segmentation"]
    print(result.quality.text)  # registration and brain-mask quality, in words
    result.nodes["brain_mask"], result.nodes["image_mni"]  # clinical-scan bundles only
    # a multi-channel panel: one volume per channel (optional ones may be None or left out)
    result = logic.process({"flair": getNode("FLAIR"), "t1": getNode("T1"), "t1gd": None},
                           {"lab_a": "12"}, "/data/bundle")
    summary = logic.processCohort("/data/cohort.csv", "/data/bundle", "/data/out")
    summary.nOk, summary.nFailed, summary.errorsPath
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import registerPackage
from .labform import channelVolumes, requireValid
from .process import CANCELLED, BackgroundProcess, Progress
from .quality import QualityReport, importQualityNodes, otherWarnings, qualityReport

registerPackage()

from autoimmuneai.contracts import (  # noqa: E402
    CASE_FILES,
    ERRORS_CSV,
    PREDICTIONS_CSV,
    Prediction,
    survival_of,
)
from autoimmuneai.data.panel import Panel, load_panel, panel_from_dict  # noqa: E402
from autoimmuneai.errors import BundleError, InputError  # noqa: E402
from autoimmuneai.explain.methods import METHODS  # noqa: E402, F401 (the settings' choices)

log = logging.getLogger("AutoimmuneAI")

EXIT_PARTIAL = 3  # the command line's status when some cases failed
CHILD_ENTRY = (
    "AutoimmuneAILib.cli"  # the child's entry point: autoimmuneai's CLI, inside Slicer too
)

try:  # Inside Slicer: the conventional base class (parameter node, module name).
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # slicer-core wheel: no Qt, no scripted-module framework
    _LogicBase = object


class ProcessingCancelled(RuntimeError):
    """The user pressed Cancel; nothing was imported."""


@dataclass
class PredictionResult:
    """One case's prediction (``prediction.json`` as written) and the nodes made from it."""

    caseId: str
    caseDir: Path
    prediction: Prediction
    nodes: dict = field(default_factory=dict)  # role -> vtkMRMLNode

    @property
    def classes(self) -> list[str]:
        return list(self.prediction["classes"])

    @property
    def probabilities(self) -> dict[str, float]:
        return {c: float(p) for c, p in self.prediction["probabilities"].items()}

    @property
    def predicted(self) -> str:
        return str(self.prediction["predicted"])

    @property
    def predictionSet(self) -> list[str]:
        return list(self.prediction.get("prediction_set", []))

    @property
    def riskScore(self) -> float | None:
        value = self.prediction.get("risk_score")
        return None if value is None else float(value)

    @property
    def riskGroup(self) -> str:
        return str(self.prediction.get("risk_group", ""))

    @property
    def survival(self) -> tuple[list[float], list[float]]:
        """(months, progression-free probability) as written in ``prediction.json``."""
        return survival_of(self.prediction)

    @property
    def modalityShare(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.prediction.get("modality_share") or {}).items()}

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.prediction.get("warnings", [])]

    @property
    def quality(self) -> QualityReport:
        """The registration and brain-mask quality (``prediction.json``'s ``quality``)."""
        return qualityReport(self.prediction)

    @property
    def otherWarnings(self) -> list[str]:
        """The warnings that ``quality`` does not already show (image or labs unlike the
        training data, a missing channel, an attribution that did not converge)."""
        return otherWarnings(self.prediction)


@dataclass
class CohortSummary:
    """What a cohort run produced: counts, the output files and the failed cases."""

    outputDir: Path
    nOk: int
    nFailed: int
    predictionsPath: Path
    errorsPath: Path
    errors: list[dict] = field(default_factory=list)  # rows of errors.csv
    returncode: int = 0


class Job:
    """A running background command and what to do with its outcome.

    ``poll()`` (GUI timer) or ``wait()`` (scripts) drive it; ``result`` holds what ``finish``
    returned, ``error`` the exception it raised. ``cancel()`` kills the process tree.
    """

    def __init__(
        self,
        process: BackgroundProcess,
        finish: Callable[[int], object],
        onFinished: Callable[[Job], None] | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.process = process
        self._finish = finish
        self._cleanup = cleanup
        self.onFinished = onFinished
        self.result: object = None
        self.error: BaseException | None = None
        self.done = False

    def start(self) -> Job:
        self.process.start()
        return self

    def poll(self) -> bool:
        """Deliver output, and once the process ended import its results; True when done."""
        if self.done:
            return True
        if not self.process.poll():
            return False
        try:
            if self.process.returncode == CANCELLED:
                raise ProcessingCancelled("cancelled by the user")
            self.result = self._finish(int(self.process.returncode))
        except BaseException as exc:  # handed to the caller through .error / wait()
            self.error = exc
        finally:
            self.done = True
            if self._cleanup:
                self._cleanup()
        if self.onFinished:
            self.onFinished(self)
        return True

    def wait(self, timeout: float | None = None):
        """Block until done; return the result or raise the error."""
        self.process.wait(timeout=timeout)
        self.poll()
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        self.process.cancel()


class AutoimmuneAILogic(_LogicBase):
    """Predict, explain and import results for one case; batch a whole cohort."""

    def __init__(
        self,
        scene=None,
        python: str | None = None,
        scheduler: Callable[[int, Callable[[], None]], None] | None = None,
    ) -> None:
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        if scene is None:
            import slicer

            scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene = scene
        self.python = python or pythonExecutable()
        self.scheduler = scheduler  # e.g. qt.QTimer.singleShot: polls jobs started with wait=False
        self.pollIntervalMs = 200

    # -- one case ------------------------------------------------------------------------
    def process(
        self,
        volumeNode,
        serology: dict,
        bundlePath: str | Path,
        explain: bool = True,
        waitForCompletion: bool = True,
        caseId: str = "case",
        targetClass: str | None = None,
        method: str | None = None,
        alpha: float | None = None,
        bands: str | None = None,
        outputDir: str | Path | None = None,
        importNodes: bool = True,
        qualityNodes: bool = True,
        onProgress: Callable[[Progress], None] | None = None,
        onLine: Callable[[str], None] | None = None,
        onFinished: Callable[[Job], None] | None = None,
    ):
        """Predict (and explain) one case: its volume(s) plus serology strings by feature name.

        ``volumeNode`` is the image of the panel's first channel (enough for a single-channel
        panel), or a mapping channel name -> volume node with one entry per panel channel
        (an optional channel may be None or absent: the model reads it as not acquired).
        Results (attribution, evidence segmentation) are in the first channel's geometry.
        With ``qualityNodes`` (and an explanation, from a bundle with the clinical-scan
        stage) the brain mask comes in as a segment on that geometry and the image in
        template space as a volume (``quality.importQualityNodes``).
        Returns a PredictionResult when ``waitForCompletion`` (scripts), else a started Job
        whose ``result`` is the PredictionResult once ``poll()`` returns True (GUI). Inputs are
        checked here first, so a typo in a lab value or a missing required channel is
        reported before anything runs.
        """
        bundle = checkBundle(bundlePath)
        panel = panelForBundle(bundle)
        serology = {str(k): ("" if v is None else str(v)) for k, v in (serology or {}).items()}
        requireValid(serology, panel)
        if targetClass and targetClass not in panel.classes:
            raise InputError(
                f"{targetClass!r} is not a class of the bundle ({', '.join(panel.classes)})"
            )
        volumes = channelVolumes(volumeNode, panel)
        reference = volumes[panel.channels[0]]
        safeId = _safeCaseId(caseId)

        work = Path(tempfile.mkdtemp(prefix="AutoimmuneAI-"))
        out = Path(outputDir) if outputDir else work / "out"
        manifest = writeCaseInputs(work, safeId, volumes, serology, panel)
        command = self.predictCommand(
            bundle,
            manifest,
            out,
            explain,
            "--no-snapshot",  # the module shows the case in Slicer's own views
            *(["--target", targetClass] if targetClass else []),
            *(["--method", method] if method else []),
            *_option("--alpha", alpha),
            *_option("--bands", bands),
        )

        def finish(returncode: int) -> PredictionResult:
            caseDir = out / safeId
            predictionPath = caseDir / CASE_FILES["prediction"]
            if returncode not in (0, EXIT_PARTIAL) or not predictionPath.is_file():
                raise InputError(_failureReason(out, safeId, proc, returncode))
            prediction = json.loads(predictionPath.read_text(encoding="utf-8"))
            nodes = (
                self.importCase(caseDir, prediction, reference, qualityNodes=qualityNodes)
                if importNodes
                else {}
            )
            return PredictionResult(safeId, caseDir, prediction, nodes)

        def cleanup() -> None:
            for path in (manifest, work / "images"):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                    missing_ok=True
                )

        proc = BackgroundProcess(
            command, onLine=onLine or _logLine, onProgress=onProgress, env=self.childEnvironment()
        )
        return self._run(Job(proc, finish, onFinished, cleanup), waitForCompletion)

    def whatIf(
        self,
        volumeNode,
        serology: dict,
        bundlePath: str | Path,
        feature: str,
        newValue: str,
        waitForCompletion: bool = True,
        onFinished: Callable[[Job], None] | None = None,
    ):
        """Re-predict with one lab value changed (no explanation, no nodes): the new probabilities.

        ``volumeNode`` as for :meth:`process` (one node, or a mapping channel -> node)."""
        changed = dict(serology)
        changed[feature] = newValue
        return self.process(
            volumeNode,
            changed,
            bundlePath,
            explain=False,
            importNodes=False,
            waitForCompletion=waitForCompletion,
            caseId="whatif",
            onFinished=onFinished,
        )

    def importCase(
        self,
        caseDir: Path,
        prediction: Prediction,
        inputVolumeNode=None,
        qualityNodes: bool = True,
    ) -> dict:
        """Load a case's output files into the scene; return the nodes by role.

        With an explanation (``scene.mrml`` present) ``autoimmuneai.output.mrml.import_case_outputs``
        loads image, attribution, evidence segmentation, tables and charts; without one,
        ``add_result_nodes`` builds the same tables and charts from ``prediction.json``. When
        the input was already a node of this scene, the reloaded copy of it is dropped and the
        evidence segmentation refers to the user's own volume (same physical space).
        With ``qualityNodes`` the brain mask and the template-space image written by the
        clinical-scan stage are added too (roles ``brain_mask``, ``image_mni``), the mask on
        the same image's geometry.
        """
        from autoimmuneai.output.mrml import add_result_nodes, import_case_outputs

        caseDir = Path(caseDir)
        prefix = str(prediction.get("case_id", caseDir.name))
        if (caseDir / CASE_FILES["scene"]).is_file():
            nodes = dict(import_case_outputs(self.scene, caseDir))
        else:
            nodes = add_result_nodes(self.scene, prediction, prefix)
        copy = nodes.get("image")
        if (
            copy is not None
            and inputVolumeNode is not None
            and inputVolumeNode.GetScene() is self.scene
            and copy is not inputVolumeNode
        ):
            segmentation = nodes.get("segmentation")
            if segmentation is not None:
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
                segmentation.SetNodeReferenceID(
                    segmentation.GetReferenceImageGeometryReferenceRole(), inputVolumeNode.GetID()
                )
            self.scene.RemoveNode(copy)
            nodes["image"] = inputVolumeNode
        if qualityNodes:
            named = caseDir.resolve().name  # as import_case_outputs names the evidence nodes
            nodes.update(importQualityNodes(self.scene, caseDir, named, nodes.get("image")))
        return nodes

    # -- a cohort ------------------------------------------------------------------------
    def processCohort(
        self,
        manifestPath: str | Path,
        bundlePath: str | Path,
        outputDir: str | Path,
        explain: bool = True,
        resume: bool = True,
        waitForCompletion: bool = True,
        onProgress: Callable[[Progress], None] | None = None,
        onLine: Callable[[str], None] | None = None,
        onFinished: Callable[[Job], None] | None = None,
    ):
        """Predict every case of a manifest; failing cases go to ``errors.csv``, the run goes on.

        With ``resume`` an interrupted run continues where it stopped. Returns a CohortSummary
        (or a started Job when ``waitForCompletion`` is False).
        """
        manifest = Path(manifestPath)
        if not manifest.is_file():
            raise InputError("manifest not found", file=manifest)
        bundle = checkBundle(bundlePath)
        out = Path(outputDir)
        command = self.predictCommand(
            bundle, manifest, out, explain, *(["--resume"] if resume else [])
        )

        def finish(returncode: int) -> CohortSummary:
            predictions, errors = out / PREDICTIONS_CSV, out / ERRORS_CSV
            if returncode not in (0, EXIT_PARTIAL) and not predictions.is_file():
                raise InputError(_lastLines(proc) or f"predict failed with status {returncode}")
            okRows, errorRows = _readCsv(predictions), _readCsv(errors)
            return CohortSummary(
                out, len(okRows), len(errorRows), predictions, errors, errorRows, returncode
            )

        proc = BackgroundProcess(
            command, onLine=onLine or _logLine, onProgress=onProgress, env=self.childEnvironment()
        )
        return self._run(Job(proc, finish, onFinished), waitForCompletion)

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, job: Job, waitForCompletion: bool):
        job.start()
        if waitForCompletion:
            return job.wait()
        if self.scheduler is not None:

            def tick() -> None:
                if not job.poll():
                    self.scheduler(self.pollIntervalMs, tick)

            self.scheduler(self.pollIntervalMs, tick)
        return job

    def cliCommand(self, *args) -> list[str]:
        """``<python> -m AutoimmuneAILib.cli ARGS``: ``autoimmuneai ARGS`` through the module's runner.

        The runner uses an installed ``autoimmuneai`` when there is one, else the extension's
        own ``Logic/`` folder, so the child runs the same entry point inside Slicer and out.
        """
        return [self.python, "-m", CHILD_ENTRY, *[str(a) for a in args]]

    def predictCommand(self, bundle, manifest, out, explain: bool, *options) -> list[str]:
        """``autoimmuneai predict`` on ``manifest`` into ``out``, plus ``options``."""
        explainFlag = ["--explain"] if explain else []
        return self.cliCommand(
            "predict",
            "--bundle",
            bundle,
            "--cohort",
            manifest,
            "--out",
            out,
            *explainFlag,
            *options,
        )

    def childEnvironment(self) -> dict[str, str]:
        """The environment of the child: this one, plus the module folder on PYTHONPATH."""
        env = dict(os.environ)
        try:  # inside Slicer: the environment Slicer started with, as launchConsoleProcess does
            import slicer

            if hasattr(slicer, "app"):
                env = dict(slicer.util.startupEnvironment())
        except ImportError:
            pass
        moduleDir = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


# -- helpers (plain functions, used by the widget and the tests) ------------------------------
def pythonExecutable() -> str:
    """The interpreter for the child: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    try:
        import slicer

        if hasattr(slicer, "app"):
            found = shutil.which("PythonSlicer")
            if found:
                return found
    except ImportError:
        pass
    return sys.executable


def _option(option: str, value) -> list[str]:
    """``[option, value]`` when a value is set, else nothing (the bundle's default applies)."""
    if value is None or value == "":
        return []
    return [option, str(value)]


def checkBundle(bundlePath: str | Path) -> Path:
    """The bundle folder, refused early with a clear reason when it is not one."""
    if not bundlePath or not str(bundlePath).strip():
        raise BundleError("no model bundle selected")
    path = Path(bundlePath)
    if path.is_file() and path.name == "metadata.json":
        path = path.parent.parent
    if not (path / "configs" / "metadata.json").is_file():
        raise BundleError("not a model bundle (no configs/metadata.json)", file=path)
    return path


def bundleMetadata(bundlePath: str | Path) -> dict:
    path = checkBundle(bundlePath) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"metadata is not valid JSON ({exc})", file=path) from None


def panelForBundle(bundlePath: str | Path) -> Panel:
    """The panel a bundle was trained on (stored in its metadata, or named there)."""
    meta = bundleMetadata(bundlePath)
    panel = meta.get("panel")
    if isinstance(panel, dict):
        return panel_from_dict(panel, source=f"{bundlePath} (panel)")
    if isinstance(panel, str) and panel:
        return load_panel(panel)
    raise BundleError(
        "metadata names no panel", file=Path(bundlePath) / "configs" / "metadata.json"
    )


def writeCaseInputs(workDir: Path, caseId: str, volumeNode, serology: dict, panel: Panel) -> Path:
    """Write the volume(s) as NIfTI and a one-row manifest in the cohort contract; return it.

    ``volumeNode`` is a volume node (the panel's first channel), or a mapping channel -> node
    (checked by ``labform.channelVolumes``); each channel with a node becomes the manifest's
    ``image_<channel>``, an optional channel without one is left blank (the model sees it as
    missing).
    """
    from autoimmuneai.atomic import write_csv
    from autoimmuneai.data.imaging import save_volume
    from autoimmuneai.output.mrml import node_to_volume

    nodes = channelVolumes(volumeNode, panel)
    row = {"case_id": caseId}
    for channel in panel.channels:
        node = nodes.get(channel)
        if node is None:  # an optional channel not acquired
            row[f"image_{channel}"] = ""
            continue
        path = workDir / "images" / f"{caseId}_{channel}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_volume(node_to_volume(node), path)
        row[f"image_{channel}"] = os.path.relpath(path, workDir)
    for feature in panel.features:
        row[feature.name] = serology.get(feature.name, "")
    manifest = workDir / "manifest.csv"
    write_csv(manifest, [row], list(row))  # spreadsheet-safe; the package reads it back exactly
    return manifest


def saveScene(scene, directory: str | Path, name: str = "scene.mrml") -> Path:
    """Write a copy of the scene: every storable node next to a ``.mrml`` file in ``directory``.

    Works without ``slicer.app``. The scene's URL and root directory and the file names of
    its storage nodes are put back afterwards, so saving a copy (the self-test does) never
    changes where the user's scene and data are saved.
    """
    from autoimmuneai.output.mrml import attach_storage_node

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    previous: list[tuple[object, str]] = []  # (storage node, its file name before)
    url, root = scene.GetURL(), scene.GetRootDirectory()
    path = directory / name
    try:
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
            if node.GetHideFromEditors() and not node.IsA("vtkMRMLTableNode"):
                continue
            stem = _safeCaseId(node.GetName() or node.GetID())
            while stem in used:
                stem += "_"
            used.add(stem)
            before = node.GetStorageNode()
            oldName = (before.GetFileName() or "") if before is not None else ""
            storage = attach_storage_node(node, directory / stem)
            if storage is None:
                continue
            previous.append((storage, oldName))
            extension = storage.GetDefaultWriteFileExtension()
            storage.SetFileName(str(directory / f"{stem}.{extension}"))
            if not storage.WriteData(node):
                raise OSError(f"could not write {node.GetName()} to {storage.GetFileName()}")
        scene.SetRootDirectory(str(directory))
        scene.SetURL(str(path))
        if not scene.Commit():
            raise OSError(f"could not write the scene {path}")
    finally:
        scene.SetURL(url or "")
        scene.SetRootDirectory(root or "")
        for storage, oldName in previous:
            storage.SetFileName(oldName)
    return path


def loadScene(path: str | Path):
    """A new MRML scene read from ``path`` (with the data files it references)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(path))
    if not scene.Connect():
        raise OSError(f"could not read the scene {path}")
    return scene


def probabilityChanges(before: dict, after: dict) -> list[tuple[str, float, float, float]]:
    """(class, before, after, after - before) for a what-if comparison, largest change first."""
    pb, pa = before["probabilities"], after["probabilities"]
    rows = [(c, float(pb[c]), float(pa[c]), float(pa[c]) - float(pb[c])) for c in pb]
    rows.sort(key=lambda r: -abs(r[3]))
    return rows


def _safeCaseId(caseId: str) -> str:
    """The package's one case-id slug rule (imported here, not copied)."""
    from autoimmuneai.data.cohort import case_id_slug

    return case_id_slug(caseId)


def _readCsv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _lastLines(proc: BackgroundProcess, n: int = 3) -> str:
    return " | ".join(line.strip() for line in proc.lines[-n:] if line.strip())


def _failureReason(out: Path, caseId: str, proc: BackgroundProcess, returncode: int) -> str:
    """The reason a case failed: its errors.csv row, else the end of the command's output."""
    for row in _readCsv(out / "errors.csv"):
        if row.get("case_id") in (caseId, None) and (row.get("reason") or row.get("error")):
            return str(row.get("reason") or row.get("error"))
    return _lastLines(proc) or f"predict failed with status {returncode}"


def _logLine(line: str) -> None:
    log.info(line)
