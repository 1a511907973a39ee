"""Evidence regions from a hand-made attribution map whose answer is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from autoimmuneai.errors import InputError
from autoimmuneai.explain.regions import evidence_regions, smooth_in_mm, voxel_volume_ml


def _affine() -> np.ndarray:
    """Anisotropic voxels (2 x 3 x 4 mm = 0.024 mL) rotated 90 degrees about S, shifted."""
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 3.0, 4.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return affine


def _map() -> tuple[np.ndarray, dict]:
    """800 positive voxels: A (8 voxels of 100), B (40 of 50), 752 of 0.01; some negatives."""
    values = np.zeros((30, 30, 30), dtype=np.float32)
    values[2:4, 2:4, 2:4] = 100.0  # A: the top 1% of 800 positive voxels = 8 voxels
    values[10:12, 10:14, 10:15] = 50.0  # B: 40 voxels, the rest of the top 5% (40 voxels)
    slab = np.zeros_like(values, dtype=bool)
    slab[20:28, 0:30, 0:4] = True  # 960 voxels, of which 752 get 0.01
    idx = np.flatnonzero(slab.ravel())[:752]
    values.ravel()[idx] = 0.01
    values[25:28, 25:28, 25:28] = -70.0  # evidence against: never a region, not in the total
    total = 8 * 100.0 + 40 * 50.0 + 752 * 0.01
    truth = {
        "A": {"n": 8, "share": 800.0 / total, "centre_ijk": (2.5, 2.5, 2.5)},
        "B": {"n": 40, "share": 2000.0 / total, "centre_ijk": (10.5, 11.5, 12.0)},
    }
    return values, truth


def test_voxel_volume_comes_from_the_affine_determinant():
    assert voxel_volume_ml(_affine()) == pytest.approx(0.024)


def test_bands_volumes_shares_and_centroids_are_exact():
    values, truth = _map()
    affine = _affine()
    labelmap, regions = evidence_regions(values, affine, "MS", smooth_mm=0, min_volume_ml=0)
    assert [r.label for r in regions] == [1, 2]
    b, a = regions  # sorted by share: B carries more of the positive attribution
    assert (b.band, a.band) == ("top 5%", "top 1%")
    assert (b.n_voxels, a.n_voxels) == (40, 8)
    assert b.volume_ml == pytest.approx(40 * 0.024)
    assert a.volume_ml == pytest.approx(8 * 0.024)
    assert b.share == pytest.approx(truth["B"]["share"], rel=1e-6)
    assert a.share == pytest.approx(truth["A"]["share"], rel=1e-6)
    for region, key in ((b, "B"), (a, "A")):
        ijk = np.array(truth[key]["centre_ijk"])
        expected = affine[:3, :3] @ ijk + affine[:3, 3]
        np.testing.assert_allclose(region.centroid_ras, expected, atol=1e-6)
    assert b.name == "Evidence for MS — region 1, 1.0 mL, 71%"
    assert a.name == "Evidence for MS — region 2, 0.2 mL, 28%"
    assert labelmap.shape == values.shape and labelmap.dtype == np.int16
    assert (labelmap == 1).sum() == 40 and (labelmap == 2).sum() == 8
    assert np.all(labelmap[values <= 0.01] == 0)
    assert b.color != a.color


def test_small_components_are_dropped_and_regions_capped():
    values, _ = _map()
    _, regions = evidence_regions(values, _affine(), "MS", smooth_mm=0, min_volume_ml=0.5)
    assert [r.n_voxels for r in regions] == [40]
    labelmap, regions = evidence_regions(
        values, _affine(), "MS", smooth_mm=0, min_volume_ml=0, max_regions=1
    )
    assert len(regions) == 1 and set(np.unique(labelmap)) == {0, 1}


def test_no_positive_evidence_gives_an_empty_labelmap():
    labelmap, regions = evidence_regions(-np.ones((5, 5, 5)), np.eye(4), "SVD")
    assert regions == [] and not labelmap.any()


def test_smoothing_is_isotropic_in_millimetres():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    point = np.zeros((41, 41, 41), dtype=np.float32)
    point[20, 20, 20] = 1.0
    smooth = smooth_in_mm(point, affine, 3.0)
    along_i = smooth[20 - 6 : 20 + 7, 20, 20]
    along_k = smooth[20, 20, 20 - 2 : 20 + 3]
    mm_i = np.arange(-6, 7) * 1.0
    mm_k = np.arange(-2, 3) * 3.0
    # The value at the same distance in mm is the same along both axes.
    assert np.interp(3.0, mm_i, along_i) == pytest.approx(np.interp(3.0, mm_k, along_k), rel=0.1)
    assert along_i[6 + 3] == pytest.approx(along_k[2 + 1], rel=0.1)


def test_bad_inputs_are_refused():
    with pytest.raises(InputError):
        evidence_regions(np.zeros((4, 4)), np.eye(4), "MS")
    with pytest.raises(InputError):
        evidence_regions(np.full((4, 4, 4), np.nan), np.eye(4), "MS")
    with pytest.raises(InputError):
        evidence_regions(np.ones((4, 4, 4)), np.eye(4), "MS", bands=(5.0, 1.0))


def test_the_bands_option_and_evidence_regions_share_one_rule():
    """``--bands`` and ``evidence_regions`` refuse the same bands and accept the same ones."""
    import argparse

    from autoimmuneai.cli import _bands

    values, _ = _map()
    for text in ("5,1", "0,5", "1,101", "1,1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="increasing percentages"):
            _bands(text)
        bands = tuple(float(x) for x in text.split(","))
        with pytest.raises(InputError, match="increasing percentages"):
            evidence_regions(values, _affine(), "X", bands=bands)
    assert _bands("2,100") == (2.0, 100.0)
    _, regions = evidence_regions(values, _affine(), "X", bands=(2.0, 100.0))
    assert {r.band for r in regions} <= {"top 2%", "top 100%"} and regions
