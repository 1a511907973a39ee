"""Quality control a user can see in the Slicer module: the brain mask and the template-space
image as nodes, and the registration / brain-mask quality as text in the results area.

A tiny whole-head cohort (2D axial FLAIR, 5 mm slices, tilted heads with skull and neck) and a
bundle trained on it with the clinical-scan stage; the module's logic runs ``predict --explain``
in the ``PythonSlicer`` stand-in and imports the case folder into a real MRML scene (the
``slicer-core`` wheel). The nodes are checked against the files on disk read independently with
nibabel, in physical (RAS) coordinates; the QC text against ``prediction.json``. Only the Qt
widgets of ``widgethelpers.ResultsView`` and the application's view calls are stood in for.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "AutoimmuneAI"
sys.path.insert(0, str(MODULE_DIR))  # AutoimmuneAILib, as Slicer puts the module folder on the path

from AutoimmuneAILib.quality import (  # noqa: E402
    QUALITY_FILES,
    QUALITY_STYLES,
    WARNING_SIGN,
    otherWarnings,
    qualityReport,
)
from pythonslicer_env import make_pythonslicer  # noqa: E402

from autoimmuneai.data.imaging import Volume, load_volume  # noqa: E402
from autoimmuneai.output.mrml import volume_to_node  # noqa: E402

slicer = pytest.importorskip("slicer")

HEAD_CASES = 8
GRID_SHAPE, GRID_MM = (16, 20, 16), 10.0
CROP_VOXELS = 28  # columns cut off the patient's right: about 87% of the brain stays in view


def _matrix(node) -> np.ndarray:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ras_of(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """RAS mm of voxel indices [n, 3] under a 4x4 voxel -> RAS affine, sorted row-wise."""
    ras = (affine[:3, :3] @ ijk.T + affine[:3, 3:4]).T
    return ras[np.lexsort(ras.T[::-1])]


def _samples(volume: Volume) -> np.ndarray:
    """Every voxel as (R, A, S, value), sorted by position: a volume's content in physical
    space, whatever order its voxel axes run in."""
    ijk = np.argwhere(np.ones(volume.array.shape, dtype=bool)).astype(float)
    ras = (volume.affine[:3, :3] @ ijk.T + volume.affine[:3, 3:4]).T
    rows = np.column_stack([np.round(ras, 3), volume.array.reshape(-1)])
    return rows[np.lexsort(rows[:, :3].T[::-1])]


def _segment_labelmap(segmentation) -> tuple[np.ndarray, np.ndarray]:
    """The brain-mask segment's binary labelmap as (array [i, j, k], voxel -> RAS affine)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    seg = segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == 1
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    image = seg.GetNthSegment(0).GetRepresentation(name)
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims, order="F")
    m = vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    affine = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    affine[:3, 3] += affine[:3, :3] @ np.array(
        extent[::2], dtype=float
    )  # extent may not start at 0
    return array, affine


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory):
    """8 whole-head cases (2D axial, 2 mm in plane, 4-6 mm slices) and a bundle with the
    clinical-scan stage trained on them for one epoch: it shows the flow, not accuracy."""
    from autoimmuneai.synth import SynthConfig, generate_cohort
    from autoimmuneai.training.trainer import TrainConfig, train_bundle

    base = tmp_path_factory.mktemp("qc_heads")
    synth = SynthConfig()
    synth.scan["acquisitions"] = {"2d_axial": 1.0}
    synth.scan["inplane_mm"] = [2.0, 2.0]
    manifest = generate_cohort(
        base / "cohort", HEAD_CASES, 0, workers=2, progress=False, config=synth
    )
    config = TrainConfig(
        epochs=1, grid_shape=GRID_SHAPE, grid_spacing=GRID_MM, channels=(4, 8), strides=(2, 2),
        preprocessing="mni152",
    )  # fmt: skip
    bundle = train_bundle(manifest, base / "bundle", config, progress=False)
    return Path(bundle), Path(manifest), str(make_pythonslicer(base / "pythonslicer"))


def _first_case(manifest: Path, bundle: Path) -> tuple[Volume, dict[str, str]]:
    """The cohort's first case: its FLAIR as read from disk and its lab strings."""
    from AutoimmuneAILib.labform import readCohortCase
    from AutoimmuneAILib.logic import panelForBundle

    from autoimmuneai.data.cohort import read_manifest

    row = read_manifest(manifest).iloc[0]
    serology = readCohortCase(manifest, str(row["case_id"]), panelForBundle(bundle))
    return load_volume(manifest.parent / str(row["image_flair"])), serology


# -- the results area: the Qt labels and table stood in for, the view calls recorded ----------
class _Label:
    def __init__(self) -> None:
        self.text = self.styleSheet = self.toolTip = ""


class _Table:
    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], str] = {}

    def setRowCount(self, n: int) -> None:
        self.cells = {k: v for k, v in self.cells.items() if k[0] < n}

    def setItem(self, row: int, column: int, item) -> None:
        self.cells[(row, column)] = item.text

    def resizeColumnsToContents(self) -> None:
        pass


class _Item:
    def __init__(self, text: str) -> None:
        self.text = text

    def setBackground(self, brush) -> None:
        pass

    def font(self):
        return types.SimpleNamespace(setBold=lambda on: None)

    def setFont(self, font) -> None:
        pass


@pytest.fixture
def results_view(monkeypatch):
    """``widgethelpers.ResultsView`` on stand-ins for its labels and table; the slice, 3D and
    plot views' calls are recorded instead of drawn."""
    qt = types.ModuleType("qt")
    qt.QTableWidgetItem, qt.QBrush, qt.QColor = _Item, lambda color: color, lambda name: name
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.delitem(sys.modules, "AutoimmuneAILib.widgethelpers", raising=False)
    shown: list = []
    monkeypatch.setattr(
        slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw), raising=False
    )
    monkeypatch.setattr(slicer.util, "resetThreeDViews", lambda: None, raising=False)
    plots = types.SimpleNamespace(
        logic=lambda: types.SimpleNamespace(ShowChartInLayout=shown.append)
    )
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(plots=plots), raising=False)
    import AutoimmuneAILib.widgethelpers as module

    names = ("riskLabel", "modalityShareLabel", "qualityLabel", "warningsLabel", "whatIfLabel")
    ui = types.SimpleNamespace(differentialTableWidget=_Table(), **{n: _Label() for n in names})
    yield module.ResultsView(ui), ui, shown
    sys.modules.pop("AutoimmuneAILib.widgethelpers", None)


# -- formatting, on its own ------------------------------------------------------------------
def test_a_bundle_without_the_clinical_scan_stage_says_quality_was_not_measured():
    prediction = {"warnings": ["image intensities unlike the training data"]}
    report = qualityReport(prediction)
    assert report.state == "unavailable" and not report.ok and not report.figures
    assert "not measured" in report.text and WARNING_SIGN not in report.text
    assert otherWarnings(prediction) == prediction["warnings"]  # shown once, in the warnings
    assert set(QUALITY_STYLES) == {"passed", "failed", "unavailable"}


def test_a_case_folder_without_the_stage_s_files_gives_no_quality_node(tmp_path):
    from AutoimmuneAILib.quality import importQualityNodes

    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    assert importQualityNodes(scene, tmp_path, "case") == {}
    assert scene.GetNumberOfNodes() == before


def test_the_files_geometry_is_kept_on_an_oblique_grid(tmp_path):
    """The quick check (no model): files written by the package's own writer, on a grid
    tilted by 20 degrees about R with an origin away from 0, come in voxel for voxel."""
    from AutoimmuneAILib.quality import importQualityNodes

    from autoimmuneai.data.imaging import save_volume
    from autoimmuneai.output.mrml import node_to_volume

    angle = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.5, 2.0, 5.0])
    affine[:3, 3] = [-14.0, 22.5, -31.0]
    ijk = np.indices((20, 24, 9)).transpose(1, 2, 3, 0)
    mask = (np.linalg.norm((ijk - [9.0, 11.0, 4.0]) * [1.5, 2.0, 5.0], axis=-1) < 12).astype(
        np.uint8
    )
    save_volume(Volume(mask, affine), tmp_path / QUALITY_FILES["brain_mask"])
    mni = Volume(np.linspace(-5, 3, 8 * 10 * 6, dtype=np.float32).reshape(8, 10, 6),
                 np.diag([-10.0, 10.0, 10.0, 1.0]) + np.array([[0, 0, 0, 40.0], [0, 0, 0, -60.0],
                                                               [0, 0, 0, -30.0], [0, 0, 0, 0]]))  # fmt: skip
    save_volume(mni, tmp_path / QUALITY_FILES["image_mni"])
    scene = slicer.vtkMRMLScene()
    reference = volume_to_node(scene, Volume(mask.astype(np.float32) * 100.0, affine), "FLAIR")
    nodes = importQualityNodes(scene, tmp_path, "case", reference)
    array, read = _segment_labelmap(nodes["brain_mask"])
    np.testing.assert_allclose(read, affine, atol=1e-4)
    np.testing.assert_allclose(
        _ras_of(read, np.argwhere(array > 0).astype(float)),
        _ras_of(affine, np.argwhere(mask > 0).astype(float)),
        atol=1e-4,
    )
    role = nodes["brain_mask"].GetReferenceImageGeometryReferenceRole()
    assert nodes["brain_mask"].GetNodeReference(role) is reference
    # a left-handed grid (as LAS files are) may come back with an axis reversed: the same
    # value at the same place is what counts
    back = node_to_volume(nodes["image_mni"])
    np.testing.assert_allclose(_samples(back), _samples(mni), atol=1e-4)
    assert nodes["image_mni"].GetAttribute("AutoimmuneAI.Role") == "image_mni"
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # reader's node gone


# -- end to end: predict --explain in PythonSlicer, imported into a real scene ----------------
@pytest.mark.slow  # trains a small model and runs two background predictions (about 2 min)
def test_brain_mask_and_template_image_come_in_with_the_files_geometry(
    tmp_path, head_bundle, results_view
):
    from AutoimmuneAILib.logic import AutoimmuneAILogic, loadScene, saveScene

    bundle, manifest, python = head_bundle
    volume, serology = _first_case(manifest, bundle)
    # the patient's image on an oblique grid (a scanner's tilted acquisition): 10 degrees of
    # yaw about the image centre, on top of the head's own pose
    angle = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centre = volume.affine @ np.append((np.array(volume.shape) - 1) / 2.0, 1.0)
    about = np.eye(4)
    about[:3, 3] = centre[:3]
    oblique = about @ rotation @ np.linalg.inv(about) @ volume.affine
    scene = slicer.vtkMRMLScene()
    flair = volume_to_node(scene, Volume(volume.array, oblique), "FLAIR")
    logic = AutoimmuneAILogic(scene=scene, python=python)
    result = logic.process(
        flair, serology, bundle, explain=True, caseId="qc1", outputDir=tmp_path / "out"
    )
    caseDir = tmp_path / "out" / "qc1"
    prediction = json.loads((caseDir / "prediction.json").read_text(encoding="utf-8"))
    quality = prediction["quality"]

    # the brain mask: one segment on the user's FLAIR, its voxels where the file has them
    segmentation = result.nodes["brain_mask"]
    assert segmentation.GetName() == "qc1 brain mask" and segmentation.GetScene() is scene
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is flair
    onDisk = nib.load(caseDir / QUALITY_FILES["brain_mask"])
    fileMask = np.asarray(onDisk.get_fdata()) > 0
    assert np.allclose(onDisk.affine, oblique, atol=1e-3)  # the patient's own (oblique) grid
    array, affine = _segment_labelmap(segmentation)
    assert array.shape == fileMask.shape
    np.testing.assert_allclose(affine, onDisk.affine, atol=1e-3)
    np.testing.assert_allclose(
        _ras_of(affine, np.argwhere(array > 0).astype(float)),
        _ras_of(onDisk.affine, np.argwhere(fileMask).astype(float)),
        atol=1e-3,
    )
    bounds = [0.0] * 6
    segmentation.GetSegmentation().GetNthSegment(0).GetBounds(bounds)
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in fileMask.shape])).reshape(3, -1).T
    ras = (onDisk.affine[:3, :3] @ corners.T + onDisk.affine[:3, 3:4]).T
    np.testing.assert_allclose(bounds[::2], ras.min(axis=0), atol=1e-2)
    np.testing.assert_allclose(bounds[1::2], ras.max(axis=0), atol=1e-2)
    # it is a brain of the size the stage measured, not the head
    voxel_ml = abs(np.linalg.det(oblique[:3, :3])) / 1000.0
    assert abs(fileMask.sum() * voxel_ml / quality["brain_volume_ml"] - 1.0) < 0.1
    display = segmentation.GetDisplayNode()
    assert display.GetOpacity2DFill() == 0.0 and display.GetOpacity2DOutline() == 1.0
    assert not display.GetVisibility3D()  # the evidence stays visible in 3D

    # the image in template space: the file's voxels on the bundle's MNI grid
    mni = result.nodes["image_mni"]
    assert mni.GetName() == "qc1 (MNI152)" and mni.GetDisplayNode() is not None
    mniFile = nib.load(caseDir / QUALITY_FILES["image_mni"])
    assert mni.GetImageData().GetDimensions() == mniFile.shape == GRID_SHAPE
    np.testing.assert_allclose(_matrix(mni), mniFile.affine, atol=1e-3)
    assert np.allclose(np.abs(np.diag(mniFile.affine)[:3]), GRID_MM)
    from autoimmuneai.output.mrml import node_to_volume

    np.testing.assert_allclose(node_to_volume(mni).array, mniFile.get_fdata(), atol=1e-4)

    # the QC text: the figures of prediction.json, in words; the case passed
    text = result.quality.text
    assert f"registration correlation {quality['registration_ncc']:.2f}" in text
    assert f"brain coverage {quality['brain_coverage']:.0%}" in text
    assert f"brain volume {quality['brain_volume_ml']:.0f} mL" in text
    assert quality["warnings"] == [] and result.quality.state == "passed"
    view, ui, shown = results_view
    view.show(result)
    assert ui.qualityLabel.text == text and ui.qualityLabel.styleSheet == QUALITY_STYLES["passed"]
    assert shown[0]["background"] is flair

    # both survive saving the scene; without the option neither is imported
    reloaded = loadScene(saveScene(scene, tmp_path / "saved"))
    count = reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    names = {
        reloaded.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName() for i in range(count)
    }
    assert names == {"qc1 evidence", "qc1 brain mask"}
    assert reloaded.GetFirstNodeByName("qc1 (MNI152)") is not None
    plain = AutoimmuneAILogic(scene=slicer.vtkMRMLScene()).importCase(
        caseDir, prediction, qualityNodes=False
    )
    assert "brain_mask" not in plain and "image_mni" not in plain and "segmentation" in plain


@pytest.mark.slow  # shares the bundle above
def test_a_brain_partly_outside_the_image_is_a_visible_warning(tmp_path, head_bundle, results_view):
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    bundle, manifest, python = head_bundle
    volume, serology = _first_case(manifest, bundle)
    cropped = volume.affine.copy()  # the patient's right 56 mm not acquired
    cropped[:3, 3] += cropped[:3, :3] @ np.array([CROP_VOXELS, 0.0, 0.0])
    scene = slicer.vtkMRMLScene()
    flair = volume_to_node(scene, Volume(volume.array[CROP_VOXELS:], cropped), "FLAIR")
    logic = AutoimmuneAILogic(scene=scene, python=python)
    result = logic.process(
        flair, serology, bundle, explain=True, caseId="qc2",
        outputDir=tmp_path / "out", qualityNodes=False,
    )  # fmt: skip
    caseDir = tmp_path / "out" / "qc2"
    prediction = json.loads((caseDir / "prediction.json").read_text(encoding="utf-8"))
    quality = prediction["quality"]
    assert 0.5 < quality["brain_coverage"] < 0.95  # below the warning limit, above refusal
    coverage = f"the image covers only {quality['brain_coverage']:.0%} of the brain"
    assert coverage in quality["warnings"] and coverage in prediction["warnings"]

    report = result.quality
    assert report.state == "failed" and not report.ok
    assert report.text.startswith(WARNING_SIGN) and f"{WARNING_SIGN} {coverage}" in report.text
    assert f"brain coverage {quality['brain_coverage']:.0%}" in report.text
    assert coverage not in result.otherWarnings  # said once, in the quality line
    view, ui, _ = results_view
    view.show(result)
    assert ui.qualityLabel.styleSheet == QUALITY_STYLES["failed"]
    assert coverage in ui.qualityLabel.text and coverage not in ui.warningsLabel.text
    # the option off: the files are written, no node is made from them
    assert (caseDir / QUALITY_FILES["brain_mask"]).is_file()
    assert "brain_mask" not in result.nodes and "image_mni" not in result.nodes
    assert scene.GetFirstNodeByName("qc2 brain mask") is None


def test_a_multi_contrast_case_without_the_stage_shows_its_channel_figures_not_a_registration():
    """A plain-grid bundle with several channels records only how the channels were
    co-registered: the registration is still "not measured", the channel figures are shown,
    and a channel warning turns the report into a failed check."""
    fit = {"reference": "flair", "status": "aligned", "motion_mm_max": 4.24}
    prediction = {"quality": {"channels": {"t1": fit}, "warnings": []}}
    report = qualityReport(prediction)
    assert not report.available and report.state == "unavailable"
    assert "not measured" in report.text
    assert report.figures == ("t1 vs flair: aligned, 4.2 mm of motion",)
    moved = "channel t1 moved 4.2 mm against flair between series: aligned before fusing"
    prediction["quality"]["warnings"] = [moved]
    report = qualityReport(prediction)
    assert report.state == "failed" and "co-registration check failed" in report.text
    assert f"{WARNING_SIGN} {moved}" in report.text
    assert "registration correlation" not in report.text
    stage = {"registration_ncc": 0.81, "brain_coverage": 1.0, "channels": {"t1": fit}}
    with_stage = qualityReport({"quality": stage})
    assert with_stage.available and with_stage.state == "passed"
    assert with_stage.figures[0] == "registration correlation 0.81"
    assert with_stage.figures[-1] == "t1 vs flair: aligned, 4.2 mm of motion"
