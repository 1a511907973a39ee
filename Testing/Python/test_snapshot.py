"""Offscreen snapshots through Slicer's slice logic and segmentation displayable manager."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402
from vtkmodules.vtkIOImage import vtkPNGReader  # noqa: E402

from autoimmuneai.data.imaging import Volume  # noqa: E402
from autoimmuneai.output.mrml import SegmentSpec  # noqa: E402
from autoimmuneai.output.snapshot import (  # noqa: E402
    RESEARCH_NOTICE,
    SYNTHETIC_NOTICE,
    orientation_letters,
    render_snapshot,
)

SHAPE = (48, 48, 30)
SIDE = 256
FOV = 120.0
RED = (1.0, 0.0, 0.0)
GREEN = (0.0, 1.0, 0.0)


def oblique_affine() -> np.ndarray:
    """Rotated 25 degrees about S, anisotropic (1.8 x 2.0 x 3.0 mm); S depends on k only."""
    angle = np.deg2rad(25.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.8, 2.0, 3.0])
    affine[:3, 3] = [-40.0, -55.0, -30.0]
    return affine


def read_png(path: Path) -> np.ndarray:
    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    return rgb[::-1].astype(int)  # rows from the top


def axial_pixel(ras: np.ndarray, center: np.ndarray) -> tuple[int, int]:
    """Row, column of a RAS point in the axial panel (radiological: patient right on the left)."""
    scale = SIDE / FOV
    column = SIDE / 2 - (ras[0] - center[0]) * scale
    row = SIDE / 2 - (ras[1] - center[1]) * scale
    return int(round(row)), int(round(column))


def patch(rgb: np.ndarray, row: int, column: int, half: int = 2) -> np.ndarray:
    return rgb[row - half : row + half + 1, column - half : column + half + 1].reshape(-1, 3)


def test_snapshot_shows_segments_at_their_projected_positions(tmp_path: Path) -> None:
    affine = oblique_affine()
    ii, jj, kk = np.indices(SHAPE)
    labelmap = np.zeros(SHAPE, dtype=np.int16)
    centres = {1: (16, 24, 15), 2: (32, 34, 15)}  # same k: both cut by one axial slice
    for label, (ci, cj, ck) in centres.items():
        labelmap[((ii - ci) / 4.0) ** 2 + ((jj - cj) / 4.0) ** 2 + ((kk - ck) / 2.5) ** 2 <= 1] = (
            label
        )
    image = Volume((200.0 + 2.0 * ii - 1.5 * jj).astype(np.float32), affine)
    segments = [SegmentSpec(1, "region 1", RED), SegmentSpec(2, "region 2", GREEN)]
    ras = {label: (affine @ [*c, 1.0])[:3] for label, c in centres.items()}
    center = ras[1]

    out = tmp_path / "snapshot.png"
    start = time.perf_counter()
    render_snapshot(
        image, labelmap, segments, tuple(center), out, size=(3 * SIDE, SIDE), fov_mm=FOV,
        case_id="case-0001",
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"render_snapshot: {elapsed:.2f} s")
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.png"]  # atomic, no leftovers
    full = read_png(out)
    assert full.shape[1] == 3 * SIDE and SIDE + 20 < full.shape[0] < SIDE + 80, full.shape
    rgb = full[:SIDE]

    def is_colour(pixels: np.ndarray, channel: int) -> bool:
        others = np.delete(pixels, channel, axis=1)
        return bool(np.all(pixels[:, channel] - others.max(axis=1) > 100))

    def is_grey(pixels: np.ndarray) -> bool:
        return bool(np.all(pixels.max(axis=1) - pixels.min(axis=1) < 12) and pixels.mean() > 20)

    # Region 1 (red) is the centre of every panel: axial, coronal, sagittal.
    for panel in range(3):
        assert is_colour(patch(rgb, SIDE // 2, panel * SIDE + SIDE // 2), 0), f"panel {panel}"
    # Region 2 (green) lands where its RAS position projects in the axial panel...
    row, column = axial_pixel(ras[2], center)
    assert 10 < row < SIDE - 10 and 10 < column < SIDE - 10
    assert is_colour(patch(rgb, row, column), 1)
    # ...and not at the left-right or anterior-posterior mirror image, which is plain image.
    mirror_lr = (row, SIDE - column)
    mirror_ap = (SIDE - row, column)
    for r, c in (mirror_lr, mirror_ap):
        assert is_grey(patch(rgb, r, c)), (r, c, patch(rgb, r, c)[:3])
    # Nothing is drawn outside the segments: a grey image point between the two regions.
    between = (ras[1] + ras[2]) / 2
    r, c = axial_pixel(between, center)
    assert is_grey(patch(rgb, r, c))


def test_orientation_letters_follow_the_slice_nodes_own_matrix() -> None:
    """Slicer's presets: axial and coronal radiological (R on screen left), sagittal A left."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    node = scene.AddNode(scene.CreateNodeByClass("vtkMRMLSliceNode"))  # with the presets
    expected = {
        "Axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "Coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
        "Sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
    }
    for orientation, letters in expected.items():
        node.SetOrientation(orientation)
        m = node.GetSliceToRAS()
        matrix = np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])
        assert orientation_letters(matrix) == letters, orientation
    oblique = np.eye(4)
    oblique[:3, :3] = [[0.9, -0.44, 0], [0.44, 0.9, 0], [0, 0, 1]]  # 26 degrees about S
    assert orientation_letters(oblique) == {"left": "L", "right": "R", "top": "A", "bottom": "P"}


def _is_rgb(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(pixels - np.array(colour)) < tol, axis=-1)


def test_snapshot_carries_letters_legend_case_id_and_notice(tmp_path: Path) -> None:
    shape = (40, 40, 40)
    ii, jj, kk = np.indices(shape)
    labelmap = np.zeros(shape, dtype=np.int16)
    labelmap[((ii - 20) ** 2 + (jj - 20) ** 2 + (kk - 20) ** 2) <= 16] = 1
    labelmap[((ii - 28) ** 2 + (jj - 12) ** 2 + (kk - 20) ** 2) <= 9] = 2
    image = Volume((100.0 + ii + jj + kk).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    segments = [
        SegmentSpec(1, "left frontal (top 1%)", RED),
        SegmentSpec(2, "right (top 5%)", GREEN),
    ]
    center = (60.0, 60.0, 60.0)
    pngs = {}
    for synthetic in (False, True):
        out = tmp_path / f"s{int(synthetic)}.png"
        render_snapshot(image, labelmap, segments, center, out, size=(3 * SIDE, SIDE),
                        fov_mm=FOV, case_id="case-7f3a", synthetic=synthetic)  # fmt: skip
        pngs[synthetic] = read_png(out)
    full = pngs[True]
    strip = full[SIDE:]
    # The colour legend: a red and a green swatch in the strip below the panels.
    assert _is_rgb(strip, (255, 0, 0)).sum() >= 25 and _is_rgb(strip, (0, 255, 0)).sum() >= 25
    # The notice differs between a synthetic and a real-data model, and nothing else does.
    differs = np.any(pngs[True] != pngs[False], axis=-1)
    rows = np.nonzero(differs.any(axis=1))[0]
    assert rows.size and rows.min() >= SIDE, rows[:5]
    cols = np.nonzero(differs.any(axis=0))[0]
    assert cols.min() > 3 * SIDE // 2  # the notice is right-aligned
    assert SYNTHETIC_NOTICE != RESEARCH_NOTICE and "research" in RESEARCH_NOTICE.lower()
    # Orientation letters (yellow) at the top centre of each panel, none elsewhere in it.
    yellow = _is_rgb(full[:SIDE], (255, 213, 79), tol=50)
    for panel in range(3):
        top_centre = yellow[:30, panel * SIDE + SIDE // 2 - 15 : panel * SIDE + SIDE // 2 + 15]
        assert top_centre.sum() >= 5, panel
        assert not yellow[60:-60, panel * SIDE + 60 : (panel + 1) * SIDE - 60].any()


def test_headless_render_prints_no_x_server_warning(tmp_path: Path) -> None:
    """Without a display VTK goes straight to its offscreen window: no "bad X server
    connection" line lands inside a progress bar."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from autoimmuneai.data.imaging import Volume\n"
        "from autoimmuneai.output.mrml import SegmentSpec\n"
        "from autoimmuneai.output.snapshot import render_snapshot\n"
        "ii, jj, kk = np.indices((24, 24, 24))\n"
        "lab = ((ii - 12) ** 2 + (jj - 12) ** 2 + (kk - 12) ** 2 <= 9).astype(np.int16)\n"
        "img = Volume((50.0 + ii + jj).astype(np.float32), np.eye(4))\n"
        "render_snapshot(img, lab, [SegmentSpec(1, 'r', (1.0, 0.0, 0.0))], (12.0, 12.0, 12.0),\n"
        f"    Path({str(tmp_path / 'x.png')!r}), size=(192, 64))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("VTK_DEFAULT_OPENGL_WINDOW", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False,
        encoding="utf-8", errors="replace",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "x.png").is_file()
    assert "X server" not in done.stderr and "WARN" not in done.stderr, done.stderr[-2000:]
