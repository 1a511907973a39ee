"""Batch inference with a loaded bundle: logits, calibrated probabilities and log-hazards.

Accepts a cohort (images are brought to the bundle's model grid, labs encoded with the
bundle's encoder), ready :class:`~autoimmuneai.data.dataset.CaseArrays`, or a pair of tensors
``(images [n, C, D, H, W], serology [n, d])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import CaseArrays, build_arrays
from ..model.fusion import INFERENCE_BATCH_SIZE
from ..stats.calibration import softmax

WHICH = ("fused", "image_only")


@dataclass
class Outputs:
    """Model outputs for n cases (row order of the input)."""

    logits: np.ndarray  # [n, C] float64
    probs: np.ndarray  # [n, C], softmax(logits / temperature)
    risk: np.ndarray  # [n] Cox log-hazard
    case_ids: list[str]
    temperature: float = 1.0


def infer(
    bundle,
    data,
    which: str = "fused",
    batch_size: int = INFERENCE_BATCH_SIZE,
    *,
    progress: bool = False,
) -> Outputs:
    """Run the bundle's fused (or image-only) network on ``data`` in eval mode, no gradients."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, not {which!r}")
    if which == "image_only":
        if bundle.image_only is None:
            raise KeyError("the bundle holds no image-only model")
        model, temperature = bundle.image_only, bundle.image_only_temperature
    else:
        model, temperature = bundle.model, bundle.temperature
    if isinstance(data, CaseArrays):
        arrays = data
    elif isinstance(data, (tuple, list)):
        images, serology = data
        arrays = CaseArrays.from_numpy(
            torch.as_tensor(images).numpy(), torch.as_tensor(serology, dtype=torch.float32).numpy()
        )
    else:  # a Cohort
        arrays = build_arrays(data, bundle.grid, bundle.encoder, progress=progress)
    lg_t, risk_t = model.predict(arrays.images, arrays.serology, batch_size)
    lg, rk = lg_t.double().numpy(), risk_t.double().numpy()
    return Outputs(lg, softmax(lg, temperature), rk, list(arrays.case_ids), float(temperature))
