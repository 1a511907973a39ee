"""DICOM writing for the tests: a Volume as a DICOM series (only tests need to write DICOM)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoimmuneai.data.imaging import Volume, _to_sitk
from autoimmuneai.errors import ImageError


def save_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient_id: str = "anonymous",
    series_description: str = "AutoimmuneAI",
    series_number: int = 1,
    modality: str = "MR",
) -> Path:
    """Write ``volume`` as a DICOM series (one file per k-slice) into an empty ``folder``.

    Intensities are stored as int16 with a rescale slope, so values come back within half a
    slope. Geometry (ImagePositionPatient per slice, ImageOrientationPatient, spacing) is
    exact when the direction matrix is a proper rotation (DICOM stacks slices along the
    row x column normal). The folder appears complete or not at all.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ImageError("DICOM output folder is not empty", file=folder)
    direction = volume.direction
    if np.linalg.det(direction) < 0:
        raise ImageError("DICOM needs a right-handed direction matrix", file=folder)
    array = np.asarray(volume.array, dtype=np.float64)
    peak = float(np.abs(array).max()) or 1.0
    slope = peak / 32000.0
    image = _to_sitk(array, volume.affine)
    lps_direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in [*lps_direction[:, 0], *lps_direction[:, 1]])
    stamp = f"{time.time_ns()}"
    root = "1.2.826.0.1.3680043.8.498." + stamp[-20:]
    now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    common = {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0020": now[0],
        "0008|0030": now[1],
        "0008|0021": now[0],
        "0008|0031": now[1],
        "0008|0060": modality,
        "0008|103e": series_description,
        "0010|0010": patient_id,
        "0010|0020": patient_id,
        "0020|000d": root + ".1",
        "0020|000e": root + ".2",
        "0020|0011": str(series_number),
        "0020|0037": orientation,
        "0018|0050": f"{volume.spacing[2]:.10g}",
        "0018|0088": f"{volume.spacing[2]:.10g}",
        "0028|1052": "0",
        "0028|1053": f"{slope:.10g}",
        "0028|0100": "16",
        "0028|0101": "16",
        "0028|0102": "15",
        "0028|0103": "1",
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(image.GetDepth()):
            piece = image[:, :, k]
            for key, value in common.items():
                piece.SetMetaData(key, value)
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            piece.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
            piece.SetMetaData("0020|0013", str(k + 1))
            piece.SetMetaData("0008|0018", f"{root}.3.{k + 1}")
            writer.SetFileName(str(staging / f"slice{k:04d}.dcm"))
            writer.Execute(piece)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return folder
