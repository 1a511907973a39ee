"""The Slicer module's image inputs come from the panel: one selector per channel, one volume
node per channel through the logic into the package.

Everything runs on the real MRML libraries of the ``slicer-core`` wheel; only the Qt widgets of
``widgethelpers.ChannelSelectors`` are stood in for (a form layout that records its rows and a
combo box that holds a node), so that the selectors' rebuild with the panel is checked without
the application. The end-to-end test trains a tiny ``ms_course`` bundle and runs the module's
background ``predict --explain`` in the ``PythonSlicer`` stand-in (``pythonslicer_env``).
"""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "AutoimmuneAI"
sys.path.insert(0, str(MODULE_DIR))  # AutoimmuneAILib, as Slicer puts the module folder on the path

from AutoimmuneAILib.labform import (  # noqa: E402
    channelProblem,
    channelRows,
    channelVolumes,
    storeChannelVolume,
    storedChannelVolume,
)
from pythonslicer_env import make_pythonslicer  # noqa: E402

from autoimmuneai.data.imaging import Volume, load_volume  # noqa: E402
from autoimmuneai.data.panel import load_panel  # noqa: E402
from autoimmuneai.errors import InputError  # noqa: E402
from autoimmuneai.output.mrml import volume_to_node  # noqa: E402

slicer = pytest.importorskip("slicer")

MS = load_panel("ms_course")
CNS = load_panel("cns_autoimmune")


def _node(scene, name: str, seed: int = 0, shape=(12, 14, 10), affine=None):
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, shape).astype(np.float32)
    return volume_to_node(
        scene, Volume(array, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), name
    )


def _bundle(tmp_path: Path, panel_name: str) -> Path:
    """A folder the logic takes for a bundle of ``panel_name`` (enough for the input checks,
    which run before anything is started)."""
    bundle = tmp_path / f"bundle_{panel_name}"
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"panel": panel_name}))
    return bundle


# -- which selectors, and what they must hold (Qt-free decisions) ------------------------------
def test_channel_rows_of_both_shipped_panels():
    (flair,) = channelRows(CNS)
    assert (flair.name, flair.label, flair.optional) == ("flair", "FLAIR volume:", False)
    rows = channelRows(MS)
    assert [(r.name, r.label, r.optional) for r in rows] == [
        ("flair", "FLAIR volume:", False),
        ("t1", "T1 volume (optional):", True),
        ("t1gd", "T1GD volume (optional):", True),
    ]
    assert "gadolinium" in rows[2].tooltip and "not acquired" in rows[2].tooltip
    assert "not acquired" not in rows[0].tooltip  # the reference can never stay empty


def test_one_volume_or_a_mapping_and_the_refusals_name_the_channel():
    scene = slicer.vtkMRMLScene()
    flair, t1 = _node(scene, "FLAIR"), _node(scene, "T1", 1)
    # the call a single-channel panel always had: one node is the first channel
    assert channelVolumes(flair, CNS) == {"flair": flair}
    assert channelVolumes(flair, MS) == {"flair": flair}  # optional channels left out
    # a mapping, in panel order, optional channels None or absent, names case-insensitive
    assert list(channelVolumes({"T1": t1, "flair": flair, "t1gd": None}, MS).items()) == [
        ("flair", flair),
        ("t1", t1),
    ]
    assert channelVolumes({"flair": flair}, CNS) == {"flair": flair}
    # a missing required channel: one line naming the channel and the panel
    for missing in ({"t1": t1}, {"flair": None, "t1": t1}, None):
        with pytest.raises(InputError) as caught:
            channelVolumes(missing, MS)
        message = str(caught.value)
        assert "'flair'" in message and "ms_course" in message and "\n" not in message
        assert channelProblem(missing, MS) == message
    assert channelProblem({"flair": flair, "t1": None}, MS) == ""
    with pytest.raises(
        InputError, match=r"'t2' is not an image channel of panel 'ms_course' \(flair, t1, t1gd\)"
    ):
        channelVolumes({"flair": flair, "t2": t1}, MS)
    with pytest.raises(InputError, match="'t1': expected a volume node, got str"):
        channelVolumes({"flair": flair, "t1": "T1"}, MS)
    with pytest.raises(InputError, match="a volume node or a mapping"):
        channelVolumes(["flair"], MS)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="'t1gd': volume 'Empty' has no image data"):
        channelVolumes({"flair": flair, "t1gd": empty}, MS)
    # a volume under a transform would be written without it: out of register, refused
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T1 to FLAIR")
    t1.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="'t1': volume 'T1' is under a transform; harden it"):
        channelVolumes({"flair": flair, "t1": t1}, MS)


def test_the_logic_refuses_a_missing_required_channel_before_anything_runs(tmp_path):
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    scene = slicer.vtkMRMLScene()
    t1 = _node(scene, "T1")
    logic = AutoimmuneAILogic(scene=scene, python=str(tmp_path / "no-such-python"))
    # the child's interpreter does not exist: an error from starting it would say so; the
    # channel check comes first and names the channel
    with pytest.raises(
        InputError, match="no volume for channel 'flair': panel 'ms_course' requires it"
    ):
        logic.process({"t1": t1}, {"age": "40"}, _bundle(tmp_path, "ms_course"))
    with pytest.raises(InputError, match="no volume for channel 'flair'"):
        logic.whatIf(
            {"t1": t1, "t1gd": None}, {"age": "40"}, _bundle(tmp_path, "ms_course"), "age", "50"
        )
    with pytest.raises(InputError, match="'t1' is not an image channel of panel 'cns_autoimmune'"):
        logic.process({"flair": t1, "t1": t1}, {"age": "40"}, _bundle(tmp_path, "cns_autoimmune"))


def test_the_chosen_volumes_are_saved_with_the_scene(tmp_path):
    from AutoimmuneAILib.logic import loadScene, saveScene

    scene = slicer.vtkMRMLScene()
    flair, t1 = _node(scene, "FLAIR"), _node(scene, "T1", 1)
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AutoimmuneAI")
    storeChannelVolume(parameters, "t1", t1)
    storeChannelVolume(parameters, "t1gd", None)
    assert storedChannelVolume(parameters, "t1") is t1
    assert storedChannelVolume(parameters, "t1gd") is None
    assert storedChannelVolume(None, "t1") is None
    reloaded = loadScene(saveScene(scene, tmp_path / "scene"))
    again = reloaded.GetFirstNodeByName("AutoimmuneAI")
    assert storedChannelVolume(again, "t1").GetName() == "T1"
    assert storedChannelVolume(again, "t1gd") is None
    storeChannelVolume(parameters, "t1", None)
    assert storedChannelVolume(parameters, "t1") is None
    assert flair.GetScene() is scene


# -- the widget layer: selectors rebuilt with the panel (Qt stood in for, thinly) ---------------
class _Layout:
    """Stands in for the inputs QFormLayout: its rows as (label, widget), the .ui's first."""

    def __init__(self, reference) -> None:
        self.rows: list[tuple[str, object]] = [
            ("FLAIR volume:", reference),
            ("Model bundle:", None),
        ]

    def insertRow(self, index: int, label: str, widget) -> None:
        self.rows.insert(index, (label, widget))

    def removeRow(self, widget) -> None:
        (index,) = [i for i, (_, w) in enumerate(self.rows) if w is widget]
        del self.rows[index]
        widget.deleted = True


class _ComboBox:
    """Stands in for qMRMLNodeComboBox: properties, the current node, currentNodeChanged."""

    def __init__(self) -> None:
        self.node, self.callbacks, self.scene, self.deleted = None, [], None, False
        self.toolTip = self.noneDisplay = ""

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def connect(self, signal: str, callback) -> None:
        assert signal == "currentNodeChanged(vtkMRMLNode*)"
        self.callbacks.append(callback)

    def currentNode(self):
        return self.node

    def setCurrentNode(self, node) -> None:  # Qt emits only on a change
        if node is not self.node:
            self.node = node
            for callback in self.callbacks:
                callback(node)

    def choose(self, node) -> None:  # what the user does
        self.setCurrentNode(node)


@pytest.fixture
def widgethelpers(monkeypatch):
    """``AutoimmuneAILib.widgethelpers`` imported with stand-ins for ``qt`` and the combo box."""
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.delitem(sys.modules, "AutoimmuneAILib.widgethelpers", raising=False)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", _ComboBox, raising=False)
    import AutoimmuneAILib.widgethelpers as module

    yield module, scene
    sys.modules.pop("AutoimmuneAILib.widgethelpers", None)


def test_selectors_follow_the_panel_and_keep_their_volumes(widgethelpers):
    module, scene = widgethelpers
    flair, t1, t1gd = _node(scene, "FLAIR"), _node(scene, "T1", 1), _node(scene, "T1Gd", 2)
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AutoimmuneAI")
    label, reference = types.SimpleNamespace(text="FLAIR volume:"), _ComboBox()
    layout = _Layout(reference)
    changes = []
    selectors = module.ChannelSelectors(
        layout, label, reference, onChanged=lambda: changes.append(1)
    )
    selectors.loadFrom(parameters)
    assert selectors.volumes(flair) is flair  # no panel yet: the reference volume alone

    selectors.build(CNS)
    assert [text for text, _ in layout.rows] == ["FLAIR volume:", "Model bundle:"]
    assert selectors.volumes(flair) == {"flair": flair}

    selectors.build(MS)
    assert [text for text, _ in layout.rows] == [
        "FLAIR volume:", "T1 volume (optional):", "T1GD volume (optional):", "Model bundle:",
    ]  # fmt: skip
    assert reference.toolTip.startswith("3D T2-FLAIR")
    t1Box, t1gdBox = layout.rows[1][1], layout.rows[2][1]
    assert t1Box.nodeTypes == ["vtkMRMLScalarVolumeNode"] and t1Box.noneEnabled
    assert t1Box.noneDisplay == "(not acquired)" and t1Box.scene is scene
    assert "gadolinium" in t1gdBox.toolTip
    assert selectors.volumes(flair) == {"flair": flair, "t1": None, "t1gd": None}
    assert channelProblem(selectors.volumes(flair), MS) == ""
    assert "'flair'" in channelProblem(selectors.volumes(None), MS)  # Run stays disabled

    t1Box.choose(t1)
    t1gdBox.choose(t1gd)
    assert changes == [1, 1]
    assert storedChannelVolume(parameters, "t1") is t1  # saved with the scene
    assert selectors.volumes(flair) == {"flair": flair, "t1": t1, "t1gd": t1gd}
    selectors.build(MS)  # the same panel again (every parameter change): nothing rebuilt
    assert layout.rows[1][1] is t1Box

    selectors.build(CNS)  # another bundle: the extra rows go
    assert t1Box.deleted and t1gdBox.deleted
    assert [text for text, _ in layout.rows] == ["FLAIR volume:", "Model bundle:"]
    assert label.text == "FLAIR volume:" and selectors.volumes(flair) == {"flair": flair}

    selectors.build(MS)  # and back: the volumes chosen before are shown again
    assert selectors.volumes(flair) == {"flair": flair, "t1": t1, "t1gd": t1gd}
    assert changes == [1, 1]  # restoring is not a user change

    other = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AutoimmuneAI 2")
    selectors.loadFrom(other)  # a new scene / parameter node: its own (empty) choice
    assert selectors.volumes(flair) == {"flair": flair, "t1": None, "t1gd": None}


def test_a_loaded_demo_case_sets_every_channel_selector(widgethelpers):
    """ "Load demo case": the case's volumes (channel -> node) go into the selectors as a
    user's choice would (stored on the parameter node, Run's state updated); a channel the
    case lacks is set to none, replacing an earlier choice."""
    module, scene = widgethelpers
    flair, t1, t1gd = _node(scene, "FLAIR"), _node(scene, "T1", 1), _node(scene, "T1Gd", 2)
    parameters = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AutoimmuneAI")
    reference = _ComboBox()
    layout = _Layout(reference)
    changes = []
    selectors = module.ChannelSelectors(
        layout, types.SimpleNamespace(text=""), reference, onChanged=lambda: changes.append(1)
    )
    selectors.loadFrom(parameters)
    selectors.build(MS)
    selectors.setVolumes({"flair": flair, "t1": t1, "t1gd": t1gd})
    assert selectors.volumes(flair) == {"flair": flair, "t1": t1, "t1gd": t1gd}
    assert storedChannelVolume(parameters, "t1gd") is t1gd and changes == [1, 1]
    selectors.setVolumes({"flair": flair, "t1gd": t1gd})  # a case without a T1
    assert selectors.volumes(flair) == {"flair": flair, "t1": None, "t1gd": t1gd}
    assert storedChannelVolume(parameters, "t1") is None and changes == [1, 1, 1]
    assert reference.node is None  # the reference is the parameter node's, set by the caller


# -- end to end: three volume nodes through the logic into the package and back ---------------
MS_CASES = 16


@pytest.fixture(scope="module")
def ms_bundle(tmp_path_factory):
    """A tiny ms_course cohort (three contrasts, 4 mm, brain only) and a bundle trained on it
    for one epoch: it shows the flow, not accuracy."""
    from autoimmuneai.synth.families import generator_for
    from autoimmuneai.training.trainer import TrainConfig, train_bundle

    base = tmp_path_factory.mktemp("ms_slicer")
    manifest = generator_for("ms_course")(
        base / "cohort", MS_CASES, 5, voxel_size=4.0, workers=2, progress=False, anatomy="brain"
    )
    cfg = TrainConfig(
        epochs=1, image_only_epochs=1, batch_size=8, patience=1, seed=0,
        channels=(4, 8), strides=(2, 2), grid_shape=(32, 40, 32), grid_spacing=5.0,
        panel="ms_course", preprocessing="model_grid",
    )  # fmt: skip
    bundle = train_bundle(manifest, base / "bundle", cfg, progress=False)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    case = next(r for r in rows if r["image_t1"] and r["image_t1gd"])
    return Path(bundle), Path(manifest), case


def _manifestOf(job) -> Path:
    command = job.process.command
    return Path(command[command.index("--cohort") + 1])


@pytest.mark.slow
def test_three_volume_nodes_reach_the_package_and_the_results_stay_in_flair_space(
    tmp_path, ms_bundle
):
    from AutoimmuneAILib.labform import readCohortCase
    from AutoimmuneAILib.logic import AutoimmuneAILogic
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    from autoimmuneai.contracts import CASE_FILES

    bundle, manifest, case = ms_bundle
    python = str(make_pythonslicer(tmp_path / "pythonslicer"))
    scene = slicer.vtkMRMLScene()
    images = {c: load_volume(manifest.parent / case[f"image_{c}"]) for c in MS.channels}
    flair = volume_to_node(scene, images["flair"], "FLAIR")
    # the T1 on a grid of its own (a crop: same patient space, other voxels and origin)
    crop = images["t1"].array[2:-2, 1:-1, 2:-1]
    shifted = images["t1"].affine.copy()
    shifted[:3, 3] += shifted[:3, :3] @ np.array([2.0, 1.0, 2.0])
    t1 = volume_to_node(scene, Volume(crop, shifted), "T1")
    t1gd = volume_to_node(scene, images["t1gd"], "T1-Gd")
    serology = readCohortCase(manifest, case["case_id"], MS)
    logic = AutoimmuneAILogic(scene=scene, python=python)

    job = logic.process(
        {"flair": flair, "t1": t1, "t1gd": t1gd}, serology, bundle, explain=True,
        waitForCompletion=False, caseId="ms1", outputDir=tmp_path / "out",
    )  # fmt: skip
    handed = _manifestOf(job)  # the temporary case the package reads (removed once done)
    with open(handed, newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    expected = {"flair": images["flair"], "t1": Volume(crop, shifted), "t1gd": images["t1gd"]}
    for channel, volume in expected.items():
        written = load_volume(handed.parent / row[f"image_{channel}"])
        np.testing.assert_allclose(written.array, volume.array, atol=1e-3, err_msg=channel)
        np.testing.assert_allclose(written.affine, volume.affine, atol=1e-4, err_msg=channel)
    assert row["age"] == serology["age"]
    result = job.wait(timeout=600)
    assert not handed.exists()

    assert result.predicted in MS.classes
    prediction = result.prediction
    assert not any("image: read as not acquired" in w for w in prediction["warnings"])
    assert set(prediction["explanation"]["channel_share"]) == {"flair", "t1", "t1gd"}
    # results in the reference (FLAIR) geometry: the user's own FLAIR node is the image
    nodes = result.nodes
    assert nodes["image"] is flair
    attribution = nodes["attribution"]
    assert attribution.GetImageData().GetDimensions() == flair.GetImageData().GetDimensions()
    ma, mb = vtkMatrix4x4(), vtkMatrix4x4()
    attribution.GetIJKToRASMatrix(ma)
    flair.GetIJKToRASMatrix(mb)
    assert np.allclose(
        [ma.GetElement(i, j) for i in range(4) for j in range(4)],
        [mb.GetElement(i, j) for i in range(4) for j in range(4)],
        atol=1e-4,
    )
    segmentation = nodes["segmentation"]
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is flair
    assert (tmp_path / "out" / "ms1" / CASE_FILES["attribution"]).is_file()

    # the one-volume call (scripts written for a single-channel panel) still runs: the
    # optional contrasts are read as not acquired and said so
    one = logic.process(flair, serology, bundle, explain=False, caseId="ms2", importNodes=False)
    warnings = " | ".join(one.prediction["warnings"])
    assert "no t1 image" in warnings and "no t1gd image" in warnings
    assert one.predicted in MS.classes
