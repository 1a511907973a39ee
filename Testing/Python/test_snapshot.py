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
from autoimmuneai.output.snapshot import render_snapshot  # noqa: E402

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
        image, labelmap, segments, tuple(center), out, size=(3 * SIDE, SIDE), fov_mm=FOV
    )
    elapsed = time.perf_counter() - start
    print(f"render_snapshot: {elapsed:.2f} s")
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.png"]  # atomic, no leftovers
    rgb = read_png(out)
    assert rgb.shape == (SIDE, 3 * SIDE, 3)

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
