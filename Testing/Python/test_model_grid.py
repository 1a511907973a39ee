"""The model grid: MONAI resampling to a foreground-centred RAS box and its exact inverse."""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest
import torch
from nilearn.datasets import load_mni152_template
from test_imaging import (
    CUBE,
    CUBE_CENTRE,
    HEAD,
    HEAD_CENTRE,
    cube_centre_voxel,
    cube_truth_mask,
    make_phantom,
)

from autoimmuneai.data.imaging import Volume, foreground_mask, voxel_to_ras
from autoimmuneai.preprocess.model_grid import GridSample, ModelGrid


@pytest.fixture(scope="module")
def mni() -> Volume:
    template = load_mni152_template(resolution=2)
    return Volume(np.asarray(template.dataobj, dtype=np.float32), template.affine)


@pytest.fixture(scope="module")
def phantom() -> Volume:
    return make_phantom()


def _best_of(n: int, call) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(n):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def test_mni152_brain_fits_the_grid_and_is_fast(mni: Volume) -> None:
    assert mni.shape == (99, 117, 95)
    grid = ModelGrid()
    np.testing.assert_allclose(grid.extent_mm, [160, 200, 160])
    grid.to_model(mni)  # warm-up
    seconds_forward, sample = _best_of(3, lambda: grid.to_model(mni))
    seconds_inverse, back = _best_of(3, lambda: grid.to_input(sample.tensor, sample))
    print(f"MNI152 2 mm: to_model {seconds_forward:.3f} s, to_input {seconds_inverse:.3f} s")
    # Generous bounds for a busy 2-core CI machine; typically 0.04 s each.
    assert seconds_forward < 1.0 and seconds_inverse < 1.0
    assert back.shape == mni.shape

    # Nothing of the brain is cut off: every foreground voxel lies inside the box ...
    assert sample.coverage == 1.0
    # ... and, checked independently, the grid's faces are background but for at most a
    # thin rim (the template's foreground spans 144 x 178 x 152 mm of the 160 x 200 x 160).
    values = sample.tensor[0]
    background = float(values.min())
    faces = [values[0], values[-1], values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]]
    for face in faces:
        assert float((face > background + 1.0).float().mean()) < 0.02
    # The box is centred on the head, not on the template's field of view.
    mask = foreground_mask(mni.array)
    ras = voxel_to_ras(mni.affine, np.argwhere(mask))
    np.testing.assert_allclose(sample.centre, (ras.min(0) + ras.max(0)) / 2, atol=3.0)
    fov_centre = voxel_to_ras(mni.affine, (np.asarray(mni.shape) - 1) / 2)
    assert np.linalg.norm(sample.centre - fov_centre) > 10.0


def test_tensor_is_plain_float32_and_foreground_normalised(mni: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(mni)
    assert isinstance(sample, GridSample)
    assert type(sample.tensor) is torch.Tensor
    assert sample.tensor.dtype == torch.float32
    assert tuple(sample.tensor.shape) == (1, *grid.shape)
    threshold = sample.intensity["threshold"]
    raw = sample.tensor * sample.intensity["std"] + sample.intensity["mean"]
    foreground = sample.tensor[raw > threshold]
    assert abs(float(foreground.mean())) < 1e-3
    assert float(foreground.std()) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(sample.affine[:3, :3], np.eye(3) * 2.5)


def test_inverse_restores_the_image_inside_the_grid(mni: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(mni)
    back = grid.to_input(sample.tensor, sample) * sample.intensity["std"]
    back += sample.intensity["mean"]
    brain = foreground_mask(mni.array)
    # 2 mm -> 2.5 mm -> 2 mm loses detail but not position or level.
    corr = np.corrcoef(back[brain], mni.array[brain])[0, 1]
    assert corr > 0.9
    assert abs(float(back[brain].mean() / mni.array[brain].mean()) - 1) < 0.03


def test_oblique_anisotropic_cube_sits_at_its_ras_position_on_the_grid(phantom: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(phantom)
    on_grid = voxel_to_ras(sample.affine, cube_centre_voxel(sample.tensor[0].numpy()))
    assert np.linalg.norm(on_grid - CUBE_CENTRE) < 0.1  # mm
    np.testing.assert_allclose(sample.centre, HEAD_CENTRE, atol=1.5)
    assert sample.coverage == 1.0
    # Head and cube levels survive resampling: the cube's core reaches the cube level.
    levels = (np.array([HEAD, CUBE]) - sample.intensity["mean"]) / sample.intensity["std"]
    assert float(sample.tensor.max()) == pytest.approx(levels[1], abs=0.05)


def test_box_follows_the_head_in_an_off_centre_field_of_view() -> None:
    shifted = make_phantom(
        np.eye(3), np.array([2.0, 2.0, 2.0]), (110, 120, 80), fov_centre=HEAD_CENTRE + [40, 30, 0]
    )
    sample = ModelGrid().to_model(shifted)
    np.testing.assert_allclose(sample.centre, HEAD_CENTRE, atol=2.5)
    assert sample.coverage == 1.0
    small = ModelGrid(shape=(16, 16, 16), spacing=2.5).to_model(shifted)
    assert small.coverage < 0.3  # the box is far too small: coverage says so


def test_fine_input_is_smoothed_before_shrinking_and_keeps_position() -> None:
    fine = make_phantom(np.eye(3), np.array([1.0, 1.0, 1.0]), (100, 120, 90))
    grid = ModelGrid()
    sample = grid.to_model(fine)
    on_grid = voxel_to_ras(sample.affine, cube_centre_voxel(sample.tensor[0].numpy()))
    assert np.linalg.norm(on_grid - CUBE_CENTRE) < 0.2
    back = grid.to_input(sample.tensor, sample)
    assert back.shape == fine.shape
    centre = voxel_to_ras(fine.affine, cube_centre_voxel(back))
    assert np.linalg.norm(centre - CUBE_CENTRE) < 0.5


def test_nearest_keeps_labels_and_linear_blends(phantom: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(phantom)
    labels = torch.zeros(grid.shape)
    centre = np.round(np.linalg.solve(sample.affine, [*CUBE_CENTRE, 1.0])[:3]).astype(
        int
    )  # the cube's voxel on the grid
    i, j, k = centre
    labels[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4] = 1
    labels[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 3
    nearest = grid.to_input(labels, sample, mode="nearest")
    assert set(np.unique(nearest)) == {0.0, 1.0, 3.0}
    linear = grid.to_input(labels, sample, mode="linear")
    assert len(np.unique(linear)) > 10
    # The labelled block lies on the cube in the input's own voxels.
    assert cube_truth_mask(phantom)[nearest == 3].all()


def test_to_input_accepts_tensors_arrays_and_checks_its_input(phantom: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(phantom)
    with_grad = (sample.tensor.clone().requires_grad_(True) * 2)[None]  # [1, 1, *shape]
    from_tensor = grid.to_input(with_grad, sample)
    from_array = grid.to_input(sample.tensor.numpy()[0] * 2, sample)
    np.testing.assert_allclose(from_tensor, from_array, atol=1e-6)
    assert from_tensor.dtype == np.float32
    with pytest.raises(ValueError, match="grid shape"):
        grid.to_input(np.zeros((10, 10, 10)), sample)
    with pytest.raises(ValueError, match="mode"):
        grid.to_input(sample.tensor, sample, mode="cubic")  # type: ignore[arg-type]


def test_sample_survives_pickling(phantom: Volume) -> None:
    grid = ModelGrid()
    sample = grid.to_model(phantom)
    copy = pickle.loads(pickle.dumps(sample))
    np.testing.assert_array_equal(
        grid.to_input(copy.tensor, copy), grid.to_input(sample.tensor, sample)
    )
    # to_input does not consume the trace: it can be called again.
    assert len(sample.applied_operations) == 1
    grid.to_input(sample.tensor, sample, mode="nearest")
    assert len(sample.applied_operations) == 1


def test_dict_round_trip_and_validation() -> None:
    grid = ModelGrid(shape=(32, 40, 32), spacing=4.0)
    data = json.loads(json.dumps(grid.to_dict()))
    assert ModelGrid.from_dict(data) == grid
    assert ModelGrid.from_dict({"shape": [64, 80, 64], "spacing": 2.5}) == ModelGrid()
    with pytest.raises(ValueError, match="centring"):
        ModelGrid.from_dict({**data, "centring": "field_of_view"})
    with pytest.raises(ValueError):
        ModelGrid(shape=(0, 4, 4))
    with pytest.raises(ValueError):
        ModelGrid(spacing=-1.0)
    small = grid.to_model(make_phantom())
    assert tuple(small.tensor.shape) == (1, 32, 40, 32)


class _CountingGrid(ModelGrid):
    """A ModelGrid that counts how often it really preprocesses an image."""

    calls = 0

    def to_model(self, volume):  # type: ignore[override]
        type(self).calls += 1
        return super().to_model(volume)


def test_cache_is_keyed_by_content_and_shared_by_the_demo(tmp_path, mni: Volume) -> None:
    import shutil

    import nibabel as nib

    from autoimmuneai.data.cohort import Case
    from autoimmuneai.data.dataset import build_arrays, case_image, shared_image_cache

    first = tmp_path / "a" / "x_flair.nii.gz"
    first.parent.mkdir()
    nib.save(nib.Nifti1Image(mni.array, mni.affine), first)
    copy = tmp_path / "b" / "renamed.nii.gz"
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    grid, cache = _CountingGrid((24, 30, 24), 6.0), tmp_path / "cache"
    _CountingGrid.calls = 0
    a, _ = case_image(Case("p1", 2, {"flair": first}, {}), ["flair"], grid, cache)
    b, _ = case_image(Case("p2", 3, {"flair": copy}, {}), ["flair"], grid, cache)
    assert _CountingGrid.calls == 1 and np.array_equal(a, b)  # same bytes: read from the cache
    other = _CountingGrid((24, 30, 24), 5.0)  # other settings: another entry
    case_image(Case("p1", 2, {"flair": first}, {}), ["flair"], other, cache)
    assert _CountingGrid.calls == 2
    time.sleep(0.01)
    nib.save(nib.Nifti1Image(mni.array[:, :, ::-1].copy(), mni.affine), copy)  # rewritten
    c, _ = case_image(Case("p2", 3, {"flair": copy}, {}), ["flair"], grid, cache)
    assert _CountingGrid.calls == 3 and not np.array_equal(b, c)

    class _Cohort:  # the two members build_arrays reads besides the cases
        from autoimmuneai.data.panel import load_panel

        panel = load_panel("cns_autoimmune")
        cases = [Case("p1", 2, {"flair": first}, {})]

    _CountingGrid.calls = 0
    # the stand-in cohort has no labs: build_arrays stops after the image stage
    with shared_image_cache(cache), pytest.raises(AttributeError, match="lab_matrix"):
        build_arrays(_Cohort(), grid, None, progress=False, workers=1)
    assert _CountingGrid.calls == 0  # the demo's evaluation reuses training's cache
