"""Baselines the fused model must beat, stored in the bundle as plain JSON dicts (no pickle).

- ``serology_only``: what a researcher would fit first: multinomial logistic regression
  (scikit-learn, balanced class weights) and a Cox model (lifelines, small ridge penalty) on
  the encoded serology.
- ``criteria``: the published diagnostic criteria of the panel's ``criteria`` section applied
  to the parsed lab values (no learning); absent for a panel that publishes no rules.
- ``oracle``: the same simple models on the synthetic generator's latent truth (``truth.csv``)
  plus the serology: the ceiling a model could reach from what the images encode.

(The ``image_only`` baseline is the fusion network with serology switched off; it lives with
the model weights.) Every fitted baseline reduces to coefficients, so prediction is plain
NumPy and a bundle never unpickles code.

One interface: every baseline reads :class:`BaselineInputs` (encoded serology, parsed lab
values, the truth table when there is one) through ``outputs()`` and returns
:class:`ModelOutputs`. ``train`` fits them with :func:`fit_baselines`; ``train``'s validation
summary and ``evaluate`` both get their figures from :func:`baseline_outputs`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..data.panel import Panel
from .calibration import softmax
from .survival import BaselineHazard, baseline_to_dict, breslow_baseline


@dataclass
class BaselineInputs:
    """What the baselines read for n cases (rows aligned with the cohort's cases)."""

    encoded: np.ndarray  # [n, d] encoded serology (values + missing indicators)
    values: np.ndarray  # [n, f] parsed lab values in panel units (NaN = missing)
    truth: pd.DataFrame | None = None  # the generator's truth table, when the cohort has one

    def rows(self, index: np.ndarray) -> BaselineInputs:
        """The inputs of the cases at ``index``."""
        truth = None if self.truth is None else self.truth.iloc[np.asarray(index)]
        return BaselineInputs(self.encoded[index], self.values[index], truth)


@dataclass
class ModelOutputs:
    """Per-case outputs of one model on the evaluated cases (rows aligned with the cohort)."""

    probs: np.ndarray  # [n, C] (calibrated where the model has a temperature)
    risk: np.ndarray | None = None  # [n] log-hazard or rule score; None: no risk model
    baseline_hazard: BaselineHazard | None = None  # Breslow baseline for ``risk`` (enables the IBS)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# shared linear models: logistic regression + Cox PH on standardised inputs


def linear_pipeline(C: float = 1.0) -> Pipeline:
    """Mean imputation, standardisation and balanced multinomial logistic regression."""
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=C, class_weight="balanced", max_iter=5000)),
        ]
    )


class _LinearModels:
    """:func:`linear_pipeline` and a ridge Cox PH model on the pipeline's standardised columns.

    The fitted pipeline is stored as its numbers (imputation means, scales, coefficients), and
    prediction repeats the pipeline's arithmetic in NumPy (a test proves it equal to the
    pipeline's ``predict_proba``). The Cox risk is the linear predictor itself, and the
    Breslow baseline hazard is estimated for exactly that risk, so survival curves from
    ``exp(-H0(t) exp(risk))`` are consistent.
    """

    def __init__(self, n_classes: int, C: float = 1.0, penalizer: float = 0.1) -> None:
        self.n_classes = int(n_classes)
        self.C = float(C)
        self.penalizer = float(penalizer)
        self.mean = np.zeros(0)
        self.std = np.ones(0)
        self.classes: list[int] = []
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)
        self.cox_beta: np.ndarray | None = None
        self.cox_baseline: dict | None = None
        self.notes: list[str] = []
        self.pipeline: Pipeline | None = None  # the fitted pipeline (not stored in bundles)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        """The pipeline's imputation and scaling: missing values land on 0 (the mean)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"expected {self.mean.size} input columns, got shape {x.shape}")
        z = (x - self.mean) / self.std
        return np.where(np.isfinite(z), z, 0.0)

    def fit(
        self, x: np.ndarray, labels: np.ndarray, times: np.ndarray, events: np.ndarray
    ) -> _LinearModels:
        x = np.asarray(x, dtype=np.float64)
        labels = np.asarray(labels).astype(np.int64)
        known = labels >= 0
        self.classes = sorted(int(k) for k in np.unique(labels[known]))
        if len(self.classes) < 2:
            raise ValueError("the baseline needs training cases of at least two classes")
        pipe = linear_pipeline(self.C)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pipe.fit(x[known], labels[known])
        scaler, lr = pipe.named_steps["scale"], pipe.named_steps["logistic"]
        self.pipeline = pipe
        self.mean = pipe.named_steps["impute"].statistics_.astype(np.float64)
        self.std = scaler.scale_.astype(np.float64)
        varying = scaler.var_ > 1e-16
        self.coef = lr.coef_.astype(np.float64)
        self.intercept = lr.intercept_.astype(np.float64)
        z = self._standardise(x)

        t = np.asarray(times, dtype=np.float64)
        e = np.asarray(events, dtype=np.float64)
        follow = np.isfinite(t) & np.isfinite(e)
        n_events = int((e[follow] > 0.5).sum())
        self.cox_beta, self.cox_baseline = None, None
        if n_events < 2 or not varying.any():
            self.notes.append(f"Cox model not fitted ({n_events} events with follow-up)")
            return self
        cols = np.flatnonzero(varying)
        df = pd.DataFrame(z[follow][:, cols], columns=[f"x{j}" for j in cols])
        df["T"] = np.maximum(t[follow], 1e-6)
        df["E"] = (e[follow] > 0.5).astype(int)
        cph = CoxPHFitter(penalizer=self.penalizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cph.fit(df, duration_col="T", event_col="E")
        beta = np.zeros(x.shape[1])
        beta[cols] = cph.params_.to_numpy()
        self.cox_beta = beta
        risk = z[follow] @ beta
        self.cox_baseline = baseline_to_dict(breslow_baseline(risk, t[follow], e[follow]))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self._standardise(x)
        scores = z @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary logistic regression: p1 = sigmoid(score)
            scores = np.hstack([np.zeros_like(scores), scores])
        p = softmax(scores)
        out = np.zeros((z.shape[0], self.n_classes))
        out[:, self.classes] = p
        return out

    def predict_risk(self, x: np.ndarray) -> np.ndarray:
        z = self._standardise(x)
        if self.cox_beta is None:
            return np.full(z.shape[0], np.nan)
        return z @ self.cox_beta

    def to_dict(self) -> dict:
        return {
            "n_classes": self.n_classes,
            "C": self.C,
            "penalizer": self.penalizer,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "classes": list(self.classes),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "cox_beta": None if self.cox_beta is None else self.cox_beta.tolist(),
            "cox_baseline": self.cox_baseline,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> _LinearModels:
        m = cls(int(d["n_classes"]), float(d.get("C", 1.0)), float(d.get("penalizer", 0.1)))
        m.mean = np.asarray(d["mean"], dtype=np.float64)
        m.std = np.asarray(d["std"], dtype=np.float64)
        m.classes = [int(k) for k in d["classes"]]
        m.coef = np.asarray(d["coef"], dtype=np.float64).reshape(-1, m.mean.size)
        m.intercept = np.asarray(d["intercept"], dtype=np.float64)
        beta = d.get("cox_beta")
        m.cox_beta = None if beta is None else np.asarray(beta, dtype=np.float64)
        m.cox_baseline = d.get("cox_baseline")
        m.notes = list(d.get("notes", []))
        return m


# --------------------------------------------------------------------------------------


class SerologyBaseline:
    """Logistic regression + Cox PH on the encoded serology (values + missing indicators)."""

    name = "serology_only"

    def __init__(self, n_classes: int | None = None, C: float = 1.0, penalizer: float = 0.1):
        self.n_classes = n_classes
        self.C = C
        self.penalizer = penalizer
        self.models: _LinearModels | None = None

    def fit(
        self, X_encoded: np.ndarray, labels: np.ndarray, times: np.ndarray, events: np.ndarray
    ) -> SerologyBaseline:
        """Fit on training cases (labels -1 and cases without follow-up are skipped per model)."""
        labels = np.asarray(labels).astype(np.int64)
        n_classes = self.n_classes if self.n_classes is not None else int(labels.max()) + 1
        self.n_classes = n_classes
        self.models = _LinearModels(n_classes, self.C, self.penalizer).fit(
            X_encoded, labels, times, events
        )
        return self

    def _fitted(self) -> _LinearModels:
        if self.models is None:
            raise RuntimeError("baseline is not fitted")
        return self.models

    def predict_proba(self, X_encoded: np.ndarray) -> np.ndarray:
        """Class probabilities [n, C] (classes absent in training get 0)."""
        return self._fitted().predict_proba(X_encoded)

    def predict_risk(self, X_encoded: np.ndarray) -> np.ndarray:
        """Cox log partial hazard [n] (NaN when no Cox model could be fitted)."""
        return self._fitted().predict_risk(X_encoded)

    @property
    def baseline_hazard(self) -> dict | None:
        """Breslow baseline ``{"times", "cumulative_hazard"}`` for :meth:`predict_risk`."""
        return self._fitted().cox_baseline

    def outputs(self, inputs: BaselineInputs) -> ModelOutputs:
        """Probabilities, Cox risk and baseline hazard on ``inputs.encoded``."""
        x = inputs.encoded
        return ModelOutputs(self.predict_proba(x), self.predict_risk(x), self.baseline_hazard)

    def to_dict(self) -> dict:
        return {"kind": self.name, **self._fitted().to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> SerologyBaseline:
        m = _LinearModels.from_dict(d)
        b = cls(m.n_classes, m.C, m.penalizer)
        b.models = m
        return b


# --------------------------------------------------------------------------------------
# criteria baseline

# One-hot rule output smoothed so that log-loss and calibration stay finite.
CRITERIA_SMOOTHING = 0.05
_OPS = {
    ">=": np.greater_equal,
    ">": np.greater,
    "<=": np.less_equal,
    "<": np.less,
}


def resolve_criteria(panel: Panel) -> dict | None:
    """The panel's ``criteria`` section with every named threshold (``positive_at`` ...)
    replaced by the feature's number, or None when the panel publishes no rules."""
    if panel.criteria is None:
        return None
    spec = copy.deepcopy(panel.criteria)
    for m in spec["markers"].values():
        m.setdefault("op", ">=")
        if isinstance(m["threshold"], str):
            m["threshold"] = float(getattr(panel.feature(m["feature"]), m["threshold"]))
        else:
            m["threshold"] = float(m["threshold"])
    return spec


class CriteriaBaseline:
    """Published criteria, read from the panel's ``criteria`` section, on parsed lab values.

    No fitting: each marker is a threshold on one lab (``markers``), scores add the points of
    the first item met in each domain (``scores``, e.g. the EULAR/ACR 2019 immunology
    domains), and the ordered ``rules`` give the class of the first rule whose conditions all
    hold (``default`` when none does). A missing test counts as not positive (the rule as
    applied in clinic). The risk score is the number of ``risk_markers`` present.
    """

    name = "criteria"

    def __init__(self, spec: dict, feature_names: Sequence[str], classes: Sequence[str]) -> None:
        self.spec = copy.deepcopy(spec)
        self.feature_names = list(feature_names)
        self.classes = list(classes)

    @classmethod
    def for_panel(cls, panel: Panel) -> CriteriaBaseline | None:
        """The panel's rules with its thresholds; None when the panel has no criteria."""
        spec = resolve_criteria(panel)
        return None if spec is None else cls(spec, panel.feature_names, panel.classes)

    @property
    def thresholds(self) -> dict[str, float]:
        """Marker name -> threshold in the panel's unit."""
        return {k: float(m["threshold"]) for k, m in self.spec["markers"].items()}

    def fit(self, *args: object, **kwargs: object) -> CriteriaBaseline:
        """Rules are not fitted; present for a uniform interface."""
        return self

    def _values(self, values: np.ndarray) -> np.ndarray:
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if values.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected {len(self.feature_names)} lab columns, got {values.shape[1]}"
            )
        return values

    def markers(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Marker name -> [n] bool: the lab passes the marker's threshold (missing: False)."""
        values = self._values(values)
        out = {}
        with np.errstate(invalid="ignore"):
            for name, m in self.spec["markers"].items():
                col = values[:, self.feature_names.index(m["feature"])]
                out[name] = _OPS[m["op"]](col, float(m["threshold"])) & np.isfinite(col)
        return out

    @staticmethod
    def _met(item: dict, m: dict[str, np.ndarray], n: int) -> np.ndarray:
        if "all" in item:
            return np.logical_and.reduce([m[k] for k in item["all"]] + [np.ones(n, bool)])
        return np.logical_or.reduce([m[k] for k in item["any"]] + [np.zeros(n, bool)])

    def score(self, name: str, values: np.ndarray) -> np.ndarray:
        """Points of score ``name`` per case (each domain: the points of its first item met)."""
        m = self.markers(values)
        n = len(self._values(values))
        total = np.zeros(n)
        for domain in self.spec["scores"][name]["domains"]:
            got = np.zeros(n)
            for item in reversed(domain):  # the first item met wins
                got = np.where(self._met(item, m, n), float(item["points"]), got)
            total += got
        return total

    def predict(self, values: np.ndarray) -> np.ndarray:
        """Class names [n] from the rules, applied in order."""
        values = self._values(values)
        m = self.markers(values)
        n = len(values)
        out = np.full(n, self.spec["default"], dtype=object)
        decided = np.zeros(n, bool)
        for rule in self.spec["rules"]:
            hold = np.ones(n, bool)
            for cond in rule["all"]:
                if isinstance(cond, str):
                    hold &= m[cond]
                else:
                    hold &= self.score(cond["score"], values) >= float(cond["at_least"])
            fire = hold & ~decided
            out[fire] = rule["class"]
            decided |= fire
        return out.astype(str)

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        """Smoothed one-hot [n, C]: 1 - eps on the rule's class, eps shared by the others."""
        names = self.predict(values)
        c = len(self.classes)
        idx = np.array([self.classes.index(n) for n in names], dtype=np.int64)
        p = np.full((idx.size, c), CRITERIA_SMOOTHING / (c - 1))
        p[np.arange(idx.size), idx] = 1.0 - CRITERIA_SMOOTHING
        return p

    def predict_risk(self, values: np.ndarray) -> np.ndarray:
        """Number of the panel's ``risk_markers`` present, as a float risk score."""
        values = self._values(values)
        m = self.markers(values)
        n = len(values)
        risk = np.zeros(n)
        for rm in self.spec.get("risk_markers", []):
            risk += self._met({"any": rm["any"]}, m, n).astype(float)
        return risk

    def outputs(self, inputs: BaselineInputs) -> ModelOutputs:
        """Rule probabilities and the risk-marker count on ``inputs.values``."""
        notes = ["rule baseline: class from the panel's published criteria"]
        if self.spec.get("risk_markers"):
            notes.append("risk is a count of the panel's risk markers (c-index only)")
        risk = self.predict_risk(inputs.values) if self.spec.get("risk_markers") else None
        return ModelOutputs(self.predict_proba(inputs.values), risk, None, notes)

    def to_dict(self) -> dict:
        return {
            "kind": self.name,
            "feature_names": self.feature_names,
            "classes": self.classes,
            "spec": self.spec,
            "smoothing": CRITERIA_SMOOTHING,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CriteriaBaseline:
        if "spec" not in d:
            raise ValueError("stored without its rules (an older bundle): retrain")
        return cls(d["spec"], d["feature_names"], d["classes"])


# --------------------------------------------------------------------------------------
# oracle baseline

TRUTH_EXCLUDE = {
    "case_id",
    "diagnosis",
    "label",
    "class",
    "class_index",
    "split",
    "event",
    "time",
    # latent serology states: no modality shows them, the measured labs stand for them
    "autoimmune",
    "complement_low",
}
# ``true_*``: the noise-free versions of what is measured (serology) and the true log-hazard;
# event and censoring times are outcomes. With them the oracle would read the answer instead
# of showing the ceiling of a perfect image reading plus the observed labs.
TRUTH_EXCLUDE_PREFIXES = ("true_", "latent_", "mask_")  # mask_*: file paths, not readings
TRUTH_EXCLUDE_PARTS = ("diagnos", "label", "event_time", "censor")


def truth_feature_columns(truth: pd.DataFrame) -> list[str]:
    """Numeric latent-truth columns usable as oracle inputs (labels and outcomes excluded)."""
    cols = []
    for name in truth.columns:
        low = str(name).lower()
        if (
            low in TRUTH_EXCLUDE
            or low.startswith(TRUTH_EXCLUDE_PREFIXES)
            or any(part in low for part in TRUTH_EXCLUDE_PARTS)
        ):
            continue
        if pd.api.types.is_numeric_dtype(truth[name]) or pd.api.types.is_bool_dtype(truth[name]):
            cols.append(str(name))
    return cols


class OracleBaseline:
    """Logistic regression + Cox PH on the generator's latent truth plus encoded serology.

    The latent truth is what a perfect reading of the image would give (per-region lesion
    counts and volumes, atrophy) and demographics; see :func:`truth_feature_columns` for what
    is left out and why.

    Skewed non-negative truth columns (counts, volumes: 99th percentile > 20) enter as
    ``log1p``; the choice is made on the training truth and stored.
    """

    name = "oracle"

    def __init__(self, n_classes: int | None = None, C: float = 1.0, penalizer: float = 0.1):
        self.n_classes = n_classes
        self.C = C
        self.penalizer = penalizer
        self.truth_columns: list[str] = []
        self.log_columns: list[str] = []
        self.models: _LinearModels | None = None

    def _inputs(self, truth: pd.DataFrame, X_encoded: np.ndarray) -> np.ndarray:
        absent = [c for c in self.truth_columns if c not in truth.columns]
        if absent:
            raise ValueError(f"truth table lacks the oracle's columns: {', '.join(absent[:5])}")
        t = truth[self.truth_columns].astype(np.float64).to_numpy()
        for j, c in enumerate(self.truth_columns):
            if c in self.log_columns:
                t[:, j] = np.log1p(np.maximum(t[:, j], 0.0))
        return np.hstack([t, np.asarray(X_encoded, dtype=np.float64)])

    def fit(
        self,
        truth: pd.DataFrame,
        X_encoded: np.ndarray,
        labels: np.ndarray,
        times: np.ndarray,
        events: np.ndarray,
    ) -> OracleBaseline:
        """Fit on the training cohort's truth table (rows aligned with ``X_encoded``)."""
        self.truth_columns = truth_feature_columns(truth)
        if not self.truth_columns:
            raise ValueError("truth table has no numeric latent columns")
        self.log_columns = []
        for c in self.truth_columns:
            v = truth[c].astype(np.float64).to_numpy()
            v = v[np.isfinite(v)]
            if v.size and v.min() >= 0 and np.quantile(v, 0.99) > 20:
                self.log_columns.append(c)
        labels = np.asarray(labels).astype(np.int64)
        n_classes = self.n_classes if self.n_classes is not None else int(labels.max()) + 1
        self.n_classes = n_classes
        self.models = _LinearModels(n_classes, self.C, self.penalizer).fit(
            self._inputs(truth, X_encoded), labels, times, events
        )
        return self

    def _fitted(self) -> _LinearModels:
        if self.models is None:
            raise RuntimeError("baseline is not fitted")
        return self.models

    def predict_proba(self, truth: pd.DataFrame, X_encoded: np.ndarray) -> np.ndarray:
        return self._fitted().predict_proba(self._inputs(truth, X_encoded))

    def predict_risk(self, truth: pd.DataFrame, X_encoded: np.ndarray) -> np.ndarray:
        return self._fitted().predict_risk(self._inputs(truth, X_encoded))

    @property
    def baseline_hazard(self) -> dict | None:
        return self._fitted().cox_baseline

    def outputs(self, inputs: BaselineInputs) -> ModelOutputs:
        """Probabilities, Cox risk and baseline hazard from the truth table and serology."""
        if inputs.truth is None:
            raise ValueError("no truth.csv beside the manifest")
        return ModelOutputs(
            self.predict_proba(inputs.truth, inputs.encoded),
            self.predict_risk(inputs.truth, inputs.encoded),
            self.baseline_hazard,
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.name,
            "truth_columns": self.truth_columns,
            "log_columns": self.log_columns,
            **self._fitted().to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> OracleBaseline:
        m = _LinearModels.from_dict(d)
        b = cls(m.n_classes, m.C, m.penalizer)
        b.truth_columns = list(d["truth_columns"])
        b.log_columns = list(d.get("log_columns", []))
        b.models = m
        return b


_KINDS: dict[str, type[SerologyBaseline | CriteriaBaseline | OracleBaseline]] = {
    SerologyBaseline.name: SerologyBaseline,
    CriteriaBaseline.name: CriteriaBaseline,
    OracleBaseline.name: OracleBaseline,
}


def baseline_from_dict(d: dict) -> SerologyBaseline | CriteriaBaseline | OracleBaseline:
    """Rebuild any baseline from its ``to_dict()`` (dispatch on ``d["kind"]``)."""
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown baseline kind {kind!r} (one of {', '.join(_KINDS)})")
    return _KINDS[kind].from_dict(d)


Baseline = SerologyBaseline | CriteriaBaseline | OracleBaseline


def fit_baselines(
    panel: Panel,
    inputs: BaselineInputs,
    labels: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
) -> dict[str, Baseline]:
    """Fit every non-network baseline on the training cases; returns name -> baseline.

    ``serology_only`` always, ``criteria`` when the panel has a ``criteria`` section,
    ``oracle`` when the training cohort has a truth table with latent columns. Their
    ``to_dict()`` is what ``train`` stores under ``baselines`` in the bundle.
    """
    n_classes = len(panel.classes)
    out: dict[str, Baseline] = {
        "serology_only": SerologyBaseline(n_classes).fit(inputs.encoded, labels, times, events),
    }
    criteria = CriteriaBaseline.for_panel(panel)
    if criteria is not None:
        out["criteria"] = criteria
    if inputs.truth is not None and truth_feature_columns(inputs.truth):
        out["oracle"] = OracleBaseline(n_classes).fit(
            inputs.truth, inputs.encoded, labels, times, events
        )
    return out


def baseline_outputs(
    baselines: Mapping[str, Baseline | dict], inputs: BaselineInputs, panel: Panel
) -> dict[str, ModelOutputs | dict]:
    """Outputs of every baseline on ``inputs``, or a dict saying why there are none.

    ``baselines`` holds fitted baselines or their stored ``to_dict()`` form (a bundle's). A
    bundle whose ``criteria`` entry is missing or stored without rules gets the panel's rules
    (none when the panel publishes none: the baseline is then absent, not an error);
    ``serology_only`` missing is reported as not stored.
    """
    fitted: dict[str, Baseline] = {}
    for name, b in baselines.items():
        if name == "criteria" and isinstance(b, Mapping) and "spec" not in b:
            continue  # an older bundle's rules: the panel's are used below
        fitted[name] = baseline_from_dict(b) if isinstance(b, Mapping) else b
    panel_rules = CriteriaBaseline.for_panel(panel)
    if "criteria" not in fitted and panel_rules is not None:
        fitted["criteria"] = panel_rules
    out: dict[str, ModelOutputs | dict] = {}
    if "serology_only" not in fitted:
        out["serology_only"] = {"available": False, "reason": "not stored in the bundle"}
    for name, b in fitted.items():
        try:
            out[name] = b.outputs(inputs)
        except ValueError as exc:
            out[name] = {"available": False, "reason": str(exc)}
    return out
