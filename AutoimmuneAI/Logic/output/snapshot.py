"""The picture a user sees in Slicer, rendered offscreen: three slice views with the evidence.

Each panel is a real Slicer slice view: ``vtkMRMLSliceLogic`` reslices and colours the image
through its display node (what Slicer's slice viewers show as the background layer) and
``vtkMRMLSegmentationsDisplayableManager2D`` (Slicer's own displayable manager) draws the
segmentation's fill and outline on top. VTK renders offscreen (EGL or OSMesa), so no display
and no Qt are needed. The three views pass through ``center_ras`` and are composed side by
side: axial | coronal | sagittal, in radiological convention (patient right on screen left).
"""

from __future__ import annotations

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

    def show(self, volume_id: str, orientation: str, center_ras: tuple, fov_mm: float) -> None:
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_id)
        self.node.SetOrientation(orientation)
        self.logic.ResizeSliceNode(self.size, self.size)
        self.node.SetFieldOfView(fov_mm, fov_mm, self.node.GetFieldOfView()[2])
        self.node.JumpSliceByCentering(*map(float, center_ras))
        self.node.UpdateMatrices()
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())

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


def _write_png(rgb: np.ndarray, path: Path) -> None:
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkIOImage import vtkPNGWriter

    h, w, _ = rgb.shape
    image = vtkImageData()
    image.SetDimensions(w, h, 1)
    scalars = numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True)
    image.GetPointData().SetScalars(scalars)
    writer = vtkPNGWriter()
    writer.SetInputData(image)
    writer.SetFileName(str(path))
    writer.Write()


def render_snapshot(
    image: Volume,
    labelmap: np.ndarray,
    segments: list[SegmentSpec],
    center_ras: tuple[float, float, float],
    out_png: Path,
    *,
    size: tuple[int, int] = (768, 256),
    fov_mm: float | None = None,
) -> Path:
    """Render axial, coronal and sagittal slices through ``center_ras`` with the segments.

    The PNG is ``size`` (width, height) pixels holding three square panels of side
    ``min(width // 3, height)``, each centred on ``center_ras`` and ``fov_mm`` millimetres
    wide (default: :func:`default_fov_mm`, the whole head). A point (R, A, S) lands in the axial panel at column
    ``side/2 - (R - Rc) * side / fov`` and row ``side/2 - (A - Ac) * side / fov`` from its
    top-left corner (patient right on screen left, anterior up), as in Slicer's Red view.
    """
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

    panels = []
    view = _SliceView(slicer, scene, app_logic, "Snapshot", side)
    try:
        for orientation in ORIENTATIONS:
            view.show(volume_node.GetID(), orientation, center_ras, fov)
            panels.append(view.capture())
    finally:
        view.close(app_logic)
    canvas = np.zeros((int(size[1]), int(size[0]), 3), dtype=np.uint8)
    top = (canvas.shape[0] - side) // 2
    for index, panel in enumerate(panels):
        canvas[top : top + side, index * side : (index + 1) * side] = panel[:side, :side]
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        _write_png(canvas, tmp)
    return out_png
