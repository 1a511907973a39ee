"""Captum explanations of one prediction: an image map, lab contributions, modality share.

Why this way:

- The image and the serology are attributed in ONE Captum call with ``inputs=(image,
  serology)`` (Integrated Gradients, GradientShap), so the lab contributions and the share of
  each modality come at no extra cost and add up, with the image part, to the change of the
  explained logit between the baseline and the patient (IG's completeness).
- Baselines say what "no evidence" means. For the serology it is the encoding of "every lab
  missing": a lab that was not measured equals its baseline and so contributes exactly 0
  (reported as missing, never as evidence). For the image the default is a *pseudo-healthy*
  version of the same scan: a grey-level morphological opening that erases small bright
  spots (FLAIR hyperintensities) but keeps the anatomy, so the map answers "which
  hyperintense spots pushed this class", not "which brain tissue is bright" (a black
  baseline makes IG copy the anatomy, which fails the model-randomisation sanity check).
- IG uses Gauss-Legendre quadrature: few steps give a convergence delta under 5% of the
  explained output difference; if not, the step count is doubled (up to ``MAX_STEPS``).
- Occlusion and LayerGradCam do not split a score over inputs; for them the labs are
  ablated per feature (all columns of a feature at once, to the same "missing" baseline)
  with Captum's ``FeatureAblation``, in one batched forward pass.

Contributions are in **logit** units of the explained class (``CONTRIBUTION_UNITS``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import (
    FeatureAblation,
    GradientShap,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
)

from ..data.labvalues import LabValue, format_lab_value
from ..errors import InputError
from ..model.fusion import cube_max
from .methods import DEFAULT_METHOD, METHODS

CONTRIBUTION_UNITS = "logit"
BASELINES = ("hyperintensity", "opened", "blur", "zero")
DEFAULT_BASELINE = "hyperintensity"
DEFAULT_STEPS = 8
MAX_STEPS = 32  # a case that needs more (kinks of the lesion read-out) gets a warning
DELTA_TOLERANCE = 0.05  # |convergence delta| / |F(x) - F(baseline)|
DELTA_FLOOR = 1e-3  # logits: below this output difference the relative delta is meaningless
OPENING_SIZE = 5  # voxels of the model grid (2.5 mm): erases bright spots up to ~12 mm
EXCESS_PERCENTILE = 98.0  # only the brightest 2% of local excesses count as hyperintense


@dataclass
class Explanation:
    """One explained prediction (maps on the MODEL grid; map them back with ``to_input``)."""

    target: int
    target_name: str
    method: str
    image_map: np.ndarray  # [D, H, W] signed, model grid
    lab_contributions: list[dict]  # sorted by |contribution|, rank 1 first
    modality_share: dict[str, float]  # {"image": a, "serology": 1 - a}
    convergence_delta: float | None  # IG only: sum(attr) - (F(x) - F(baseline)), logits
    seconds: float
    relative_delta: float | None = None  # |delta| / |F(x) - F(baseline)| (IG only)
    n_steps: int | None = None  # IG/GradientShap steps or samples actually used
    baseline: str = DEFAULT_BASELINE
    modality_effect: dict[str, float] = field(default_factory=dict)  # signed, logits
    contribution_units: str = CONTRIBUTION_UNITS
    # per image channel (the panel's order): the signed map [C, D, H, W] (``image_map`` is
    # their sum) and each channel's share of the positive attribution (sums to 1)
    channel_maps: np.ndarray | None = field(default=None, repr=False)
    channel_share: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# Baselines


def image_baseline(image: torch.Tensor, kind: str = DEFAULT_BASELINE) -> torch.Tensor:
    """The image that stands for "no evidence" (same shape as ``image``).

    ``opened``: grey-level opening (erosion then dilation, a cube of ``OPENING_SIZE``), which
    removes bright structures smaller than the cube and never brightens anything; ``blur``:
    a Gaussian blur (sigma 2 voxels); ``zero``: a black image.
    """
    if kind == "zero":
        return torch.zeros_like(image)
    with torch.no_grad():
        if kind in ("opened", "hyperintensity"):
            opened = cube_max(-cube_max(-image, OPENING_SIZE), OPENING_SIZE)  # erode, dilate
            if kind == "opened":
                return opened.contiguous()
            return without_hyperintensities(image, opened)
        if kind == "blur":
            from monai.networks.layers import GaussianFilter

            return GaussianFilter(3, sigma=2.0)(image).contiguous()
    raise InputError(f"unknown baseline {kind!r} (choose one of {', '.join(BASELINES)})")


def without_hyperintensities(image: torch.Tensor, opened: torch.Tensor) -> torch.Tensor:
    """The "hyperintensity" baseline from the image and its opening (``opened`` baseline):
    the brightest ``100 - EXCESS_PERCENTILE`` % of the excesses over the opening cut back."""
    with torch.no_grad():
        tophat = image - opened
        threshold = float(np.quantile(tophat.numpy().reshape(-1), EXCESS_PERCENTILE / 100))
        return (image - torch.clamp(tophat - threshold, min=0.0)).contiguous()


def serology_baseline(encoder, like: torch.Tensor) -> torch.Tensor:
    """The encoding of "every lab missing" (what a missing lab equals, so it contributes 0)."""
    n = encoder.n_features
    encoded = encoder.transform(np.full((1, n), np.nan), np.ones((1, n), dtype=bool))
    return torch.as_tensor(encoded, dtype=like.dtype).reshape(1, -1).expand_as(like).contiguous()


# ----------------------------------------------------------------------------------------
# Explanation


def _check_inputs(model, image: torch.Tensor, serology: torch.Tensor, encoder) -> None:
    if image.ndim != 5 or image.shape[0] != 1:
        raise InputError(f"image must be a [1, C, D, H, W] tensor, got {tuple(image.shape)}")
    if serology.ndim != 2 or serology.shape[0] != 1:
        raise InputError(f"serology must be a [1, d] tensor, got {tuple(serology.shape)}")
    if serology.shape[1] != encoder.n_encoded:
        raise InputError(
            f"serology has {serology.shape[1]} columns but the encoder makes {encoder.n_encoded}"
        )


def _gradcam_layer(model) -> torch.nn.Module:
    try:
        return model.image_encoder.last_block
    except AttributeError:
        raise InputError("LayerGradCam needs a model with an image encoder") from None


@contextmanager
def input_gradients_only(model: torch.nn.Module) -> Iterator[None]:
    """Switch off the weights' gradients while attributing (restored afterwards).

    An attribution needs gradients with respect to the inputs only; with the weights frozen
    autograd skips every weight gradient, a large part of a backward pass.
    """
    was = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in was:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in was:
            p.requires_grad_(flag)


def predicted_class(model, image: torch.Tensor, serology: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(image, serology).argmax(dim=1)[0])


def explain(
    model,
    image: torch.Tensor,
    serology: torch.Tensor,
    *,
    encoder,
    labs: dict[str, LabValue] | None = None,
    target: int | None = None,
    method: str = DEFAULT_METHOD,
    n_steps: int | None = None,
    internal_batch_size: int | None = None,
    baseline: str = DEFAULT_BASELINE,
    seed: int = 0,
    occlusion_window: int = 12,
    occlusion_stride: int = 8,
) -> Explanation:
    """Explain ``model``'s logit for ``target`` (default: the predicted class) on one case.

    ``image`` [1, 1, D, H, W] on the model grid, ``serology`` [1, d] from ``encoder``;
    ``labs`` (parsed values by feature name) only label the contributions. ``n_steps`` is
    IG's quadrature steps (adaptive from ``DEFAULT_STEPS`` when None) or GradientShap's
    samples; ``internal_batch_size`` bounds how many interpolated images go through the
    model at once (default: all steps in one batch, fastest on a CPU).
    """
    if method not in METHODS:
        raise InputError(f"unknown explanation method {method!r} (one of {', '.join(METHODS)})")
    with input_gradients_only(model):
        start = time.perf_counter()
        model.eval()
        image = image.detach().float()
        serology = serology.detach().float()
        _check_inputs(model, image, serology, encoder)
        labs = labs or {}
        classes = list(encoder.panel.classes)
        if target is None:
            target = predicted_class(model, image, serology)
        if not 0 <= int(target) < len(classes):
            raise InputError(f"target class {target} is not one of 0..{len(classes) - 1}")
        target = int(target)
        b_img = image_baseline(image, baseline)
        b_ser = serology_baseline(encoder, serology)

        if method == "integrated_gradients":
            attributed = _integrated_gradients(
                model, image, serology, b_img, b_ser, target, n_steps, internal_batch_size
            )
        elif method == "gradient_shap":
            attributed = _gradient_shap(model, image, serology, b_img, b_ser, target, n_steps, seed)
        else:
            if method == "occlusion":
                a_img = _occlusion(
                    model, image, serology, b_img, target,
                    occlusion_window, occlusion_stride, internal_batch_size,
                )  # fmt: skip
            else:
                a_img = _layer_gradcam(model, image, serology, target)
            attributed = _Attributed(
                a_img,
                ablate_labs(model, image, serology, b_ser, encoder, target),
                ablation_effect(model, image, serology, b_img, b_ser, target),
            )
        a_img, a_ser, effect = attributed.image, attributed.serology, attributed.effect
        channel_maps = a_img.detach()[0].numpy().astype(np.float32)
        image_map = channel_maps.sum(axis=0)
        channel_names = list(getattr(encoder.panel, "channels", ())) or ["image"]
        if len(channel_names) != len(channel_maps):
            channel_names = [f"channel {k}" for k in range(len(channel_maps))]
        channel_share = positive_shares(channel_maps, channel_names)
        per_column = a_ser.detach().reshape(-1).numpy().astype(np.float64)
        contributions = lab_contributions(per_column, encoder, labs, classes[target])
        denom = abs(effect["image"]) + abs(effect["serology"])
        share_image = abs(effect["image"]) / denom if denom > 0 else 0.0
        return Explanation(
            target=target,
            target_name=classes[target],
            method=method,
            image_map=image_map,
            lab_contributions=contributions,
            modality_share={"image": round(share_image, 4), "serology": round(1 - share_image, 4)},
            convergence_delta=attributed.delta,
            seconds=time.perf_counter() - start,
            relative_delta=attributed.relative_delta,
            n_steps=attributed.steps,
            baseline=baseline,
            modality_effect={k: round(v, 6) for k, v in effect.items()},
            channel_maps=channel_maps,
            channel_share=channel_share,
        )


def positive_shares(maps: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each map's share of the positive attribution over all ``maps`` [C, ...] (sums to 1;
    all 0 when nothing is positive): which contrast carries the evidence."""
    pos = np.clip(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1), 0.0, None).sum(1)
    total = float(pos.sum())
    return {n: round(float(v / total) if total > 0 else 0.0, 4) for n, v in zip(names, pos)}


@dataclass
class _Attributed:
    """What one attribution method returns: both maps, the signed effect of each modality
    (logits) and, for the path methods, the steps used and IG's convergence delta."""

    image: torch.Tensor  # [1, C, D, H, W]
    serology: torch.Tensor  # [1, d]
    effect: dict[str, float]
    steps: int | None = None
    delta: float | None = None
    relative_delta: float | None = None


def _integrated_gradients(
    model, image, serology, b_img, b_ser, target: int, n_steps, internal_batch_size
) -> _Attributed:
    """IG over both inputs with Gauss-Legendre steps, doubled (up to ``MAX_STEPS``) while the
    convergence delta stays above ``DELTA_TOLERANCE`` of the output difference."""
    forward, inputs, baselines, unpack = _joint_inputs(model, image, serology, b_img, b_ser)
    steps = n_steps or DEFAULT_STEPS
    ig = IntegratedGradients(forward)
    while True:
        attrs, d = ig.attribute(
            inputs,
            baselines=baselines,
            target=target,
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=internal_batch_size or steps,
            return_convergence_delta=True,
        )
        a_img, a_ser = unpack(attrs)
        delta = float(d.sum())
        total = float(a_img.sum()) + float(a_ser.sum())
        rel_delta = abs(delta) / max(abs(total - delta), DELTA_FLOOR)
        if rel_delta <= DELTA_TOLERANCE or n_steps is not None or steps >= MAX_STEPS:
            break
        steps *= 2
    effect = {"image": float(a_img.sum()), "serology": float(a_ser.sum())}
    return _Attributed(a_img, a_ser, effect, steps, delta, rel_delta)


def _gradient_shap(model, image, serology, b_img, b_ser, target: int, n_steps, seed: int):
    """GradientShap over both inputs, noise on the image only, seeded."""
    forward, inputs, baselines, unpack = _joint_inputs(model, image, serology, b_img, b_ser)
    steps = n_steps or DEFAULT_STEPS
    noise = 0.05 * float(image.std())
    stdevs = tuple(noise if x is image else 0.0 for x in inputs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        attrs = GradientShap(forward).attribute(
            inputs, baselines=baselines, n_samples=steps, stdevs=stdevs, target=target
        )
    a_img, a_ser = unpack(attrs)
    effect = {"image": float(a_img.sum()), "serology": float(a_ser.sum())}
    return _Attributed(a_img, a_ser, effect, steps)


def _occlusion(
    model, image, serology, b_img, target: int, window: int, stride: int, internal_batch_size
) -> torch.Tensor:
    """Occlusion of ``window``-voxel cubes (every channel at once) by the baseline image."""
    return Occlusion(lambda x: model(x, serology.expand(x.shape[0], -1))).attribute(
        image,
        sliding_window_shapes=(image.shape[1], window, window, window),
        strides=(image.shape[1], stride, stride, stride),
        baselines=b_img,
        target=target,
        perturbations_per_eval=internal_batch_size or 16,
    )


def _layer_gradcam(model, image, serology, target: int) -> torch.Tensor:
    """LayerGradCam of the image encoder's last block, upsampled to the image."""
    cam = LayerGradCam(model, _gradcam_layer(model)).attribute((image, serology), target=target)
    return LayerAttribution.interpolate(
        cam.detach(), tuple(image.shape[2:]), interpolate_mode="trilinear"
    )


def _joint_inputs(model, image, serology, b_img, b_ser):
    """Captum inputs for the modalities the model uses (an unused input has no gradient).

    Returns (forward, inputs, baselines, unpack) where ``unpack`` turns Captum's tuple of
    attributions back into (image attribution, serology attribution), zeros for an unused one.
    """
    config = getattr(model, "config", None)
    use_image = getattr(config, "use_image", True)
    use_serology = getattr(config, "use_serology", True)
    if use_image and use_serology:
        return model, (image, serology), (b_img, b_ser), lambda a: (a[0], a[1])
    if use_image:

        def forward(x):
            return model(x, serology.expand(x.shape[0], -1))

        return forward, (image,), (b_img,), lambda a: (a[0], torch.zeros_like(serology))

    def forward_labs(s):
        return model(image.expand(s.shape[0], -1, -1, -1, -1), s)

    return forward_labs, (serology,), (b_ser,), lambda a: (torch.zeros_like(image), a[0])


def ablate_labs(
    model, image: torch.Tensor, serology: torch.Tensor, b_ser: torch.Tensor, encoder, target: int
) -> torch.Tensor:
    """Per-column attribution [1, d] from ablating each feature's columns together.

    The feature's whole effect (logit drop when it is set to "missing") is put on its first
    column, so summing a feature's columns gives the feature's contribution.
    """
    mask = torch.zeros_like(serology, dtype=torch.long)
    for group, columns in enumerate(encoder.feature_columns().values()):
        mask[0, columns] = group
    n_groups = encoder.n_features
    with torch.no_grad():
        per_group = FeatureAblation(lambda s: model(image.expand(s.shape[0], -1, -1, -1, -1), s))
        attr = per_group.attribute(
            serology,
            baselines=b_ser,
            target=target,
            feature_mask=mask,
            perturbations_per_eval=n_groups,
        )
    out = torch.zeros_like(serology)
    for columns in encoder.feature_columns().values():
        out[0, columns[0]] = attr[0, columns[0]]
    return out


def ablation_effect(
    model,
    image: torch.Tensor,
    serology: torch.Tensor,
    b_img: torch.Tensor,
    b_ser: torch.Tensor,
    target: int,
) -> dict[str, float]:
    """Logit drop when the image, or the labs, are replaced by their baselines."""
    with torch.no_grad():
        out = model(torch.cat([image, b_img, image]), torch.cat([serology, serology, b_ser]))
    full = float(out[0, target])
    return {"image": full - float(out[1, target]), "serology": full - float(out[2, target])}


def lab_contributions(
    per_column: np.ndarray, encoder, labs: dict[str, LabValue], class_name: str
) -> list[dict]:
    """One entry per panel feature: the sum of its encoded columns' attributions.

    Entries: feature, label, value (formatted), unit, contribution (logits of
    ``class_name``), missing, summary, rank (1 = largest |contribution|; missing labs last).
    """
    panel = encoder.panel
    rows: list[dict] = []
    for feature in panel.features:
        columns = encoder.feature_columns()[feature.name]
        value = labs.get(feature.name) or LabValue.absent()
        contribution = float(np.sum(per_column[columns]))
        text = format_lab_value(value, feature)
        if value.missing:
            summary = f"{feature.label} not measured: no contribution (held at 'missing')"
        else:
            way = "up" if contribution >= 0 else "down"
            summary = (
                f"{feature.label} {text} pushed {class_name} {way} by "
                f"{abs(contribution):.3g} {CONTRIBUTION_UNITS}"
            )
        rows.append(
            {
                "feature": feature.name,
                "label": feature.label,
                "value": text,
                "unit": feature.unit,
                "contribution": round(contribution, 6),
                "missing": bool(value.missing),
                "summary": summary,
            }
        )
    rows.sort(key=lambda r: (r["missing"], -abs(r["contribution"])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows
