"""The demo case: a small synthetic cohort, a quickly trained bundle, one case end to end.

One scenario, two runners: the pytest suite (outside Slicer, on ``slicer-core``) and
``AutoimmuneAITest`` (inside Slicer) both call ``runDemoScenario``, so the self-test a user
runs in Slicer checks exactly what CI checks. The Sample Data entry uses ``prepareDemo`` to
generate the demo volume on demand (nothing is downloaded). The demo model is trained for
one epoch on a dozen cases: it shows the flow, not the model's accuracy.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .labform import readCohortCase
from .logic import AutoimmuneAILogic, PredictionResult, loadScene, panelForBundle, saveScene

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
    python: str | None = None,
    train: bool = True,
) -> DemoCase:
    """Generate the cohort (``autoimmuneai synth``) and train a bundle (``train``) once.

    Reuses what an earlier call left in ``workDir``.
    """
    logic = AutoimmuneAILogic(python=python)
    workDir = Path(workDir)
    cohort, bundle = workDir / "cohort", workDir / "bundle"
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        _run(
            logic.cliCommand(
                "synth", "--out", cohort, "--cases", cases, "--seed", seed,
                "--voxel-size", DEMO_VOXEL_MM,
            ),
            logic,
        )  # fmt: skip
    if train and not (bundle / "configs" / "metadata.json").is_file():
        _run(
            logic.cliCommand(
                "train", "--cohort", manifest, "--out", bundle, "--epochs", epochs, "--seed", seed
            ),
            logic,
        )
    from autoimmuneai.data.cohort import read_manifest
    from autoimmuneai.data.panel import load_panel

    table = read_manifest(manifest)
    row = table.iloc[0]
    caseId = str(row["case_id"])
    panel = panelForBundle(bundle) if train else load_panel()
    image = Path(str(row[f"image_{panel.channels[0]}"]))
    image = image if image.is_absolute() else manifest.parent / image
    serology = readCohortCase(manifest, caseId, panel)
    return DemoCase(workDir, manifest, bundle, caseId, image, serology)


def _run(command: list[str], logic: AutoimmuneAILogic) -> None:
    done = subprocess.run(
        command,
        env=logic.childEnvironment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command[2:4])} failed: " + " | ".join(tail))


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
    demo = prepareDemo(workDir)
    logic = logic or AutoimmuneAILogic(scene=scene)
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
