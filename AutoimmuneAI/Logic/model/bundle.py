"""Model bundles: a MONAI-bundle directory that holds everything a prediction needs.

Layout::

    configs/metadata.json     MONAI metadata fields + classes, panel, preprocessing,
                              calibration, conformal threshold, baseline hazard, risk cut-offs,
                              baselines, training summary, SHA-256 of every weight file
    models/model.safetensors  the fused network (safetensors: loading runs no code)
    models/image_only.safetensors
    docs/README.md            model card (research use only)

Loading trusts nothing: the metadata must be JSON, every weight file must match its recorded
SHA-256 and parse as safetensors (a pickle is refused, never unpickled), the weights must fit
the recorded network, and when the caller names a panel it must match the bundle's.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import monai
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .. import __version__
from ..atomic import json_safe, write_bytes, write_text
from ..data.panel import Panel, load_panel, panel_from_dict
from ..data.serology import SerologyEncoder
from ..errors import BundleError
from ..preprocess.pipeline import preprocessing_from_dict
from ..preprocess.stage import Preprocessing
from ..stats.conformal import ConformalPredictor
from ..stats.survival import baseline_to_dict, hazard_from_dict
from .fusion import FusionModel, ModelConfig

METADATA = Path("configs") / "metadata.json"
MODEL_FILE = "models/model.safetensors"
IMAGE_ONLY_FILE = "models/image_only.safetensors"
MODEL_CARD = Path("docs") / "README.md"
BUNDLE_FORMAT = 1
MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20240725.json"
)


@dataclass
class Bundle:
    """A loaded, verified bundle; networks are in eval mode on the CPU."""

    path: Path
    panel: Panel
    grid: Preprocessing  # ModelGrid or the clinical-scan Preprocessor
    encoder: SerologyEncoder
    model: FusionModel
    image_only: FusionModel | None
    temperature: float
    conformal: ConformalPredictor
    baseline_hazard: tuple[np.ndarray, np.ndarray]  # (event times, cumulative baseline hazard)
    risk_cutoffs: tuple[float, float]
    baselines: dict[str, dict] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    image_only_temperature: float = 1.0
    image_only_baseline_hazard: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.panel.classes)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_bytes(model: FusionModel) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt", "config": json.dumps(model.config.to_dict())})


def _hazard_dict(baseline: tuple[np.ndarray, np.ndarray] | None) -> dict | None:
    return None if baseline is None else baseline_to_dict(baseline)


def network_data_format(panel: Panel, grid: Preprocessing, encoder: SerologyEncoder) -> dict:
    """MONAI's ``network_data_format`` for the two inputs and the two outputs."""
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": len(panel.channels),
                "spatial_shape": list(grid.shape),
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {str(i): c for i, c in enumerate(panel.channels)},
                "preprocessing": "ModelGrid: RAS, foreground-centred, foreground z-score",
            },
            "serology": {
                "type": "tabular",
                "format": "encoded lab values then missing indicators",
                "num_channels": encoder.n_encoded,
                "spatial_shape": [encoder.n_encoded],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {str(i): c for i, c in enumerate(encoder.columns)},
            },
        },
        "outputs": {
            "logits": {
                "type": "probabilities",
                "format": "logits (softmax of logits / temperature gives probabilities)",
                "num_channels": len(panel.classes),
                "spatial_shape": [len(panel.classes)],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {str(i): c for i, c in enumerate(panel.classes)},
            },
            "log_hazard": {
                "type": "risk",
                "format": "Cox log-hazard (higher: earlier progression)",
                "num_channels": 1,
                "spatial_shape": [1],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {"0": "log_hazard"},
            },
        },
    }


def save_bundle(
    out_dir: str | Path,
    *,
    panel: Panel,
    grid: Preprocessing,
    encoder: SerologyEncoder,
    model: FusionModel,
    image_only: FusionModel | None,
    temperature: float,
    conformal: ConformalPredictor,
    baseline_hazard: tuple[np.ndarray, np.ndarray],
    risk_cutoffs: tuple[float, float],
    baselines: dict[str, dict] | None = None,
    training: dict | None = None,
    image_only_temperature: float = 1.0,
    image_only_baseline_hazard: tuple[np.ndarray, np.ndarray] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a bundle folder (weights first, metadata last, each file atomically)."""
    out = Path(out_dir)
    weights: dict[str, str] = {}
    files = {MODEL_FILE: model}
    if image_only is not None:
        files[IMAGE_ONLY_FILE] = image_only
    for rel, net in files.items():
        data = _weights_bytes(net)
        write_bytes(out / rel, data)
        weights[rel] = hashlib.sha256(data).hexdigest()
    training = training or {}
    meta = {
        "schema": MONAI_SCHEMA,
        "version": __version__,
        "changelog": {__version__: "trained with autoimmuneai train"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"autoimmuneai": __version__},
        "required_packages_version": {"safetensors": _version("safetensors")},
        "name": f"AutoimmuneAI {panel.title}",
        "task": f"Differential diagnosis ({', '.join(panel.classes)}) and progression risk "
        "from MRI and serology",
        "description": "MONAI image encoder + serology MLP with "
        f"{model.config.fusion} fusion; diagnosis head and Cox risk head "
        f"({model.config.risk}).",
        "authors": "AutoimmuneAI contributors",
        "copyright": "AutoimmuneAI contributors, Apache-2.0",
        "intended_use": "Research only. Not for clinical decisions.",
        "data_source": training.get("cohort", ""),
        "data_type": "nibabel / SimpleITK volumes + lab values",
        "network_data_format": network_data_format(panel, grid, encoder),
        "bundle_format": BUNDLE_FORMAT,
        "classes": list(panel.classes),
        "panel": _panel_json(panel),
        "preprocessing": {"grid": grid.to_dict(), "serology_encoder": encoder.to_dict()},
        "model": {"file": MODEL_FILE, "config": model.config.to_dict()},
        "image_only": (
            {
                "file": IMAGE_ONLY_FILE,
                "config": image_only.config.to_dict(),
                "temperature": float(image_only_temperature),
                "baseline_hazard": _hazard_dict(image_only_baseline_hazard),
            }
            if image_only is not None
            else None
        ),
        "temperature": float(temperature),
        "conformal": conformal.to_dict(),
        "baseline_hazard": _hazard_dict(baseline_hazard),
        "risk_cutoffs": [float(risk_cutoffs[0]), float(risk_cutoffs[1])],
        "baselines": baselines or {},
        "training": training,
        "weights": {rel: {"sha256": digest} for rel, digest in weights.items()},
        "environment": {"python": platform.python_version()},
        **(extra or {}),
    }
    meta = json_safe(meta)
    write_text(out / MODEL_CARD, model_card(meta))
    write_text(out / METADATA, json.dumps(meta, indent=1, allow_nan=False) + "\n")
    return out


def _panel_json(panel: Panel) -> dict:
    """The panel's full JSON (read from its file, so the bundle can rebuild it exactly)."""
    try:
        data = panel.to_dict()
    except OSError:
        data = {}
    if not data:
        raise ValueError(f"panel {panel.name!r} has no readable source JSON to store in a bundle")
    return data


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return ""


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def _raps_pair(conf: dict) -> str:
    """The RAPS penalty pair for the model card, and where it came from ("" for APS)."""
    lam, k_reg = conf.get("lam"), conf.get("k_reg")
    if conf.get("n_tuning"):
        return f" (lam {lam} and k_reg {k_reg} chosen on {conf.get('n_tuning')} other validation cases)"
    return f" (lam {lam}, k_reg {k_reg})" if conf.get("method") == "raps" else ""


def model_card(meta: dict) -> str:
    """The bundle's ``docs/README.md``: intended use, data, metrics with baselines, limits."""
    tr = meta.get("training", {}) or {}
    counts = tr.get("n_cases", {})
    lines = [
        f"# {meta['name']}",
        "",
        "## Intended use",
        "",
        "**Research only. Not a medical device; not for clinical decisions.** It ranks a",
        f"differential diagnosis over {', '.join(meta['classes'])} from one MRI and a serology",
        "panel, with calibrated probabilities, a conformal prediction set and a progression",
        "risk. Outputs must be checked by a clinician and are only meaningful on data like the",
        "training data (the bundle warns on out-of-distribution inputs).",
        "",
        "## Model",
        "",
        f"{meta['description']} Image grid {meta['preprocessing']['grid']['shape']} at "
        f"{meta['preprocessing']['grid']['spacing']} mm; {len(meta['panel'].get('features', []))} "
        "lab features (values + missing indicators).",
        "",
        "## Training data",
        "",
        f"Cohort: `{tr.get('cohort', '?')}`; cases train {counts.get('train', '?')}, "
        f"validation {counts.get('val', '?')}, held-out test {counts.get('test', '?')} "
        f"(splits: {tr.get('split_source', '?')}). Class counts (train): "
        f"{tr.get('class_counts', {})}.",
        "",
        "## Validation metrics (with baselines)",
        "",
        "| model | balanced accuracy | macro AUROC | ECE | c-index |",
        "|---|---|---|---|---|",
    ]
    for name, m in (tr.get("validation") or {}).items():
        if not isinstance(m, dict):
            continue
        lines.append(
            f"| {name} | {_fmt(m.get('balanced_accuracy'))} | {_fmt(m.get('macro_auroc'))} | "
            f"{_fmt(m.get('ece'))} | {_fmt(m.get('c_index'))} |"
        )
    cal = tr.get("calibration", {})
    conf = meta.get("conformal", {})
    lines += [
        "",
        f"Temperature {_fmt(meta.get('temperature'))}: validation ECE "
        f"{_fmt(cal.get('ece_before'))} before, {_fmt(cal.get('ece_after'))} after scaling.",
        f"Conformal sets: {str(conf.get('method', '')).upper()}, alpha {conf.get('alpha')}, "
        f"class-conditional {conf.get('class_conditional')}, {conf.get('n_calibration')} "
        f"calibration cases{_raps_pair(conf)}. Guarantee: {conf.get('guarantee') or 'marginal'}. "
        "Metrics on the held-out test split come from `autoimmuneai evaluate`.",
    ]
    check = cal.get("temperature_check") or {}
    if check:
        lines += [
            "",
            f"Temperature check on {check.get('folds')} folds of the validation cases: held-out "
            f"log loss {_fmt(check.get('heldout_nll_identity'))} with T = 1, "
            f"{_fmt(check.get('heldout_nll_fitted'))} with the fitted "
            f"{check.get('map', 'temperature')} map "
            f"({check.get('reason', '')}).",
        ]
    groups = tr.get("risk_groups") or {}
    if groups:
        lines += [
            "",
            f"Risk groups: {groups.get('n_groups')} ({groups.get('reason', '')}); cut-offs "
            f"{', '.join(_fmt(c) for c in groups.get('cutoffs', []))} on the log-hazard.",
        ]
    cv = tr.get("cross_validation")
    if cv:
        lines += [
            "",
            f"Cross-validation ({cv.get('folds')} folds, fused model): balanced accuracy "
            f"{_fmt(cv.get('balanced_accuracy_mean'))} +/- {_fmt(cv.get('balanced_accuracy_std'))}, "
            f"macro AUROC {_fmt(cv.get('macro_auroc_mean'))}, c-index {_fmt(cv.get('c_index_mean'))}.",
        ]
    lines += [
        "",
        "## Limitations",
        "",
        "- Validated only on the cohort above; synthetic demo cohorts are not patients.",
        "- Calibration and conformal coverage hold for data exchangeable with the validation",
        "  split; they do not transfer to another scanner, protocol or population unchecked.",
        "- Risk groups are tertiles (or the median) of the training risk, not clinical thresholds.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def _read_metadata(root: Path) -> dict:
    path = root / METADATA
    if not path.is_file():
        raise BundleError("not a model bundle (configs/metadata.json is missing)", file=root)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"metadata is not valid JSON ({exc.__class__.__name__})", file=path
        ) from None
    if not isinstance(meta, dict):
        raise BundleError("metadata is not a JSON object", file=path)
    missing = [
        k
        for k in ("bundle_format", "panel", "preprocessing", "model", "weights", "conformal")
        if k not in meta
    ]
    if missing:
        raise BundleError(f"metadata lacks {', '.join(missing)}", file=path)
    if meta["bundle_format"] != BUNDLE_FORMAT:
        raise BundleError(f"unsupported bundle format {meta['bundle_format']!r}", file=path)
    return meta


def _verified_weights(root: Path, rel: str, meta: dict) -> dict[str, torch.Tensor]:
    """Tensors of weight file ``rel`` after checking its place, its SHA-256 and its format."""
    recorded = (meta.get("weights") or {}).get(rel)
    digest = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not digest:
        raise BundleError(f"no checksum recorded for {rel}", file=root / METADATA)
    path = (root / rel).resolve()
    if Path(rel).is_absolute() or root.resolve() not in path.parents:
        raise BundleError(f"weight file {rel!r} lies outside the bundle", file=root / METADATA)
    if not path.is_file():
        raise BundleError("weight file is missing", file=root / rel)
    if sha256_file(path) != digest:
        raise BundleError("weight file does not match its SHA-256 (modified or damaged)", file=path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"weight file is not a safetensors file ({exc.__class__.__name__}); refused",
            file=path,
        ) from None


def _network(root: Path, entry: dict, meta: dict) -> FusionModel:
    rel = str(entry.get("file", ""))
    tensors = _verified_weights(root, rel, meta)
    try:
        model = FusionModel(ModelConfig.from_dict(entry["config"]))
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise BundleError(
            f"weights do not fit the recorded network: {reason}", file=root / rel
        ) from None
    return model.eval()


def panel_differences(bundle_panel: Panel, panel: Panel) -> list[str]:
    """What makes ``panel`` incompatible with the bundle's (empty when compatible)."""
    diffs = []
    if tuple(bundle_panel.classes) != tuple(panel.classes):
        diffs.append(f"classes {list(panel.classes)} vs bundle {list(bundle_panel.classes)}")
    if tuple(bundle_panel.channels) != tuple(panel.channels):
        diffs.append(f"channels {list(panel.channels)} vs bundle {list(bundle_panel.channels)}")

    def sig(p: Panel) -> list[tuple]:
        return [(f.name, f.kind, f.unit, tuple(f.categories)) for f in p.features]

    if sig(bundle_panel) != sig(panel):
        theirs = {s[0]: s for s in sig(panel)}
        ours = {s[0]: s for s in sig(bundle_panel)}
        changed = sorted(n for n in set(theirs) | set(ours) if theirs.get(n) != ours.get(n))
        diffs.append(f"features differ ({', '.join(changed) or 'order'})")
    return diffs


def load_bundle(path: str | Path, *, panel: Panel | str | Path | None = None) -> Bundle:
    """Load and verify a bundle; refuse anything tampered, malformed or mismatched (BundleError)."""
    root = Path(path)
    meta = _read_metadata(root)
    where = root / METADATA
    try:
        bundle_panel = panel_from_dict(meta["panel"], source=f"{root}:panel")
        grid = preprocessing_from_dict(meta["preprocessing"]["grid"])
        encoder = SerologyEncoder.from_dict(meta["preprocessing"]["serology_encoder"], bundle_panel)
        conformal = ConformalPredictor.from_dict(meta["conformal"])
        temperature = float(meta["temperature"])
        cutoffs = tuple(float(c) for c in meta["risk_cutoffs"])
        hazard = hazard_from_dict(meta["baseline_hazard"]) or (np.zeros(0), np.zeros(0))
    except BundleError:
        raise
    except Exception as exc:  # malformed content of a JSON file: one line, no traceback
        raise BundleError(f"metadata is malformed: {exc!r}"[:300], file=where) from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise BundleError(f"temperature {temperature} is not positive", file=where)
    if panel is not None:
        wanted = panel if isinstance(panel, Panel) else load_panel(panel)
        diffs = panel_differences(bundle_panel, wanted)
        if diffs:
            raise BundleError(
                f"bundle was trained for panel {bundle_panel.name!r}, which does not match "
                f"panel {wanted.name!r}: {'; '.join(diffs)}",
                file=root,
            )
    model = _network(root, meta["model"], meta)
    if model.config.n_classes != len(bundle_panel.classes) or (
        model.config.use_serology and model.config.n_serology != encoder.n_encoded
    ):
        raise BundleError("network inputs/outputs do not match the panel", file=where)
    io_entry = meta.get("image_only")
    image_only = _network(root, io_entry, meta) if io_entry else None
    return Bundle(
        path=root,
        panel=bundle_panel,
        grid=grid,
        encoder=encoder,
        model=model,
        image_only=image_only,
        temperature=temperature,
        conformal=conformal,
        baseline_hazard=hazard,
        risk_cutoffs=(cutoffs[0], cutoffs[1]),
        baselines=dict(meta.get("baselines") or {}),
        metadata=meta,
        image_only_temperature=float(io_entry.get("temperature", 1.0)) if io_entry else 1.0,
        image_only_baseline_hazard=hazard_from_dict(io_entry.get("baseline_hazard"))
        if io_entry
        else None,
    )
