"""Encode parsed lab values for the model: standardised values plus missingness indicators.

The layout is fixed by the panel: for each feature its value column(s) (categorical features
one-hot), then one missing-indicator column per feature. Missing values are imputed at the
training mean (0 after standardisation), so the indicator carries the information that a test
was not done, which is itself informative in clinic data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .panel import Feature, Panel


def _transform_raw(x: np.ndarray, feature: Feature) -> np.ndarray:
    if feature.kind == "titer":
        return np.log10(1.0 + np.maximum(x, 0.0))
    if feature.log:
        return np.log1p(np.maximum(x, 0.0))
    return x


@dataclass
class SerologyEncoder:
    """Fitted on training data; turns (values, missing) matrices into model inputs."""

    panel: Panel
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.panel.features)

    @property
    def columns(self) -> list[str]:
        """Names of the encoded columns, in order."""
        cols: list[str] = []
        for f in self.panel.features:
            if f.kind == "categorical":
                cols += [f"{f.name}={c}" for c in f.categories]
            else:
                cols.append(f.name)
        return cols + [f"{f.name}_missing" for f in self.panel.features]

    @property
    def n_encoded(self) -> int:
        return len(self.columns)

    def feature_columns(self) -> dict[str, list[int]]:
        """Encoded column indices of each feature (values and its missing indicator)."""
        out: dict[str, list[int]] = {}
        i = 0
        for f in self.panel.features:
            width = len(f.categories) if f.kind == "categorical" else 1
            out[f.name] = list(range(i, i + width))
            i += width
        for j, f in enumerate(self.panel.features):
            out[f.name].append(i + j)
        return out

    def fit(self, values: np.ndarray, missing: np.ndarray) -> SerologyEncoder:
        """Learn per-feature mean and spread of the transformed, observed values."""
        values = np.asarray(values, dtype=np.float64)
        missing = np.asarray(missing, dtype=bool)
        for j, f in enumerate(self.panel.features):
            if f.kind in ("binary", "categorical"):
                continue
            obs = _transform_raw(values[~missing[:, j], j], f)
            mean = float(np.mean(obs)) if obs.size else 0.0
            std = float(np.std(obs)) if obs.size > 1 else 1.0
            self.means[f.name] = mean
            self.stds[f.name] = std if std > 1e-6 else 1.0
        return self

    def transform(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Encode an [n, features] value matrix and its missing mask as float32 [n, n_encoded]."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        missing = np.atleast_2d(np.asarray(missing, dtype=bool)) | ~np.isfinite(values)
        n = values.shape[0]
        blocks: list[np.ndarray] = []
        for j, f in enumerate(self.panel.features):
            col = values[:, j]
            obs = ~missing[:, j]
            if f.kind == "categorical":
                onehot = np.zeros((n, len(f.categories)))
                idx = np.where(obs, col, 0).astype(int)
                onehot[np.arange(n)[obs], idx[obs]] = 1.0
                blocks.append(onehot)
                continue
            if f.kind == "binary":
                enc = np.where(obs, col, 0.0)
            else:
                mean = self.means.get(f.name, 0.0)
                std = self.stds.get(f.name, 1.0)
                enc = np.where(obs, (_transform_raw(np.where(obs, col, 0.0), f) - mean) / std, 0.0)
            blocks.append(enc[:, None])
        blocks.append(missing.astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"panel": self.panel.name, "means": self.means, "stds": self.stds}

    @classmethod
    def from_dict(cls, data: dict, panel: Panel) -> SerologyEncoder:
        if data.get("panel") not in (None, panel.name):
            raise ValueError(
                f"encoder was fitted for panel {data.get('panel')!r}, not {panel.name!r}"
            )
        return cls(panel, dict(data.get("means", {})), dict(data.get("stds", {})))
