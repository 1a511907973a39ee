"""Predict one case: calibrated probabilities, a conformal differential, risk and survival.

``Predictor`` wraps a loaded bundle. It takes a volume in any geometry and the patient's lab
values (parsed ``LabValue`` or raw lab-sheet strings), brings the image to the model grid,
and keeps what the explanation step needs (the grid sample to map attributions back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from ..contracts import Prediction, Survival, check_matches_contract
from ..data.imaging import Volume, describe_volume
from ..data.labvalues import LabValue, LabValueError, model_value, parse_lab_value
from ..errors import InputError
from ..model.bundle import Bundle, load_bundle
from ..preprocess.channels import channels_to_model
from ..preprocess.model_grid import GridSample
from ..preprocess.pipeline import PreprocessedSample, Preprocessor
from ..stats.calibration import softmax
from ..stats.survival import risk_groups, survival_curves
from .ood import out_of_distribution_warnings

SURVIVAL_POINTS = 61


@dataclass
class PreparedCase:
    """A case ready for the model: tensors plus what is needed to map results back."""

    volume: Volume
    sample: GridSample | PreprocessedSample
    image: torch.Tensor  # [1, C, D, H, W] (the panel's channels in order)
    serology: torch.Tensor  # [1, n_encoded]
    values: np.ndarray  # [features], canonical units, NaN missing
    missing: np.ndarray  # [features] bool
    labs: dict[str, LabValue]
    # per channel: acquired (False: an optional channel not given, a zero plane)
    channels_present: dict[str, bool] = field(default_factory=dict)


@dataclass
class CasePrediction:
    """The clinician-facing answer for one case (``prediction.json``).

    Its fields are the contract's ``Prediction`` keys with the same types, checked when this
    module is imported (``contracts.check_matches_contract``): the contract is the one source.
    """

    case_id: str
    classes: list[str]
    probabilities: dict[str, float]
    predicted: str
    prediction_set: list[str]
    alpha: float
    risk_score: float
    risk_group: str
    survival: Survival  # keys from the output contract (contracts.py)
    warnings: list[str] = field(default_factory=list)
    # share of the hazard each disease contributes, p(k|x) exp(a_k) / sum (mixture head only):
    # why the risk is what it is
    risk_by_class: dict[str, float] = field(default_factory=dict)
    # preprocessing quality (registration and brain-mask figures, their warnings); empty for
    # a bundle without the preprocessing stage
    quality: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> Prediction:
        """``prediction.json`` (a deep copy: nested dicts and lists are new)."""
        return cast(Prediction, asdict(self))  # same keys and types: checked at import below


check_matches_contract(CasePrediction, Prediction)


class Predictor:
    """Load a bundle once, predict many cases.

    >>> predictor = Predictor("bundle/")                       # doctest: +SKIP
    >>> result = predictor.predict(load_volume("case.nii.gz"), {"lab_a": "1:160"})  # doctest: +SKIP
    >>> result.prediction_set                                  # doctest: +SKIP
    ['class A']
    """

    def __init__(self, bundle: Bundle | str | Path, *, alpha: float | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.panel = self.bundle.panel
        self.model = self.bundle.model.eval()
        self.conformal = self.bundle.conformal
        if alpha is not None and alpha != self.conformal.alpha:
            try:  # same calibration cases, another error rate
                self.conformal = self.conformal.with_alpha(alpha)
            except ValueError as exc:
                raise InputError(str(exc), field="--alpha") from None

    @property
    def classes(self) -> list[str]:
        return list(self.panel.classes)

    def parse_labs(self, raw: Mapping[str, object]) -> dict[str, LabValue]:
        """Parse raw lab-sheet values by feature name; unknown names and bad values are refused."""
        unknown = sorted(set(raw) - set(self.panel.feature_names))
        if unknown:
            raise InputError(
                f"unknown lab feature(s) {', '.join(unknown)} for panel {self.panel.name}"
            )
        labs: dict[str, LabValue] = {}
        for feature in self.panel.features:
            value = raw.get(feature.name, "")
            if isinstance(value, LabValue):
                labs[feature.name] = value
                continue
            try:
                labs[feature.name] = parse_lab_value(value, feature)
            except LabValueError as exc:
                raise InputError(str(exc), field=feature.name) from None
        return labs

    def prepare(
        self,
        volume: Volume,
        labs: Mapping[str, object],
        others: Mapping[str, Volume | None] | None = None,
    ) -> PreparedCase:
        """Bring the image(s) to the model grid and encode the labs.

        ``volume`` is the panel's first channel; ``others`` the further channels by name (a
        missing optional channel: absent or None, a zero plane the model sees as missing).
        """
        parsed = self._lab_values(labs)
        names = self.panel.feature_names
        values = np.full(len(names), np.nan)
        missing = np.ones(len(names), dtype=bool)
        for j, name in enumerate(names):
            lab = parsed[name]
            if not lab.missing:
                values[j] = model_value(lab)
                missing[j] = False
        channels = list(self.panel.channels)
        sample: GridSample | PreprocessedSample
        if len(channels) == 1:
            sample = self.bundle.grid.to_model(volume)
            image = sample.tensor.unsqueeze(0).float()
            present = {channels[0]: True}
        else:
            others = others or {}
            absent = [c for c in self.panel.required_channels[1:] if others.get(c) is None]
            if absent:
                raise InputError(f"no image for required channel(s) {', '.join(absent)}")
            stacked = channels_to_model(
                self.bundle.grid, [volume, *[others.get(c) for c in channels[1:]]], channels
            )
            # ChannelSample.reference is typed object: it is the first channel's to_model sample
            sample = cast(GridSample | PreprocessedSample, stacked.reference)
            image = torch.from_numpy(stacked.array).unsqueeze(0).float()
            present = dict(zip(channels, stacked.present))
        serology = torch.from_numpy(self.bundle.encoder.transform(values[None], missing[None]))
        return PreparedCase(volume, sample, image, serology, values, missing, parsed, present)

    def _lab_values(self, labs: Mapping[str, object]) -> dict[str, LabValue]:
        """Every panel feature's ``LabValue``: as given when all are parsed, else parsed."""
        ready = {k: v for k, v in labs.items() if isinstance(v, LabValue)}
        if len(ready) == len(labs) and set(ready) == set(self.panel.feature_names):
            return ready
        return self.parse_labs(labs)

    def logits_and_risk(self, prepared: PreparedCase) -> tuple[np.ndarray, float]:
        with torch.no_grad():
            logits, log_hazard = self.model.forward_all(prepared.image, prepared.serology)
        return logits[0].double().numpy(), float(log_hazard[0])

    def predict_prepared(self, prepared: PreparedCase, case_id: str = "case") -> CasePrediction:
        """Probabilities (temperature-calibrated), conformal set, risk group, survival curve."""
        logits, risk = self.logits_and_risk(prepared)
        probs = softmax(logits[None], self.bundle.temperature)[0]
        in_set = self.conformal.predict_sets(probs[None], rng=np.random.default_rng(0))[0]
        classes = self.classes
        times, surv = self.survival_curve(risk)
        warnings = out_of_distribution_warnings(
            describe_volume(prepared.volume),
            prepared.values,
            prepared.missing,
            self.bundle.metadata.get("training_distribution", {}),
            self.panel,
            standardised=isinstance(self.bundle.grid, Preprocessor),
        )
        quality = dict(getattr(prepared.sample, "quality", {}) or {})
        if quality:
            pre_warnings = list(getattr(prepared.sample, "warnings", []))
            quality["warnings"] = pre_warnings
            warnings = [*pre_warnings, *warnings]
        absent = [c for c, given in prepared.channels_present.items() if not given]
        warnings += [f"no {c} image: read as not acquired (a missing channel)" for c in absent]
        return CasePrediction(
            case_id=case_id,
            classes=classes,
            probabilities={c: round(float(p), 6) for c, p in zip(classes, probs)},
            predicted=classes[int(np.argmax(probs))],
            prediction_set=[c for c, keep in zip(classes, in_set) if keep],
            alpha=float(self.conformal.alpha),
            risk_score=round(risk, 6),
            risk_group=str(risk_groups(np.array([risk]), self.bundle.risk_cutoffs)[0]),
            survival=Survival(times_months=times, probability=surv),
            warnings=warnings,
            risk_by_class=self.risk_by_class(logits),
            quality=quality,
        )

    def risk_by_class(self, logits: np.ndarray) -> dict[str, float]:
        """Each class's share of the mixture head's hazard (empty for a linear head)."""
        if self.model.config.risk != "mixture":
            return {}
        a = self.model.class_log_hazard.detach().double().numpy()
        share = softmax(logits[None] + a[None])[0]  # p_k exp(a_k) / sum_j p_j exp(a_j)
        return {c: round(float(v), 6) for c, v in zip(self.classes, share)}

    def predict(
        self, volume: Volume, labs: Mapping[str, object], case_id: str = "case"
    ) -> CasePrediction:
        return self.predict_prepared(self.prepare(volume, labs), case_id)

    def survival_curve(self, risk: float) -> tuple[list[float], list[float]]:
        """S(t) on a grid up to the last event time seen in training (months)."""
        event_times, _ = self.bundle.baseline_hazard
        horizon = float(np.max(event_times)) if len(event_times) else 60.0
        grid = np.linspace(0.0, horizon if math.isfinite(horizon) else 60.0, SURVIVAL_POINTS)
        surv = survival_curves(np.array([risk]), self.bundle.baseline_hazard, grid)[0]
        return [round(float(t), 3) for t in grid], [round(float(s), 5) for s in surv]
