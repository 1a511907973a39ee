"""The fusion network and its losses: shapes, purity, modality switches, Cox vs lifelines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lifelines import CoxPHFitter

from autoimmuneai.losses import class_weights, cox_loss, cox_neg_log_likelihood, diagnosis_loss
from autoimmuneai.model import FusionModel, ModelConfig

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
    h, fmap = model.image_encoder(image)
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


# ----------------------------------------------------------------------------- losses


def test_cross_entropy_matches_torch_and_skips_unknown() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, -1, 1, 1])
    w = class_weights(labels.numpy(), 3)
    keep = labels >= 0
    expected = F.cross_entropy(logits[keep], labels[keep], weight=w)
    assert torch.allclose(diagnosis_loss(logits, labels, w), expected)
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
    assert float(cox_loss(eta, times, events)) == pytest.approx(expected / 3)
    # no event at all: zero loss that still carries a graph
    x = torch.zeros(3, requires_grad=True)
    zero = cox_loss(x, torch.ones(3), torch.zeros(3))
    zero.backward()
    assert float(zero.detach()) == 0.0 and x.grad is not None
    # shift invariance (why the risk head has no bias)
    shifted, _ = cox_neg_log_likelihood(eta + 4.0, times, events)
    assert float(shifted) == pytest.approx(float(nll))
