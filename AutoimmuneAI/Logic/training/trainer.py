"""Training: the epoch loop (checkpoints, resume, early stopping, DDP) and the ``train`` command.

``fit`` trains one :class:`~autoimmuneai.model.fusion.FusionModel` on :class:`CaseArrays`. It is
deterministic for a given seed on CPU: the shuffling, the augmentation and the dropout of
epoch e are drawn from generators seeded by (seed, e), so a run resumed from the checkpoint
of epoch e (model, optimiser, early-stopping state) ends with the same weights as an
uninterrupted run.

Data-parallel training (``torchrun --nproc_per_node=N ... --distributed``) splits every
global batch across the ranks. The losses are normalised by *global* quantities (the class
weights of the whole global batch; the Cox risk sets are built over the whole global batch by
gathering the log-hazards), so the averaged gradient equals the single-process gradient of
the same global batch, up to floating-point summation order.

Early stopping judges and keeps an exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel``), which is less noisy than the last step's. The
mixture risk head's class log-hazards are refitted to their Cox optimum on the training cases
once training stops (``risk_head``).

``train_bundle`` is the whole ``autoimmuneai train`` command: splits, optional
cross-validation, the fused model, the image-only variant, temperature scaling, conformal
threshold, Breslow baseline hazard, risk tertiles, the other baselines, and the bundle.
With ``folds`` > 1 the calibration map and the conformal threshold come from the
cross-validation's out-of-fold outputs of every train and validation case (cross-conformal
sets, ``stats.conformal``) instead of the validation cases alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..atomic import write_with
from ..data.cohort import Cohort, load_cohort
from ..data.dataset import CaseArrays, build_arrays
from ..data.panel import Panel, load_panel
from ..data.serology import SerologyEncoder
from ..errors import InputError
from ..inference.ood import training_distribution
from ..model.bundle import save_bundle
from ..model.fusion import INFERENCE_BATCH_SIZE, FusionModel, ModelConfig
from ..model.losses import class_weights, cox_neg_log_likelihood, diagnosis_sum
from ..model.risk_head import crude_class_log_hazards, fit_class_log_hazards
from ..preprocess.pipeline import make_preprocessing
from ..preprocess.stage import Preprocessing
from ..stats.baselines import (
    Baseline,
    BaselineInputs,
    ModelOutputs,
    baseline_outputs,
    fit_baselines,
)
from ..stats.calibration import (
    CalibrationMap,
    choose_calibration,
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    mean_log_loss,
    softmax,
)
from ..stats.conformal import (
    ConformalPredictor,
    coverage,
    cross_conformal,
    fit_conformal_tuned,
    fit_default_conformal,
    mean_set_size,
)
from ..stats.metrics import diagnosis_metrics
from ..stats.survival import breslow_baseline, choose_risk_cutoffs, concordance

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Settings of ``autoimmuneai train`` (stored in the bundle's training summary)."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    cox_weight: float = 0.5
    fusion: str = "film"
    folds: int = 1
    seed: int = 0
    patience: int = 8
    alpha: float = 0.1
    # LAC sets (1 - p as the score: the smallest sets of any conformal method when the
    # probabilities are calibrated); "raps"/"aps" as before. class_conditional None: the
    # marginal threshold with a per-class floor at class_coverage when every class has enough
    # calibration cases for it (stats.conformal.fit_default_conformal), else marginal;
    # class_coverage None: plain Mondrian sets when every class has enough cases.
    conformal_method: str = "lac"
    # RAPS penalty per rank beyond conformal_k_reg (used with conformal_method "raps"). None:
    # the pair tuned on 30% of the validation cases, the threshold from the other 70%.
    conformal_lam: float | None = 0.05
    conformal_k_reg: int = 1
    class_conditional: bool | None = None
    class_coverage: float | None = 0.85
    augment: bool = True
    panel: str = "cns_autoimmune"
    val_fraction: float = 0.2  # of the non-test cases, when the manifest has no val split
    test_fraction: float = 0.2  # held out when the manifest has no split column at all
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    dropout: float = 0.2
    image_dropout: float = 0.5  # on the CNN's pooled features (model.ModelConfig)
    image_only_epochs: int | None = None  # default: same as epochs
    grid_shape: tuple[int, int, int] = (64, 80, 64)
    grid_spacing: float = 2.5
    # "mni152": bias correction, registration to MNI152, brain mask (preprocess.pipeline);
    # "model_grid": resampling and a head z-score only (skull-stripped upright images)
    preprocessing: str = "mni152"
    cache_dir: str | None = None  # default: <bundle>/cache (removed after a finished run)
    keep_cache: bool = False
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    # exponential moving average of the weights (decay per step: ~50 steps, 2-3 epochs of a
    # few hundred cases); early stopping judges and keeps the averaged weights. None: raw
    # weights. It raised the demo's balanced accuracy on two seeds (CHANGELOG.md)
    ema_decay: float | None = 0.98
    # share of each training target spread over all classes (0: plain cross-entropy); the
    # early-stopping loss stays the plain one (issue 18: over-confidence at small n)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        d, h, w = (int(s) for s in self.grid_shape)
        self.grid_shape = (d, h, w)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("channels", "strides", "grid_shape"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def class_alpha(self) -> float | None:
        """Error rate of the per-class floor of the conformal sets (None: no floor)."""
        if self.class_coverage is None:
            return None
        if not 0.0 < self.class_coverage < 1.0:
            raise ValueError(f"class_coverage must be in (0, 1), got {self.class_coverage}")
        return 1.0 - float(self.class_coverage)

    def model_config(self, n_serology: int, n_classes: int, image_channels: int = 1) -> ModelConfig:
        return ModelConfig(
            n_serology=n_serology,
            n_classes=n_classes,
            fusion=self.fusion,
            image_channels=image_channels,
            channels=self.channels,
            strides=self.strides,
            dropout=self.dropout,
            image_dropout=self.image_dropout,
        )


@dataclass
class FitResult:
    """The best weights of one training run and how it went."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    epochs_run: int = 0
    seconds: float = 0.0
    cases_per_second: float = 0.0


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL with CUDA)."""
    if not dist.is_available():
        raise InputError("--distributed needs a PyTorch build with torch.distributed")
    if "RANK" not in os.environ and not dist.is_initialized():
        raise InputError("--distributed must run under torchrun (RANK/WORLD_SIZE not set)")
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, device)


def local_info() -> DistInfo:
    """Single process: CUDA when available, else CPU."""
    return DistInfo(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


# --------------------------------------------------------------------------- batches


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, world: int = 1
) -> list[torch.Tensor]:
    """Shuffled global batches of epoch ``epoch`` (identical on every rank).

    A final batch smaller than ``max(2, world)`` is dropped: one case carries no Cox
    information and every rank needs at least one case.
    """
    g = torch.Generator().manual_seed(_mix(seed, epoch, 1))
    perm = torch.randperm(n, generator=g)
    batches = list(perm.split(batch_size))
    if batches and len(batches[-1]) < max(2, world):
        batches.pop()
    return batches


def _mix(*parts: int) -> int:
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def augment_params(b: int, generator: torch.Generator, max_shift: int = 2) -> dict:
    """Random left-right flips, shifts of up to ``max_shift`` voxels and intensity jitter.

    Drawn for the whole global batch from ``generator``, so every rank draws the same ones
    and applies its own rows (axis 0 of the model grid is left-right).
    """
    return {
        "flip": torch.rand(b, generator=generator) < 0.5,
        "shift": torch.randint(-max_shift, max_shift + 1, (b, 3), generator=generator),
        "scale": 1.0 + 0.1 * (2 * torch.rand(b, generator=generator) - 1),
        "offset": 0.1 * (2 * torch.rand(b, generator=generator) - 1),
    }


def shift_replicating_edges(x: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """``x`` [C, D, H, W] translated by ``shifts`` voxels; what enters copies the edge slice.

    Unlike ``torch.roll`` nothing wraps around (a lesion pushed over one edge does not
    reappear at the opposite one), and unlike a constant fill the entering voxels keep the
    background's value (the model-grid images are z-scored on the head, so their background
    is far below 0 and a fill with 0 would draw a bright stripe along the grid's edge).
    """
    for axis, s in enumerate(shifts, start=1):
        s = int(s)
        if s:
            size = x.shape[axis]
            index = (torch.arange(size) - s).clamp(0, size - 1)
            x = x.index_select(axis, index)
    return x


def augment_batch(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Apply :func:`augment_params` rows to ``images`` [b, C, D, H, W].

    (MONAI's RandFlip/BorderPad/RandSpatialCrop/RandScaleIntensity/RandShiftIntensity do the
    same per case at several times the cost per batch on CPU; see the README.)
    """
    out = []
    for i in range(images.shape[0]):
        x = images[i]
        if params["flip"][i]:
            x = torch.flip(x, dims=(1,))
        x = shift_replicating_edges(x, tuple(int(s) for s in params["shift"][i]))
        out.append(x * params["scale"][i] + params["offset"][i])
    return torch.stack(out)


def _gather_ranks(x: torch.Tensor) -> torch.Tensor:
    """All-gather of equal-sized 1-D tensors whose backward returns every rank's gradient
    of this rank's slice, summed (``torch.distributed.nn.functional.all_gather``)."""
    return torch.cat(dist_nn.all_gather(x.contiguous()))


def batch_loss(
    model: torch.nn.Module,
    arrays: CaseArrays,
    index: torch.Tensor,
    weights: torch.Tensor,
    cox_weight: float,
    info: DistInfo,
    generator: torch.Generator | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """This rank's share of the loss of global batch ``index`` and the global-batch loss value.

    The returned tensor's gradient, averaged over ranks (as DDP does), equals the gradient of
    ``weighted CE + cox_weight * Cox`` over the whole global batch.
    """
    local = torch.arange(info.rank, len(index), info.world)
    images = arrays.images[index[local]].float()
    if generator is not None:
        params = augment_params(len(index), generator)
        images = augment_batch(images, {k: v[local] for k, v in params.items()})
    dev = info.device
    labels_g = arrays.labels[index]
    logits, eta = model(images.to(dev), arrays.serology[index[local]].to(dev))
    ce_sum, _ = diagnosis_sum(logits, labels_g[local].to(dev), weights, label_smoothing)
    known = labels_g[labels_g >= 0]
    w_global = float(weights[known].sum()) if known.numel() else 0.0
    ce = ce_sum * (info.world / max(w_global, 1e-12))
    times_g, events_g = arrays.times[index], arrays.events[index]
    if info.world > 1:
        m = math.ceil(len(index) / info.world)
        pad = m - eta.shape[0]
        eta_p = torch.cat([eta, eta.new_zeros(pad)]) if pad else eta
        eta_all = _gather_ranks(eta_p)
        t_all = torch.full((m * info.world,), float("nan"))
        e_all = torch.full((m * info.world,), float("nan"))
        for r in range(info.world):
            sl = torch.arange(r, len(index), info.world)
            t_all[r * m : r * m + len(sl)] = times_g[sl]
            e_all[r * m : r * m + len(sl)] = events_g[sl]
    else:
        eta_all, t_all, e_all = eta, times_g, events_g
    nll, n_events = cox_neg_log_likelihood(eta_all, t_all.to(dev), e_all.to(dev))
    cox = nll / n_events.clamp_min(1.0)
    loss = ce + cox_weight * cox
    value = float(ce_sum.detach()) / max(w_global, 1e-12)
    if info.world > 1:
        v = torch.tensor([value], dtype=torch.float64, device=dev)
        dist.all_reduce(v)
        value = float(v)
    return loss, value + cox_weight * float(cox.detach())


def predict_arrays(
    model: FusionModel, arrays: CaseArrays, batch_size: int = INFERENCE_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, C], log-hazard [n]) on CPU, in eval mode, float32 (:meth:`FusionModel.predict`)."""
    return model.predict(arrays.images, arrays.serology, batch_size)


def evaluation_loss(
    model: FusionModel,
    arrays: CaseArrays,
    weights: torch.Tensor,
    cox_weight: float,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> float:
    """Weighted CE + cox_weight * Cox (risk sets over all of ``arrays``), in eval mode."""
    logits, eta = predict_arrays(model, arrays, batch_size)
    ce_sum, w = diagnosis_sum(logits, arrays.labels, weights)
    ce = float(ce_sum) / max(float(w), 1e-12)
    nll, n_ev = cox_neg_log_likelihood(eta, arrays.times, arrays.events)
    return ce + cox_weight * float(nll) / max(float(n_ev), 1.0)


# --------------------------------------------------------------------------- the loop


def _fingerprint(
    model_cfg: ModelConfig, cfg: TrainConfig, train: CaseArrays, val: CaseArrays
) -> str:
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "cox_weight",
        "seed",
        "patience",
        "augment",
        "ema_decay",
    )
    train_keys = {k: getattr(cfg, k) for k in keys}
    if cfg.label_smoothing:  # only when set: checkpoints written before it stay resumable
        train_keys["label_smoothing"] = cfg.label_smoothing
    payload = {
        "model": model_cfg.to_dict(),
        "train": train_keys,
        "train_ids": train.case_ids,
        "val_ids": val.case_ids,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(path: Path, state: dict) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: refuse, never unpickle code
        raise InputError(
            f"checkpoint cannot be read safely ({type(exc).__name__})", file=path
        ) from None


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch (and into its checkpoint)."""

    model: FusionModel
    opt: torch.optim.Optimizer
    ema: AveragedModel | None
    start: int = 0
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = -1
    bad: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def judged(self) -> FusionModel:
        """What early stopping evaluates and keeps: the averaged weights when there are any."""
        # AveragedModel.module is typed Module: it is the averaged copy of this FusionModel
        return cast(FusionModel, self.ema.module) if self.ema is not None else self.model

    def checkpoint(self, fingerprint: str, epoch: int) -> dict:
        return {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": _clone_state(self.model),
            "optimizer": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "history": self.history,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad,
            "best_state": self.best_state,
        }

    def restore(self, state: dict, fingerprint: str, path: Path) -> None:
        if state.get("fingerprint") != fingerprint:
            raise InputError(
                "checkpoint belongs to a different run (config or cases changed); "
                "remove it or train without --resume",
                file=path,
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.start, self.history = int(state["epoch"]), list(state["history"])
        self.best_loss, self.best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        self.bad, self.best_state = int(state["bad_epochs"]), state["best_state"]


def _new_run(model_cfg: ModelConfig, train: CaseArrays, cfg: TrainConfig, info: DistInfo) -> _Run:
    """Seeded initial weights (class log-hazards at the crude rates), AdamW and the EMA."""
    torch.manual_seed(_mix(cfg.seed, 0))
    model = FusionModel(model_cfg).to(info.device)
    if model_cfg.risk == "mixture":  # start the class log-hazards at the crude rates
        crude = crude_class_log_hazards(
            train.labels.numpy(), train.times.numpy(), train.events.numpy(), model_cfg.n_classes
        )
        with torch.no_grad():
            model.class_log_hazard.copy_(crude)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        if cfg.ema_decay
        else None
    )
    return _Run(model, opt, ema, best_state=_clone_state(model))


def _train_epoch(
    run: _Run,
    net: torch.nn.Module,
    train: CaseArrays,
    weights: torch.Tensor,
    cfg: TrainConfig,
    info: DistInfo,
    epoch: int,
    bar: tqdm,
) -> tuple[float, int]:
    """One pass over the shuffled global batches; returns (mean training loss, cases seen)."""
    torch.manual_seed(_mix(cfg.seed, epoch, 2))  # dropout of this epoch
    aug = torch.Generator().manual_seed(_mix(cfg.seed, epoch, 3)) if cfg.augment else None
    run.model.train()
    running, count = 0.0, 0
    for index in epoch_batches(len(train), cfg.batch_size, cfg.seed, epoch, info.world):
        loss, value = batch_loss(
            net, train, index, weights, cfg.cox_weight, info, aug, cfg.label_smoothing
        )
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        running += value * len(index)
        count += len(index)
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / max(count, 1):.3f}", refresh=False)
    return running / max(count, 1), count


def _judge_epoch(run: _Run, epoch: int, train_loss: float, val_loss: float) -> dict:
    """Record the epoch and keep the judged weights when the validation loss improved."""
    if val_loss < run.best_loss - 1e-6:
        run.best_loss, run.best_epoch, run.bad = val_loss, epoch, 0
        run.best_state = _clone_state(run.judged)
    else:
        run.bad += 1
    record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss}
    run.history.append(record)
    return record


def _wrap(model: FusionModel, info: DistInfo) -> torch.nn.Module:
    """The module the batches go through: both heads, under DDP when there are ranks."""
    net: torch.nn.Module = _BothHeads(model)
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return net


def fit(
    model_cfg: ModelConfig,
    train: CaseArrays,
    val: CaseArrays,
    cfg: TrainConfig,
    *,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
    info: DistInfo | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train a new model on ``train``, early-stopping on the loss over ``val``.

    ``checkpoint`` (a file) is rewritten atomically after every epoch; with ``resume`` an
    existing checkpoint of the same run (same config and cases) is continued. Returns the
    weights of the epoch with the lowest validation loss (the last epoch when ``val`` is
    empty). ``info`` is the distributed context (default: single process).
    """
    info = info or local_info()
    epochs = cfg.epochs if epochs is None else epochs
    ckpt = Path(checkpoint) if checkpoint is not None else None
    weights = class_weights(train.labels.numpy(), model_cfg.n_classes)
    fingerprint = _fingerprint(model_cfg, cfg, train, val)
    t0 = time.perf_counter()
    seen = 0
    with torch.random.fork_rng(devices=[]):
        run = _new_run(model_cfg, train, cfg, info)
        if resume and ckpt is not None and ckpt.is_file():
            run.restore(_load_checkpoint(ckpt), fingerprint, ckpt)
        net = _wrap(run.model, info)
        n_batches = len(epoch_batches(len(train), cfg.batch_size, cfg.seed, 0, info.world))
        bar = tqdm(
            total=max(epochs - run.start, 0) * n_batches,
            desc=desc,
            unit="batch",
            disable=not (progress and info.is_main),
        )
        last = epochs if run.bad < cfg.patience else run.start
        for epoch in range(run.start, last):
            train_loss, count = _train_epoch(run, net, train, weights, cfg, info, epoch, bar)
            seen += count
            val_loss = (
                evaluation_loss(run.judged, val, weights, cfg.cox_weight)
                if len(val)
                else train_loss
            )
            record = _judge_epoch(run, epoch, train_loss, val_loss)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if ckpt is not None and info.is_main:
                _save_checkpoint(ckpt, run.checkpoint(fingerprint, epoch + 1))
            if info.world > 1:
                dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if run.bad >= cfg.patience:
                break
        bar.close()
    best_state = run.best_state
    if model_cfg.risk == "mixture" and len(train):
        best_state = _refit_class_log_hazards(model_cfg, best_state, train)
    seconds = time.perf_counter() - t0
    return FitResult(
        state_dict=best_state,
        history=run.history,
        best_epoch=run.best_epoch + 1,
        best_val_loss=run.best_loss,
        epochs_run=len(run.history),
        seconds=seconds,
        cases_per_second=seen / seconds if seconds > 0 else 0.0,
    )


def _refit_class_log_hazards(model_cfg: ModelConfig, state: dict, train: CaseArrays) -> dict:
    """The best weights with the mixture head's class log-hazards at their Cox optimum."""
    model = FusionModel(model_cfg)
    model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    logits, _ = predict_arrays(model, train)
    fitted = fit_class_log_hazards(
        logits, train.times, train.events, init=model.class_log_hazard.detach()
    )
    out = dict(state)
    out["class_log_hazard"] = fitted.to(state["class_log_hazard"].device)
    return out


class _BothHeads(torch.nn.Module):
    """``forward`` returns (logits, log-hazard), so DDP's forward hooks see both heads."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, serology: torch.Tensor):
        return self.model.forward_all(image, serology)


# --------------------------------------------------------------------------- splits

SPLITS = ("train", "val", "test")


def _stratified_take(
    index: np.ndarray, strata: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A stratified random subset of ``index`` holding about ``fraction`` of it."""
    n_take = int(round(len(index) * fraction))
    if n_take < 1 or n_take >= len(index):
        return index[:0]
    s = strata[index]
    _, counts = np.unique(s, return_counts=True)
    stratify = s if counts.min() >= 2 and n_take >= len(counts) else None
    _, taken = train_test_split(index, test_size=n_take, random_state=seed, stratify=stratify)
    return np.sort(taken)


def assign_splits(cohort, cfg: TrainConfig) -> tuple[np.ndarray, str]:
    """``train``/``val``/``test`` per case and where they came from.

    The manifest's ``split`` column wins (a blank cell counts as train; a val split is carved
    from train when the manifest has none); without it, test and val are stratified by class.
    """
    given = np.array([str(s).strip().lower() for s in cohort.splits()], dtype=object)
    labels = cohort.labels()
    if any(given != ""):
        for case, s in zip(cohort.cases, given):
            if s not in ("", *SPLITS):
                raise InputError(
                    f"unknown split {s!r} (use train, val or test)",
                    file=cohort.path,
                    row=case.row,
                    field="split",
                )
        split = np.where(given == "", "train", given).astype(object)
        source = "manifest"
    else:
        split = np.full(len(labels), "train", dtype=object)
        test = _stratified_take(np.arange(len(labels)), labels, cfg.test_fraction, cfg.seed)
        split[test] = "test"
        source = "stratified"
    if not (split == "val").any():
        train_idx = np.flatnonzero(split == "train")
        split[_stratified_take(train_idx, labels, cfg.val_fraction, cfg.seed + 1)] = "val"
        source += " (val carved from train)" if source == "manifest" else ""
    if (split == "train").sum() < 2:
        raise InputError("fewer than two training cases", file=cohort.path, field="split")
    known = labels[split == "train"]
    if len(np.unique(known[known >= 0])) < 2:
        raise InputError(
            "training cases cover fewer than two diagnoses", file=cohort.path, field="diagnosis"
        )
    return split, source


# --------------------------------------------------------------------------- the command

WORK_SUFFIX = ".work"


def work_dir(bundle_dir: str | Path) -> Path:
    """The sibling folder ``<bundle>.work`` holding the image cache and the resumable
    checkpoints (torch archives) while a run is unfinished, so the bundle itself only ever
    holds safetensors and JSON."""
    out = Path(bundle_dir)
    return out.parent / f"{out.name}{WORK_SUFFIX}"


def _summary_metrics(probs, labels, risk, times, events, classes) -> dict:
    d = diagnosis_metrics(np.asarray(probs), np.asarray(labels), classes)
    return {
        "n": d["n"],
        "balanced_accuracy": d["balanced_accuracy"],
        "macro_auroc": d["macro_auroc"],
        "ece": d["ece"],
        "c_index": concordance(np.asarray(times), np.asarray(risk), np.asarray(events)),
    }


@dataclass
class _OutOfFold:
    """Every development case's fused outputs from the one fold network that never trained
    on it (``_cross_validate``), in the order of the development cases."""

    folds: int
    logits: np.ndarray  # [n_dev, C]
    risk: np.ndarray  # [n_dev]
    fold: np.ndarray  # 1-based fold that held each case out

    def record(self, case_ids: list[str]) -> dict:
        """JSON of the outputs (kept in the training summary, so the cross-conformal
        threshold and the calibration map can be checked and re-measured offline)."""
        return {
            "case_ids": list(case_ids),
            "fold": [int(f) for f in self.fold],
            "logits": [[float(v) for v in row] for row in self.logits],
            "risk": [float(v) for v in self.risk],
        }


def _cross_validate(
    arrays: CaseArrays, model_cfg: ModelConfig, cfg: TrainConfig, classes, info, progress
) -> tuple[dict, _OutOfFold]:
    """K-fold CV of the fused model on train+val (inner val split for early stopping): the
    metrics per fold and every case's out-of-fold outputs."""
    t0 = time.perf_counter()
    labels = arrays.labels.numpy()
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() >= cfg.folds:
        splitter = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    else:
        splitter = KFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    folds = []
    oof = _OutOfFold(
        cfg.folds,
        np.full((len(labels), model_cfg.n_classes), np.nan),
        np.full(len(labels), np.nan),
        np.zeros(len(labels), dtype=np.int64),
    )
    for k, (rest, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        inner_val = _stratified_take(rest, labels, cfg.val_fraction, cfg.seed + 10 + k)
        inner_train = np.setdiff1d(rest, inner_val)
        res = fit(
            model_cfg,
            arrays.subset(inner_train),
            arrays.subset(inner_val),
            cfg,
            progress=progress,
            desc=f"CV fold {k + 1}/{cfg.folds}",
            info=info,
        )
        model = FusionModel(model_cfg)
        model.load_state_dict(res.state_dict)
        test = arrays.subset(held)
        logits, risk = predict_arrays(model, test)
        oof.logits[held], oof.risk[held], oof.fold[held] = logits.numpy(), risk.numpy(), k + 1
        m = _summary_metrics(
            softmax(logits.numpy()), test.labels, risk, test.times, test.events, classes
        )
        folds.append({"fold": k + 1, "n": len(held), "epochs": res.epochs_run, **m})
    out = {"folds": cfg.folds, "per_fold": folds}
    for key in ("balanced_accuracy", "macro_auroc", "c_index"):
        vals = np.array([f[key] for f in folds], dtype=float)
        out[f"{key}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        out[f"{key}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else float("nan")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out, oof


def _fit_record(res: FitResult) -> dict:
    return {
        "epochs_run": res.epochs_run,
        "best_epoch": res.best_epoch,
        "best_val_loss": res.best_val_loss,
        "seconds": round(res.seconds, 2),
        "cases_per_second": round(res.cases_per_second, 2),
        "history": res.history,
    }


@dataclass
class _Data:
    """Stage 1 of ``train``: the development cases (train + val) as model inputs."""

    panel: Panel
    split: np.ndarray  # train / val / test for every case of the manifest
    split_source: str
    dev: Cohort  # the train and val cases (the test split is never loaded)
    dev_split: np.ndarray
    values: np.ndarray  # parsed lab values of the dev cases
    missing: np.ndarray
    encoder: SerologyEncoder
    grid: Preprocessing  # ModelGrid or Preprocessor
    arrays: CaseArrays
    cache: Path
    excluded: list[dict[str, str]] = field(default_factory=list)  # cases whose image failed

    @property
    def classes(self) -> list[str]:
        return list(self.panel.classes)

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(self.dev_split == "train")

    @property
    def val_index(self) -> np.ndarray:
        return np.flatnonzero(self.dev_split == "val")

    def baseline_inputs(self) -> BaselineInputs:
        encoded = self.arrays.serology.numpy().astype(np.float64)
        return BaselineInputs(encoded, self.values, self.dev.truth_table())


def _prepare_data(
    cohort_path: str | Path, out: Path, cfg: TrainConfig, info: DistInfo, progress: bool
) -> _Data:
    """Read the manifest, assign splits, fit the lab encoder and cache the model-grid images."""
    panel = load_panel(cfg.panel)
    cohort = load_cohort(cohort_path, panel=panel)
    if len(cohort) == 0:
        raise InputError("the manifest has no usable case", file=cohort_path)
    split, split_source = assign_splits(cohort, cfg)
    dev = cohort.subset([c.case_id for c, s in zip(cohort.cases, split) if s != "test"])
    dev_split = split[split != "test"]
    values, missing = dev.lab_matrix()
    is_train = dev_split == "train"
    encoder = SerologyEncoder(panel).fit(values[is_train], missing[is_train])
    grid = make_preprocessing(cfg.grid_shape, cfg.grid_spacing, cfg.preprocessing)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else work_dir(out) / "cache"
    if info.world > 1 and not info.is_main:
        dist.barrier()  # rank 0 fills the cache first
    failures: list[tuple[str, str]] = []
    arrays = build_arrays(
        dev, grid, encoder, cache_dir=cache, progress=progress and info.is_main, failures=failures
    )
    if info.world > 1 and info.is_main:
        dist.barrier()
    if failures:
        dev, dev_split, split = _without_failed(cohort, split, dev, dev_split, failures, info)
        values, missing = dev.lab_matrix()
        if (dev_split == "train").sum() < 2:
            raise InputError("fewer than two training cases with a usable image", file=cohort_path)
    return _Data(
        panel, split, split_source, dev, dev_split, values, missing, encoder, grid, arrays, cache,
        excluded=[{"case_id": c, "reason": r} for c, r in failures],
    )  # fmt: skip


def _without_failed(
    cohort: Cohort,
    split: np.ndarray,
    dev: Cohort,
    dev_split: np.ndarray,
    failures: list[tuple[str, str]],
    info: DistInfo,
) -> tuple[Cohort, np.ndarray, np.ndarray]:
    """The development cases and splits without the cases whose image failed, which are
    marked "excluded" in the whole cohort's split (training goes on with the others)."""
    bad = {case_id for case_id, _ in failures}
    if info.is_main:
        for case_id, reason in failures:
            warnings.warn(f"case {case_id} left out of training: {reason}", stacklevel=3)
    keep = np.array([c.case_id not in bad for c in dev.cases])
    split = split.copy()
    split[[c.case_id in bad for c in cohort.cases]] = "excluded"
    return (
        dev.subset([c.case_id for c in dev.cases if c.case_id not in bad]),
        dev_split[keep],
        split,
    )


def _train_networks(
    data: _Data, cfg: TrainConfig, ckpt_dir: Path, resume: bool, progress: bool, info: DistInfo
) -> tuple[ModelConfig, FitResult, FitResult, dict | None, _OutOfFold | None]:
    """Stage 2: optional cross-validation (with its out-of-fold outputs), then the fused and
    the image-only networks."""
    train, val = data.arrays.subset(data.train_index), data.arrays.subset(data.val_index)
    model_cfg = cfg.model_config(
        data.encoder.n_encoded, len(data.classes), len(data.panel.channels)
    )
    cv, oof = None, None
    if cfg.folds > 1:
        cv, oof = _cross_validate(data.arrays, model_cfg, cfg, data.classes, info, progress)
    fused = fit(
        model_cfg, train, val, cfg, checkpoint=ckpt_dir / "fused.pt", resume=resume,
        progress=progress, desc="fused model", info=info,
    )  # fmt: skip
    image_only = fit(
        model_cfg.variant(use_serology=False), train, val, cfg, epochs=cfg.image_only_epochs,
        checkpoint=ckpt_dir / "image_only.pt", resume=resume, progress=progress,
        desc="image-only model", info=info,
    )  # fmt: skip
    return model_cfg, fused, image_only, cv, oof


def _network(cfg: ModelConfig, res: FitResult) -> FusionModel:
    model = FusionModel(cfg)
    model.load_state_dict(res.state_dict)
    return model.eval()


@dataclass
class _Calibration:
    """Stage 3: temperature, conformal sets and risk groups, all from held-out cases."""

    temperature: float
    temperature_check: dict
    logits: np.ndarray  # fused logits of the calibration cases
    risk: np.ndarray  # fused log-hazards of the calibration cases
    conformal: ConformalPredictor
    baseline_hazard: tuple[np.ndarray, np.ndarray]
    cutoffs: tuple[float, float]
    risk_group_check: dict
    conformal_check: dict = field(default_factory=dict)


def _conformal(probs: np.ndarray, labels: np.ndarray, cfg: TrainConfig) -> ConformalPredictor:
    """The stored sets: tuned RAPS on request, else :func:`fit_default_conformal`."""
    if cfg.conformal_method == "raps" and cfg.conformal_lam is None:
        return fit_conformal_tuned(
            probs, labels, alpha=cfg.alpha, class_conditional=bool(cfg.class_conditional),
            seed=cfg.seed,
        )  # fmt: skip
    return fit_default_conformal(
        probs, labels, alpha=cfg.alpha, method=cfg.conformal_method,
        class_conditional=cfg.class_conditional, lam=cfg.conformal_lam or 0.0,
        k_reg=cfg.conformal_k_reg, seed=cfg.seed, class_alpha=cfg.class_alpha(),
    )  # fmt: skip


def _map_on_final_network(
    cal_map: CalibrationMap, final_logits: np.ndarray, labels: np.ndarray, n_oof: int
) -> tuple[CalibrationMap, dict]:
    """A map chosen on the fold networks' out-of-fold logits, checked on the final network.

    The fold networks trained on fewer cases than the final one, so their confidence can
    differ; the map is kept only when it does not raise the log loss of the final network's
    own validation cases (``final_logits``). The record also holds the temperature each set
    of logits would get alone, so a difference in scale shows.
    """
    known = labels >= 0
    record: dict = {
        "fitted_on": f"out-of-fold logits of {n_oof} cases",
        "checked_on": f"final network's {int(known.sum())} validation cases",
        "final_temperature_alone": fit_temperature(final_logits, labels),
        "final_nll_identity": mean_log_loss(final_logits, labels),
        "final_nll_map": mean_log_loss(cal_map.apply(final_logits), labels),
    }
    refused = cal_map.kind != "identity" and (
        not known.any() or record["final_nll_map"] > record["final_nll_identity"]
    )
    record["kept_on_final"] = not refused
    if not refused:
        return cal_map, record
    reason = (
        f"{cal_map.kind} scaling chosen on the out-of-fold logits raised the final network's "
        "validation log loss: none applied"
        if known.any()
        else f"{cal_map.kind} scaling not checked on the final network (no validation case)"
    )
    kept = {**cal_map.record, "chosen": "identity", "applied": False, "reason": reason}
    kept["fitted_temperature"] = 1.0
    return CalibrationMap("identity", record=kept), record


def _calibrate(
    model: FusionModel, data: _Data, cfg: TrainConfig, oof: _OutOfFold | None = None
) -> _Calibration:
    """Calibration map (identity, temperature or vector scaling folded into the weights,
    whichever has the lowest log loss over folds), conformal threshold, Breslow hazard and
    risk cut-offs, from the validation cases (the training cases when there are none).

    With cross-validation (``oof``) the map and the conformal threshold come from every
    development case's out-of-fold outputs instead (cross-conformal, ``stats.conformal``);
    the map is then kept only when it does not worsen the final network's validation log
    loss (:func:`_map_on_final_network`).
    """
    train = data.arrays.subset(data.train_index)
    calib = data.arrays.subset(data.val_index) if len(data.val_index) else train
    y_cal = calib.labels.numpy()
    logits, risk = (t.numpy() for t in predict_arrays(model, calib))
    raw_logits = logits
    final_check: dict = {}
    if oof is None:
        cal_map = choose_calibration(logits, y_cal, seed=cfg.seed)
    else:
        y_dev = data.arrays.labels.numpy()
        cal_map = choose_calibration(oof.logits, y_dev, seed=cfg.seed)
        if len(data.val_index):
            check_logits, check_labels = raw_logits, y_cal
        else:  # the "calibration" cases trained the network: nothing to check the map on
            check_logits, check_labels = raw_logits[:0], y_cal[:0]
        cal_map, final_check = _map_on_final_network(
            cal_map, check_logits, check_labels, len(y_dev)
        )
        final_check["oof_temperature_alone"] = fit_temperature(oof.logits, y_dev)
    oof_map = cal_map
    if cal_map.kind == "vector" and cal_map.scale is not None and cal_map.shift is not None:
        # into the weights; the risk head reads the new probabilities
        model.scale_logits(cal_map.scale, cal_map.shift)
        if model.config.risk == "mixture":
            model.load_state_dict(
                _refit_class_log_hazards(model.config, _clone_state(model), train)
            )
        logits, risk = (t.numpy() for t in predict_arrays(model, calib))
    temperature, check = cal_map.temperature, {"map": cal_map.kind, **cal_map.record}
    if cal_map.scale is not None and cal_map.shift is not None:  # the map folded into weights
        check["vector_scale"] = [float(v) for v in cal_map.scale]
        check["vector_shift"] = [float(v) for v in cal_map.shift]
    check["ece_before"] = expected_calibration_error(softmax(raw_logits), y_cal)
    if final_check:
        check["final_network_check"] = final_check
    probs_cal = softmax(logits, temperature)
    if oof is None:
        conformal = _conformal(probs_cal, y_cal, cfg)
        conformal_check = {"source": f"split conformal on {int((y_cal >= 0).sum())} cases"}
    else:
        oof_probs = softmax(oof_map.apply(oof.logits))
        conformal = cross_conformal(_conformal(oof_probs, y_dev, cfg), oof.folds)
        conformal_check = _cross_conformal_check(conformal, oof_probs, y_dev, probs_cal, y_cal)
    _, risk_train = predict_arrays(model, train)
    t_tr, e_tr = train.times.numpy(), train.events.numpy()
    hazard = breslow_baseline(risk_train.numpy(), t_tr, e_tr)
    cutoffs, groups = choose_risk_cutoffs(
        risk_train.numpy(), risk, calib.times.numpy(), calib.events.numpy()
    )
    if not len(data.val_index):
        groups["checked_on"] = "training cases (no validation split)"
    return _Calibration(
        temperature, check, logits, risk, conformal, hazard, cutoffs, groups, conformal_check
    )


def _cross_conformal_check(
    cp: ConformalPredictor,
    oof_probs: np.ndarray,
    y_dev: np.ndarray,
    final_probs: np.ndarray,
    y_final: np.ndarray,
) -> dict:
    """How the cross-conformal sets behave on the out-of-fold cases they were fitted on and
    on the final network's validation cases (a check that the two agree in scale)."""
    out: dict = {"source": f"cross-conformal, {cp.folds} folds, {cp.n_calibration} cases"}
    for name, probs, y in (
        ("out_of_fold", oof_probs, y_dev),
        ("final_validation", final_probs, y_final),
    ):
        known = y >= 0
        sets = cp.predict_sets(probs[known])
        out[name] = {
            "n": int(known.sum()),
            "coverage": coverage(sets, y[known]),
            "mean_set_size": mean_set_size(sets),
            "mean_confidence": float(probs[known].max(axis=1).mean()) if known.any() else None,
            "nll": mean_log_loss(np.log(np.clip(probs, 1e-12, 1.0)), y),
        }
    return out


def _image_only_calibration(
    image_only: FusionModel, data: _Data, cfg: TrainConfig
) -> tuple[float, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """Temperature and Breslow hazard of the image-only network; its calibration outputs."""
    train = data.arrays.subset(data.train_index)
    calib = data.arrays.subset(data.val_index) if len(data.val_index) else train
    logits, risk = (t.numpy() for t in predict_arrays(image_only, calib))
    temperature, _ = choose_temperature(logits, calib.labels.numpy(), seed=cfg.seed)
    _, risk_train = predict_arrays(image_only, train)
    hazard = breslow_baseline(risk_train.numpy(), train.times.numpy(), train.events.numpy())
    return temperature, hazard, softmax(logits, temperature), risk


def _validation_summary(
    data: _Data,
    cal: _Calibration,
    image_only_outputs: ModelOutputs,
    baselines: dict[str, Baseline],
) -> dict:
    """Fused model, image-only network and every baseline on the same calibration cases."""
    cal_idx = data.val_index if len(data.val_index) else data.train_index
    calib = data.arrays.subset(cal_idx)
    y, t, e = calib.labels.numpy(), calib.times.numpy(), calib.events.numpy()
    outputs: dict[str, ModelOutputs | dict] = {
        "fused": ModelOutputs(softmax(cal.logits, cal.temperature), cal.risk),
        "image_only": image_only_outputs,
    }
    outputs.update(baseline_outputs(baselines, data.baseline_inputs().rows(cal_idx), data.panel))
    return {
        name: _summary_metrics(o.probs, y, o.risk, t, e, data.classes)
        for name, o in outputs.items()
        if isinstance(o, ModelOutputs)
    }


def _distribution(data: _Data) -> dict:
    """The training distribution the bundle keeps for out-of-distribution warnings."""
    is_train = data.dev_split == "train"
    descriptions = [
        d for d, s in zip(data.arrays.descriptions or [], data.dev_split) if s == "train"
    ]
    if not (descriptions and all(descriptions)):
        return {}
    try:
        return {
            "training_distribution": training_distribution(
                descriptions, data.values[is_train], data.missing[is_train], data.panel
            )
        }
    except (KeyError, ValueError) as exc:  # keep the bundle; predict warns it is absent
        warnings.warn(f"training distribution not stored: {exc!r}", stacklevel=2)
        return {}


def _remove_work(out: Path, cfg: TrainConfig) -> None:
    """After a finished run: drop the checkpoints and the default image cache."""
    if cfg.keep_cache:
        return
    work = work_dir(out)
    shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    if not cfg.cache_dir:
        shutil.rmtree(work / "cache", ignore_errors=True)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def train_bundle(
    cohort_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    distributed: bool = False,
) -> Path:
    """``autoimmuneai train``: train, calibrate, fit baselines and write the bundle folder.

    Stages: data (splits, lab encoder, image cache), networks (cross-validation, fused,
    image-only), calibration (temperature, conformal sets, Breslow hazard, risk groups),
    baselines, summary and bundle. The test split is never loaded. Under ``torchrun`` with
    ``distributed`` every rank trains its share of each batch; rank 0 alone calibrates and
    writes the bundle. Checkpoints and the image cache live in :func:`work_dir`, never in
    the bundle.
    """
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    started_here = distributed and not (dist.is_available() and dist.is_initialized())
    info = init_distributed() if distributed else local_info()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if info.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(out_dir)
    try:
        data = _prepare_data(cohort_path, out, cfg, info, progress)
        out.mkdir(parents=True, exist_ok=True)  # a resumed demo finds the started bundle
        model_cfg, fused_res, io_res, cv, oof = _train_networks(
            data, cfg, work_dir(out) / CHECKPOINT_DIR, resume, progress, info
        )
        if not info.is_main:
            return out
        model = _network(model_cfg, fused_res)
        image_only = _network(model_cfg.variant(use_serology=False), io_res)
        cal = _calibrate(model, data, cfg, oof)
        if cv is not None and oof is not None:
            cv["out_of_fold"] = oof.record(data.arrays.case_ids)
        io_temperature, io_hazard, io_probs, io_risk = _image_only_calibration(
            image_only, data, cfg
        )
        tr = data.train_index
        train = data.arrays.subset(tr)
        y_tr = train.labels.numpy()
        baselines = fit_baselines(
            data.panel, data.baseline_inputs().rows(tr), y_tr, train.times.numpy(),
            train.events.numpy(),
        )  # fmt: skip
        summary = {
            "cohort": str(Path(cohort_path)),
            "split_source": data.split_source,
            "n_cases": {s: int((data.split == s).sum()) for s in SPLITS},
            "excluded_cases": data.excluded,
            "class_counts": {c: int((y_tr == k).sum()) for k, c in enumerate(data.classes)},
            "config": cfg.to_dict(),
            "world_size": info.world,
            "device": str(info.device),
            "fused": _fit_record(fused_res),
            "image_only": _fit_record(io_res),
            "calibration": {
                "temperature": cal.temperature,
                "temperature_check": cal.temperature_check,
                "ece_before": cal.temperature_check["ece_before"],
                "ece_after": expected_calibration_error(
                    softmax(cal.logits, cal.temperature), _cal_labels(data)
                ),
                "image_only_temperature": io_temperature,
            },
            "conformal_guarantee": cal.conformal.guarantee,
            "conformal_check": cal.conformal_check,
            "risk_groups": cal.risk_group_check,
            "validation": _validation_summary(
                data, cal, ModelOutputs(io_probs, io_risk), baselines
            ),
            "cross_validation": cv,
            "seconds": round(time.perf_counter() - t_start, 2),
        }
        save_bundle(
            out, panel=data.panel, grid=data.grid, encoder=data.encoder, model=model,
            image_only=image_only, temperature=cal.temperature, conformal=cal.conformal,
            baseline_hazard=cal.baseline_hazard, risk_cutoffs=cal.cutoffs,
            baselines={name: b.to_dict() for name, b in baselines.items()}, training=summary,
            image_only_temperature=io_temperature, image_only_baseline_hazard=io_hazard,
            extra=_distribution(data),
        )  # fmt: skip
        _remove_work(out, cfg)
        return out
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if started_here and dist.is_initialized():
            dist.destroy_process_group()


def _cal_labels(data: _Data) -> np.ndarray:
    idx = data.val_index if len(data.val_index) else data.train_index
    return data.arrays.labels.numpy()[idx]
