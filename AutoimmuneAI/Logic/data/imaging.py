"""Image volumes with exact geometry: read, write and describe NIfTI, NRRD, MetaImage, DICOM.

Every volume in the package is a ``Volume``: a float32 array indexed ``[i, j, k]`` and a 4x4
affine mapping voxel ``(i, j, k)`` to RAS millimetres (nibabel's convention). ITK-based
formats (NRRD, MetaImage, DICOM) store LPS; the conversion happens here and nowhere else.
Every failure caused by the file is an ``ImageError`` whose message names the file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.affines import obliquity
from skimage.filters import threshold_otsu

from ..atomic import atomic_path
from ..errors import ImageError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DETACHED_SUFFIXES = (".nhdr", ".mhd")
SUPPORTED = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), DICOM series folder"
)

# RAS <-> LPS: flip the first two axes (its own inverse).
_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D image and its geometry.

    ``array`` is indexed ``[i, j, k]``; ``affine`` maps voxel ``(i, j, k)`` to RAS mm.
    ``load_volume`` always gives float32; other dtypes (e.g. a uint8 labelmap) are kept so
    that ``save_volume`` writes them as they are.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise ValueError("Volume affine is singular")
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = (int(s) for s in self.array.shape)
        return i, j, k

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the RAS unit vectors of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()


def voxel_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel coordinates ``(..., 3)`` to RAS mm ``(..., 3)``."""
    affine = np.asarray(affine, dtype=np.float64)
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def ras_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map RAS mm ``(..., 3)`` to (fractional) voxel coordinates ``(..., 3)``."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    xyz = np.asarray(xyz, dtype=np.float64)
    return xyz @ inverse[:3, :3].T + inverse[:3, 3]


def foreground_threshold(array: np.ndarray) -> float:
    """Otsu threshold between background and object, robust to a few very bright voxels.

    Volumes are subsampled to about 300,000 voxels (a regular stride keeps the histogram);
    values above the 99.5th percentile are clipped first so that a hot spot does not pull
    the threshold above the whole head.
    """
    step = max(1, int(np.ceil((array.size / 300_000) ** (1 / 3))))
    sample = array[::step, ::step, ::step] if array.ndim == 3 else array
    sample = np.asarray(sample, dtype=np.float32).ravel()
    high = float(np.percentile(sample, 99.5))
    low = float(sample.min())
    if high <= low:
        high = float(sample.max())
    if high <= low:
        return low
    return float(threshold_otsu(np.clip(sample, low, high)))


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Boolean mask of the object (head) against the background."""
    return array > foreground_threshold(array)


# ----------------------------------------------------------------------------------------
# Reading


def load_volume(
    path: str | Path,
    *,
    max_voxels: int = 400_000_000,
    series: str | None = None,
    mask: bool = False,
) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file, or a DICOM series folder, as a float32 Volume.

    The header's dimensions are checked before any pixel data is read, so a file that
    declares more than ``max_voxels`` voxels is refused without allocating it. A DICOM folder
    holding several series (a study as exported from the archive) gives the one whose
    description matches ``series`` (a case-insensitive regular expression, e.g. ``FLAIR``);
    without ``series`` the one series whose tags say FLAIR; otherwise the error lists every
    series (number, description, slices, voxel size). An image must have contrast; a
    ``mask`` (a label map) may be all zero: a case without that kind of lesion.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError("image not found", file=path)
    name = path.name.lower()
    try:
        if path.is_dir():
            array, affine = _read_dicom_folder(path, max_voxels, pattern=series)
        elif name.endswith(".dcm"):
            array, affine = _read_dicom_folder(path.parent, max_voxels, member=path)
        elif name.endswith(NIFTI_SUFFIXES):
            array, affine = _read_nifti(path, max_voxels)
        else:
            array, affine = _read_itk(path, max_voxels)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"not enough memory to read the image ({exc})", file=path) from exc
    except Exception as exc:
        raise ImageError(
            f"cannot read the image ({_reason(exc)}); supported: {SUPPORTED}", file=path
        ) from exc
    _check_values(array, path, mask)
    return Volume(array=array, affine=affine, path=path)


def _reason(exc: Exception) -> str:
    """The most specific line of a library error, without source paths or addresses."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    text = re.sub(r"\S+\.(?:cxx|hxx|h|cpp):\d+:?", "", text)
    text = re.sub(r"\(0x[0-9a-fA-F]+\)", "", text)
    text = " ".join(text.split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_shape(shape: tuple[int, ...], path: Path, max_voxels: int) -> tuple[int, int, int]:
    """Refuse 2D, 4D and oversized images from the header alone; return the 3D shape."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise ImageError(
            f"is a {len(shape)}D image (shape {shape}); one 3D volume is needed", file=path
        )
    extent = sum(s > 1 for s in shape)  # axes longer than one voxel
    if len(shape) < 3 or extent < 3:
        kind = ("a single voxel", "a 1D image", "a 2D image")[min(extent, 2)]
        raise ImageError(f"is {kind} (shape {shape}); a 3D volume is needed", file=path)
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise ImageError(
            f"declares {voxels:,} voxels (shape {shape}), more than the limit of {max_voxels:,}",
            file=path,
        )
    i, j, k = shape
    return i, j, k


def _check_values(array: np.ndarray, path: Path, mask: bool = False) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ImageError(f"has {bad:,} NaN or infinite voxels", file=path)
    if mask:
        return
    if not array.any():
        raise ImageError("is empty: every voxel is zero", file=path)
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise ImageError(f"has no contrast: every voxel is {low:g}", file=path)


def _read_nifti(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))  # reads the header only
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise ImageError("is not a volume image (NIfTI)", file=path)
    shape = _check_shape(image.shape, path, max_voxels)
    array = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    return np.ascontiguousarray(array, dtype=np.float32), np.asarray(image.affine, np.float64)


def _read_itk(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # header only
    if reader.HasMetaDataKey("0020|000e"):  # a DICOM file without .dcm: read its series
        return _read_dicom_folder(path.parent, max_voxels, member=path)
    if reader.GetNumberOfComponents() != 1:
        raise ImageError(
            f"has {reader.GetNumberOfComponents()} values per voxel; a scalar image is needed",
            file=path,
        )
    _check_shape(reader.GetSize(), path, max_voxels)
    return _from_sitk(reader.Execute())


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder, described from the tags of its first file."""

    uid: str
    number: str
    description: str
    slices: int
    voxel_mm: tuple[float, float, float]
    flair: bool  # the tags say FLAIR (description, sequence or protocol name, or a long TI)

    def label(self) -> str:
        size = "x".join(f"{v:g}" for v in self.voxel_mm)
        return f"#{self.number or '?'} {self.description or '(no description)'!r} ({self.slices} slices, {size} mm)"


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """Every series in ``folder``, ordered by series number."""
    folder = Path(folder)
    out = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.LoadPrivateTagsOff()
        info.ReadImageInformation()
        spacing = [float(v) for v in info.GetSpacing()[:2]]
        thickness = _tag(info, "0018|0050") or _tag(info, "0018|0088")
        try:
            spacing.append(float(thickness))
        except ValueError:
            spacing.append(float(info.GetSpacing()[2]) if info.GetDimension() > 2 else 0.0)
        names = " ".join(_tag(info, k) for k in ("0008|103e", "0018|0024", "0018|1030"))
        try:
            inversion = float(_tag(info, "0018|0082") or 0.0)
        except ValueError:
            inversion = 0.0
        out.append(
            DicomSeries(
                uid=uid,
                number=_tag(info, "0020|0011"),
                description=_tag(info, "0008|103e"),
                slices=len(files),
                voxel_mm=(round(spacing[0], 3), round(spacing[1], 3), round(spacing[2], 3)),
                flair=bool(re.search(r"flair|dark.?fluid", names, re.I)) or inversion > 1500,
            )
        )
    return sorted(out, key=lambda s: (int(s.number) if s.number.isdigit() else 1 << 30, s.uid))


def _choose_series(folder: Path, pattern: str | None, where: Path) -> str:
    """The UID of the series to read from a folder holding several."""
    found = list_dicom_series(folder)
    listing = "; ".join(s.label() for s in found)
    if pattern is not None:
        try:
            wanted = re.compile(pattern, re.I)
        except re.error as exc:
            raise ImageError(
                f"series pattern {pattern!r} is not valid ({exc})", file=where
            ) from None
        chosen = [s for s in found if wanted.search(s.description)]
        if len(chosen) == 1:
            return chosen[0].uid
        what = "no series matches" if not chosen else f"{len(chosen)} series match"
        raise ImageError(
            f"holds {len(found)} DICOM series and {what} {pattern!r}: {listing}", file=where
        )
    flair = [s for s in found if s.flair]
    if len(flair) == 1:
        return flair[0].uid
    raise ImageError(
        f"holds {len(found)} DICOM series: {listing}; choose one by its description "
        "(--series PATTERN, or the manifest's series column) or point to one .dcm file",
        file=where,
    )


def _read_dicom_folder(
    folder: Path, max_voxels: int, member: Path | None = None, pattern: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    where = member or folder
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageError("holds no DICOM series", file=where)
    if member is not None:
        info = sitk.ImageFileReader()
        info.SetFileName(str(member))
        info.ReadImageInformation()
        wanted = info.GetMetaData("0020|000e").strip() if info.HasMetaDataKey("0020|000e") else ""
        if wanted not in series:
            raise ImageError("is not part of a readable DICOM series", file=where)
        series = (wanted,)
    if len(series) > 1 or (pattern is not None and member is None):
        series = (_choose_series(folder, pattern, where),)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    info.ReadImageInformation()
    if info.GetNumberOfComponents() != 1:
        raise ImageError("DICOM series is not a scalar (greyscale) image", file=where)
    size = list(info.GetSize())
    if len(files) > 1:
        size = size[:2] + [len(files)]
    _check_shape(tuple(size), where, max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return _from_sitk(reader.Execute())


def _from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image (LPS) -> float32 array [i, j, k] and RAS affine."""
    if image.GetDimension() > 3:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0] * (len(size) - 3), [0] * len(size))
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array, sitk_affine(image)


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """Voxel (i, j, k) -> RAS mm of a 3D SimpleITK image (LPS inside)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _FLIP @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _FLIP @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def _to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Array [i, j, k] + RAS affine -> SimpleITK image in LPS."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (_FLIP @ (affine[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(v) for v in _FLIP @ affine[:3, 3]])
    return image


# ----------------------------------------------------------------------------------------
# Writing


def _storable(array: np.ndarray) -> np.ndarray:
    """Dtype a file can hold: bool -> uint8, float64 -> float32, int64 -> int32 when it fits."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64 and (
        array.size == 0 or (array.min() >= -(2**31) and array.max() < 2**31)
    ):
        return array.astype(np.int32)
    return array


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` atomically; the format follows the extension (NIfTI, NRRD, MetaImage).

    A detached header (``.nhdr``, ``.mhd``) is written with its data file in a temporary
    folder, the data file is moved first and the header last, so a reader never sees a
    header without its data.
    """
    path = Path(path)
    name = path.name.lower()
    array = _storable(np.asarray(volume.array))
    if name.endswith(NIFTI_SUFFIXES):
        image = nib.Nifti1Image(array, volume.affine)
        image.set_sform(volume.affine, code=1)
        image.set_qform(volume.affine, code=1)
        image.header.set_xyzt_units("mm")
        with atomic_path(path) as tmp:
            nib.save(image, str(tmp))
    elif name.endswith(DETACHED_SUFFIXES):
        _save_detached(_to_sitk(array, volume.affine), path)
    elif name.endswith(ITK_SUFFIXES):
        itk_image = _to_sitk(array, volume.affine)
        with atomic_path(path) as tmp:
            sitk.WriteImage(itk_image, str(tmp), useCompression=True)
    else:
        raise ImageError(f"cannot write this format; use {SUPPORTED.rsplit(',', 1)[0]}", file=path)
    return path


def _save_detached(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name.split('.')[0]}-", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=True)
        header = staging / path.name
        for written in sorted(staging.iterdir()):
            if written != header:
                os.replace(written, path.parent / written.name)
        os.replace(header, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Description (for out-of-distribution warnings)

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def describe_volume(volume: Volume) -> dict:
    """Geometry and foreground intensity statistics of ``volume``, JSON-ready.

    Keys: ``shape``, ``spacing`` (mm), ``field_of_view_mm``, ``orientation`` (axis codes such
    as ``"RAS"``), ``obliquity_deg`` (largest angle between a voxel axis and its nearest
    RAS axis), ``foreground_threshold``, ``foreground_fraction``, ``foreground_volume_ml``,
    ``intensity_percentiles`` (``{"p1": ..., "p99": ...}`` over foreground voxels).
    """
    array = np.asarray(volume.array, dtype=np.float32)
    threshold = foreground_threshold(array)
    foreground = array[array > threshold]
    if foreground.size == 0:
        foreground = array.ravel()
    values = np.percentile(foreground, PERCENTILES)
    spacing = volume.spacing
    return {
        "shape": list(volume.shape),
        "spacing": [round(float(s), 6) for s in spacing],
        "field_of_view_mm": [round(float(s * n), 3) for s, n in zip(spacing, volume.shape)],
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
        "obliquity_deg": round(float(np.degrees(np.max(np.abs(obliquity(volume.affine))))), 4),
        "foreground_threshold": float(threshold),
        "foreground_fraction": round(foreground.size / array.size, 6),
        "foreground_volume_ml": round(foreground.size * float(np.prod(spacing)) / 1000.0, 3),
        "intensity_percentiles": {
            f"p{p}": float(v) for p, v in zip(PERCENTILES, values, strict=True)
        },
    }
