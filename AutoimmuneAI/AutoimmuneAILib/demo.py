"""The demo case: a small synthetic cohort, a quickly trained bundle, one case end to end.

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
from dataclasses import dataclass
from pathlib import Path

from .labform import readCohortCase
from .logic import (
    AutoimmuneAILogic,
    Job,
    PredictionResult,
    loadScene,
    panelForBundle,
    saveScene,
)
from .process import BackgroundProcess, Progress

DEMO_CASES = 12
DEMO_SEED = 3
DEMO_VOXEL_MM = 3.0


@dataclass
class DemoCase:
    """Where the demo lives and the case it runs."""

    workDir: Path
    manifestPath: Path
    bundlePath: Path
    caseId: str
    imagePath: Path
    serology: dict[str, str]


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
):
    """Generate the demo cohort and train its bundle in a background process, once.

    Reuses what an earlier call left in ``workDir`` (an interrupted training resumes).
    Returns the DemoCase when ``waitForCompletion`` (scripts, tests), else the started Job
    (GUI: polled on the logic's scheduler, ``cancel()`` kills the process tree) whose
    ``result`` is the DemoCase.
    """
    logic = logic or AutoimmuneAILogic()
    workDir = Path(workDir)
    command = [
        logic.python, "-m", "AutoimmuneAILib.demo", workDir,
        "--cases", cases, "--seed", seed, "--epochs", epochs,
    ]  # fmt: skip

    def finish(returncode: int) -> DemoCase:
        if returncode != 0:
            tail = " | ".join(line.strip() for line in proc.lines[-3:] if line.strip())
            raise RuntimeError(f"the demo could not be prepared: {tail or returncode}")
        return readDemoCase(workDir)

    proc = BackgroundProcess(
        command, onLine=onLine, onProgress=onProgress, env=logic.childEnvironment()
    )
    return logic._run(Job(proc, finish, onFinished), waitForCompletion)


def readDemoCase(workDir: str | Path) -> DemoCase:
    """The first case of a prepared demo folder (cohort and bundle must exist)."""
    from autoimmuneai.data.cohort import read_manifest

    workDir = Path(workDir)
    manifest, bundle = workDir / "cohort" / "manifest.csv", workDir / "bundle"
    table = read_manifest(manifest)
    row = table.iloc[0]
    caseId = str(row["case_id"])
    panel = panelForBundle(bundle)
    image = Path(str(row[f"image_{panel.channels[0]}"]))
    image = image if image.is_absolute() else manifest.parent / image
    serology = readCohortCase(manifest, caseId, panel)
    return DemoCase(workDir, manifest, bundle, caseId, image, serology)


def _prepareInProcess(workDir: Path, cases: int, seed: int, epochs: int) -> int:
    """The background process's work: ``synth`` and ``train`` through the command line's main."""
    from autoimmuneai.cli import main

    cohort, bundle = workDir / "cohort", workDir / "bundle"
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        print("Generating the demo cohort (step 1 of 2)", flush=True)
        status = main(
            ["synth", "--out", str(cohort), "--cases", str(cases), "--seed", str(seed),
             "--voxel-size", str(DEMO_VOXEL_MM)]
        )  # fmt: skip
        if status:
            return status
    print("Demo cohort ready", flush=True)
    if not (bundle / "configs" / "metadata.json").is_file():
        print("Training the demo model (step 2 of 2)", flush=True)
        status = main(
            ["train", "--cohort", str(manifest), "--out", str(bundle), "--epochs", str(epochs),
             "--seed", str(seed), "--resume"]
        )  # fmt: skip
        if status:
            return status
    print("Demo model ready", flush=True)
    return 0


def loadDemoVolume(scene, demo: DemoCase, name: str = "AutoimmuneAIDemo FLAIR"):
    """The demo case's FLAIR image as a scalar volume node of ``scene``."""
    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.output.mrml import volume_to_node

    return volume_to_node(scene, load_volume(demo.imagePath), name)


def runDemoScenario(workDir: str | Path, scene=None, logic: AutoimmuneAILogic | None = None):
    """The whole flow on the demo case, checked; returns (PredictionResult, reloaded scene).

    Volume node + serology in -> background ``predict --explain`` -> nodes in the scene ->
    scene saved and reloaded. Raises AssertionError naming the first check that fails.
    """
    logic = logic or AutoimmuneAILogic(scene=scene)
    demo = prepareDemo(workDir, logic=logic)
    volume = loadDemoVolume(logic.scene, demo)
    progress: list[float] = []
    result = logic.process(
        volume,
        demo.serology,
        demo.bundlePath,
        explain=True,
        caseId=demo.caseId,
        outputDir=Path(workDir) / "predict",
        onProgress=lambda p: progress.append(p.fraction),
    )
    checkResult(result, logic.scene, panelForBundle(demo.bundlePath).classes, volume)
    _check(progress and progress[-1] == 1.0, f"progress did not reach 100% ({progress})")
    reloaded = loadScene(saveScene(logic.scene, Path(workDir) / "saved-scene"))
    checkReloaded(logic.scene, reloaded)
    return result, reloaded


def _check(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def checkResult(result: PredictionResult, scene, classes, volume) -> None:
    """The checks of the scenario on one PredictionResult (real values, can fail)."""
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
    if result.quality.available:  # a bundle with the clinical-scan stage: its QC is shown
        _check("registration correlation" in result.quality.text, "no registration quality")
        for role in ("brain_mask", "image_mni"):
            _check(nodes.get(role) is not None and nodes[role].GetScene() is scene, f"no {role}")
        mask = nodes["brain_mask"].GetSegmentation()
        _check(mask.GetNumberOfSegments() == 1, "the brain mask is not one segment")


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
    args = parser.parse_args(argv)
    return _prepareInProcess(args.workdir, args.cases, args.seed, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
