"""The fusion network and its losses: shapes, purity, modality switches, Cox vs lifelines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lifelines import CoxPHFitter

from autoimmuneai.model.fusion import FusionModel, LesionLoad, ModelConfig, cube_max
from autoimmuneai.model.losses import (
    class_weights,
    cox_neg_log_likelihood,
    diagnosis_sum,
)

SMALL = {"channels": (4, 8), "strides": (2, 2), "n_serology": 6, "n_classes": 3}


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_forward_shapes_and_both_heads(fusion: str) -> None:
    torch.manual_seed(0)
    model = FusionModel(ModelConfig(fusion=fusion, **SMALL)).eval()
    image, serology = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 6)
    logits, hazard = model.forward_all(image, serology)
    assert logits.shape == (2, 3) and hazard.shape == (2,)
    assert torch.equal(model(image, serology), logits)
    # a pure function of its inputs: a case gives the same output alone as in a batch
    alone = model(image[:1], serology[:1])
    assert torch.allclose(alone, logits[:1], atol=1e-5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_image_is_differentiable_and_last_block_exposed() -> None:
    model = FusionModel(ModelConfig(fusion="film", **SMALL)).eval()
    image = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    serology = torch.randn(1, 6, requires_grad=True)
    seen: dict = {}

    def hook(module, inputs, output) -> None:
        seen["shape"] = tuple(output.shape)

    handle = model.image_encoder.last_block.register_forward_hook(hook)
    model(image, serology)[0, 1].backward()
    handle.remove()
    assert seen["shape"] == (1, 8, 4, 4, 4)
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert serology.grad is not None and serology.grad.abs().sum() > 0


def test_film_changes_image_features_with_serology() -> None:
    torch.manual_seed(1)
    model = FusionModel(ModelConfig(fusion="film", **SMALL)).eval()
    with torch.no_grad():  # FiLM starts as the identity; give it some weights
        model.film.net[-1].weight.normal_(0, 0.5)
    image = torch.randn(1, 1, 16, 16, 16)
    h, fmap, _ = model.image_encoder(image)
    ctx_a = torch.cat([h.flatten(2).mean(2), model.serology_encoder(torch.zeros(1, 6))], 1)
    ctx_b = torch.cat([h.flatten(2).mean(2), model.serology_encoder(torch.ones(1, 6) * 3)], 1)
    assert not torch.allclose(model.film(fmap, ctx_a), model.film(fmap, ctx_b))


def test_modality_switches() -> None:
    image_only = FusionModel(ModelConfig(use_serology=False, **SMALL)).eval()
    sero_only = FusionModel(ModelConfig(use_image=False, **SMALL)).eval()
    assert not hasattr(image_only, "serology_encoder") and not hasattr(sero_only, "image_encoder")
    image, serology = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 6)
    assert torch.equal(image_only(image, serology), image_only(image, serology * 0 + 5))
    assert torch.equal(sero_only(image, serology), sero_only(image * 0, serology))
    with pytest.raises(ValueError):
        ModelConfig(use_image=False, use_serology=False, **SMALL)


def test_config_round_trip() -> None:
    cfg = ModelConfig(fusion="concat", dropout=0.1, **SMALL)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.variant(use_serology=False).use_serology is False


def _head(shape: tuple[int, int, int] = (32, 40, 32)) -> torch.Tensor:
    """A z-scored 'head': tissue around 0 with a smooth bias field, background at -6."""
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grid))
    image = torch.where(radius < 0.9, 0.8 * grid[0] + 0.1 * torch.randn(shape), torch.tensor(-6.0))
    return image[None, None]


def test_lesion_load_counts_a_lesion_in_its_region_only() -> None:
    torch.manual_seed(0)
    load = LesionLoad(regions=(2, 2, 2), contrast=2.5, window=5)
    head = _head()
    # the head's edge (a step of 6 SDs) and the bias field (a ramp of 1.6 SDs) are no lesion
    assert torch.count_nonzero(load.excess(head)) == 0
    assert float(load(head).abs().max()) == 0.0
    lesion = head.clone()
    lesion[0, 0, 8:11, 28:31, 22:25] += 5.0  # 27 voxels in the block (0, 1, 1)
    features = load(lesion).reshape(2, 2, 2)
    assert float(features[0, 1, 1]) > 1.0
    others = torch.ones(2, 2, 2, dtype=torch.bool)
    others[0, 1, 1] = False
    assert float(features[others].abs().max()) == 0.0
    # differentiable: the positive gradient lands on the lesion (its surroundings get the
    # negative share: raising them lowers the local excess)
    x = lesion.clone().requires_grad_(True)
    load(x).sum().backward()
    grad = x.grad[0, 0]
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[8:11, 28:31, 22:25] = True
    assert bool(inside.flatten()[grad.abs().argmax()])
    assert float(grad[inside].median()) > 0
    assert float(grad[inside].sum()) > 0.9 * float(grad.clamp(min=0).sum())


def test_lesion_count_counts_lesions_not_their_size() -> None:
    torch.manual_seed(0)
    count = LesionLoad(regions=(2, 1, 1), contrast=2.5, window=5, count=True)
    head = _head()
    assert float(count(head).abs().max()) == 0.0
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (32, 40, 32)], indexing="ij"))

    def blob(center: tuple[int, int, int], sigma: float) -> torch.Tensor:
        d2 = ((grid - torch.tensor(center).view(3, 1, 1, 1)) ** 2).sum(0)
        return 6.0 * torch.exp(-d2 / (2 * sigma**2))

    # three lesions of very different sizes in the first half, one in the second
    lesions = head + blob((6, 18, 14), 0.6) + blob((9, 12, 21), 1.2) + blob((8, 27, 12), 2.0)
    lesions = lesions + blob((23, 20, 15), 1.0)
    got = torch.expm1(count(lesions))[0]  # [load of each half, lesion count]
    assert got.shape == (3,)
    assert 3.7 < float(got[2]) < 4.05
    assert float(got[0]) > float(got[1])  # the load is a volume: three lesions, one bigger
    one = torch.expm1(count(head + blob((23, 20, 15), 1.0)))[0]
    assert 0.9 < float(one[2]) < 1.02
    # differentiable at the peaks: a brighter peak counts (a little) more
    x = lesions.clone().requires_grad_(True)
    count(x)[0, 2].backward()
    assert float(x.grad[0, 0, 6, 18, 14]) > 0


def test_coarse_read_out_sees_the_large_soft_lesion_the_base_window_misses() -> None:
    torch.manual_seed(0)
    load = LesionLoad(regions=(), contrast=2.5, window=5, count=True, coarse=(5, 7))
    head = _head()
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (32, 40, 32)], indexing="ij"))
    d2 = ((grid - torch.tensor([16, 20, 16]).view(3, 1, 1, 1)) ** 2).sum(0)
    sharp = head + 6.0 * torch.exp(-d2 / 2.0)  # sigma 1 voxel
    soft = head + 4.0 * torch.exp(-d2 / (2 * 3.5**2))  # sigma 3.5 voxels, dimmer: "fluffy"
    assert load.out_features == 1 + 2 * 2
    assert float(load(head).abs().max()) == 0.0
    # [count, then load and count at coarse windows 5 and 7]
    got_sharp, got_soft = torch.expm1(load(sharp))[0], torch.expm1(load(soft))[0]
    assert 0.9 < float(got_sharp[0]) < 1.02 and float(got_sharp[4]) > 0.5
    assert float(got_soft[:3].abs().max()) == 0.0  # as wide as the window: no excess
    assert float(got_soft[3]) > float(got_sharp[3]) and 0.5 < float(got_soft[4]) < 1.02
    # the coarse maps are the base read-out of the 2x2x2-averaged image, window for window
    small = F.avg_pool3d(soft, 2)
    torch.testing.assert_close(got_soft[3], load.excess(small, window=7).sum())
    # and the gradient reaches the lesion's voxels through the averaging
    x = soft.clone().requires_grad_(True)
    load(x)[0, 3].backward()
    assert float(x.grad[0, 0, 16, 20, 16]) > 0


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_cube_max_is_max_pooling(size: int) -> None:
    x = torch.randn(2, 1, 7, 9, 5)
    expected = F.max_pool3d(x, size, stride=1, padding=size // 2)
    torch.testing.assert_close(cube_max(x, size), expected, rtol=0, atol=0)


def test_cube_max_refuses_an_even_cube() -> None:
    with pytest.raises(ValueError, match="odd"):
        cube_max(torch.zeros(1, 1, 4, 4, 4), 4)


def test_wide_path_adds_a_linear_function_of_labs_and_lesion_features() -> None:
    cfg = ModelConfig(lesion_regions=(2, 2, 2), lesion_count=True, **SMALL)
    model = FusionModel(cfg).eval()
    with torch.no_grad():  # silence the deep path: the logits are the wide path alone
        model.diagnosis_head.weight.zero_()
        model.diagnosis_head.bias.zero_()
    image, serology = _head((16, 16, 16)).repeat(2, 1, 1, 1, 1), torch.randn(2, 6)
    lesion_features = model.image_encoder.lesions(image)
    expected = torch.cat([serology, lesion_features], dim=1) @ model.wide_head.weight.T
    torch.testing.assert_close(model(image, serology), expected)
    assert lesion_features.shape[1] == 8 + 1 + 2 * 2
    # configs written before the wide path, the count and the coarse read-out load without
    new = ("wide", "lesion_count", "lesion_coarse_windows")
    old = {k: v for k, v in cfg.to_dict().items() if k not in new}
    assert FusionModel(ModelConfig.from_dict(old)).wide_head is None
    assert ModelConfig.from_dict(old).lesion_count is False
    assert ModelConfig.from_dict(old).lesion_coarse_windows == ()


@pytest.mark.parametrize("window", [3, 5, 7])
@pytest.mark.parametrize("grad", [False, True], ids=["in-place sums", "autograd"])
def test_lesion_load_surroundings_are_a_zero_padded_box_mean(window: int, grad: bool) -> None:
    """Both code paths of the running-sum box mean equal scipy's and torch's box filters,
    and so does the gradient (what Integrated Gradients differentiates)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 9, 12, 7)).astype(np.float32)
    mine = torch.from_numpy(x).requires_grad_(grad)
    got = LesionLoad._mean(mine, window)
    expected = uniform_filter(x.astype(np.float64), size=(1, 1) + (window,) * 3, mode="constant")
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-5)
    if grad:
        ref = torch.from_numpy(x).requires_grad_(True)
        pooled = F.avg_pool3d(ref, window, stride=1, padding=window // 2, count_include_pad=True)
        weights = torch.from_numpy(rng.normal(size=x.shape).astype(np.float32))
        (got * weights).sum().backward()
        (pooled * weights).sum().backward()
        torch.testing.assert_close(mine.grad, ref.grad, atol=1e-5, rtol=1e-5)


def test_lesion_load_feeds_the_fused_representation() -> None:
    cfg = ModelConfig(lesion_regions=(2, 2, 2), lesion_count=True, **SMALL)
    model = FusionModel(cfg).eval()
    # 8 regional loads, the lesion count, load and count at each of 2 coarse windows
    assert model.trunk[0].in_features == 2 * 8 + 8 + 1 + 4 + cfg.serology_width
    off = FusionModel(
        cfg.variant(lesion_regions=(), lesion_count=False, lesion_coarse_windows=())
    ).eval()
    assert off.trunk[0].in_features == 2 * 8 + cfg.serology_width
    with pytest.raises(ValueError, match="lesion_window"):
        ModelConfig(lesion_window=4, **SMALL)
    with pytest.raises(ValueError, match="lesion_coarse_windows"):
        ModelConfig(lesion_coarse_windows=(6,), **SMALL)


# ----------------------------------------------------------------------------- losses


def test_cross_entropy_matches_torch_and_skips_unknown() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, -1, 1, 1])
    w = class_weights(labels.numpy(), 3)
    keep = labels >= 0
    expected = F.cross_entropy(logits[keep], labels[keep], weight=w)
    total, norm = diagnosis_sum(logits, labels, w)
    assert torch.allclose(total / norm, expected)
    # balanced weights: n / (k * count)
    assert torch.allclose(w, torch.tensor([5 / 3, 5 / 9, 5 / 3]))


def test_cox_matches_lifelines_partial_likelihood() -> None:
    rng = np.random.default_rng(3)
    n = 40
    x = rng.normal(size=n)
    times = rng.exponential(10 / np.exp(0.7 * x)) + rng.uniform(0, 1e-3, n)  # no ties
    events = (rng.uniform(size=n) < 0.7).astype(float)
    cph = CoxPHFitter().fit(
        pd.DataFrame({"x": x, "T": times, "E": events}), duration_col="T", event_col="E"
    )
    beta = float(cph.params_["x"])
    eta = torch.tensor(beta * x, dtype=torch.float64)
    nll, n_events = cox_neg_log_likelihood(
        eta, torch.tensor(times, dtype=torch.float64), torch.tensor(events, dtype=torch.float64)
    )
    assert n_events == events.sum()
    assert float(nll) == pytest.approx(-cph.log_likelihood_, rel=1e-6)
    # and it is the maximum: the loss is larger away from lifelines' estimate
    worse, _ = cox_neg_log_likelihood(eta * 1.3, torch.tensor(times), torch.tensor(events))
    assert float(worse) > float(nll)


def test_cox_breslow_ties_and_missing_follow_up() -> None:
    eta = torch.tensor([0.5, -0.2, 0.1, 0.3, 9.0], dtype=torch.float64)
    times = torch.tensor([2.0, 2.0, 3.0, 5.0, float("nan")], dtype=torch.float64)
    events = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    nll, n_events = cox_neg_log_likelihood(eta, times, events)
    e = np.exp([0.5, -0.2, 0.1, 0.3])
    # Breslow: both tied events at t=2 share the full risk set {0,1,2,3}; case 4 has no time
    expected = -(0.5 - math.log(e.sum()) + (-0.2) - math.log(e.sum()) + 0.3 - math.log(e[3]))
    assert float(nll) == pytest.approx(expected, rel=1e-12)
    assert float(n_events) == 3
    # no event at all: zero loss that still carries a graph
    x = torch.zeros(3, requires_grad=True)
    zero, none = cox_neg_log_likelihood(x, torch.ones(3), torch.zeros(3))
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(none) == 0.0 and x.grad is not None
    # shift invariance (why the risk head has no bias)
    shifted, _ = cox_neg_log_likelihood(eta + 4.0, times, events)
    assert float(shifted) == pytest.approx(float(nll))
