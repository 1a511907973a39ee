"""One case's evidence as real Slicer MRML nodes and files: volumes, segmentation, tables, charts.

Everything goes through Slicer's own MRML classes and storage nodes (the ``slicer-core`` wheel
outside Slicer, the application's libraries inside it), so what is written is exactly what
Slicer reads. ``slicer`` and ``vtk`` are imported lazily: importing this module never needs
them. Geometry: a ``Volume`` affine maps voxel (i, j, k) to RAS, which is MRML's IJKToRAS
matrix, so no LPS conversion happens here (the storage nodes do it when writing files).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..data.imaging import Volume

ROLE_ATTRIBUTE = "AutoimmuneAI.Role"
"""Node attribute naming a node's role in a case scene (image, attribution, ...)."""

FILES: dict[str, str] = {
    "image": "image.nii.gz",
    "attribution": "attribution.nii.gz",
    "attribution_colors": "attribution_colors.ctbl",
    "segmentation": "evidence.seg.nrrd",
    "lab_contributions": "lab_contributions.tsv",
    "probabilities": "probabilities.tsv",
    "survival": "survival.tsv",
    "scene": "scene.mrml",
}
"""File name of each role inside a case folder (the output contract in DESIGN.md)."""

LAB_COLUMNS = ("feature", "label", "value", "unit", "contribution")

# Evidence regions are places the model looked at, not a diagnosis of tissue, so the standard
# code makes no pathology claim: DICOM "Spatial and Relational Concept" / "Reference Region".
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY_CODE = ("SCT", "309825002", "Spatial and Relational Concept")
TYPE_CODE = ("NCIt", "C94970", "Reference Region")
REGION_CODE = ("SCT", "12738006", "Brain")


@dataclass
class SegmentSpec:
    """One segment of a labelmap: voxel value, display name, RGB colour in [0, 1]."""

    label: int
    name: str
    color: tuple[float, float, float]
    description: str = ""


_ASCII_PUNCTUATION = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u00b5": "u",
     "\u201c": '"', "\u201d": '"', "\u00d7": "x", "\u2265": ">=", "\u2264": "<="}
)  # fmt: skip


def portable_name(name: str) -> str:
    """``name`` in plain ASCII ("region 1 \u2014 2.4 mL" -> "region 1 - 2.4 mL").

    NRRD headers are ASCII by specification; Slicer writes UTF-8 there, but common readers
    (pynrrd, hence slicerio) silently drop non-ASCII characters, so segment names are made
    portable before they are written.
    """
    text = unicodedata.normalize("NFKD", str(name).translate(_ASCII_PUNCTUATION))
    return " ".join(text.encode("ascii", "ignore").decode("ascii").split())


def _slicer() -> Any:
    """The ``slicer`` module (Slicer's own, or the ``slicer-core`` wheel), imported on use."""
    try:
        import slicer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Slicer MRML libraries are needed for this step: run inside 3D Slicer or "
            "`pip install autoimmuneai[slicer]` (slicer-core)"
        ) from error
    return slicer


def _matrix(affine: np.ndarray) -> Any:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    matrix = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    return matrix


def _affine(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _image_data(array: np.ndarray) -> Any:
    """vtkImageData holding ``array`` [i, j, k] (VTK's x index runs fastest: Fortran order)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData

    if array.ndim != 3:
        raise InputError(f"volume must be 3-D, got shape {array.shape}")
    image = vtkImageData()
    image.SetDimensions(*array.shape)
    scalars = numpy_to_vtk(np.ravel(array, order="F"), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def _array(image: Any) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError("only single-component volumes are supported")
    return vtk_to_numpy(scalars).reshape(dims, order="F").copy()


def volume_to_node(scene: Any, volume: Volume, name: str) -> Any:
    """Add ``volume`` to ``scene`` as a vtkMRMLScalarVolumeNode; IJKToRAS is the affine."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(_matrix(volume.affine))
    node.SetAndObserveImageData(_image_data(_compact(volume.array)))
    return node


def _compact(array: np.ndarray) -> np.ndarray:
    """int16 when that is lossless (most scanners' images), else float32: the same voxel
    values in half the bytes, and a file that compresses several times faster."""
    array = np.asarray(array)
    if array.size and np.issubdtype(array.dtype, np.number):
        lo, hi = float(array.min()), float(array.max())
        if lo >= -32768 and hi <= 32767:
            as_int = array.astype(np.int16)
            if np.array_equal(as_int, array):
                return as_int
    return np.asarray(array, dtype=np.float32)


def node_to_volume(node: Any) -> Volume:
    """The inverse of :func:`volume_to_node`: the node's voxels [i, j, k] and IJKToRAS."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    from ..data.imaging import Volume

    image = node.GetImageData()
    if image is None:
        raise InputError(f"volume node {node.GetName()!r} has no image data")
    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return Volume(_array(image).astype(np.float32, copy=False), _affine(matrix))


def _labelmap_node(scene: Any, labelmap: np.ndarray, affine: np.ndarray, name: str) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    node.SetIJKToRASMatrix(_matrix(affine))
    node.SetAndObserveImageData(_image_data(np.asarray(labelmap, dtype=np.int16)))
    return node


def terminology_entry() -> str:
    """Slicer's serialised terminology entry for an evidence region (standard DICOM codes)."""
    slicer = _slicer()
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    for obj, (scheme, value, meaning) in (
        (entry.GetCategoryObject(), CATEGORY_CODE),
        (entry.GetTypeObject(), TYPE_CODE),
        (entry.GetRegionObject(), REGION_CODE),
    ):
        obj.SetCodingSchemeDesignator(scheme)
        obj.SetCodeValue(value)
        obj.SetCodeMeaning(meaning)
    entry.SetRegionContextName(ANATOMIC_CONTEXT)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def _check_segments(labelmap: np.ndarray, segments: Sequence[SegmentSpec]) -> None:
    labels = [int(s.label) for s in segments]
    if any(v <= 0 or v > 32767 for v in labels):
        raise InputError(f"segment labels must be in 1..32767, got {labels}", field="label")
    if len(set(labels)) != len(labels):
        raise InputError(f"segment labels must be unique, got {labels}", field="label")
    present = {int(v) for v in np.unique(labelmap)} - {0}
    unnamed = sorted(present - set(labels))
    if unnamed:
        raise InputError(f"labelmap values {unnamed} have no segment", field="label")
    for spec in segments:
        if len(spec.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in spec.color):
            raise InputError(f"segment {spec.name!r}: colour must be 3 values in [0, 1]")


def segmentation_from_labelmap(
    scene: Any,
    labelmap: np.ndarray,
    affine: np.ndarray,
    segments: list[SegmentSpec],
    name: str,
    reference_node: Any = None,
) -> Any:
    """A vtkMRMLSegmentationNode with one named, coloured, coded segment per label.

    Names are made ASCII with :func:`portable_name` so that every NRRD reader keeps them.
    Imported with ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode`` so
    the geometry is Slicer's own; the reference image geometry comes from ``reference_node``
    (the image the segmentation belongs to) or, without one, from the labelmap itself.
    Labels listed in ``segments`` but absent from the labelmap become empty segments, so the
    legend is always complete.
    """
    slicer = _slicer()
    labelmap = np.asarray(labelmap)
    if not np.issubdtype(labelmap.dtype, np.integer) and not np.all(labelmap == np.round(labelmap)):
        raise InputError("labelmap must hold integer labels")
    _check_segments(labelmap, segments)

    label_node = _labelmap_node(scene, labelmap, affine, f"{name} labels")
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name} colours")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(s.label for s in segments) + 1 if segments else 1)
    colors.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for spec in segments:
        colors.SetColor(spec.label, portable_name(spec.name), *map(float, spec.color), 1.0)
    label_display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    label_display.SetAndObserveColorNodeID(colors.GetID())
    label_node.SetAndObserveDisplayNodeID(label_display.GetID())

    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    geometry_node = reference_node if reference_node is not None else label_node
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(geometry_node)
    if reference_node is not None:
        seg_node.SetNodeReferenceID(
            seg_node.GetReferenceImageGeometryReferenceRole(), reference_node.GetID()
        )
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        label_node, seg_node
    )
    for node in (label_node, label_display, colors):
        scene.RemoveNode(node)
    if not ok:
        raise InputError(f"Slicer could not import the labelmap for {name!r}")

    segmentation = seg_node.GetSegmentation()
    by_name = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        by_name[segment.GetName()] = segment
    entry = terminology_entry()
    for spec in segments:
        name = portable_name(spec.name)
        segment = by_name.get(name)
        if segment is None:
            # Only absent labels are missing; give them an empty segment with their value.
            segment_id = segmentation.AddEmptySegment("", name, list(map(float, spec.color)))
            segment = segmentation.GetSegment(segment_id)
        segment.SetName(name)
        segment.SetNameAutoGenerated(False)  # Slicer must not rename it from terminology
        segment.SetColor(*map(float, spec.color))
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(int(spec.label))
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
        if spec.description:
            segment.SetTag("Description", portable_name(spec.description))
    return seg_node


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    )


def table_node(scene: Any, name: str, columns: dict[str, list]) -> Any:
    """A vtkMRMLTableNode with one column per entry: numeric (None -> NaN) or text columns."""
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray

    lengths = {key: len(values) for key, values in columns.items()}
    if not columns or len(set(lengths.values())) != 1:
        raise InputError(f"table {name!r} needs columns of equal length, got {lengths}")
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for key, values in columns.items():
        if all(_is_number(v) for v in values):
            array = vtkDoubleArray()
            for v in values:
                array.InsertNextValue(math.nan if v is None else float(v))
        else:
            array = vtkStringArray()
            for v in values:
                array.InsertNextValue("" if v is None else str(v))
        array.SetName(str(key))
        table.AddColumn(array)
    node.Modified()
    return node


_SERIES_COLORS = ((0.20, 0.45, 0.75), (0.85, 0.35, 0.15), (0.30, 0.65, 0.30), (0.55, 0.35, 0.70))


def plot_chart(
    scene: Any,
    name: str,
    table: Any,
    x_column: str,
    y_columns: list[str],
    kind: Literal["bar", "line"],
    x_label: str = "",
    y_label: str = "",
) -> Any:
    """A vtkMRMLPlotChartNode with one bar or line series per y column of ``table``.

    A text x column (e.g. lab names) becomes the series' label column over bar indexes, which
    is how Slicer's plot view shows categorical bars.
    """
    slicer = _slicer()
    if kind not in ("bar", "line"):
        raise InputError(f"chart kind must be 'bar' or 'line', got {kind!r}")
    vtk_table = table.GetTable()
    for column in (x_column, *y_columns):
        if vtk_table.GetColumnByName(column) is None:
            raise InputError(f"table {table.GetName()!r} has no column {column!r}", field=column)
    text_x = vtk_table.GetColumnByName(x_column).GetDataTypeAsString() == "string"
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for index, column in enumerate(y_columns):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name}: {column}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetYColumnName(column)
        if text_x:
            series.SetXColumnName("")
            series.SetLabelColumnName(x_column)
        else:
            series.SetXColumnName(x_column)
        if kind == "bar":
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        else:
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*_SERIES_COLORS[index % len(_SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_label or x_column)
    chart.SetYAxisTitle(y_label or ", ".join(y_columns))
    chart.SetLegendVisibility(len(y_columns) > 1)
    return chart


def diverging_color_node(scene: Any, name: str = "Attribution (blue-white-red)") -> Any:
    """A 256-entry blue-white-red colour table: negative evidence blue, none white, positive red."""
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for index in range(256):
        t = index / 255.0 * 2.0 - 1.0  # -1 .. 1
        if t < 0:
            rgb = (1.0 + t * 0.8, 1.0 + t * 0.7, 1.0 + t * 0.25)  # to (0.2, 0.3, 0.75)
        else:
            rgb = (1.0 - t * 0.3, 1.0 - t * 0.85, 1.0 - t * 0.85)  # to (0.7, 0.15, 0.15)
        node.SetColor(index, f"{t:+.3f}", *rgb, 1.0)
    return node


def _set_role(node: Any, role: str) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)


def _style_image(node: Any) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOn()


def _style_attribution(node: Any, colors: Any) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colors.GetID())
    array = _array(node.GetImageData())
    bound = float(np.nanmax(np.abs(array))) if array.size else 0.0
    bound = bound if bound > 0 and math.isfinite(bound) else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(-bound, bound)  # symmetric: zero is white


def _style_segmentation(node: Any) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(0.5)
    display.SetOpacity2DOutline(1.0)


def _charts(scene: Any, nodes: dict[str, Any], class_name: str) -> None:
    prefix = f"{class_name}: " if class_name else ""
    nodes["lab_chart"] = plot_chart(
        scene,
        f"{prefix}lab contributions",
        nodes["lab_contributions"],
        "label",
        ["contribution"],
        "bar",
        x_label="Lab value",
        y_label=f"Contribution to {class_name}" if class_name else "Contribution",
    )
    nodes["probability_chart"] = plot_chart(
        scene, "Class probabilities", nodes["probabilities"], "class", ["probability"], "bar",
        x_label="Class", y_label="Probability",
    )  # fmt: skip
    nodes["survival_chart"] = plot_chart(
        scene, "Progression-free survival", nodes["survival"], "time", ["survival"], "line",
        x_label="Months", y_label="Probability progression-free",
    )  # fmt: skip
    for role in ("lab_chart", "probability_chart", "survival_chart"):
        _set_role(nodes[role], role)


def _lab_columns(lab_contributions: list[dict]) -> dict[str, list]:
    for row, item in enumerate(lab_contributions, start=1):
        missing = [key for key in LAB_COLUMNS if key not in item]
        if missing:
            raise InputError(f"lab contribution lacks {missing}", row=row, field=missing[0])
    return {key: [item[key] for item in lab_contributions] for key in LAB_COLUMNS}


def _survival_columns(survival: tuple[Sequence[float], Sequence[float]]) -> dict[str, list]:
    times, values = (list(map(float, s)) for s in survival)
    if len(times) != len(values) or not times:
        raise InputError("survival curve needs equally long, non-empty times and probabilities")
    return {"time": times, "survival": values}


def _same_grid(a: Volume, b: Volume) -> bool:
    return np.shape(a.array) == np.shape(b.array) and np.allclose(a.affine, b.affine, atol=1e-4)


def _storage(node: Any, path: Path) -> Any:
    storage = node.CreateDefaultStorageNode()
    node.GetScene().AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(1)
    if not storage.WriteData(node):
        raise OSError(f"could not write {path.name}")
    return storage


def write_case_scene(
    out_dir: Path,
    *,
    image: Volume,
    attribution: Volume,
    labelmap: np.ndarray,
    segments: list[SegmentSpec],
    lab_contributions: list[dict],
    probabilities: dict[str, float],
    survival: tuple[list[float], list[float]],
    class_name: str,
) -> dict[str, Path]:
    """Write one case's evidence as Slicer files plus a ``scene.mrml`` that loads them all.

    The attribution and the labelmap must be on the image's grid (map them back first). Files
    are written into a hidden staging folder inside ``out_dir`` and moved in one by one,
    ``scene.mrml`` last, so a reader never sees a scene whose files are missing. Paths in the
    scene are relative: the folder can be moved or zipped. Returns the path of each role.
    """
    slicer = _slicer()
    out_dir = Path(out_dir).resolve()  # MRML storage nodes resolve relative paths twice
    if not _same_grid(image, attribution):
        raise InputError("attribution must be on the image's grid", file=FILES["attribution"])
    if np.shape(labelmap) != np.shape(image.array):
        raise InputError(
            f"labelmap shape {np.shape(labelmap)} differs from image {np.shape(image.array)}",
            file=FILES["segmentation"],
        )
    lab_columns = _lab_columns(lab_contributions)
    survival_columns = _survival_columns(survival)
    probability_columns = {
        "class": [str(k) for k in probabilities],
        "probability": [float(v) for v in probabilities.values()],
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tmp-scene-", dir=out_dir))
    try:
        scene = slicer.vtkMRMLScene()
        scene.SetRootDirectory(str(stage))
        scene.SetURL(str(stage / FILES["scene"]))
        nodes: dict[str, Any] = {}
        nodes["image"] = volume_to_node(scene, image, "Image")
        nodes["attribution_colors"] = diverging_color_node(scene)
        nodes["attribution"] = volume_to_node(scene, attribution, f"Attribution for {class_name}")
        nodes["segmentation"] = segmentation_from_labelmap(
            scene, labelmap, image.affine, segments, f"Evidence for {class_name}", nodes["image"]
        )
        nodes["lab_contributions"] = table_node(scene, "Lab contributions", lab_columns)
        nodes["probabilities"] = table_node(scene, "Class probabilities", probability_columns)
        nodes["survival"] = table_node(scene, "Survival curve", survival_columns)
        _style_image(nodes["image"])
        _style_attribution(nodes["attribution"], nodes["attribution_colors"])
        _style_segmentation(nodes["segmentation"])
        for role, node in nodes.items():
            _set_role(node, role)
            _storage(node, stage / FILES[role])
        _charts(scene, nodes, class_name)
        if not scene.Commit():
            raise OSError(f"could not write {FILES['scene']}")
        written = sorted(stage.iterdir(), key=lambda p: p.name == FILES["scene"])
        for path in written:
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {role: out_dir / name for role, name in FILES.items()}


def _read(scene: Any, class_name: str, path: Path, name: str) -> Any:
    if not path.is_file():
        raise InputError("file is missing", file=path)
    node = scene.AddNewNodeByClass(class_name, name)
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError("Slicer could not read the file", file=path)
    return node


def import_case_outputs(scene: Any, case_dir: Path) -> dict[str, object]:
    """Load a case folder written by :func:`write_case_scene` into an existing scene.

    Used by the Slicer module after a background run: reads the files with Slicer's storage
    nodes (not the .mrml, so the user's scene keeps its own URL and views) and rebuilds the
    display settings and charts exactly as the written scene has them. Returns nodes by role.
    """
    case_dir = Path(case_dir).resolve()
    case = case_dir.name
    nodes: dict[str, Any] = {}
    nodes["image"] = _read(
        scene, "vtkMRMLScalarVolumeNode", case_dir / FILES["image"], f"{case} image"
    )
    nodes["attribution"] = _read(
        scene, "vtkMRMLScalarVolumeNode", case_dir / FILES["attribution"], f"{case} attribution"
    )
    nodes["attribution_colors"] = diverging_color_node(scene, f"{case} attribution colours")
    nodes["segmentation"] = _read(
        scene, "vtkMRMLSegmentationNode", case_dir / FILES["segmentation"], f"{case} evidence"
    )
    nodes["segmentation"].SetReferenceImageGeometryParameterFromVolumeNode(nodes["image"])
    nodes["segmentation"].SetNodeReferenceID(
        nodes["segmentation"].GetReferenceImageGeometryReferenceRole(), nodes["image"].GetID()
    )
    for role, label in (
        ("lab_contributions", "lab contributions"),
        ("probabilities", "class probabilities"),
        ("survival", "survival curve"),
    ):
        nodes[role] = _read(scene, "vtkMRMLTableNode", case_dir / FILES[role], f"{case} {label}")
    _style_image(nodes["image"])
    _style_attribution(nodes["attribution"], nodes["attribution_colors"])
    _style_segmentation(nodes["segmentation"])
    for role, node in nodes.items():
        _set_role(node, role)
    _charts(scene, nodes, case)
    return nodes
