"""DICOM writing for the tests: a Volume as a DICOM series (only tests need to write DICOM).

Written with pydicom, tag by tag, rather than with SimpleITK's GDCM writer: GDCM picks the SOP
class itself (Enhanced MR, whose geometry lives in per-frame groups, until some DICOM file has
been read in the process, plain MR after), so the files it wrote depended on the order of the
tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

from autoimmuneai.data.imaging import Volume, _to_sitk
from autoimmuneai.errors import ImageError


def _decimal(value: float) -> str:
    """A DICOM decimal string (DS holds at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def save_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient_id: str = "anonymous",
    series_description: str = "AutoimmuneAI",
    series_number: int = 1,
    modality: str = "MR",
) -> Path:
    """Write ``volume`` as a DICOM series (one MR Image Storage file per k-slice) into an empty ``folder``.

    Intensities are stored as int16 with a rescale slope, so values come back within half a
    slope. Geometry (ImagePositionPatient per slice, ImageOrientationPatient, spacing) is
    exact when the direction matrix is a proper rotation (DICOM stacks slices along the
    row x column normal). The folder appears complete or not at all.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ImageError("DICOM output folder is not empty", file=folder)
    if np.linalg.det(volume.direction) < 0:
        raise ImageError("DICOM needs a right-handed direction matrix", file=folder)
    array = np.asarray(volume.array, dtype=np.float64)
    slope = (float(np.abs(array).max()) or 1.0) / 32000.0
    stored = np.round(array / slope).astype(np.int16)
    image = _to_sitk(array.astype(np.float32), volume.affine)  # LPS geometry
    lps = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    stamp = f"{time.time_ns()}"[-20:]
    root = f"1.2.826.0.1.3680043.8.498.{stamp}"
    day, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        for k in range(stored.shape[2]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = f"{root}.3.{k + 1}"
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.StudyDate = ds.SeriesDate = day
            ds.StudyTime = ds.SeriesTime = clock
            ds.Modality = modality
            ds.SeriesDescription = series_description
            ds.PatientName = ds.PatientID = patient_id
            ds.StudyInstanceUID = f"{root}.1"
            ds.SeriesInstanceUID = f"{root}.2"
            ds.SeriesNumber = series_number
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [
                _decimal(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))
            ]
            ds.ImageOrientationPatient = [_decimal(v) for v in (*lps[:, 0], *lps[:, 1])]
            # PixelSpacing is the row spacing (between rows, along j) then the column spacing.
            ds.PixelSpacing = [_decimal(spacing[1]), _decimal(spacing[0])]
            ds.SliceThickness = ds.SpacingBetweenSlices = _decimal(spacing[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = _decimal(slope)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds.save_as(staging / f"slice{k:04d}.dcm", enforce_file_format=True)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return folder
