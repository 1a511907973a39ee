"""The demo case: a small synthetic cohort, a quickly trained bundle, one case end to end.

There is one demo per panel that ships a synthetic cohort generator (``demoChoices``: the
panels of the package's panel folder that ``synth --panel`` can generate), each in its own
folder (``demoWorkDir``), so that preparing one never overwrites another. A demo case holds
one image per channel of its panel; ``loadDemoVolumes`` adds one volume node per channel.

One scenario, two runners: the pytest suite (outside Slicer, on ``slicer-core``) and
``AutoimmuneAITest`` (inside Slicer) both call ``runDemoScenario``, so the self-test a user
runs in Slicer checks exactly what CI checks. Generating the cohort and training the demo
model take about a minute, so they run in one background process
(``python -m AutoimmuneAILib.demo WORKDIR``: ``autoimmuneai synth`` then ``train``, the command
line's own code) with progress and Cancel: ``prepareDemo(..., waitForCompletion=False)`` returns
the running Job, which the module's "Load demo case" button and the Sample Data entry both use.
Nothing is downloaded. The demo model is trained for one epoch on a dozen cases: it shows the
flow, not the model's accuracy.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .labform import readCohortCase
from .logic import (
    AutoimmuneAILogic,
    Job,
    PredictionResult,
    bundleMetadata,
    loadScene,
    panelForBundle,
    saveScene,
)
from .process import BackgroundProcess, Progress

DEMO_CASES = 12
DEMO_SEED = 3
DEMO_VOXEL_MM = 3.0
DEMO_NODE_PREFIX = "AutoimmuneAIDemo"


def defaultDemoPanel() -> str:
    """The panel the demo uses when none is named: the package's default panel."""
    from autoimmuneai.data.panel import DEFAULT_PANEL

    return DEFAULT_PANEL


@dataclass(frozen=True)
class DemoChoice:
    """One demo the module offers: a shipped panel that has a synthetic cohort generator."""

    panel: str  # the panel's name (``synth --panel``)
    title: str  # what a list shows: the panel's title


def demoChoices() -> list[DemoChoice]:
    """The panels of the package's panel folder that ``synth`` can generate, the default first.

    Read from the folder and the generator registry, so that a family added there (a panel
    JSON and its generator) is offered without a change here.
    """
    from autoimmuneai.data.panel import load_panel, panels_dir
    from autoimmuneai.synth.families import FAMILIES

    default = defaultDemoPanel()
    shipped = [p.stem for p in panels_dir().glob("*.json") if p.stem in FAMILIES]
    names = sorted(shipped, key=lambda name: (name != default, name))
    choices = []
    for name in names:
        title = load_panel(name).title.strip() or name
        choices.append(DemoChoice(name, title.removesuffix("(demo panel)").strip() or name))
    return choices


def demoWorkDir(root: str | Path, panel: str | None = None) -> Path:
    """The folder of ``panel``'s demo under ``root``: one folder per panel, so that the demos
    of two panels never overwrite each other."""
    return Path(root) / (panel or defaultDemoPanel())


@dataclass
class DemoCase:
    """Where the demo lives and the case it runs (one image per channel of its panel)."""

    workDir: Path
    manifestPath: Path
    bundlePath: Path
    caseId: str
    imagePath: Path  # the reference (first) channel's image
    serology: dict[str, str]
    panel: str = ""
    images: dict[str, Path] = field(default_factory=dict)  # channel -> image, panel order


def prepareDemo(
    workDir: str | Path,
    cases: int = DEMO_CASES,
    seed: int = DEMO_SEED,
    epochs: int = 1,
    logic: AutoimmuneAILogic | None = None,
    waitForCompletion: bool = True,
    onProgress: Callable[[Progress], None] | None = None,
    onLine: Callable[[str], None] | None = None,
    onFinished: Callable[[Job], None] | None = None,
    panel: str | None = None,
):
    """Generate the demo cohort of ``panel`` (default: the package's default panel) and train
    its bundle in a background process, once.

    Reuses what an earlier call left in ``workDir`` (an interrupted training resumes); a
    folder that holds another panel's demo is refused (``demoWorkDir`` gives each panel its
    own). Returns the DemoCase when ``waitForCompletion`` (scripts, tests), else the started
    Job (GUI: polled on the logic's scheduler, ``cancel()`` kills the process tree) whose
    ``result`` is the DemoCase.
    """
    logic = logic or AutoimmuneAILogic()
    workDir = Path(workDir)
    panel = panel or defaultDemoPanel()
    command = [str(a) for a in (
        logic.python, "-m", "AutoimmuneAILib.demo", workDir,
        "--cases", cases, "--seed", seed, "--epochs", epochs, "--panel", panel,
    )]  # fmt: skip

    def finish(returncode: int) -> DemoCase:
        if returncode != 0:
            tail = " | ".join(line.strip() for line in proc.lines[-3:] if line.strip())
            raise RuntimeError(f"the demo could not be prepared: {tail or returncode}")
        return readDemoCase(workDir, panel)

    proc = BackgroundProcess(
        command, onLine=onLine, onProgress=onProgress, env=logic.childEnvironment()
    )
    return logic._run(Job(proc, finish, onFinished), waitForCompletion)


def readDemoCase(workDir: str | Path, panel: str | None = None) -> DemoCase:
    """The first case of a prepared demo folder (cohort and bundle must exist): its image of
    every channel the manifest gives (an optional channel left empty there is left out), its
    lab values and the bundle. With ``panel``, a folder whose bundle has another panel is
    refused."""
    from autoimmuneai.data.cohort import read_manifest
    from autoimmuneai.errors import InputError

    workDir = Path(workDir)
    manifest, bundle = workDir / "cohort" / "manifest.csv", workDir / "bundle"
    table = read_manifest(manifest)
    row = table.iloc[0]
    caseId = str(row["case_id"])
    bundlePanel = panelForBundle(bundle)
    if panel and bundlePanel.name != panel:
        raise InputError(
            f"holds the demo of panel {bundlePanel.name!r}, not {panel!r}", file=workDir
        )
    images: dict[str, Path] = {}
    for channel in bundlePanel.channels:
        text = str(row.get(f"image_{channel}", "") or "").strip()
        if not text:  # an optional channel this case lacks (the reference is never empty)
            continue
        image = Path(text)
        images[channel] = image if image.is_absolute() else manifest.parent / image
    reference = bundlePanel.channels[0]
    if reference not in images:
        raise InputError(f"case {caseId}: no image_{reference}", file=manifest)
    serology = readCohortCase(manifest, caseId, bundlePanel)
    return DemoCase(
        workDir, manifest, bundle, caseId, images[reference], serology, bundlePanel.name, images
    )


def _cohortPanelProblem(manifest: Path, panel) -> str:
    """Why the cohort at ``manifest`` is not one of ``panel`` ("" when it is): its header
    lacks a column the panel needs (an image channel or a lab)."""
    from autoimmuneai.data.cohort import read_manifest

    header = set(read_manifest(manifest).columns)
    needed = [f"image_{c}" for c in panel.channels] + list(panel.feature_names)
    missing = [c for c in needed if c not in header]
    return f"no column {missing[0]!r} of panel {panel.name!r}" if missing else ""


def _prepareInProcess(workDir: Path, cases: int, seed: int, epochs: int, panel: str) -> int:
    """The background process's work: ``synth`` and ``train`` through the command line's main.

    What an earlier run left is reused only when it is of ``panel``: a folder holding another
    panel's cohort or bundle is refused in one line (the demos of two panels never mix)."""
    from autoimmuneai.cli import EXIT_USER_ERROR, main
    from autoimmuneai.data.panel import load_panel

    cohort, bundle = workDir / "cohort", workDir / "bundle"
    manifest = cohort / "manifest.csv"
    wanted = load_panel(panel)
    if manifest.is_file():
        problem = _cohortPanelProblem(manifest, wanted)
        if problem:
            print(f"{manifest}: {problem}: choose another demo folder", flush=True)
            return EXIT_USER_ERROR
    else:
        print("Generating the demo cohort (step 1 of 2)", flush=True)
        status = main(
            ["synth", "--out", str(cohort), "--cases", str(cases), "--seed", str(seed),
             "--voxel-size", str(DEMO_VOXEL_MM), "--panel", panel]
        )  # fmt: skip
        if status:
            return status
    print("Demo cohort ready", flush=True)
    metadata = bundle / "configs" / "metadata.json"
    trained = panelForBundle(bundle).name if metadata.is_file() else wanted.name
    if trained != wanted.name:
        print(f"{bundle}: a bundle of panel {trained!r}: choose another demo folder", flush=True)
        return EXIT_USER_ERROR
    if not metadata.is_file():
        print("Training the demo model (step 2 of 2)", flush=True)
        status = main(
            ["train", "--cohort", str(manifest), "--out", str(bundle), "--epochs", str(epochs),
             "--seed", str(seed), "--resume", "--panel", panel]
        )  # fmt: skip
        if status:
            return status
    print("Demo model ready", flush=True)
    return 0


def loadDemoVolumes(scene, demo: DemoCase, prefix: str = DEMO_NODE_PREFIX) -> dict:
    """The demo case's images as scalar volume nodes of ``scene``, one per channel it has,
    named by the channel ("AutoimmuneAIDemo FLAIR"); returns channel -> node in panel order
    (the mapping ``logic.process`` takes; the first entry is the reference channel)."""
    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.output.mrml import volume_to_node

    images = demo.images or {_referenceChannel(demo): demo.imagePath}
    return {
        channel: volume_to_node(scene, load_volume(path), f"{prefix} {_channelName(channel)}")
        for channel, path in images.items()
    }


def loadDemoVolume(scene, demo: DemoCase, name: str | None = None):
    """The demo case's reference-channel image (e.g. FLAIR) alone as a scalar volume node."""
    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.output.mrml import volume_to_node

    channel = _referenceChannel(demo)
    name = name or f"{DEMO_NODE_PREFIX} {_channelName(channel)}"
    return volume_to_node(scene, load_volume(demo.imagePath), name)


def _referenceChannel(demo: DemoCase) -> str:
    return next(iter(demo.images)) if demo.images else panelForBundle(demo.bundlePath).channels[0]


def _channelName(channel: str) -> str:
    """How a node name shows a channel: its selector's label without "volume" ("T1GD")."""
    return channel.upper().replace("_", " ")


def runDemoScenario(
    workDir: str | Path,
    scene=None,
    logic: AutoimmuneAILogic | None = None,
    panel: str | None = None,
):
    """The whole flow on ``panel``'s demo case, checked; returns (PredictionResult, reloaded
    scene).

    Volume node(s) + serology in -> background ``predict --explain`` -> nodes in the scene ->
    scene saved and reloaded. A single-channel panel hands over its one node (the call such a
    panel always had), a multi-channel panel the mapping channel -> node. Raises
    AssertionError naming the first check that fails.
    """
    logic = logic or AutoimmuneAILogic(scene=scene)
    demo = prepareDemo(workDir, logic=logic, panel=panel)
    volumes = loadDemoVolumes(logic.scene, demo)
    reference = next(iter(volumes.values()))
    bundlePanel = panelForBundle(demo.bundlePath)
    progress: list[float | None] = []
    result = logic.process(
        volumes if len(bundlePanel.channels) > 1 else reference,
        demo.serology,
        demo.bundlePath,
        explain=True,
        caseId=demo.caseId,
        outputDir=Path(workDir) / "predict",
        onProgress=lambda p: progress.append(p.fraction),
    )
    stage = hasClinicalStage(demo.bundlePath)
    checkResult(result, logic.scene, bundlePanel.classes, reference, clinicalStage=stage)
    checkChannels(result, logic.scene, volumes, bundlePanel)
    _check(progress and progress[-1] == 1.0, f"progress did not reach 100% ({progress})")
    reloaded = loadScene(saveScene(logic.scene, Path(workDir) / "saved-scene"))
    checkReloaded(logic.scene, reloaded)
    return result, reloaded


def hasClinicalStage(bundlePath: str | Path) -> bool:
    """Whether the bundle's preprocessing is the clinical-scan stage (registration to the
    template, brain mask), read from its metadata as the predictor reads it."""
    from autoimmuneai.preprocess.pipeline import Preprocessor, preprocessing_from_dict

    grid = (bundleMetadata(bundlePath).get("preprocessing") or {}).get("grid") or {}
    return isinstance(preprocessing_from_dict(grid), Preprocessor)


def _check(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def checkResult(result: PredictionResult, scene, classes, volume, *, clinicalStage: bool) -> None:
    """The checks of the scenario on one PredictionResult (real values, can fail).

    ``clinicalStage``: whether the bundle has the clinical-scan stage (``hasClinicalStage``),
    whose quality figures and nodes must then be shown (a multi-channel case without it still
    has a quality block: its channels' alignment).
    """
    probs = result.probabilities
    _check(list(probs) == list(classes), f"classes {list(probs)} != bundle classes {list(classes)}")
    _check(all(0.0 <= p <= 1.0 for p in probs.values()), f"probabilities out of [0, 1]: {probs}")
    _check(
        math.isclose(sum(probs.values()), 1.0, abs_tol=1e-3),
        f"probabilities sum {sum(probs.values())}",
    )
    _check(
        probs[result.predicted] >= max(probs.values()) - 1e-5,  # values are rounded in the JSON
        "predicted is not the most probable class",
    )
    _check(result.predictionSet and set(result.predictionSet) <= set(classes), "bad prediction set")
    _check(result.riskGroup != "", "no risk group")
    nodes = result.nodes
    for role in ("segmentation", "attribution", "probability_chart", "survival_chart", "lab_chart"):
        _check(nodes.get(role) is not None, f"no {role} node")
        _check(nodes[role].GetScene() is scene, f"{role} node is not in the scene")
    _check(nodes["image"] is volume, "the input volume was not reused as the image")
    _check(volume.GetDisplayNode() is not None, "the input volume has no display node")
    survivalChart = nodes["survival_chart"]
    series = survivalChart.GetNthPlotSeriesNode(0)
    _check(
        series.GetPlotType() == series.PlotTypeScatter and series.GetXColumnName() == "time",
        "the survival curve is not drawn against its months column",
    )
    _check(not survivalChart.GetYAxisRangeAuto(), "the survival chart's y range is automatic")
    segmentation = nodes["segmentation"].GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    _check(names, "the evidence segmentation has no segments")
    _check(all(n and not n.startswith("Segment_") for n in names), f"unnamed segments: {names}")
    survival = nodes["survival"].GetTable()
    _check(survival.GetNumberOfRows() >= 2, "survival curve has fewer than 2 points")
    values = [survival.GetValue(i, 1).ToDouble() for i in range(survival.GetNumberOfRows())]
    _check(all(a >= b - 1e-9 for a, b in zip(values, values[1:])), "survival curve increases")
    chart = nodes["probability_chart"]
    _check(chart.GetNumberOfPlotSeriesNodes() >= 1, "probability chart has no series")
    lab = nodes["lab_contributions"].GetTable()
    _check(lab.GetNumberOfRows() >= 1, "no lab contributions")
    if clinicalStage:  # a bundle with the clinical-scan stage: its QC is shown
        _check(result.quality.available, "no quality report from the clinical-scan stage")
        _check("registration correlation" in result.quality.text, "no registration quality")
        for role in ("brain_mask", "image_mni"):
            _check(nodes.get(role) is not None and nodes[role].GetScene() is scene, f"no {role}")
        mask = nodes["brain_mask"].GetSegmentation()
        _check(mask.GetNumberOfSegments() == 1, "the brain mask is not one segment")


def checkChannels(result: PredictionResult, scene, volumes: dict, panel) -> None:
    """The channel checks of the scenario: one node per channel of the case, each in the
    scene and named by its channel, the results on the reference channel's geometry."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    _check(volumes and set(volumes) <= set(panel.channels), f"channels {list(volumes)}")
    reference = panel.channels[0]
    _check(next(iter(volumes)) == reference, f"the first node is not the {reference} channel")
    for channel, node in volumes.items():
        _check(node is not None and node.GetScene() is scene, f"{channel} node is not in the scene")
        _check(
            node.GetName().endswith(_channelName(channel)),
            f"{channel} node named {node.GetName()!r}",
        )
    image = volumes[reference]
    _check(result.nodes.get("image") is image, "the results are not on the reference volume")
    attribution = result.nodes["attribution"]
    dims, expected = (
        attribution.GetImageData().GetDimensions(),
        image.GetImageData().GetDimensions(),
    )
    _check(dims == expected, f"attribution grid {dims} != {reference} grid {expected}")
    a, b = vtkMatrix4x4(), vtkMatrix4x4()
    attribution.GetIJKToRASMatrix(a)
    image.GetIJKToRASMatrix(b)
    offset = max(abs(a.GetElement(i, j) - b.GetElement(i, j)) for i in range(4) for j in range(4))
    _check(
        offset < 1e-3, f"attribution IJK-to-RAS differs from the {reference} volume's by {offset}"
    )
    segmentation = result.nodes["segmentation"]
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    _check(segmentation.GetNodeReference(role) is image, "the evidence is not on the reference")
    shares = (result.prediction.get("explanation") or {}).get("channel_share") or {}
    if len(panel.channels) > 1:
        _check(
            set(volumes) <= set(shares), f"no attribution share for {set(volumes) - set(shares)}"
        )


def checkReloaded(scene, reloaded) -> None:
    """The reloaded scene holds the same data nodes (same names, same segment count)."""
    for cls in (
        "vtkMRMLScalarVolumeNode",
        "vtkMRMLSegmentationNode",
        "vtkMRMLTableNode",
        "vtkMRMLPlotChartNode",
    ):
        before = sorted(_names(scene, cls))
        after = sorted(_names(reloaded, cls))
        _check(before == after, f"{cls}: saved {before}, reloaded {after}")
    for i in range(reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = reloaded.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        original = scene.GetFirstNodeByName(node.GetName())
        _check(
            node.GetSegmentation().GetNumberOfSegments()
            == original.GetSegmentation().GetNumberOfSegments(),
            f"segments of {node.GetName()} changed on reload",
        )


def _names(scene, cls: str) -> list[str]:
    return [
        scene.GetNthNodeByClass(i, cls).GetName() for i in range(scene.GetNumberOfNodesByClass(cls))
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m AutoimmuneAILib.demo WORKDIR``: prepare the demo (what the Job runs)."""
    parser = argparse.ArgumentParser(prog="AutoimmuneAILib.demo", description=main.__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--cases", type=int, default=DEMO_CASES)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--panel", default=None, help="the demo's panel (default panel if unset)")
    args = parser.parse_args(argv)
    panel = args.panel or defaultDemoPanel()
    return _prepareInProcess(args.workdir, args.cases, args.seed, args.epochs, panel)


if __name__ == "__main__":
    sys.exit(main())
