"""MRML round trips with real Slicer nodes and files (slicer-core), no mocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
slicerio = pytest.importorskip("slicerio")

from autoimmuneai.data.imaging import Volume, load_volume  # noqa: E402
from autoimmuneai.errors import InputError  # noqa: E402
from autoimmuneai.output import mrml  # noqa: E402

SHAPE = (40, 48, 40)
BLOBS = {1: ((12, 14, 10), 5.0), 2: ((27, 31, 26), 6.0)}  # label: (centre ijk, radius vox)


def oblique_affine(left_handed: bool = False) -> np.ndarray:
    """Rotation about an oblique axis, anisotropic spacing, non-zero origin."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.4
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    spacing = np.diag([1.5, 2.0, 2.5])
    if left_handed:
        spacing[0, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation @ spacing
    affine[:3, 3] = [-31.5, 42.25, -17.0]
    return affine


def make_case(affine: np.ndarray) -> tuple[Volume, Volume, np.ndarray]:
    rng = np.random.default_rng(7)
    ii, jj, kk = np.indices(SHAPE)
    labelmap = np.zeros(SHAPE, dtype=np.int16)
    for label, ((ci, cj, ck), radius) in BLOBS.items():
        labelmap[(ii - ci) ** 2 + (jj - cj) ** 2 + (kk - ck) ** 2 <= radius**2] = label
    image = (100 + 0.5 * ii + rng.normal(0, 5, SHAPE) + 60 * (labelmap > 0)).astype(np.float32)
    attribution = np.where(labelmap > 0, 1.0, -0.05).astype(np.float32)
    return Volume(image, affine), Volume(attribution, affine.copy()), labelmap


SEGMENTS = [
    mrml.SegmentSpec(1, "Evidence for MS — region 1, 2.4 mL, 31%", (0.9, 0.1, 0.1), "top 1%"),
    mrml.SegmentSpec(2, "Evidence for MS — region 2, 1.2 mL, 12%", (1.0, 0.8, 0.0), "top 5%"),
]
LABS = [
    {
        "feature": "aqp4_igg",
        "label": "AQP4-IgG",
        "value": 640.0,
        "unit": "titer",
        "contribution": 0.42,
    },
    {"feature": "ocb", "label": "OCB", "value": None, "unit": "", "contribution": -0.13},
    {
        "feature": "csf_wbc",
        "label": "CSF WBC",
        "value": 12.0,
        "unit": "cells/uL",
        "contribution": 0.05,
    },
]
PROBS = {"MS": 0.61, "NMOSD": 0.22, "MOGAD": 0.09, "NPSLE": 0.05, "SVD": 0.03}
NAMES = ["Evidence for MS - region 1, 2.4 mL, 31%", "Evidence for MS - region 2, 1.2 mL, 12%"]
SURVIVAL = ([0.0, 6.0, 12.0, 24.0, 36.0], [1.0, 0.95, 0.88, 0.74, 0.63])


def ras_centroid(labelmap: np.ndarray, label: int, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(labelmap == label).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("case") / "case_0001"
    image, attribution, labelmap = make_case(oblique_affine())
    mrml.write_case_scene(
        out,
        image=image,
        attribution=attribution,
        labelmap=labelmap,
        segments=SEGMENTS,
        lab_contributions=LABS,
        probabilities=PROBS,
        survival=SURVIVAL,
        class_name="MS",
    )
    return out


@pytest.mark.parametrize("left_handed", [False, True])
def test_volume_node_round_trip_keeps_array_and_geometry(left_handed: bool) -> None:
    affine = oblique_affine(left_handed)
    array = np.random.default_rng(1).normal(size=(7, 9, 11)).astype(np.float32)
    scene = slicer.vtkMRMLScene()
    node = mrml.volume_to_node(scene, Volume(array, affine), "v")
    assert isinstance(node, slicer.vtkMRMLScalarVolumeNode)
    # Slicer's own RAS of voxel (6, 0, 3) must be the affine's.
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    assert np.allclose(matrix.MultiplyPoint((6, 0, 3, 1))[:3], (affine @ [6, 0, 3, 1])[:3])
    assert node.GetImageData().GetDimensions() == array.shape
    # VTK's x index is i: voxel (6, 0, 3) of the image data holds array[6, 0, 3].
    assert node.GetImageData().GetScalarComponentAsDouble(6, 0, 3, 0) == pytest.approx(
        float(array[6, 0, 3])
    )
    back = mrml.node_to_volume(node)
    assert np.array_equal(back.array, array)
    assert np.allclose(back.affine, affine, atol=1e-6)


def test_integer_images_are_stored_as_int16_without_loss(tmp_path: Path) -> None:
    scene = slicer.vtkMRMLScene()
    whole = np.arange(-300, 300, dtype=np.float32).reshape(6, 10, 10)
    node = mrml.volume_to_node(scene, Volume(whole, np.eye(4)), "int")
    assert node.GetImageData().GetScalarTypeAsString() == "short"
    fractional = mrml.volume_to_node(scene, Volume(whole + 0.5, np.eye(4)), "float")
    assert fractional.GetImageData().GetScalarTypeAsString() == "float"
    huge = mrml.volume_to_node(scene, Volume(whole * 1000, np.eye(4)), "big")
    assert huge.GetImageData().GetScalarTypeAsString() == "float"
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str((tmp_path / "int.nii.gz").resolve()))
    assert storage.WriteData(node)
    assert np.array_equal(load_volume(tmp_path / "int.nii.gz").array, whole)


def test_segmentation_reads_back_with_slicerio(case_dir: Path) -> None:
    _, _, labelmap = make_case(oblique_affine())
    seg = slicerio.read_segmentation(str(case_dir / "evidence.seg.nrrd"))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert list(by_name) == NAMES  # the em dash is written as ASCII, which every reader keeps
    voxels = seg["voxels"]
    for spec, name in zip(SEGMENTS, NAMES):
        info = by_name[name]
        assert np.allclose(info["color"], spec.color, atol=1e-3)
        assert info["terminology"]["type"][2] == mrml.TYPE_CODE[2]
        layer = voxels if voxels.ndim == 3 else voxels[..., info["layer"]]
        assert int((layer == info["labelValue"]).sum()) == int((labelmap == spec.label).sum())
    # Geometry: the file's IJK->LPS is the image affine with R, A negated.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ oblique_affine()
    assert np.allclose(seg["ijkToLPS"], lps, atol=1e-4)


def test_volume_files_read_back_with_the_package_reader(case_dir: Path) -> None:
    image, attribution, _ = make_case(oblique_affine())
    for name, expected in (("image.nii.gz", image), ("attribution.nii.gz", attribution)):
        loaded = load_volume(case_dir / name)
        assert np.allclose(loaded.affine, expected.affine, atol=1e-4)
        assert np.allclose(loaded.array, expected.array, atol=1e-4)


def test_scene_loads_into_fresh_scene_with_expected_nodes(case_dir: Path) -> None:
    paths = sorted(p.name for p in case_dir.iterdir())
    assert not [p for p in paths if p.startswith(".tmp")]
    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(case_dir / "scene.mrml"))
    assert scene.Import()

    def roles(cls: str) -> dict[str, object]:
        return {n.GetAttribute(mrml.ROLE_ATTRIBUTE): n for n in scene.GetNodesByClass(cls)}

    volumes = roles("vtkMRMLScalarVolumeNode")
    assert set(volumes) == {"image", "attribution"}
    image, _, labelmap = make_case(oblique_affine())
    loaded = mrml.node_to_volume(volumes["image"])
    assert np.allclose(loaded.affine, image.affine, atol=1e-4)
    assert np.allclose(loaded.array, image.array, atol=1e-3)
    colors = volumes["attribution"].GetDisplayNode().GetColorNode()
    assert colors is not None and colors.GetNumberOfColors() == 256
    rgba0, rgba1 = [0.0] * 4, [0.0] * 4
    colors.GetColor(0, rgba0)
    colors.GetColor(255, rgba1)
    assert rgba0[2] > rgba0[0] and rgba1[0] > rgba1[2]  # blue for negative, red for positive

    segmentation_node = roles("vtkMRMLSegmentationNode")["segmentation"]
    assert (
        segmentation_node.GetNodeReferenceID("referenceImageGeometryRef")
        == volumes["image"].GetID()
    )
    segmentation = segmentation_node.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    assert names == NAMES
    # The segment sits where the labelmap blob is, in RAS millimetres.
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    for spec, name in zip(SEGMENTS, NAMES):
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        oriented = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, oriented)
        dims = oriented.GetDimensions()
        values = vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(dims, order="F")
        assert int((values > 0).sum()) == int((labelmap == spec.label).sum())
        ijk = np.argwhere(values > 0).mean(axis=0) + np.array(oriented.GetExtent()[::2])
        matrix = vtkMatrix4x4()
        oriented.GetImageToWorldMatrix(matrix)
        ras = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
        assert np.linalg.norm(ras - ras_centroid(labelmap, spec.label, image.affine)) < 0.5

    tables = roles("vtkMRMLTableNode")
    assert set(tables) == {"lab_contributions", "probabilities", "survival"}
    lab = tables["lab_contributions"]
    assert lab.GetNumberOfRows() == len(LABS)
    assert [lab.GetCellText(r, lab.GetColumnIndex("label")) for r in range(3)] == [
        "AQP4-IgG",
        "OCB",
        "CSF WBC",
    ]
    contribution = lab.GetTable().GetColumnByName("contribution")
    assert [contribution.GetValue(r) for r in range(3)] == pytest.approx([0.42, -0.13, 0.05])
    probabilities = tables["probabilities"].GetTable().GetColumnByName("probability")
    assert probabilities.GetValue(0) == pytest.approx(0.61)

    charts = roles("vtkMRMLPlotChartNode")
    assert set(charts) == {"lab_chart", "probability_chart", "survival_chart"}
    lab_series = charts["lab_chart"].GetNthPlotSeriesNode(0)
    assert lab_series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert lab_series.GetTableNode() is lab
    assert lab_series.GetLabelColumnName() == "label"
    survival_series = charts["survival_chart"].GetNthPlotSeriesNode(0)
    # A curve over months: scatter drawn as a solid line (PlotTypeLine ignores the x column).
    assert survival_series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert survival_series.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert survival_series.GetMarkerStyle() == slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
    assert survival_series.GetXColumnName() == "time"
    for role in ("survival_chart", "probability_chart"):  # a fixed range needs auto off
        assert not charts[role].GetYAxisRangeAuto(), role
        assert list(charts[role].GetYAxisRange()) == [0.0, 1.0], role


def test_import_case_outputs_into_existing_scene(case_dir: Path) -> None:
    scene = slicer.vtkMRMLScene()
    existing = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "user volume")
    nodes = mrml.import_case_outputs(scene, case_dir)
    assert scene.GetNodeByID(existing.GetID()) is existing
    assert {"image", "attribution", "segmentation", "lab_contributions", "lab_chart"} <= set(nodes)
    image, attribution, labelmap = make_case(oblique_affine())
    loaded = mrml.node_to_volume(nodes["attribution"])
    assert np.allclose(loaded.affine, attribution.affine, atol=1e-4)
    assert np.allclose(loaded.array, attribution.array)
    segmentation = nodes["segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    assert nodes["lab_chart"].GetNthPlotSeriesNode(0).GetTableNode() is nodes["lab_contributions"]
    with pytest.raises(InputError, match="missing"):
        mrml.import_case_outputs(slicer.vtkMRMLScene(), case_dir.parent / "nowhere")


def test_listed_label_absent_from_labelmap_becomes_empty_segment() -> None:
    _, _, labelmap = make_case(oblique_affine())
    extra = mrml.SegmentSpec(3, "Evidence for MS - region 3", (0.0, 0.5, 1.0))
    scene = slicer.vtkMRMLScene()
    node = mrml.segmentation_from_labelmap(
        scene, labelmap, oblique_affine(), [*SEGMENTS, extra], "Evidence"
    )
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(extra.name))
    assert segment.GetLabelValue() == 3
    assert tuple(segment.GetColor()) == pytest.approx(extra.color)
    # Only the segmentation is left in the scene: the temporary labelmap nodes are gone.
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == 0


def test_bad_inputs_are_one_line_input_errors(tmp_path: Path) -> None:
    image, attribution, labelmap = make_case(oblique_affine())
    common = dict(lab_contributions=LABS, probabilities=PROBS, survival=SURVIVAL, class_name="MS")
    with pytest.raises(InputError, match="no segment"):
        mrml.write_case_scene(
            tmp_path, image=image, attribution=attribution, labelmap=labelmap,
            segments=SEGMENTS[:1], **common,
        )  # fmt: skip
    shift = np.zeros((4, 4))
    shift[0, 3] = 3.0
    shifted = Volume(attribution.array, attribution.affine + shift)
    with pytest.raises(InputError, match="grid"):
        mrml.write_case_scene(
            tmp_path, image=image, attribution=shifted, labelmap=labelmap,
            segments=SEGMENTS, **common,
        )  # fmt: skip
    with pytest.raises(InputError, match="row 2, column contribution"):
        mrml.write_case_scene(
            tmp_path, image=image, attribution=attribution, labelmap=labelmap,
            segments=SEGMENTS, **{**common, "lab_contributions": [LABS[0], {"feature": "x", "label": "X", "value": 1, "unit": ""}]},
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_terminology_entry_is_the_string_slicer_serialises() -> None:
    """Written by hand (PythonSlicer has no terminology classes), equal to Slicer's own."""
    if not hasattr(slicer, "vtkSlicerTerminologyEntry"):
        pytest.skip("this slicer-core has no terminology classes to compare with")
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(mrml.TERMINOLOGY_CONTEXT)
    for obj, (scheme, value, meaning) in (
        (entry.GetCategoryObject(), mrml.CATEGORY_CODE),
        (entry.GetTypeObject(), mrml.TYPE_CODE),
        (entry.GetRegionObject(), mrml.REGION_CODE),
    ):
        obj.SetCodingSchemeDesignator(scheme)
        obj.SetCodeValue(value)
        obj.SetCodeMeaning(meaning)
    entry.SetRegionContextName(mrml.ANATOMIC_CONTEXT)
    expected = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)
    assert mrml.terminology_entry() == expected


def test_segmentation_is_built_in_pythonslicers_namespace(tmp_path: Path) -> None:
    """The background process (PythonSlicer) has no loadable-module classes: the .seg.nrrd it
    writes there is the one the plain-Python CLI writes (same voxels, names, colours, geometry)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pythonslicer_env import make_pythonslicer

    python = make_pythonslicer(tmp_path / "bin")
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_mrml import make_case, oblique_affine, SEGMENTS\n"
        "from autoimmuneai.output import mrml\n"
        "import slicer\n"
        "image, _, labelmap = make_case(oblique_affine())\n"
        "scene = slicer.vtkMRMLScene()\n"
        "node = mrml.segmentation_from_labelmap(scene, labelmap, image.affine, SEGMENTS, 'E')\n"
        f"mrml.write_node(node, {str(tmp_path / 'child.seg.nrrd')!r})\n"
        "print(len(REMOVED))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 50  # the loadable-module classes were really gone
    image, _, labelmap = make_case(oblique_affine())
    scene = slicer.vtkMRMLScene()  # kept: a node needs its scene to make a storage node
    here = mrml.segmentation_from_labelmap(scene, labelmap, image.affine, SEGMENTS, "E")
    mrml.write_node(here, tmp_path / "here.seg.nrrd")
    child = slicerio.read_segmentation(str(tmp_path / "child.seg.nrrd"))
    mine = slicerio.read_segmentation(str(tmp_path / "here.seg.nrrd"))
    assert np.array_equal(child["voxels"], mine["voxels"])
    assert np.allclose(child["ijkToLPS"], mine["ijkToLPS"])
    strip = [{k: v for k, v in s.items() if k != "id"} for s in child["segments"]]
    assert strip == [{k: v for k, v in s.items() if k != "id"} for s in mine["segments"]]
    assert [s["name"] for s in child["segments"]] == NAMES


def test_storage_helper_reuses_a_nodes_storage_node(tmp_path: Path) -> None:
    scene = slicer.vtkMRMLScene()
    node = mrml.volume_to_node(scene, Volume(np.ones((3, 4, 5), np.float32), np.eye(4)), "v")
    first = mrml.write_node(node, tmp_path / "a.nrrd")
    second = mrml.attach_storage_node(node, tmp_path / "b.nrrd")
    assert second is first and scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 1
    assert (tmp_path / "a.nrrd").is_file() and second.GetFileName().endswith("b.nrrd")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    assert mrml.attach_storage_node(chart, tmp_path / "c") is None
    with pytest.raises(OSError, match="cannot be stored"):
        mrml.write_node(chart, tmp_path / "c")


def test_module_imports_without_slicer() -> None:
    code = (
        "import sys\n"
        "for name in ('slicer', 'vtk', 'vtkmodules', 'slicer_core'):\n"
        "    sys.modules[name] = None\n"
        "import autoimmuneai.output.mrml, autoimmuneai.output.snapshot\n"
        "print(autoimmuneai.output.mrml.SegmentSpec(1, 'a', (1, 0, 0)).name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a"
