"""The module's demo of a multi-channel panel (``ms_course``): one volume node per channel,
through the logic into the package and back, as "Load demo case" and ``AutoimmuneAITest`` run it.

The demo folder is made by the package's own functions (the ``ms_course`` generator and
``train_bundle``), smaller than the module's demo (8 cases instead of 12, brain-only images at
4 mm instead of whole-head scans, a small network on a coarse grid, one epoch): the module's
demo takes minutes to prepare (whole-head rendering and the clinical-scan stage), this one
well under a minute on 2 cores. ``prepareDemo`` then finds it ready in its background
process, as it finds a demo prepared earlier. Everything else is the module's path: ``runDemoScenario`` with the child in
the ``PythonSlicer`` stand-in, real MRML nodes, the scene saved and reloaded.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "AutoimmuneAI"
sys.path.insert(0, str(MODULE_DIR))  # AutoimmuneAILib, as Slicer puts the module folder on the path

from AutoimmuneAILib.demo import (  # noqa: E402
    DEMO_SEED,
    checkChannels,
    demoChoices,
    demoWorkDir,
    loadDemoVolumes,
    prepareDemo,
    readDemoCase,
    runDemoScenario,
)
from pythonslicer_env import make_pythonslicer  # noqa: E402

from autoimmuneai.data.panel import DEFAULT_PANEL, load_panel, panels_dir  # noqa: E402
from autoimmuneai.errors import InputError  # noqa: E402

slicer = pytest.importorskip("slicer")

PANEL = "ms_course"
MS = load_panel(PANEL)
TEST_CASES = 8  # the demo's 12 cost seconds of generation and training the test does not need


def demo_folder(test):
    """Marks a test that needs the prepared demo folder: slow, and kept on one pytest-xdist
    worker (with ``--dist loadgroup``) so that the folder is made once."""
    return pytest.mark.slow(pytest.mark.xdist_group("slicer_demo_panels")(test))


def test_the_demos_offered_are_the_shipped_panels_with_a_generator(tmp_path):
    from autoimmuneai.synth.families import FAMILIES

    choices = demoChoices()
    shipped = {p.stem for p in panels_dir().glob("*.json")}
    assert [c.panel for c in choices][0] == DEFAULT_PANEL  # "Load demo case" keeps its default
    assert {c.panel for c in choices} == shipped & set(FAMILIES)
    assert {DEFAULT_PANEL, PANEL} <= {c.panel for c in choices}
    titles = {c.panel: c.title for c in choices}
    assert titles[PANEL] == "Multiple sclerosis course"  # the panel's title, without "(demo panel)"
    # one folder per panel: preparing one demo never overwrites another
    folders = {demoWorkDir(tmp_path, c.panel) for c in choices}
    assert len(folders) == len(choices) and demoWorkDir(tmp_path) == tmp_path / DEFAULT_PANEL


@pytest.fixture(scope="module")
def python_slicer(tmp_path_factory) -> str:
    return str(make_pythonslicer(tmp_path_factory.mktemp("pythonslicer")))


@pytest.fixture(scope="module")
def ms_demo(tmp_path_factory):
    """A prepared ``ms_course`` demo folder (cohort + bundle) with the demo's seed, smaller."""
    from autoimmuneai.synth.families import generator_for
    from autoimmuneai.training.trainer import TrainConfig, train_bundle

    started = time.monotonic()
    work = demoWorkDir(tmp_path_factory.mktemp("demos"), PANEL)
    manifest = generator_for(PANEL)(
        work / "cohort", TEST_CASES, DEMO_SEED, voxel_size=4.0, workers=2, progress=False,
        anatomy="brain",
    )  # fmt: skip
    cfg = TrainConfig(
        epochs=1, image_only_epochs=1, batch_size=8, patience=1, seed=DEMO_SEED,
        channels=(4, 8), strides=(2, 2), grid_shape=(32, 40, 32), grid_spacing=5.0,
        panel=PANEL, preprocessing="model_grid",
    )  # fmt: skip
    train_bundle(manifest, work / "bundle", cfg, progress=False)
    print(f"ms_course demo folder prepared in {time.monotonic() - started:.1f} s")
    with open(manifest, newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    return work, first


@pytest.fixture(scope="module")
def ms_run(ms_demo, python_slicer):
    """``runDemoScenario`` on the ms_course demo, the child in PythonSlicer's namespace."""
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    work, first = ms_demo
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene(), python=python_slicer)
    started = time.monotonic()
    result, reloaded = runDemoScenario(work, logic=logic, panel=PANEL)
    print(f"ms_course demo scenario ran in {time.monotonic() - started:.1f} s")
    return work, first, result, reloaded, logic


@demo_folder
def test_the_demo_case_has_one_volume_node_per_channel_and_results_on_the_reference(ms_run):
    work, first, result, reloaded, logic = ms_run
    given = [c for c in MS.channels if first[f"image_{c}"]]
    assert len(given) >= 2  # the demo's first case is multi-contrast: the mapping is what runs
    scene = logic.scene
    names = {c: f"AutoimmuneAIDemo {c.upper()}" for c in given}
    for channel, name in names.items():
        node = scene.GetFirstNodeByName(name)
        assert node is not None and node.GetDisplayNode() is not None, channel
        assert reloaded.GetFirstNodeByName(name) is not None, f"{name} not saved with the scene"
    assert result.nodes["image"] is scene.GetFirstNodeByName(names["flair"])
    assert result.predicted in MS.classes and result.classes == list(MS.classes)
    prediction = result.prediction
    # every channel the case has reached the model: no "not acquired" warning for them
    for channel in given:
        assert not any(f"no {channel} image" in w for w in prediction["warnings"]), channel
    shares = prediction["explanation"]["channel_share"]
    assert set(given) <= set(shares) and abs(sum(shares.values()) - 1.0) < 1e-3
    assert (work / "predict" / result.caseId / "prediction.json").is_file()


@demo_folder
def test_the_channel_checks_fail_on_a_wrong_node(ms_run):
    """``checkChannels`` (what the self-test relies on) refuses results on another volume and a
    node named for another channel."""
    _, first, result, _, logic = ms_run
    scene = logic.scene
    nodes = {c: scene.GetFirstNodeByName(f"AutoimmuneAIDemo {c.upper()}") for c in MS.channels}
    nodes = {c: n for c, n in nodes.items() if n is not None}
    checkChannels(result, scene, nodes, MS)  # as the scenario left them: passes
    swapped = dict(nodes, flair=nodes["t1gd"] if "t1gd" in nodes else nodes["t1"])
    with pytest.raises(AssertionError, match="flair node named"):
        checkChannels(result, scene, swapped, MS)
    other = slicer.vtkMRMLScene()
    outside = dict(nodes)
    outside["flair"] = other.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "AutoimmuneAIDemo FLAIR")
    with pytest.raises(AssertionError, match="flair node is not in the scene"):
        checkChannels(result, scene, outside, MS)


@demo_folder
def test_a_folder_holding_another_panels_demo_is_refused(ms_demo, python_slicer):
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    work, _ = ms_demo
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene(), python=python_slicer)
    manifest = work / "cohort" / "manifest.csv"
    before = manifest.stat().st_mtime_ns
    with pytest.raises(RuntimeError, match=f"of panel '{DEFAULT_PANEL}': choose another demo"):
        prepareDemo(work, logic=logic, panel=DEFAULT_PANEL)
    assert manifest.stat().st_mtime_ns == before  # nothing regenerated over it
    with pytest.raises(InputError, match=f"holds the demo of panel '{PANEL}', not"):
        readDemoCase(work, DEFAULT_PANEL)


@demo_folder
def test_an_optional_channel_empty_in_the_manifest_is_left_out(ms_demo, tmp_path):
    work, _ = ms_demo
    with open(work / "cohort" / "manifest.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), list(reader.fieldnames or [])
    first = rows[0]
    for column in columns:
        if column.startswith(("image_", "mask_")) and first[column]:
            first[column] = str(work / "cohort" / first[column])  # absolute: read where they are
    first["image_t1"] = ""
    copy = tmp_path / PANEL
    (copy / "cohort").mkdir(parents=True)
    with open(copy / "cohort" / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerow(first)
    os.symlink(work / "bundle", copy / "bundle", target_is_directory=True)

    demo = readDemoCase(copy, PANEL)
    assert "t1" not in demo.images and list(demo.images)[0] == "flair"
    assert demo.imagePath == demo.images["flair"] and demo.panel == PANEL
    assert demo.serology and set(demo.serology) <= set(MS.feature_names)
    scene = slicer.vtkMRMLScene()
    volumes = loadDemoVolumes(scene, demo)
    assert list(volumes) == list(demo.images)
    assert [n.GetName() for n in volumes.values()] == [
        f"AutoimmuneAIDemo {c.upper()}" for c in demo.images
    ]
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == len(demo.images)
