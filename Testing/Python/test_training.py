"""Training: learning on a toy problem, determinism, resume, splits, the train command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_problem import N_CLASSES, N_SEROLOGY, toy_problem

from autoimmuneai.errors import InputError
from autoimmuneai.model.fusion import FusionModel
from autoimmuneai.model.risk_head import fit_class_log_hazards
from autoimmuneai.training.trainer import (
    TrainConfig,
    assign_splits,
    epoch_batches,
    fit,
    predict_arrays,
    train_bundle,
    work_dir,
)


def _balanced_accuracy(model: FusionModel, arrays) -> float:
    from sklearn.metrics import balanced_accuracy_score

    logits, _ = predict_arrays(model, arrays)
    return balanced_accuracy_score(arrays.labels.numpy(), logits.argmax(1).numpy())


@pytest.fixture(scope="module")
def toy():
    return toy_problem(96, 0), toy_problem(32, 1), toy_problem(64, 2)


@pytest.mark.parametrize("fusion", ["film", "concat"])
def test_each_fusion_mode_learns_beyond_chance(toy, fusion: str) -> None:
    train, val, test = toy
    cfg = TrainConfig(
        epochs=10, batch_size=16, lr=3e-3, fusion=fusion, channels=(8, 16), strides=(2, 2),
        dropout=0.0, patience=10,
    )  # fmt: skip
    res = fit(cfg.model_config(N_SEROLOGY, N_CLASSES), train, val, cfg, progress=False)
    model = FusionModel(cfg.model_config(N_SEROLOGY, N_CLASSES))
    model.load_state_dict(res.state_dict)
    # chance is 0.25; one modality alone cannot pass 0.5
    assert _balanced_accuracy(model, test) > 0.55
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    assert 1 <= res.best_epoch <= res.epochs_run == len(res.history)
    # the risk head learned which classes progress faster (blob at the back: hazard x e^0.8)
    a = res.state_dict["class_log_hazard"]
    assert min(a[2], a[3]) > max(a[0], a[1])
    _, risk = predict_arrays(model, test)
    back = test.labels >= 2
    assert float(risk[back].mean()) > float(risk[~back].mean()) + 0.2


def test_mixture_head_ends_at_its_cox_optimum_on_the_training_cases(toy) -> None:
    train, val, _ = toy
    cfg = _small_cfg()
    mc = cfg.model_config(N_SEROLOGY, N_CLASSES)
    res = fit(mc, train, val, cfg, progress=False)
    model = FusionModel(mc)
    model.load_state_dict(res.state_dict)
    logits, _ = predict_arrays(model, train)
    a = res.state_dict["class_log_hazard"]
    again = fit_class_log_hazards(logits, train.times, train.events, init=torch.zeros(N_CLASSES))
    assert torch.allclose(a, again, atol=1e-3)


def _small_cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 8, "lr": 3e-3, "channels": (4, 8), "strides": (2, 2)}
    return TrainConfig(**{**base, **kw})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_with_a_seed() -> None:
    train, val = toy_problem(24, 0), toy_problem(8, 1)
    cfg = _small_cfg()
    mc = cfg.model_config(N_SEROLOGY, N_CLASSES)
    a = fit(mc, train, val, cfg, progress=False)
    b = fit(mc, train, val, cfg, progress=False)
    c = fit(mc, train, val, _small_cfg(seed=1), progress=False)
    assert _same(a.state_dict, b.state_dict)
    assert not _same(a.state_dict, c.state_dict)


def test_early_stopping_keeps_the_moving_average_of_the_weights() -> None:
    train, val = toy_problem(24, 0), toy_problem(8, 1)
    mc = _small_cfg().model_config(N_SEROLOGY, N_CLASSES)
    start = fit(mc, train, val, _small_cfg(epochs=0), progress=False).state_dict
    raw = fit(mc, train, val, _small_cfg(epochs=8, ema_decay=None), progress=False).state_dict
    # an average that barely moves stays near its first value (the weights after one step)
    slow = fit(mc, train, val, _small_cfg(epochs=8, ema_decay=0.99999), progress=False)
    weights = [k for k in start if k != "class_log_hazard"]  # refitted after training
    moved = max(float((raw[k] - start[k]).abs().max()) for k in weights)
    averaged = max(float((slow.state_dict[k] - start[k]).abs().max()) for k in weights)
    assert moved > 1e-2 and averaged < moved / 5
    assert [h["epoch"] for h in slow.history] == list(range(1, 9))


class _Interrupt(Exception):
    pass


def test_resume_gives_the_same_weights(tmp_path: Path) -> None:
    train, val = toy_problem(24, 0), toy_problem(8, 1)
    cfg = _small_cfg(epochs=5, patience=10)
    mc = cfg.model_config(N_SEROLOGY, N_CLASSES)
    full = fit(mc, train, val, cfg, progress=False)

    def crash_after_epoch_2(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise _Interrupt

    ckpt = tmp_path / "checkpoints" / "fused.pt"
    with pytest.raises(_Interrupt):
        fit(mc, train, val, cfg, checkpoint=ckpt, progress=False, on_epoch_end=crash_after_epoch_2)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = fit(mc, train, val, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert _same(full.state_dict, resumed.state_dict)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    # a checkpoint of another run is refused rather than silently mixed in
    with pytest.raises(InputError, match="different run"):
        fit(mc, train, val, _small_cfg(epochs=5, lr=1e-2), checkpoint=ckpt, resume=True)


def test_early_stopping_keeps_the_best_epoch() -> None:
    train, val = toy_problem(24, 0), toy_problem(8, 1)
    cfg = _small_cfg(epochs=30, patience=2, lr=3e-2)
    res = fit(cfg.model_config(N_SEROLOGY, N_CLASSES), train, val, cfg, progress=False)
    losses = [h["val_loss"] for h in res.history]
    assert res.epochs_run < 30
    assert res.best_val_loss == pytest.approx(min(losses))
    assert res.best_epoch == int(np.argmin(losses)) + 1 == res.epochs_run - 2


def test_batches_cover_cases_once_and_drop_singletons() -> None:
    batches = epoch_batches(33, 8, seed=0, epoch=3)
    flat = torch.cat(batches)
    assert len(flat) == 32 and len(set(flat.tolist())) == 32  # last batch of 1 dropped
    assert not torch.equal(flat, torch.cat(epoch_batches(33, 8, seed=0, epoch=4)))


def test_splits_from_manifest_and_stratified(tiny_cohort: Path) -> None:
    from autoimmuneai.data.cohort import load_cohort

    cohort = load_cohort(tiny_cohort)
    split, source = assign_splits(cohort, TrainConfig())
    assert source == "manifest"
    assert list(split) == [c.split for c in cohort.cases]
    for case in cohort.cases:
        case.split = None
    split, source = assign_splits(cohort, TrainConfig(test_fraction=0.25, val_fraction=0.2))
    assert source == "stratified"
    n = len(cohort.cases)
    assert (split == "test").sum() == round(0.25 * n)
    labels = cohort.labels()
    assert set(labels[split == "test"]) == set(labels)  # every class in the held-out split


def test_train_command_writes_a_complete_bundle(tiny_cohort: Path, tiny_bundle: Path) -> None:
    from autoimmuneai.model.bundle import load_bundle

    meta = json.loads((tiny_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    tr = meta["training"]
    assert tr["split_source"] == "manifest"
    assert set(tr["validation"]) >= {"fused", "image_only", "serology_only", "criteria", "oracle"}
    assert tr["n_cases"]["test"] > 0
    # no torch archive (pickle) in the finished bundle; the work folder is gone once finished
    assert not list(tiny_bundle.rglob("*.pt")) and not (tiny_bundle / "checkpoints").exists()
    assert not work_dir(tiny_bundle).exists()
    assert {p.suffix for p in tiny_bundle.rglob("*") if p.is_file()} <= {
        ".json",
        ".safetensors",
        ".md",
    }
    bundle = load_bundle(tiny_bundle, panel="cns_autoimmune")
    assert bundle.image_only is not None and not bundle.image_only.config.use_serology
    assert bundle.temperature > 0 and bundle.risk_cutoffs[0] <= bundle.risk_cutoffs[1]
    assert set(bundle.baselines) >= {"serology_only", "criteria", "oracle"}
    assert len(bundle.baseline_hazard[0]) > 0 and np.all(np.diff(bundle.baseline_hazard[1]) >= 0)
    card = (tiny_bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert "Research only" in card
    # default conformal: LAC from every validation case; too few per class for Mondrian sets
    conf = bundle.conformal
    assert (conf.method, conf.n_tuning, conf.class_conditional) == ("lac", 0, False)
    assert conf.n_calibration == tr["n_cases"]["val"]
    assert conf.guarantee.startswith(f"marginal (split conformal on {conf.n_calibration}")
    assert conf.guarantee in card and tr["conformal_guarantee"] == conf.guarantee
    # the temperature is kept only when it lowers the held-out log loss on folds
    check = tr["calibration"]["temperature_check"]
    if check["applied"]:
        assert check["heldout_nll_fitted"] < check["heldout_nll_identity"]
        assert bundle.temperature == check["fitted_temperature"]
    else:
        assert bundle.temperature == 1.0
    # risk groups: three only when the validation cases separate them, else two at the median
    groups = tr["risk_groups"]
    assert groups["n_groups"] in (2, 3) and list(bundle.risk_cutoffs) == groups["cutoffs"]
    if groups["n_groups"] == 2:
        assert bundle.risk_cutoffs[0] == bundle.risk_cutoffs[1] == groups["median_cutoff"]
    assert bundle.model.config.risk == "mixture" and "Cox risk head (mixture)" in card


def test_test_split_is_never_loaded_and_folds_are_reported(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.training.trainer import train_bundle

    cfg = _small_cfg(epochs=1, folds=2, grid_shape=(16, 20, 16), grid_spacing=10.0)
    cfg.cache_dir = str(tmp_path / "cache")
    out = train_bundle(tiny_cohort, tmp_path / "bundle", cfg, progress=False)
    splits = [c.split for c in load_cohort(tiny_cohort).cases]
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == sum(s != "test" for s in splits)
    cv = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))["training"][
        "cross_validation"
    ]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    assert sum(f["n"] for f in cv["per_fold"]) == sum(s != "test" for s in splits)
    per_fold = [f["balanced_accuracy"] for f in cv["per_fold"]]
    assert cv["balanced_accuracy_mean"] == pytest.approx(np.nanmean(per_fold))
    assert cv["balanced_accuracy_std"] == pytest.approx(np.nanstd(per_fold))


def test_augmentation_shift_neither_wraps_nor_draws_an_edge() -> None:
    from autoimmuneai.training.trainer import augment_batch, shift_replicating_edges

    background = -6.5  # model-grid images are z-scored on the head: the background is far below 0
    x = torch.full((1, 8, 8, 8), background)
    x[0, 6, 4, 4] = 3.0  # a bright spot near the high edge of axis 0
    moved = shift_replicating_edges(x, (2, 0, 0))
    assert float(moved.max()) == background  # pushed out, not wrapped round to the low edge
    back = shift_replicating_edges(x, (-2, 0, 0))
    assert float(back[0, 4, 4, 4]) == 3.0 and int((back == 3.0).sum()) == 1
    assert float(back.min()) == background  # no stripe of another value along the edge
    params = {
        "flip": torch.tensor([False]),
        "shift": torch.tensor([[-2, 0, 0]]),
        "scale": torch.tensor([1.0]),
        "offset": torch.tensor([0.0]),
    }
    torch.testing.assert_close(augment_batch(x[None], params)[0], back)


def _with_broken_images(manifest: Path, folder: Path, split_of_broken: str) -> tuple[Path, str]:
    """A copy of ``manifest``'s cohort folder in ``folder`` whose first ``split_of_broken``
    case's image is a file that is no image; returns the copy's manifest and that case's id."""
    import shutil

    import pandas as pd

    shutil.copytree(manifest.parent, folder)
    copy = folder / manifest.name
    table = pd.read_csv(copy, dtype=str, keep_default_na=False)
    broken = table.index[table["split"].str.lower().replace("", "train") == split_of_broken][0]
    image = next(c for c in table.columns if c.startswith("image"))
    (folder / table.loc[broken, image]).write_bytes(b"not an image at all")
    return copy, str(table.loc[broken, "case_id"])


def test_a_case_whose_image_fails_is_left_out_of_training_and_evaluation(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.workflows.evaluate import evaluate_bundle

    manifest, broken = _with_broken_images(tiny_cohort, tmp_path / "cohort", "train")
    cfg = _small_cfg(
        epochs=1, folds=0, grid_shape=(16, 20, 16), grid_spacing=10.0, preprocessing="model_grid"
    )
    with pytest.warns(UserWarning, match=f"case {broken} left out of training"):
        out = train_bundle(manifest, tmp_path / "bundle", cfg, progress=False)
    training = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))[
        "training"
    ]
    assert [e["case_id"] for e in training["excluded_cases"]] == [broken]
    assert f"{broken}_flair.nii.gz" in training["excluded_cases"][0]["reason"]
    splits = [c.split or "train" for c in load_cohort(manifest).cases]
    assert training["n_cases"]["train"] == splits.count("train") - 1

    test_manifest, broken_test = _with_broken_images(manifest, tmp_path / "test_cohort", "test")
    with pytest.warns(UserWarning, match=f"case {broken_test} left out of the evaluation"):
        metrics = evaluate_bundle(out, test_manifest, tmp_path / "eval", split="test")
    assert metrics["failed_cases"] == 1 and metrics["n_cases"] == splits.count("test") - 1
    errors = (tmp_path / "eval" / "errors.csv").read_text(encoding="utf-8").splitlines()
    assert errors[0] == "case_id,row,field,reason" and errors[1].startswith(f"{broken_test},")
    assert f"{broken_test}_flair.nii.gz" in errors[1]
    predicted = (tmp_path / "eval" / "predictions.csv").read_text(encoding="utf-8")
    assert broken_test not in predicted
