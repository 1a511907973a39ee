"""The mixture risk head: its log-hazard, the crude start and the Cox refit (vs lifelines)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter

from autoimmuneai.model.fusion import FusionModel, ModelConfig
from autoimmuneai.model.losses import cox_neg_log_likelihood, sorted_cox_nll
from autoimmuneai.model.risk_head import (
    crude_class_log_hazards,
    fit_class_log_hazards,
)

SMALL = {"channels": (4, 8), "strides": (2, 2), "n_serology": 6, "n_classes": 3}


def _cohort(n: int = 300, seed: int = 0):
    """Three classes with log hazards 0.8, 0, -0.7; exponential times, some censored.

    No tied times: lifelines breaks ties by Efron's method, the risk head by Breslow's.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    true_a = np.array([0.8, 0.0, -0.7])
    t = rng.exponential(20.0 / np.exp(true_a[y]))
    c = rng.uniform(5, 60, n)
    return y, np.minimum(t, c) + 0.1, (t <= c).astype(float), true_a  # no ties


def test_mixture_head_is_the_hazard_averaged_over_the_differential() -> None:
    torch.manual_seed(0)
    model = FusionModel(ModelConfig(**SMALL)).eval()
    assert model.config.risk == "mixture" and not hasattr(model, "risk_head")
    with torch.no_grad():
        model.class_log_hazard.copy_(torch.tensor([1.0, -0.5, 0.2]))
    image, serology = torch.randn(4, 1, 16, 16, 16), torch.randn(4, 6)
    with torch.no_grad():
        logits, risk = model.forward_all(image, serology)
    p = torch.softmax(logits.double(), 1).numpy()
    expected = np.log((p * np.exp([1.0, -0.5, 0.2])).sum(1))
    np.testing.assert_allclose(risk.double().numpy(), expected, atol=1e-5)
    # the risk is differentiable back to the image (Cox training reaches the encoder)
    image.requires_grad_(True)
    model.forward_all(image, serology)[1].sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0


def test_risk_setting_is_checked_and_old_configs_load_as_linear() -> None:
    with pytest.raises(ValueError, match="risk must be one of"):
        ModelConfig(risk="cubic", **SMALL)
    old = ModelConfig(**SMALL).to_dict()
    del old["risk"]  # metadata of a bundle written before the mixture head
    cfg = ModelConfig.from_dict(old)
    assert cfg.risk == "linear"
    assert hasattr(FusionModel(cfg), "risk_head")
    assert ModelConfig.from_dict(ModelConfig(**SMALL).to_dict()).risk == "mixture"


def test_sorted_partial_likelihood_equals_the_risk_set_version_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    times = torch.randint(1, 15, (120,), generator=g).double()  # many ties
    events = (torch.rand(120, generator=g) < 0.5).double()
    times[[4, 9]] = float("nan")  # no follow-up
    eta = torch.randn(120, generator=g, dtype=torch.float64, requires_grad=True)
    # the n x n risk-set matrix written out: j is at risk at t_i when t_j >= t_i (Breslow)
    ok = torch.isfinite(times)
    t, e, x = times[ok], events[ok], eta[ok]
    at_risk = t.unsqueeze(0) >= t.unsqueeze(1)
    log_risk = torch.logsumexp(x.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    expected = -((x - log_risk) * e).sum()
    got = sorted_cox_nll(times, events)(eta)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    assert float(cox_neg_log_likelihood(eta, times, events)[0]) == pytest.approx(float(got))
    (g_expected,) = torch.autograd.grad(expected, eta)
    (g_got,) = torch.autograd.grad(sorted_cox_nll(times, events)(eta), eta)
    torch.testing.assert_close(g_got, g_expected)


def test_crude_start_is_the_centred_log_event_rate() -> None:
    y, t, e, _ = _cohort()
    t = t.copy()
    t[:5] = np.nan  # no follow-up: left out
    a = crude_class_log_hazards(y, t, e, 4).double().numpy()  # class 3 has no case
    pad = 0.5 * np.nanmedian(t)
    ok = np.isfinite(t)
    raw = [
        math.log((e[ok & (y == k)].sum() + 0.5) / (t[ok & (y == k)].sum() + pad)) for k in range(3)
    ]
    np.testing.assert_allclose(a[:3], np.array(raw) - np.mean(raw), atol=1e-6)
    assert a[3] == 0.0
    # the ordering recovers the generating hazards
    assert a[0] > a[1] > a[2]


def test_refit_with_certain_diagnoses_equals_lifelines_cox_on_class_dummies() -> None:
    y, t, e, _ = _cohort()
    logits = torch.tensor(np.eye(3)[y] * 40.0)  # softmax one-hot: risk = a_y exactly
    a = fit_class_log_hazards(logits, torch.tensor(t), torch.tensor(e), l2=0.0).double().numpy()
    df = pd.DataFrame({"c1": (y == 1) * 1.0, "c2": (y == 2) * 1.0, "T": t, "E": e})
    beta = CoxPHFitter().fit(df, "T", "E").params_
    np.testing.assert_allclose(a[1:] - a[0], beta[["c1", "c2"]].to_numpy(), atol=1e-4)
    assert abs(a.sum()) < 1e-5  # centred


def test_refit_with_uncertain_diagnoses_maximises_the_mixture_likelihood() -> None:
    y, t, e, true_a = _cohort(n=400, seed=2)
    rng = np.random.default_rng(3)
    logits = torch.tensor(np.eye(3)[y] * 1.5 + rng.normal(0, 0.7, (len(y), 3)))
    tt, ee = torch.tensor(t), torch.tensor(e)
    a = fit_class_log_hazards(logits, tt, ee, l2=0.0).double()

    def nll(a_: torch.Tensor) -> float:
        risk = torch.logsumexp(torch.log_softmax(logits, 1) + a_, 1)
        return float(cox_neg_log_likelihood(risk, tt, ee)[0])

    best = nll(a)
    for k in range(3):  # a maximum: every step away from it lowers the likelihood
        for step in (-0.05, 0.05):
            assert nll(a + step * torch.eye(3, dtype=torch.float64)[k]) > best
    assert best < nll(torch.zeros(3, dtype=torch.float64))
    # with a soft differential the fitted spread is wider than the truth's (it is diluted)
    assert a[0] - a[2] > true_a[0] - true_a[2] - 0.3


def test_prediction_explains_its_risk_by_class(tiny_bundle, tiny_cohort) -> None:
    from conftest import read_rows

    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.inference.predictor import Predictor

    predictor = Predictor(tiny_bundle)
    rows, _ = read_rows(tiny_cohort)
    volume = load_volume(tiny_cohort.parent / rows[0]["image_flair"])
    labs = {f: rows[0].get(f, "") for f in ("aqp4_igg", "mog_igg", "ocb", "age", "sex")}
    prepared = predictor.prepare(volume, labs)
    result = predictor.predict_prepared(prepared)
    logits, risk = predictor.logits_and_risk(prepared)
    a = predictor.model.class_log_hazard.detach().double().numpy()
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()  # untempered
    # the risk score is the log of the hazard averaged over the differential ...
    assert result.risk_score == pytest.approx(math.log((p * np.exp(a)).sum()), abs=1e-5)
    # ... and each class's share of it is p_k exp(a_k) over the hazard the network returned
    # (the risk score from the forward pass, not a sum of the shares themselves)
    assert list(result.risk_by_class) == predictor.classes
    np.testing.assert_allclose(
        list(result.risk_by_class.values()), p * np.exp(a - float(risk)), atol=1e-5
    )
    assert result.to_json()["risk_by_class"] == result.risk_by_class


def test_covariate_head_with_certain_diagnoses_equals_lifelines_cox_with_the_covariate() -> None:
    from autoimmuneai.model.risk_head import fit_covariate_log_hazards

    y, _, _, true_a = _cohort(n=400, seed=4)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(len(y), 2))
    t = rng.exponential(20.0 / np.exp(true_a[y] + 0.6 * x[:, 0])) + 0.1
    c = rng.uniform(5, 60, len(y))
    e, t = (t <= c).astype(float), np.minimum(t, c)
    logits = torch.tensor(np.eye(3)[y] * 40.0)
    a, w = fit_covariate_log_hazards(
        logits, torch.tensor(x), torch.tensor(t), torch.tensor(e), l2=0.0, l2_class=0.0
    )
    df = pd.DataFrame({"c1": (y == 1) * 1.0, "c2": (y == 2) * 1.0, "x0": x[:, 0], "x1": x[:, 1]})
    beta = CoxPHFitter().fit(df.assign(T=t, E=e), "T", "E").params_
    a = a.double().numpy()
    np.testing.assert_allclose(a[1:] - a[0], beta[["c1", "c2"]].to_numpy(), atol=2e-3)
    np.testing.assert_allclose(w.double().numpy(), beta[["x0", "x1"]].to_numpy(), atol=2e-3)
    # a strong ridge shrinks w to 0: the plain mixture head's refit
    a_big, w_big = fit_covariate_log_hazards(
        logits, torch.tensor(x), torch.tensor(t), torch.tensor(e), l2=1e4
    )
    plain = fit_class_log_hazards(logits, torch.tensor(t), torch.tensor(e))
    assert float(w_big.abs().max()) < 1e-3
    np.testing.assert_allclose(a_big.numpy(), plain.numpy(), atol=5e-3)
