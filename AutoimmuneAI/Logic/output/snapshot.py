"""The picture a user sees in Slicer, rendered offscreen: three slice views with the evidence.

Each panel is a real Slicer slice view: ``vtkMRMLSliceLogic`` reslices and colours the image
through its display node (what Slicer's slice viewers show as the background layer) and
``vtkMRMLSegmentationsDisplayableManager2D`` (Slicer's own displayable manager) draws the
segmentation's fill and outline on top. VTK renders offscreen (EGL or OSMesa), so no display
and no Qt are needed. The three views pass through ``center_ras`` and are composed side by
side: axial | coronal | sagittal, in radiological convention (patient right on screen left).
"""

from __future__ import annotations

import ctypes.util
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .mrml import SegmentSpec, _slicer, segmentation_from_labelmap, volume_to_node

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..data.imaging import Volume

ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
FILL_OPACITY = 0.6
"""Segment fill opacity in the snapshot (Slicer's default is 0.5; a bit more reads better)."""
RESEARCH_NOTICE = "Research use only - not for clinical decisions"
SYNTHETIC_NOTICE = "Synthetic data - research use only"
LEGEND_COLUMNS = 3


def prefer_headless_window() -> None:
    """On Linux without a display, have VTK create its EGL (else OSMesa) window directly.

    VTK otherwise tries X first and logs "bad X server connection" before falling back,
    which lands in the middle of a progress bar on every headless machine. An explicit
    ``VTK_DEFAULT_OPENGL_WINDOW`` is left alone.
    """
    if not sys.platform.startswith("linux") or "VTK_DEFAULT_OPENGL_WINDOW" in os.environ:
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if ctypes.util.find_library("EGL"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkOSOpenGLRenderWindow"


def orientation_letters(slice_to_ras: np.ndarray) -> dict[str, str]:
    """Anatomical letters at a slice view's left, right, top and bottom edges.

    Screen x (right) and y (up) are the first two columns of the slice-to-RAS matrix; an
    edge gets the letter of the RAS axis its direction mostly follows (R/L, A/P, S/I).
    """
    positive, negative = "RAS", "LPI"

    def letter(direction: np.ndarray) -> str:
        k = int(np.argmax(np.abs(direction)))
        return positive[k] if direction[k] > 0 else negative[k]

    m = np.asarray(slice_to_ras, dtype=np.float64)[:3, :3]
    x, y = m[:, 0], m[:, 1]
    return {"left": letter(-x), "right": letter(x), "top": letter(y), "bottom": letter(-y)}


def default_fov_mm(volume: Volume, center_ras: tuple[float, float, float]) -> float:
    """Field of view (mm) that shows the whole object (head) in all three panels.

    The panels are centred on ``center_ras``, so the view spans twice the largest RAS
    distance from it to the corners of the foreground's bounding box (the whole volume when
    no foreground stands out), plus a 5% margin.
    """
    from ..data.imaging import foreground_mask

    array = np.asarray(volume.array)
    mask = foreground_mask(array)
    if mask.any():
        nonzero = np.nonzero(mask)
        box = [(float(ax.min()), float(ax.max())) for ax in nonzero]
    else:
        box = [(0.0, n - 1.0) for n in array.shape]
    corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1)
    ras = (np.asarray(volume.affine)[:3, :3] @ corners).T + np.asarray(volume.affine)[:3, 3]
    half = float(np.max(np.abs(ras - np.asarray(center_ras, dtype=np.float64))))
    return max(2.0 * half * 1.05, 1.0)


class _SliceView:
    """One offscreen slice view: slice logic + displayable managers + a render window."""

    def __init__(self, slicer: Any, scene: Any, app_logic: Any, name: str, size: int) -> None:
        from vtkmodules.vtkRenderingCore import (
            vtkActor2D,
            vtkImageMapper,
            vtkRenderer,
            vtkRenderWindow,
            vtkRenderWindowInteractor,
        )

        self.size = size
        self.renderer = vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window = vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.AddRenderer(self.renderer)
        self.window.SetSize(size, size)
        # Displayable managers attach their widgets to the window's interactor: give it one.
        self.interactor = vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for manager in ("vtkMRMLSegmentationsDisplayableManager2D",):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddSliceNode(name)
        self.managers.SetMRMLDisplayableNode(self.node)

        # Slicer's slice viewer draws the logic's blended layers as a background 2-D image.
        self.mapper = vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtkActor2D()
        actor.SetMapper(self.mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(actor)

    def show(
        self, volume_id: str, orientation: str, center_ras: tuple, fov_mm: float
    ) -> dict[str, str]:
        """Point the view at ``center_ras``; return its orientation letters."""
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_id)
        self.node.SetOrientation(orientation)
        self.logic.ResizeSliceNode(self.size, self.size)
        self.node.SetFieldOfView(fov_mm, fov_mm, self.node.GetFieldOfView()[2])
        self.node.JumpSliceByCentering(*map(float, center_ras))
        self.node.UpdateMatrices()
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        matrix = self.node.GetSliceToRAS()
        return orientation_letters(
            np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
        )

    def capture(self) -> np.ndarray:
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        self.managers.RequestRender()
        self.window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, 3)
        return rgb[::-1].copy()  # VTK rows start at the bottom

    def close(self, app_logic: Any) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        app_logic.GetSliceLogics().RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)
        self.window.Finalize()


def _annotated_png(
    canvas: np.ndarray,
    side: int,
    top: int,
    letters: list[dict[str, str]],
    segments: list[SegmentSpec],
    case_id: str | None,
    notice: str,
) -> bytes:
    """The panels with their orientation letters, and below them a strip with the case id,
    the research-use notice and the colour legend of the segments; PNG bytes.

    Drawn with Matplotlib's Agg canvas at one figure pixel per image pixel, so the panels
    keep their exact pixel geometry.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    font = max(7.0, side / 28.0)
    line = int(round(font * 1.9))
    char = font * 0.62  # a character's width, roughly, in pixels (DejaVu Sans)
    longest = max((len(str(s.name)) for s in segments), default=1)
    columns = int(max(1, min(LEGEND_COLUMNS, canvas.shape[1] // (longest * char + 4 * font))))
    fits = max(4, int((canvas.shape[1] / columns - 3 * font) / char))
    legend_rows = -(-len(segments) // columns) if segments else 1
    strip = line * (1 + legend_rows) + line // 2
    height, width = canvas.shape[0] + strip, canvas.shape[1]
    full = np.zeros((height, width, 3), dtype=np.uint8)
    full[: canvas.shape[0]] = canvas
    fig = Figure(figsize=(width / 100.0, height / 100.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(full, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    style: dict[str, Any] = {"color": "#ffd54f", "fontsize": font, "fontweight": "bold"}
    pad = font * 0.9
    for index, edge in enumerate(letters):
        x0, mid = index * side, top + side / 2
        ax.text(x0 + pad, mid, edge["left"], ha="left", va="center", **style)
        ax.text(x0 + side - pad, mid, edge["right"], ha="right", va="center", **style)
        ax.text(x0 + side / 2, top + pad, edge["top"], ha="center", va="top", **style)
        ax.text(x0 + side / 2, top + side - pad, edge["bottom"], ha="center", va="bottom", **style)
    y = canvas.shape[0] + line * 0.75
    text: dict[str, Any] = {"color": "white", "fontsize": font, "va": "center"}
    ax.text(pad, y, f"Case {case_id}" if case_id else "Case (no id)", ha="left", **text)
    ax.text(width - pad, y, notice, ha="right", **{**text, "color": "#ffb74d"})
    if not segments:
        ax.text(pad, y + line, "No evidence region above the bands", ha="left", **text)
    column_width = width / columns
    for i, segment in enumerate(segments):
        row, col = divmod(i, columns)
        cy, cx = y + line * (row + 1), pad + col * column_width
        box = font * 1.1
        ax.add_patch(Rectangle((cx, cy - box / 2), box, box, color=tuple(segment.color), lw=0))
        name = str(segment.name)
        name = name if len(name) <= fits else name[: fits - 1] + "\u2026"
        ax.text(cx + box * 1.5, cy, name, ha="left", **text)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def render_snapshot(
    image: Volume,
    labelmap: np.ndarray,
    segments: list[SegmentSpec],
    center_ras: tuple[float, float, float],
    out_png: Path,
    *,
    size: tuple[int, int] = (768, 256),
    fov_mm: float | None = None,
    case_id: str | None = None,
    synthetic: bool = False,
) -> Path:
    """Render axial, coronal and sagittal slices through ``center_ras`` with the segments.

    The panel area is ``size`` (width, height) pixels holding three square panels of side
    ``min(width // 3, height)``, each centred on ``center_ras`` and ``fov_mm`` millimetres
    wide (default: :func:`default_fov_mm`, the whole head), with orientation letters at their
    edges; the legend strip (case id, research-use notice, "synthetic" when ``synthetic``,
    one colour swatch per segment) is added below it, so the PNG is that much taller. A point (R, A, S) lands in the axial panel at column
    ``side/2 - (R - Rc) * side / fov`` and row ``side/2 - (A - Ac) * side / fov`` from its
    top-left corner (patient right on screen left, anterior up), as in Slicer's Red view.
    """
    prefer_headless_window()
    slicer = _slicer()
    from vtkmodules.vtkCommonCore import vtkCollection

    side = int(min(size[0] // 3, size[1]))
    if side < 16:
        raise InputError(f"snapshot size {size} is too small", field="size")
    if np.shape(labelmap) != np.shape(image.array):
        raise InputError(
            f"labelmap shape {np.shape(labelmap)} differs from image {np.shape(image.array)}"
        )
    fov = float(fov_mm) if fov_mm else default_fov_mm(image, center_ras)

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

    volume_node = volume_to_node(scene, image, "Image")
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOff()
    low, high = np.percentile(np.asarray(image.array, dtype=np.float32), [1.0, 99.5])
    display.SetWindowLevelMinMax(float(low), float(high) if high > low else float(low) + 1.0)
    seg_node = segmentation_from_labelmap(
        scene, labelmap, image.affine, segments, "Evidence", volume_node
    )
    seg_display = seg_node.GetDisplayNode()
    seg_display.SetOpacity2DFill(FILL_OPACITY)
    seg_display.SetOpacity2DOutline(1.0)

    panels, letters = [], []
    view = _SliceView(slicer, scene, app_logic, "Snapshot", side)
    try:
        for orientation in ORIENTATIONS:
            letters.append(view.show(volume_node.GetID(), orientation, center_ras, fov))
            panels.append(view.capture())
    finally:
        view.close(app_logic)
    canvas = np.zeros((int(size[1]), int(size[0]), 3), dtype=np.uint8)
    top = (canvas.shape[0] - side) // 2
    for index, panel in enumerate(panels):
        canvas[top : top + side, index * side : (index + 1) * side] = panel[:side, :side]
    notice = SYNTHETIC_NOTICE if synthetic else RESEARCH_NOTICE
    png = _annotated_png(canvas, side, top, letters, segments, case_id, notice)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(png)
    return out_png
