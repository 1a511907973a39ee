"""Imaging I/O: exact geometry through every format, LPS/RAS, and every ImageError case."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_writer import save_dicom_series
from scipy.spatial.transform import Rotation

from autoimmuneai.data.imaging import (
    Volume,
    describe_volume,
    foreground_threshold,
    load_volume,
    ras_to_voxel,
    save_volume,
    voxel_to_ras,
)
from autoimmuneai.errors import ImageError, InputError
from autoimmuneai.preprocess.brain_mask import dice
from autoimmuneai.preprocess.model_grid import ModelGrid

# ---------------------------------------------------------------------------------------
# A phantom: a uniform ellipsoid "head" (100) holding a bright cube (400) whose centre is at
# a known RAS position. The cube is aligned with the voxel axes, so its partial-volume
# fractions are exact and its intensity-weighted centroid is exactly the true centre.

HEAD, CUBE = 100.0, 400.0
CUBE_CENTRE = np.array([14.0, -9.0, 7.5])  # RAS mm
CUBE_SIDE = 18.0  # mm
HEAD_CENTRE = np.array([3.0, -12.0, 10.0])
HEAD_RADII = np.array([45.0, 55.0, 40.0])
OBLIQUE = Rotation.from_euler("xyz", [18.0, -11.0, 24.0], degrees=True).as_matrix()
SPACING = np.array([1.25, 1.6, 3.0])  # anisotropic


def phantom_affine(
    direction: np.ndarray = OBLIQUE,
    spacing: np.ndarray = SPACING,
    shape: tuple[int, int, int] = (92, 76, 40),
    fov_centre: np.ndarray = HEAD_CENTRE,
) -> np.ndarray:
    """Affine whose field of view is centred on ``fov_centre`` (RAS mm)."""
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = fov_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _overlap(index: np.ndarray, low: float, high: float) -> np.ndarray:
    """Length of [n - 0.5, n + 0.5] inside [low, high], per voxel index n."""
    return np.clip(np.minimum(index + 0.5, high) - np.maximum(index - 0.5, low), 0.0, 1.0)


def make_phantom(
    direction: np.ndarray = OBLIQUE,
    spacing: np.ndarray = SPACING,
    shape: tuple[int, int, int] = (92, 76, 40),
    fov_centre: np.ndarray = HEAD_CENTRE,
) -> Volume:
    affine = phantom_affine(direction, spacing, shape, fov_centre)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ras = voxel_to_ras(affine, np.stack(grids, axis=-1))
    head = (((ras - HEAD_CENTRE) / HEAD_RADII) ** 2).sum(-1) <= 1.0
    centre_vox = ras_to_voxel(affine, CUBE_CENTRE)
    half = CUBE_SIDE / 2 / np.asarray(spacing)
    fraction = np.ones(shape)
    for axis in range(3):
        index = np.arange(shape[axis], dtype=np.float64)
        along = _overlap(index, centre_vox[axis] - half[axis], centre_vox[axis] + half[axis])
        fraction = fraction * along.reshape([-1 if a == axis else 1 for a in range(3)])
    array = np.where(head, HEAD, 0.0) + (CUBE - HEAD) * fraction
    return Volume(array.astype(np.float32), affine)


def cube_centre_voxel(array: np.ndarray) -> np.ndarray:
    """Intensity-weighted voxel centroid of the bright cube, in any intensity units: the
    weight goes from 0 at the head's level (median of the foreground) to 1 at the peak."""
    array = np.asarray(array, dtype=np.float64)
    head = np.median(array[array > foreground_threshold(array)])
    weight = np.clip((array - head) / (array.max() - head), 0.0, 1.0)
    weight[weight < 0.02] = 0.0
    ijk = np.argwhere(weight > 0)
    return (ijk * weight[weight > 0][:, None]).sum(0) / weight.sum()


def cube_centroid(volume: Volume) -> np.ndarray:
    """RAS centroid of the bright cube."""
    return voxel_to_ras(volume.affine, cube_centre_voxel(volume.array))


def cube_truth_mask(volume: Volume) -> np.ndarray:
    """Voxels whose centre lies in the true cube (aligned with ``volume``'s voxel axes)."""
    grids = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    ras = voxel_to_ras(volume.affine, np.stack(grids, axis=-1))
    local = (ras - CUBE_CENTRE) @ volume.direction  # along the cube's own axes
    return np.all(np.abs(local) <= CUBE_SIDE / 2, axis=-1)


# ---------------------------------------------------------------------------------------
# Writers that do not go through imaging.py, so a sign error there cannot cancel out.

LPS = np.diag([-1.0, -1.0, 1.0])


def write_nifti_nibabel(volume: Volume, path: Path) -> Path:
    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(path))
    return path


def write_nrrd_lps(volume: Volume, path: Path) -> Path:
    header = {
        "space": "left-posterior-superior",
        "space directions": (LPS @ volume.affine[:3, :3]).T,
        "space origin": LPS @ volume.affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(path), volume.array, header, index_order="F")
    return path


def write_nrrd_ras(volume: Volume, path: Path) -> Path:
    header = {
        "space": "right-anterior-superior",
        "space directions": volume.affine[:3, :3].T,
        "space origin": volume.affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(path), volume.array, header, index_order="F")
    return path


def write_dicom(volume: Volume, path: Path) -> Path:
    return save_dicom_series(volume, path, patient_id="case001")


WRITERS = {
    "nifti": (write_nifti_nibabel, "phantom.nii.gz"),
    "nrrd": (write_nrrd_lps, "phantom.nrrd"),
    "dicom": (write_dicom, "phantom_dicom"),
}


@pytest.fixture(scope="module")
def phantom() -> Volume:
    return make_phantom()


def test_phantom_truth_is_exact(phantom: Volume) -> None:
    error = np.linalg.norm(cube_centroid(phantom) - CUBE_CENTRE)
    assert error < 0.02  # mm; only the 2 % weight cut-off at the corners moves it


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_round_trip_through_model_grid_keeps_cube_position(
    fmt: str, phantom: Volume, tmp_path: Path
) -> None:
    writer, name = WRITERS[fmt]
    source = writer(phantom, tmp_path / name)
    loaded = load_volume(source)
    assert loaded.array.dtype == np.float32
    assert loaded.shape == phantom.shape
    np.testing.assert_allclose(loaded.affine, phantom.affine, atol=1e-4)
    np.testing.assert_allclose(loaded.array, phantom.array, atol=0.01)

    grid = ModelGrid()
    sample = grid.to_model(loaded)
    back = grid.to_input(sample.tensor, sample)
    assert back.shape == loaded.shape
    saved = save_volume(Volume(back, loaded.affine), tmp_path / f"back{fmt}.nii.gz")
    reloaded = load_volume(saved)
    np.testing.assert_allclose(reloaded.affine, phantom.affine, atol=1e-4)

    error = np.linalg.norm(cube_centroid(reloaded) - CUBE_CENTRE)
    assert error < 0.5 * SPACING.min(), f"{fmt}: centroid off by {error:.3f} mm"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_model_grid_map_of_the_cube_lands_on_the_cube(
    fmt: str, phantom: Volume, tmp_path: Path
) -> None:
    writer, name = WRITERS[fmt]
    loaded = load_volume(writer(phantom, tmp_path / name))
    grid = ModelGrid()
    sample = grid.to_model(loaded)
    # A "model output": the cube found on the model grid by thresholding its tensor midway
    # between head and cube (in the normalised units of the tensor).
    mean, std = sample.intensity["mean"], sample.intensity["std"]
    level = ((HEAD + CUBE) / 2 - mean) / std
    marked = (sample.tensor[0] > level).float()
    assert 0 < int(marked.sum()) < marked.numel() // 100

    truth = cube_truth_mask(loaded)
    label = grid.to_input(marked, sample, mode="nearest")
    assert set(np.unique(label)) <= {0.0, 1.0}
    hit = label > 0.5
    overlap = dice(hit, truth)
    assert overlap > 0.8, f"{fmt}: Dice {overlap:.3f}"

    soft = grid.to_input(marked, sample, mode="linear")
    saved = save_volume(Volume(soft, loaded.affine), tmp_path / f"map{fmt}.nrrd")
    reloaded = load_volume(saved)
    ijk = np.argwhere(reloaded.array > 0.5)
    centre = voxel_to_ras(reloaded.affine, ijk.mean(0))
    error = np.linalg.norm(centre - CUBE_CENTRE)
    assert error < 0.5 * grid.spacing, f"{fmt}: map centroid off by {error:.3f} mm"


def test_lps_nrrd_and_ras_nifti_of_one_object_agree(phantom: Volume, tmp_path: Path) -> None:
    from_nrrd = load_volume(write_nrrd_lps(phantom, tmp_path / "lps.nrrd"))
    from_nrrd_ras = load_volume(write_nrrd_ras(phantom, tmp_path / "ras.nrrd"))
    from_nifti = load_volume(write_nifti_nibabel(phantom, tmp_path / "ras.nii"))
    for volume in (from_nrrd, from_nrrd_ras):
        np.testing.assert_allclose(volume.affine, from_nifti.affine, atol=1e-5)
        np.testing.assert_allclose(cube_centroid(volume), cube_centroid(from_nifti), atol=1e-4)
    np.testing.assert_allclose(cube_centroid(from_nifti), CUBE_CENTRE, atol=0.02)


def test_same_object_in_a_flipped_lps_grid_has_the_same_ras_centroid(tmp_path: Path) -> None:
    # A different voxel grid: LPS-ordered axes (i -> left, j -> posterior), no obliquity.
    lps_axes = np.diag([-1.0, -1.0, 1.0])
    volume = make_phantom(lps_axes, np.array([1.5, 1.5, 2.0]), (80, 90, 60))
    loaded = load_volume(write_nrrd_lps(volume, tmp_path / "lps_axes.nrrd"))
    assert describe_volume(loaded)["orientation"] == "LPS"
    # The cube is aligned with the voxel axes, so its truth is its centre whatever they are.
    np.testing.assert_allclose(cube_centroid(loaded), CUBE_CENTRE, atol=0.02)
    sample = ModelGrid().to_model(loaded)
    grid_ras = voxel_to_ras(sample.affine, cube_centre_voxel(sample.tensor[0].numpy()))
    assert np.linalg.norm(grid_ras - CUBE_CENTRE) < 0.5


def test_save_volume_writes_geometry_that_other_readers_agree_with(
    phantom: Volume, tmp_path: Path
) -> None:
    nifti = save_volume(phantom, tmp_path / "out.nii.gz")
    image = nib.load(str(nifti))
    np.testing.assert_allclose(image.affine, phantom.affine, atol=1e-5)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), phantom.affine, atol=1e-4)

    nrrd_path = save_volume(phantom, tmp_path / "out.nrrd")
    data, header = nrrd.read(str(nrrd_path), index_order="F")
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(
        header["space directions"].T, LPS @ phantom.affine[:3, :3], atol=1e-5
    )
    np.testing.assert_allclose(header["space origin"], LPS @ phantom.affine[:3, 3], atol=1e-5)
    np.testing.assert_array_equal(data, phantom.array)

    for name in ("out.mha", "out.nhdr", "out.mhd"):
        written = save_volume(phantom, tmp_path / name)
        again = load_volume(written)
        np.testing.assert_allclose(again.affine, phantom.affine, atol=1e-5)
        np.testing.assert_array_equal(again.array, phantom.array)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_save_volume_keeps_label_dtype_and_refuses_unknown_format(tmp_path: Path) -> None:
    labels = Volume(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.eye(4))
    path = save_volume(labels, tmp_path / "labels.nii.gz")
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    with pytest.raises(ImageError, match="labels.png"):
        save_volume(labels, tmp_path / "labels.png")


def test_dicom_series_tags_are_proper_and_in_lps(phantom: Volume, tmp_path: Path) -> None:
    folder = save_dicom_series(phantom, tmp_path / "series", patient_id="case001")
    files = sorted(folder.iterdir())
    assert len(files) == phantom.shape[2]
    first, last = (pydicom.dcmread(str(f)) for f in (files[0], files[-1]))
    assert first.Modality == "MR" and first.SeriesInstanceUID == last.SeriesInstanceUID
    assert first.SOPInstanceUID != last.SOPInstanceUID
    assert str(first.PatientID) == "case001"
    lps_origin = LPS @ phantom.affine[:3, 3]
    np.testing.assert_allclose(
        [float(v) for v in first.ImagePositionPatient], lps_origin, atol=1e-4
    )
    lps_dir = LPS @ phantom.direction
    iop = [float(v) for v in first.ImageOrientationPatient]
    np.testing.assert_allclose(iop, [*lps_dir[:, 0], *lps_dir[:, 1]], atol=1e-6)
    # DICOM: PixelSpacing is row spacing (along j) then column spacing (along i).
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], SPACING[[1, 0]], atol=1e-6)
    step = np.subtract([float(v) for v in last.ImagePositionPatient], first.ImagePositionPatient)
    np.testing.assert_allclose(
        step / (phantom.shape[2] - 1), LPS @ phantom.affine[:3, 2], atol=1e-4
    )
    # A single file of the series loads the whole series.
    one = load_volume(files[3])
    assert one.shape == phantom.shape
    # DICOM files often have no extension: any one of them still loads its whole series.
    bare = tmp_path / "bare"
    bare.mkdir()
    for index, file in enumerate(files):
        file.rename(bare / f"IM{index:04d}")
    again = load_volume(bare / "IM0005")
    np.testing.assert_allclose(again.affine, one.affine, atol=1e-6)
    np.testing.assert_array_equal(again.array, one.array)


def test_describe_volume_reports_geometry_and_foreground(phantom: Volume) -> None:
    info = describe_volume(phantom)
    assert info["shape"] == list(phantom.shape)
    np.testing.assert_allclose(info["spacing"], SPACING, atol=1e-6)
    assert len(info["orientation"]) == 3 and set(info["orientation"]) <= set("RASLPI")
    assert 10.0 < info["obliquity_deg"] < 45.0
    assert info["intensity_percentiles"]["p50"] == pytest.approx(HEAD, abs=1.0)
    assert info["intensity_percentiles"]["p99"] > HEAD
    head_ml = 4 / 3 * np.pi * np.prod(HEAD_RADII) / 1000
    assert info["foreground_volume_ml"] == pytest.approx(head_ml, rel=0.05)
    straight = describe_volume(Volume(phantom.array, np.diag([2.0, 2.0, 2.0, 1.0])))
    assert straight["orientation"] == "RAS" and straight["obliquity_deg"] == 0.0


def test_voxel_ras_helpers_are_inverse_and_vectorised(phantom: Volume) -> None:
    ijk = np.random.default_rng(0).uniform(0, 50, size=(5, 7, 3))
    xyz = voxel_to_ras(phantom.affine, ijk)
    assert xyz.shape == (5, 7, 3)
    np.testing.assert_allclose(ras_to_voxel(phantom.affine, xyz), ijk, atol=1e-9)
    np.testing.assert_allclose(voxel_to_ras(phantom.affine, [0, 0, 0]), phantom.origin)
    np.testing.assert_allclose(phantom.spacing, SPACING)
    np.testing.assert_allclose(phantom.direction, OBLIQUE, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Every failure is an ImageError naming the file.


def _nifti(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _expect(path: Path, match: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError, match=match) as caught:
        load_volume(path, **kwargs)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, InputError)
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "absent.nii.gz", "not found")


def test_folder_without_dicom(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(empty, "no DICOM series")
    (empty / "notes.txt").write_text("not dicom", encoding="utf-8")
    _expect(empty, "no DICOM series")


def _study(tmp_path: Path, descriptions: list[str]) -> Path:
    """One folder holding one small series per description (as an archive export does)."""
    study = tmp_path / "study"
    study.mkdir()
    for n, text in enumerate(descriptions):
        array = np.random.default_rng(n).random((6, 7, 5 + n)).astype(np.float32) + n
        save_dicom_series(
            Volume(array, np.diag([1.0, 1.0, 2.0 + n, 1.0])),
            tmp_path / f"s{n}",
            series_description=text,
            series_number=n + 1,
        )
        for f in (tmp_path / f"s{n}").iterdir():
            f.rename(study / f"s{n}_{f.name}")
    return study


def test_folder_with_two_series_lists_them(tmp_path: Path) -> None:
    study = _study(tmp_path, ["T1 MPRAGE", "DWI b1000"])
    with pytest.raises(ImageError) as info:
        load_volume(study)
    text = str(info.value)
    assert "2 DICOM series" in text and "\n" not in text
    assert "#1 'T1 MPRAGE' (5 slices, 1x1x2 mm)" in text
    assert "#2 'DWI b1000' (6 slices, 1x1x3 mm)" in text
    assert "--series" in text


def test_a_series_is_chosen_by_pattern_or_as_the_flair(tmp_path: Path) -> None:
    study = _study(tmp_path, ["localizer", "T1 MPRAGE", "AX T2 FLAIR", "DWI"])
    flair = load_volume(study)  # the one series whose description says FLAIR
    assert flair.shape == (6, 7, 7)
    t1 = load_volume(study, series="mprage")
    assert t1.shape == (6, 7, 6) and np.isclose(t1.spacing[2], 3.0)
    with pytest.raises(ImageError, match="no series matches 'sagittal'.*#3 'AX T2 FLAIR'"):
        load_volume(study, series="sagittal")
    with pytest.raises(ImageError, match="2 series match"):
        load_volume(study, series="T")


@pytest.mark.parametrize(
    "name", ["notes.nii.gz", "notes.nii", "notes.nrrd", "notes.mha", "notes.txt"]
)
def test_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("case_id,diagnosis\nA,MS\n" * 50, encoding="utf-8")
    _expect(path, "cannot read")


def test_truncated_gzip(tmp_path: Path) -> None:
    array = np.random.default_rng(2).random((20, 20, 20)).astype(np.float32) + 1
    path = _nifti(tmp_path, "cut.nii.gz", array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "cannot read")
    # A gzip stream whose header is fine but whose data stops early.
    raw = gzip.decompress(data)
    cut = tmp_path / "cut2.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    _expect(cut, "cannot read")


def test_two_dimensional_images(tmp_path: Path) -> None:
    _expect(_nifti(tmp_path, "flat.nii.gz", np.ones((10, 12), np.float32)), "2D")
    _expect(_nifti(tmp_path, "slice.nii.gz", np.ones((10, 12, 1), np.float32)), "2D")
    flat = sitk.GetImageFromArray(np.ones((12, 10), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    _expect(tmp_path / "flat.nrrd", "2D")
    one = Volume(np.ones((6, 7, 1), np.float32) + np.arange(6)[:, None, None], np.eye(4))
    _expect(save_dicom_series(one, tmp_path / "single"), "2D")


def test_four_dimensional_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    _expect(_nifti(tmp_path, "dwi.nii.gz", rng.random((8, 8, 8, 3)).astype(np.float32)), "4D")
    trailing = rng.random((8, 9, 10, 1)).astype(np.float32) + 1
    volume = load_volume(_nifti(tmp_path, "single_frame.nii.gz", trailing))
    assert volume.shape == (8, 9, 10)
    np.testing.assert_array_equal(volume.array, trailing[..., 0])
    image = sitk.JoinSeries([sitk.GetImageFromArray(trailing[..., 0].transpose(2, 1, 0))])
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(tmp_path / "frame.nrrd"))
    assert load_volume(tmp_path / "frame.nrrd").shape == (8, 9, 10)


def test_all_zero_and_constant(tmp_path: Path) -> None:
    _expect(_nifti(tmp_path, "zero.nii.gz", np.zeros((8, 8, 8), np.float32)), "every voxel is zero")
    _expect(_nifti(tmp_path, "flat.nii.gz", np.full((8, 8, 8), 3.0, np.float32)), "no contrast")


def test_nan_and_inf(tmp_path: Path) -> None:
    array = np.ones((8, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    _expect(_nifti(tmp_path, "nan.nii.gz", array), "1 NaN or infinite")
    array[1, 2, 3] = np.inf
    array[4, 4, 4] = -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "inf.nrrd"))
    _expect(tmp_path / "inf.nrrd", "2 NaN or infinite")


def test_too_many_voxels_is_refused_from_the_header(tmp_path: Path) -> None:
    # Headers that declare 8e9 voxels over a file of a few bytes: refused before reading.
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    huge = tmp_path / "huge.nii"
    huge.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    _expect(huge, "8,000,000,000 voxels")
    nhdr = tmp_path / "huge.nhdr"
    nhdr.write_text(
        "NRRD0004\ntype: float\nendian: little\ndimension: 3\nspace: left-posterior-superior\n"
        "sizes: 2000 2000 2000\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        "space origin: (0,0,0)\nencoding: raw\ndata file: huge.raw\n"
    )
    (tmp_path / "huge.raw").write_bytes(b"\x00" * 64)
    _expect(nhdr, "more than the limit")
    small = _nifti(tmp_path, "small.nii.gz", np.ones((10, 10, 10), np.float32))
    _expect(small, "1,000 voxels", max_voxels=999)


# --------------------------------------------------------------------------- series choice


def _study_of(volume: Volume, folder: Path) -> Path:
    """An archive export of one patient: localizer, two FLAIRs (axial = ``volume``, sagittal
    = a decoy of other values and shape) and a T1, all in one folder."""
    rng = np.random.default_rng(3)
    parts = [
        ("localizer", Volume(rng.random((8, 8, 3)).astype(np.float32) * 50, np.eye(4))),
        ("AX T2 FLAIR", volume),
        ("SAG T2 FLAIR", Volume(volume.array[:, :, ::2] * 0.5 + 7.0, volume.affine)),
        ("T1 MPRAGE", Volume(rng.random(volume.shape).astype(np.float32) * 80, volume.affine)),
    ]
    folder.mkdir(parents=True)
    for n, (text, part) in enumerate(parts):
        save_dicom_series(part, folder.parent / f"part{n}", series_description=text,
                          series_number=n + 1)  # fmt: skip
        for f in (folder.parent / f"part{n}").iterdir():
            f.rename(folder / f"{n}_{f.name}")
    return folder


def test_manifest_series_column_chooses_the_series_of_a_study_folder(
    tmp_path: Path, cohort_copy
) -> None:
    from conftest import read_rows, write_rows

    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.data.dataset import case_image

    manifest, rows = cohort_copy(tmp_path / "cohort", n=3)
    flair = load_volume(manifest.parent / rows[0]["image_flair"])
    _study_of(flair, tmp_path / "cohort" / "study")
    _, columns = read_rows(manifest)
    rows[0].update(image_flair="study", series="^ax")
    rows[1].update(image_flair="study")  # two FLAIR series: the folder alone is ambiguous
    rows[2].update(image_flair="study", series="(flair")
    write_rows(manifest, rows, [*columns, "series"])

    cohort = load_cohort(manifest, read_images=True, strict=False)
    assert [c.case_id for c in cohort.cases] == [rows[0]["case_id"]]
    assert cohort.cases[0].series == {"flair": "^ax"}
    assert not [w for w in cohort.warnings if "column series" in w]  # a known column
    ambiguous, bad = cohort.failed[rows[1]["case_id"]], cohort.failed[rows[2]["case_id"]]
    assert ambiguous.field == "image_flair" and "holds 4 DICOM series" in str(ambiguous)
    assert "#2 'AX T2 FLAIR'" in str(ambiguous) and "#3 'SAG T2 FLAIR'" in str(ambiguous)
    assert bad.row == 4 and bad.field == "series" and "not a valid regular expression" in str(bad)

    # the chosen series reaches the model grid: the same input as the NIfTI it was written from
    grid = ModelGrid((24, 28, 24), 6.0)
    arr, desc = case_image(cohort.cases[0], ["flair"], grid, tmp_path / "cache")
    reference = grid.to_model(flair).tensor.numpy().reshape(arr.shape)
    assert np.abs(arr.astype(np.float32) - reference).max() < 0.02
    assert desc["shape"] == list(flair.shape)


def test_predict_reads_the_series_given_by_series(tmp_path: Path, cohort_copy, tiny_bundle):
    import contextlib
    import io
    import json

    from autoimmuneai.cli import main

    manifest, rows = cohort_copy(tmp_path / "cohort", n=1)
    image = manifest.parent / rows[0]["image_flair"]
    study = _study_of(load_volume(image), tmp_path / "study")
    labs = ["--lab", "aqp4_igg=1:160", "--lab", "age=41", "--lab", "sex=F", "--no-snapshot"]

    def run(*argv) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["predict", "--bundle", str(tiny_bundle), *map(str, argv), *labs])
        return rc, out.getvalue()

    assert run("--image", image, "--case-id", "nifti", "--out", tmp_path / "a")[0] == 0
    rc, _ = run(
        "--image", study, "--series", "ax t2", "--case-id", "dicom", "--out", tmp_path / "b"
    )
    assert rc == 0
    a = json.loads((tmp_path / "a" / "nifti" / "prediction.json").read_text("utf-8"))
    b = json.loads((tmp_path / "b" / "dicom" / "prediction.json").read_text("utf-8"))
    assert b["probabilities"] == pytest.approx(a["probabilities"], abs=2e-3)
    rc, out = run("--image", study, "--case-id", "dicom", "--out", tmp_path / "c")
    assert rc == 3 and "4 DICOM series" in out and "#1 'localizer'" in out, out


def test_an_all_zero_mask_is_read_but_an_all_zero_image_is_refused(tmp_path):
    """A label map of a lesion kind the case lacks is all zero: readable as a mask."""

    path = tmp_path / "empty.nii.gz"
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), affine), path)
    with pytest.raises(InputError, match="every voxel is zero"):
        load_volume(path)
    mask = load_volume(path, mask=True)
    assert mask.shape == (4, 5, 6) and not mask.array.any()
    assert np.allclose(mask.affine, affine)
