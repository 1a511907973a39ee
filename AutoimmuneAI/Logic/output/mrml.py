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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..contracts import (
    CASE_FILES,
    LAB_CONTRIBUTION_COLUMNS,
    ExplainedPrediction,
    survival_of,
)
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..data.imaging import Volume

ROLE_ATTRIBUTE = "AutoimmuneAI.Role"
"""Node attribute naming a node's role in a case scene (image, attribution, ...)."""

SCENE_ROLES = (
    "image",
    "attribution",
    "attribution_colors",
    "segmentation",
    "lab_contributions",
    "probabilities",
    "survival",
    "scene",
)
FILES: dict[str, str] = {role: CASE_FILES[role] for role in SCENE_ROLES}
"""File name of each role that ``scene.mrml`` references (from the output contract)."""


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
    # Slice views show nothing for a volume without a display node (vtkMRMLSliceLayerLogic);
    # Slicer's own helpers (addVolumeFromArray, the volumes logic) create one the same way.
    node.CreateDefaultDisplayNodes()
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


def terminology_entry() -> str:
    """Slicer's serialised terminology entry for an evidence region (standard DICOM codes).

    Written as the string itself, in the format of
    ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry`` (Slicer 5.10 and 5.12,
    ``Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologiesModuleLogic.cxx``):
    ``context~category~type~typeModifier~regionContext~region~regionModifier``, each code as
    ``scheme^value^meaning``. The terminology classes belong to a loadable module, which
    ``PythonSlicer`` (the background process) does not have.
    """

    def code(triple: tuple[str, str, str] | None) -> str:
        return "^".join(triple) if triple else "^^"

    return "~".join(
        (
            TERMINOLOGY_CONTEXT,
            code(CATEGORY_CODE),
            code(TYPE_CODE),
            code(None),
            ANATOMIC_CONTEXT,
            code(REGION_CODE),
            code(None),
        )
    )


def _oriented_labelmap(labelmap: np.ndarray, affine: np.ndarray) -> Any:
    """A vtkOrientedImageData (vtkSegmentationCore) holding ``labelmap`` with the affine's geometry."""
    slicer = _slicer()
    from vtkmodules.util.numpy_support import numpy_to_vtk

    array = np.asarray(labelmap, dtype=np.int16)  # labels are 1..32767 (checked)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*array.shape)
    scalars = numpy_to_vtk(np.ravel(array, order="F"), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(_matrix(affine))
    return image


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

    Built from MRML core and ``vtkSegmentationCore`` only (both in ``PythonSlicer``, where the
    Segmentations module's logic is absent): one vtkOrientedImageData holds the labelmap in
    its own geometry and every segment shares it as its binary labelmap, told apart by its
    label value, which is how Slicer stores a labelmap imported into a segmentation. Names are
    made ASCII with :func:`portable_name` so that every NRRD reader keeps them. The reference
    image geometry comes from ``reference_node`` (the image the segmentation belongs to) or,
    without one, from the labelmap itself. A label listed in ``segments`` but absent from the
    labelmap is an empty segment, so the legend is always complete.
    """
    slicer = _slicer()
    labelmap = np.asarray(labelmap)
    if not np.issubdtype(labelmap.dtype, np.integer) and not np.all(labelmap == np.round(labelmap)):
        raise InputError("labelmap must hold integer labels")
    if labelmap.ndim != 3:
        raise InputError(f"labelmap must be 3-D, got shape {labelmap.shape}")
    _check_segments(labelmap, segments)

    shared = _oriented_labelmap(labelmap, affine)
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    segmentation = seg_node.GetSegmentation()
    converter = slicer.vtkSegmentationConverter
    labelmap_name = converter.GetBinaryLabelmapRepresentationName()
    segmentation.SetSourceRepresentationName(labelmap_name)
    if reference_node is not None:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        seg_node.SetNodeReferenceID(
            seg_node.GetReferenceImageGeometryReferenceRole(), reference_node.GetID()
        )
    else:
        segmentation.SetConversionParameter(
            converter.GetReferenceImageGeometryParameterName(),
            converter.SerializeImageGeometry(shared),
        )
    entry = terminology_entry()
    for spec in segments:
        segment_name = portable_name(spec.name)
        segment = slicer.vtkSegment()
        segment.SetName(segment_name)
        segment.SetNameAutoGenerated(False)  # Slicer must not rename it from terminology
        segment.SetColor(*map(float, spec.color))
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(int(spec.label))
        segment.AddRepresentation(labelmap_name, shared)
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
        if spec.description:
            segment.SetTag("Description", portable_name(spec.description))
        if not segmentation.AddSegment(segment):
            raise InputError(f"could not add segment {segment_name!r} to {name!r}")
    return seg_node


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    )


def table_node(scene: Any, name: str, columns: dict[str, list]) -> Any:
    """A vtkMRMLTableNode with one column per entry: numeric (None -> NaN) or text columns."""
    from vtkmodules.vtkCommonCore import vtkAbstractArray, vtkDoubleArray, vtkStringArray

    lengths = {key: len(values) for key, values in columns.items()}
    if not columns or len(set(lengths.values())) != 1:
        raise InputError(f"table {name!r} needs columns of equal length, got {lengths}")
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for key, values in columns.items():
        array: vtkAbstractArray
        if all(_is_number(v) for v in values):
            numbers = vtkDoubleArray()
            for v in values:
                numbers.InsertNextValue(math.nan if v is None else float(v))
            array = numbers
        else:
            texts = vtkStringArray()
            for v in values:
                texts.InsertNextValue("" if v is None else str(v))
            array = texts
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
    y_range: tuple[float, float] | None = None,
) -> Any:
    """A vtkMRMLPlotChartNode with one bar or line series per y column of ``table``.

    A text x column (e.g. lab names) becomes the series' label column over bar indexes, which
    is how Slicer's plot view shows categorical bars. A line is a scatter series drawn with a
    solid line and no markers: ``PlotTypeLine`` spaces points equally and ignores the x column
    (a survival curve would show row numbers on its months axis). ``y_range`` fixes the y
    axis; Slicer applies it only with ``YAxisRangeAuto`` off.
    """
    slicer = _slicer()
    if kind not in ("bar", "line"):
        raise InputError(f"chart kind must be 'bar' or 'line', got {kind!r}")
    vtk_table = table.GetTable()
    for column in (x_column, *y_columns):
        if vtk_table.GetColumnByName(column) is None:
            raise InputError(f"table {table.GetName()!r} has no column {column!r}", field=column)
    text_x = vtk_table.GetColumnByName(x_column).GetDataTypeAsString() == "string"
    if kind == "line" and text_x:
        raise InputError(f"a line chart needs a numeric x column, {x_column!r} is text")
    series_class = slicer.vtkMRMLPlotSeriesNode
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
            series.SetPlotType(series_class.PlotTypeBar)
        else:
            series.SetPlotType(series_class.PlotTypeScatter)
            series.SetLineStyle(series_class.LineStyleSolid)
            series.SetMarkerStyle(series_class.MarkerStyleNone)
        series.SetColor(*_SERIES_COLORS[index % len(_SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_label or x_column)
    chart.SetYAxisTitle(y_label or ", ".join(y_columns))
    chart.SetLegendVisibility(len(y_columns) > 1)
    if y_range is not None:
        chart.SetYAxisRangeAuto(False)
        chart.SetYAxisRange(float(y_range[0]), float(y_range[1]))
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
    """The result charts over the case's tables: one builder for every path into a scene."""
    prefix = f"{class_name}: " if class_name else ""
    if nodes.get("lab_contributions") is not None:
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
        x_label="Class", y_label="Probability", y_range=(0.0, 1.0),
    )  # fmt: skip
    nodes["survival_chart"] = plot_chart(
        scene, "Progression-free survival", nodes["survival"], "time", ["survival"], "line",
        x_label="Months", y_label="Probability progression-free", y_range=(0.0, 1.0),
    )  # fmt: skip
    for role in ("lab_chart", "probability_chart", "survival_chart"):
        if role in nodes:
            _set_role(nodes[role], role)


def _probability_columns(probabilities: dict[str, float]) -> dict[str, list]:
    return {
        "class": [str(k) for k in probabilities],
        "probability": [float(v) for v in probabilities.values()],
    }


def _result_tables(
    scene: Any,
    lab_contributions: Sequence[Mapping[str, object]],
    probabilities: dict[str, float],
    survival: tuple[Sequence[float], Sequence[float]],
    prefix: str = "",
) -> dict[str, Any]:
    """The case's tables: lab contributions (when there are any), probabilities, survival."""
    tables: dict[str, Any] = {}
    if lab_contributions:
        tables["lab_contributions"] = table_node(
            scene, f"{prefix}Lab contributions", _lab_columns(lab_contributions)
        )
    tables["probabilities"] = table_node(
        scene, f"{prefix}Class probabilities", _probability_columns(probabilities)
    )
    tables["survival"] = table_node(scene, f"{prefix}Survival curve", _survival_columns(survival))
    return tables


def add_result_nodes(
    scene: Any, prediction: ExplainedPrediction, prefix: str = ""
) -> dict[str, Any]:
    """Tables and charts of a prediction that has only ``prediction.json`` (no scene files).

    The same tables, columns and charts as a case folder written by :func:`write_case_scene`
    (the lab chart only when the prediction holds lab contributions), so the Slicer module
    shows every result the same way. Returns the nodes by role.
    """
    labs = list(prediction.get("lab_contributions") or [])
    lead = f"{prefix} " if prefix else ""
    nodes = _result_tables(scene, labs, prediction["probabilities"], survival_of(prediction), lead)
    for role, node in nodes.items():
        _set_role(node, role)
    explanation = prediction.get("explanation") or {}
    _charts(scene, nodes, str(explanation.get("explained_class", "")))
    return nodes


def _lab_columns(lab_contributions: Sequence[Mapping[str, object]]) -> dict[str, list]:
    for row, item in enumerate(lab_contributions, start=1):
        missing = [key for key in LAB_CONTRIBUTION_COLUMNS if key not in item]
        if missing:
            raise InputError(f"lab contribution lacks {missing}", row=row, field=missing[0])
    return {key: [item[key] for item in lab_contributions] for key in LAB_CONTRIBUTION_COLUMNS}


def _survival_columns(survival: tuple[Sequence[float], Sequence[float]]) -> dict[str, list]:
    times, values = (list(map(float, s)) for s in survival)
    if len(times) != len(values) or not times:
        raise InputError("survival curve needs equally long, non-empty times and probabilities")
    return {"time": times, "survival": values}


def _same_grid(a: Volume, b: Volume) -> bool:
    return np.shape(a.array) == np.shape(b.array) and np.allclose(a.affine, b.affine, atol=1e-4)


def attach_storage_node(node: Any, path: str | Path) -> Any:
    """The node's storage node (its default kind, created and added when it has none) on ``path``.

    The one place that wires a storage node: writing a case, reading one back and saving a
    whole scene (``AutoimmuneAILib.logic.saveScene``) all go through it. Returns None for a
    node that has no storage (e.g. a chart).
    """
    if not node.IsA("vtkMRMLStorableNode"):
        return None
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            return None
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    return storage


def write_node(node: Any, path: str | Path, compress: bool = True) -> Any:
    """Write ``node`` to ``path`` with its storage node; OSError naming the file when it fails."""
    storage = attach_storage_node(node, path)
    if storage is None:
        raise OSError(f"{node.GetName()!r} cannot be stored in a file ({Path(path).name})")
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(node):
        raise OSError(f"could not write {Path(path).name}")
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
    _lab_columns(lab_contributions)  # every check before anything is written
    _survival_columns(survival)

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
        nodes.update(_result_tables(scene, lab_contributions, probabilities, survival))
        _style_image(nodes["image"])
        _style_attribution(nodes["attribution"], nodes["attribution_colors"])
        _style_segmentation(nodes["segmentation"])
        for role, node in nodes.items():
            _set_role(node, role)
            write_node(node, stage / FILES[role])
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
    storage = attach_storage_node(node, path)
    if storage is None or not storage.ReadData(node):
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
