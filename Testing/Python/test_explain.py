"""Captum explanations of a small FusionModel trained here on generated heads with blobs.

The toy task (3 of the panel's classes): MS = three bright blobs in the head (labs neutral),
NMOSD = high AQP4-IgG titre and no blob, SVD = one equally large DARK blob (so that the
head's intensity spread, which sets the z-score normalisation, does not give MS away and
the model has to look at the blob itself). The model is trained once per test
session (about 60 optimiser steps on a 24x28x24 grid) and shared by the explain tests.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from autoimmuneai.data.imaging import Volume, foreground_mask
from autoimmuneai.data.labvalues import LabValue
from autoimmuneai.data.panel import load_panel
from autoimmuneai.data.serology import SerologyEncoder
from autoimmuneai.errors import InputError
from autoimmuneai.explain.attribution import METHODS, explain, image_baseline
from autoimmuneai.explain.quality import QualityCase, randomised_model
from autoimmuneai.explain.regions import evidence_regions
from autoimmuneai.model.fusion import FusionModel, ModelConfig
from autoimmuneai.preprocess.model_grid import ModelGrid

GRID = ModelGrid(shape=(24, 28, 24), spacing=6.0)
PANEL = load_panel("cns_autoimmune")
MS, NMOSD, SVD = (PANEL.class_index(c) for c in ("MS", "NMOSD", "SVD"))
HEAD_RADII = np.array([60.0, 70.0, 55.0])


def head_image(affine: np.ndarray, shape: tuple, blobs: list, seed: int) -> Volume:
    """An ellipsoid 'head' with darker 'ventricles', mild texture and noise, plus a blob.

    ``blobs`` are (centre RAS mm, radius mm); values are sampled at each voxel's RAS position,
    so the same head can be drawn on any grid (oblique, anisotropic).
    """
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ras = ijk.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(ras / HEAD_RADII, axis=-1) < 1
    value = inside * (1.0 + 0.25 * np.sin(ras[..., 0] / 9.0) * np.cos(ras[..., 1] / 11.0))
    ventricles = np.linalg.norm(ras / np.array([12.0, 25.0, 12.0]), axis=-1) < 1
    value = np.where(ventricles, 0.4, value)
    for centre, radius in blobs:
        d = np.linalg.norm(ras - np.asarray(centre), axis=-1)
        value = value + 1.5 * np.clip(1.5 - d / radius, 0.0, 1.0)
    value = value + 0.05 * rng.standard_normal(value.shape)
    return Volume(value.astype(np.float32), affine)


def random_blob(rng: np.random.Generator, side: float | None = None) -> tuple[np.ndarray, float]:
    """A blob in the left (side -1, R < 0) or right (side +1) hemisphere."""
    side = rng.choice([-1.0, 1.0]) if side is None else side
    centre = np.array([side * rng.uniform(18, 38), rng.uniform(-35, 35), rng.uniform(-20, 25)])
    return centre, float(rng.uniform(11, 14))


def toy_labs(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical lab values: AQP4 high only for NMOSD; a few neutral labs, some missing."""
    names = PANEL.feature_names
    values = np.full(len(names), np.nan)
    missing = np.ones(len(names), dtype=bool)

    def put(name: str, value: float) -> None:
        values[names.index(name)] = value
        missing[names.index(name)] = False

    put("aqp4_igg", float(rng.choice([160, 320, 640, 1280])) if cls == NMOSD else 0.0)
    put("ocb", float(rng.random() < 0.5))
    for name, low, high in (("igg_index", 0.4, 1.2), ("c3", 0.6, 1.4), ("age", 20, 70)):
        if rng.random() < 0.8:
            put(name, float(rng.uniform(low, high)))
    return values, missing


def toy_case(cls: int, seed: int, grid: ModelGrid = GRID):
    """(image tensor [1,1,...], values, missing, blobs) of one generated case on ``grid``."""
    rng = np.random.default_rng(seed)
    blobs = [random_blob(rng) for _ in range(3)] if cls == MS else []
    volume = head_image(grid.grid_affine(np.zeros(3)), grid.shape, blobs, seed)
    values, missing = toy_labs(rng, cls)
    return grid.to_model(volume).tensor[None], values, missing, blobs


@functools.lru_cache(maxsize=1)
def trained_toy() -> tuple[FusionModel, SerologyEncoder]:
    """A FusionModel trained briefly on the toy task (cached for the session)."""
    classes = (MS, NMOSD, SVD)
    cases = [toy_case(classes[i % 3], 1000 + i) for i in range(90)]
    images = torch.cat([c[0] for c in cases])
    values = np.stack([c[1] for c in cases])
    missing = np.stack([c[2] for c in cases])
    labels = torch.tensor([classes[i % 3] for i in range(90)])
    encoder = SerologyEncoder(PANEL).fit(values, missing)
    serology = torch.from_numpy(encoder.transform(values, missing))
    config = ModelConfig(
        n_serology=encoder.n_encoded, n_classes=len(PANEL.classes), fusion="concat",
        channels=(4, 8, 16), strides=(2, 2, 2), dropout=0.0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FusionModel(config)
        optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(60):
            idx = torch.randint(0, len(labels), (12,))
            loss = torch.nn.functional.cross_entropy(model(images[idx], serology[idx]), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval(), encoder


def encode(encoder: SerologyEncoder, values: np.ndarray, missing: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(encoder.transform(values[None], missing[None]))


def parsed_labs(values: np.ndarray, missing: np.ndarray) -> dict[str, LabValue]:
    return {
        name: LabValue.absent() if missing[j] else LabValue(float(values[j]))
        for j, name in enumerate(PANEL.feature_names)
    }


def toy_quality_cases(encoder: SerologyEncoder, seeds) -> list[QualityCase]:
    """MS toy cases with their true blob masks on the model grid (quality test and benchmark)."""
    affine = GRID.grid_affine(np.zeros(3))
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in GRID.shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    cases = []
    for seed in seeds:
        image, values, missing, blobs = toy_case(MS, seed)
        lesion = np.zeros(GRID.shape, dtype=bool)
        for centre, radius in blobs:
            lesion |= np.linalg.norm(ras - centre, axis=-1) <= radius
        serology = encode(encoder, values, missing)
        labs = parsed_labs(values, missing)
        cases.append(QualityCase(str(seed), image, serology, MS, lesion, affine, labs=labs))
    return cases


@pytest.fixture(scope="module")
def toy():
    return trained_toy()


def test_the_toy_model_learned_both_modalities(toy):
    model, encoder = toy
    hits = []
    for i, cls in enumerate((MS, NMOSD, SVD) * 4):
        image, values, missing, _ = toy_case(cls, 50 + i)
        with torch.no_grad():
            hits.append(int(model(image, encode(encoder, values, missing)).argmax()) == cls)
    assert np.mean(hits) >= 0.9


def _largest_region_distance(model, encoder, volume: Volume, blob, seed: int) -> float:
    values, missing = toy_labs(np.random.default_rng(seed), MS)
    sample = GRID.to_model(volume)
    e = explain(
        model, sample.tensor[None], encode(encoder, values, missing), encoder=encoder,
        labs=parsed_labs(values, missing), target=MS,
    )  # fmt: skip
    attribution = GRID.to_input(e.image_map, sample, mode="linear")
    assert attribution.shape == volume.shape
    _, regions = evidence_regions(attribution, volume.affine, "MS")
    assert regions and regions[0].name.startswith("Evidence for MS — region 1")
    return float(np.linalg.norm(np.array(regions[0].centroid_ras) - blob[0]))


def test_largest_region_is_on_the_blob_axis_aligned(toy):
    model, encoder = toy
    distances = []
    for seed in (7, 8, 9):
        blob = random_blob(np.random.default_rng(seed))
        volume = head_image(GRID.grid_affine(np.zeros(3)), GRID.shape, [blob], seed)
        distances.append(_largest_region_distance(model, encoder, volume, blob, seed))
    assert max(distances) <= 10.0, distances


def test_largest_region_is_on_the_blob_oblique_anisotropic(toy):
    model, encoder = toy
    angle = np.deg2rad(25.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([3.0, 3.0, 7.0])
    shape = (52, 60, 24)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + [3.0, -4.0, 2.0]
    distances = []
    for seed in (11, 12):
        blob = random_blob(np.random.default_rng(seed))
        volume = head_image(affine, shape, [blob], seed)
        distances.append(_largest_region_distance(model, encoder, volume, blob, seed))
    assert max(distances) <= 10.0, distances


def test_integrated_gradients_is_complete_and_converged(toy):
    model, encoder = toy
    image, values, missing, _ = toy_case(MS, 21)
    serology = encode(encoder, values, missing)
    e = explain(model, image, serology, encoder=encoder, labs=parsed_labs(values, missing))
    assert e.method == "integrated_gradients" and e.target == MS
    assert e.image_map.shape == GRID.shape
    assert e.relative_delta is not None and e.relative_delta <= 0.05
    with torch.no_grad():
        base = image_baseline(image)
        from autoimmuneai.explain.attribution import serology_baseline

        f = model(
            torch.cat([image, base]), torch.cat([serology, serology_baseline(encoder, serology)])
        )
    difference = float(f[0, MS] - f[1, MS])
    total = float(e.image_map.sum()) + sum(r["contribution"] for r in e.lab_contributions)
    assert total == pytest.approx(difference, abs=0.05 * abs(difference) + 1e-3)


def test_opened_baseline_erases_small_bright_spots_and_keeps_large_ones():
    """The "opened" baseline is a grey-level opening with a 5-voxel cube (max pooling's)."""
    image = torch.zeros(1, 1, 16, 18, 14)
    image[0, 0, 3:5, 3:5, 3:5] = 4.0  # a spot smaller than the cube: erased
    image[0, 0, 8:15, 9:16, 5:12] = 2.0  # a block larger than the cube: kept
    opened = image_baseline(image, "opened")
    pool = torch.nn.functional.max_pool3d
    expected = pool(-pool(-image, 5, stride=1, padding=2), 5, stride=1, padding=2)
    torch.testing.assert_close(opened, expected, rtol=0, atol=0)
    assert float(opened[0, 0, 3:5, 3:5, 3:5].max()) == 0.0
    assert float(opened[0, 0, 8:15, 9:16, 5:12].min()) == 2.0


def test_explaining_freezes_the_weights_and_restores_them(toy):
    """Attribution needs input gradients only: the weights are frozen while it runs (autograd
    then skips every weight gradient) and come back unchanged, still trainable."""
    model, encoder = toy
    image, values, missing, _ = toy_case(MS, 22)
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    seen: list[bool] = []
    hook = model.register_forward_hook(
        lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters()))
    )
    try:
        explain(model, image, encode(encoder, values, missing), encoder=encoder)
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert [p.requires_grad for p in model.parameters()] == flags and all(flags)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_strong_marker_ranks_first_for_nmosd(toy):
    model, encoder = toy
    image, values, missing, _ = toy_case(NMOSD, 31)
    values[PANEL.feature_names.index("aqp4_igg")] = 640.0
    e = explain(
        model, image, encode(encoder, values, missing), encoder=encoder,
        labs=parsed_labs(values, missing), target=NMOSD,
    )  # fmt: skip
    first = e.lab_contributions[0]
    assert first["feature"] == "aqp4_igg" and first["rank"] == 1
    assert first["contribution"] > 0 and first["value"] == "1:640"
    assert "pushed NMOSD up" in first["summary"]
    for row in e.lab_contributions:
        if row["missing"]:
            assert row["contribution"] == 0.0 and row["value"] == "missing"
    assert e.modality_share["serology"] > e.modality_share["image"]


def test_randomisation_separates_trained_from_randomised(toy):
    model, encoder = toy
    image, values, missing, _ = toy_case(MS, 41)
    serology = encode(encoder, values, missing)
    head = foreground_mask(image[0, 0].numpy())

    def run(m, steps):
        return explain(m, image, serology, encoder=encoder, target=MS, n_steps=steps).image_map[
            head
        ]

    # Two runs of the trained model (different quadrature) vs the fully randomised model.
    trained_twice = spearmanr(run(model, 16), run(model, 24))[0]
    randomised = spearmanr(run(model, 16), run(randomised_model(model), 16))[0]
    assert trained_twice > 0.8
    assert abs(randomised) < 0.2
    assert trained_twice - abs(randomised) > 0.6


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_map_and_lab_contributions(toy, method):
    model, encoder = toy
    image, values, missing, _ = toy_case(MS, 51)
    e = explain(
        model, image, encode(encoder, values, missing), encoder=encoder,
        labs=parsed_labs(values, missing), method=method, occlusion_window=8,
        occlusion_stride=8,
    )  # fmt: skip
    assert e.image_map.shape == GRID.shape and np.isfinite(e.image_map).all()
    assert np.abs(e.image_map).max() > 0
    assert [r["rank"] for r in e.lab_contributions] == list(range(1, len(PANEL.features) + 1))
    assert sum(e.modality_share.values()) == pytest.approx(1.0)


def test_bad_requests_are_refused(toy):
    model, encoder = toy
    image, values, missing, _ = toy_case(SVD, 61)
    serology = encode(encoder, values, missing)
    with pytest.raises(InputError):
        explain(model, image, serology, encoder=encoder, method="saliency")
    with pytest.raises(InputError):
        explain(model, image[0], serology, encoder=encoder)
    with pytest.raises(InputError):
        explain(model, image, serology[:, :3], encoder=encoder)
    with pytest.raises(InputError):
        explain(model, image, serology, encoder=encoder, target=99)
