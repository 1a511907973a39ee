"""The HTML report: one self-contained file (inline CSS, images as data URIs, no links out).

The page is the Jinja2 template ``templates/report.html.j2`` rendered with autoescaping, from
a view of the metrics in which every key has a human label (no raw keys, no Python reprs).

``build_report`` reads saved results only (it never trains or predicts), so
``autoimmuneai report --eval DIR`` rebuilds the same page later. It accepts a demo folder
(``evaluation/``, ``cases/``, ``cohort/``, ``bundle/`` inside) or a plain ``evaluate``
folder. Every number the page shows is gathered in one dictionary first and written to
``metrics.json`` beside the report (the evaluation's own metrics plus the report's
sections), and the page is rendered from that dictionary, so the two cannot disagree.
Every figure is also saved as a PNG under ``figures/``.

Privacy: the only identifier shown is the case id used in the saved outputs (already
pseudonymised when ``predict --hash-ids`` was used); the manifest is read for its
``diagnosis``, ``split``, ``event_time`` and ``event`` columns only.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from .. import __version__
from ..atomic import json_safe, write_bytes, write_text
from ..data.cohort import case_id_slug
from ..errors import InputError

log = logging.getLogger(__name__)

BASELINES = ("image_only", "serology_only", "criteria", "oracle")
MODEL_LABELS = {
    "fused": "Fused (MRI + serology)",
    "image_only": "Image only",
    "serology_only": "Serology only",
    "criteria": "Published criteria (rules)",
    "oracle": "Oracle (latent truth, ceiling)",
}
COMPARISON_COLUMNS = (
    ("diagnosis", "balanced_accuracy", "Balanced accuracy"),
    ("diagnosis", "macro_auroc", "Macro AUROC"),
    ("diagnosis", "ece", "ECE"),
    ("progression", "c_index", "C-index"),
    ("progression", "integrated_brier_score", "Integrated Brier score"),
)
# Evaluation figures by what they show: (key, title, words in the PNG file name).
EVAL_FIGURES = (
    ("roc", "ROC curves (one-vs-rest, test split)", ("roc",)),
    ("reliability", "Reliability diagram (calibrated probabilities)", ("reliab", "calibration")),
    ("confusion", "Confusion matrix (test split)", ("confusion",)),
    ("km", "Kaplan-Meier curves by predicted risk group", ("km", "kaplan", "survival")),
    ("set_sizes", "Conformal prediction-set sizes", ("set_size", "conformal")),
)
# Explanation-quality figures shown per method, in this order, when present.
QUALITY_COLUMNS = {
    "relevance_mass_accuracy": "Relevance mass accuracy",
    "lesion_volume_fraction": "Lesion-volume fraction (random map)",
    "rma_over_lesion_fraction": "RMA / lesion fraction",
    "pointing_game": "Pointing game",
    "randomisation_spearman": "Randomisation Spearman",
    "deletion_auc": "Deletion area (probability)",
    "random_deletion_auc": "Random-order deletion area (probability)",
    "deletion_excess_auc": "Image evidence left, deletion",
    "random_deletion_excess_auc": "Image evidence left, random order",
    "deletion_over_random": "Deletion / random (image evidence)",
    "deletion_over_random_raw": "Deletion / random (probability)",
    "passes_sanity": "Passes sanity check",
    "seconds_per_case": "Seconds per case",
}
SYNTHETIC_STATEMENT = (
    "All data in this report are synthetic: generated on the MNI152 brain template by "
    "AutoimmuneAI's cohort generator. No patient data were used. The model is for research "
    "only and must not be used for clinical decisions."
)
DIGITS = 3

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{margin-bottom:.3em}
.notice{background:#fff4e5;border-left:5px solid #f0a020;padding:.8em 1em;margin:1em 0}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;
padding:.3em .6em;text-align:right}th{background:#f3f3f3}td.name,th.name{text-align:left}
tr.fused td{font-weight:600;background:#eef6ff}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 320px;max-width:520px}
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.case{border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:1.2em 0}
.set{font-weight:600;color:#0b5394}.warn{color:#a61c00}.small{font-size:.85em;color:#666}
.scroll{overflow-x:auto;max-width:100%}th{white-space:normal;max-width:14em}
td.note{font-size:.9em;max-width:28em}.right,tr.met td.verdict{color:#1e7b34;font-weight:600}
.wrong,tr.missed td.verdict{color:#a61c00;font-weight:600}tr.unknown td.verdict{color:#8a6d00}
"""


@dataclass
class Sources:
    """Where the saved results of one run are."""

    root: Path
    eval_dir: Path
    cases_dir: Path | None = None
    manifest: Path | None = None
    bundle_dir: Path | None = None
    stages: Path | None = None


@dataclass
class Figure:
    key: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class CaseView:
    case_id: str
    numbers: dict
    figures: list[Figure] = field(default_factory=list)


def find_sources(folder: str | Path) -> Sources:
    """Recognise a demo folder or an ``evaluate`` output folder."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("results folder not found (expected a demo or evaluate folder)", file=root)
    if (root / "evaluation" / "metrics.json").is_file():
        eval_dir = root / "evaluation"
    elif (root / "metrics.json").is_file() and _load_json(root / "metrics.json").get("diagnosis"):
        eval_dir = root
    else:
        raise InputError(
            "holds no evaluation results (evaluation/metrics.json or metrics.json from "
            "'autoimmuneai evaluate')",
            file=root,
        )
    cases = root / "cases"
    manifest = root / "cohort" / "manifest.csv"
    if not manifest.is_file():  # an evaluate folder: the cohort it was run on, if still there
        recorded = _load_json(eval_dir / "metrics.json").get("cohort")
        manifest = Path(recorded) if isinstance(recorded, str) and recorded else manifest
    bundle = root / "bundle"
    stages = root / "stages.json"
    return Sources(
        root=root,
        eval_dir=eval_dir,
        cases_dir=cases if cases.is_dir() else None,
        manifest=manifest if manifest.is_file() else None,
        bundle_dir=bundle if (bundle / "configs" / "metadata.json").is_file() else None,
        stages=stages if stages.is_file() else None,
    )


def build_report(eval_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default: inside ``eval_dir``), ``metrics.json`` and ``figures/``.

    Returns the report's path. The page is built from saved results only.
    """
    sources = find_sources(eval_dir)
    out = Path(out) if out is not None else sources.root / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html"
    metrics = collect_metrics(sources)
    figures = evaluation_figures(sources, metrics)
    cases = case_views(sources)
    metrics["explained_cases"] = {c.case_id: c.numbers for c in cases}
    metrics["report_figures"] = [f"figures/{f.key}.png" for f in figures] + [
        f"figures/{f.key}.png" for c in cases for f in c.figures
    ]
    metrics = json_safe(metrics)
    page = render_html(metrics, figures, cases)
    fig_dir = out.parent / "figures"
    _remove_stale_figures(out.parent, set(metrics["report_figures"]))
    for fig in [*figures, *(f for c in cases for f in c.figures)]:
        write_bytes(fig_dir / f"{fig.key}.png", fig.png)
    write_text(out.parent / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    write_text(out, page)
    log.info("report: %s (%d figures)", out, len(metrics["report_figures"]))
    return out


def _remove_stale_figures(folder: Path, keep: set[str]) -> None:
    """Delete figures an earlier report wrote (listed in its metrics.json) and no longer uses.

    Only those: the folder may also hold the evaluation's own figures.
    """
    previous = folder / "metrics.json"
    if not previous.is_file():
        return
    try:
        listed = json.loads(previous.read_text(encoding="utf-8")).get("report_figures") or []
    except (OSError, ValueError, AttributeError):
        return
    for rel in listed:
        if isinstance(rel, str) and rel not in keep and rel.startswith("figures/"):
            (folder / rel).unlink(missing_ok=True)


# --------------------------------------------------------------------------- numbers


def collect_metrics(sources: Sources) -> dict:
    """The evaluation's metrics plus the report's own sections (cohort, quality, run)."""
    metrics = _load_json(sources.eval_dir / "metrics.json")
    for key in ("explained_cases", "report_figures", "report", "cohort_summary"):
        metrics.pop(key, None)  # rebuilt below (a merged metrics.json from an earlier run)
    metrics["report"] = {
        "synthetic_data": _is_synthetic(sources),
        "autoimmuneai_version": __version__,
    }
    metrics["cohort_summary"] = cohort_summary(sources, metrics)
    quality = sources.eval_dir / "explain_quality.json"
    if quality.is_file():
        metrics["explanation_quality"] = _load_json(quality)
    if sources.stages is not None:
        metrics["demo_run"] = demo_run_summary(_load_json(sources.stages))
    return metrics


def demo_run_summary(stages: dict) -> dict:
    """The demo's ``stages.json`` as ``metrics.json`` keeps it: settings, and each stage's time
    and peak memory (also called by the demo once the report stage itself has finished)."""
    return {
        "config": stages.get("config", {}),
        "total_seconds": stages.get("total_seconds"),
        "stages": {
            name: {k: v for k, v in s.items() if k in ("seconds", "peak_rss_mb")}
            for name, s in stages.get("stages", {}).items()
        },
    }


def _is_synthetic(sources: Sources) -> bool:
    if sources.manifest is not None:
        return (sources.manifest.parent / "truth.csv").is_file()
    return True  # unknown provenance: keep the research-only warning


def cohort_summary(sources: Sources, metrics: dict) -> dict:
    """Cases per class and split, follow-up and events (from the manifest when present)."""
    summary: dict = {
        "evaluated_cases": metrics.get("n_cases"),
        "evaluated_split": metrics.get("split"),
    }
    if sources.manifest is None:
        per_class = metrics.get("diagnosis", {}).get("per_class", {})
        summary["evaluated_per_class"] = {c: v.get("n") for c, v in per_class.items()}
        return summary
    with open(sources.manifest, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    summary["cases"] = len(rows)
    summary["per_class"] = _counts(r.get("diagnosis", "") or "unlabelled" for r in rows)
    if rows and "split" in rows[0]:
        summary["per_split"] = _counts(r.get("split", "") or "unassigned" for r in rows)
    times = [_float(r.get("event_time")) for r in rows]
    events = [_float(r.get("event")) for r in rows]
    follow = [t for t, e in zip(times, events) if t is not None and e is not None]
    summary["with_follow_up"] = len(follow)
    summary["events"] = int(sum(e for e in events if e is not None))
    summary["median_follow_up_months"] = float(np.median(follow)) if follow else None
    return summary


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def _float(value: object) -> float | None:
    try:
        x = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def comparison_rows(metrics: dict) -> list[tuple[str, str, list[float | None]]]:
    """(key, label, values) per model in the order of ``COMPARISON_COLUMNS``."""
    models = [("fused", metrics)]
    baselines = metrics.get("baselines", {}) or {}
    models += [(name, baselines[name]) for name in BASELINES if name in baselines]
    models += [(n, b) for n, b in baselines.items() if n not in BASELINES]
    rows = []
    for name, source in models:
        values = [
            _number(source.get(section, {}).get(key)) for section, key, _ in COMPARISON_COLUMNS
        ]
        rows.append((name, MODEL_LABELS.get(name, name), values))
    return rows


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: object, digits: int = DIGITS) -> str:
    """A number as shown in the report (``n/a`` for missing)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    if value is None:
        return "n/a"
    return str(value)


# --------------------------------------------------------------------------- figures


def evaluation_figures(sources: Sources, metrics: dict) -> list[Figure]:
    """The evaluation's PNGs by kind; the confusion matrix is drawn from the metrics if absent.

    The PNGs are those listed in the evaluation's ``figures`` entry, else every PNG in the
    evaluation folder and its ``figures/`` subfolder.
    """
    listed = metrics.get("figures")
    if isinstance(listed, dict) and listed:
        pngs = [sources.eval_dir / p for p in listed.values() if (sources.eval_dir / p).is_file()]
    else:
        pngs = sorted(sources.eval_dir.glob("*.png")) + sorted(
            (sources.eval_dir / "figures").glob("*.png")
        )
    figures: list[Figure] = []
    used: set[Path] = set()
    for key, title, words in EVAL_FIGURES:
        matches = [p for p in pngs if p not in used and any(w in p.stem.lower() for w in words)]
        for i, path in enumerate(matches):
            used.add(path)
            figures.append(Figure(f"{key}{'' if i == 0 else f'_{i}'}", title, path.read_bytes()))
        if not matches and key == "confusion":
            confusion = metrics.get("diagnosis", {}).get("confusion")
            classes = list(metrics.get("diagnosis", {}).get("per_class", {}))
            if confusion and classes:
                figures.append(Figure(key, title, confusion_png(np.array(confusion), classes)))
    for path in pngs:  # any other evaluation figure (e.g. explanation quality)
        if path not in used:
            figures.append(Figure(case_id_slug(path.stem), _human(path.stem), path.read_bytes()))
    return figures


def _new_figure(width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def confusion_png(matrix: np.ndarray, classes: list[str]) -> bytes:
    """Confusion matrix (rows true, columns predicted) with counts in the cells."""
    from .figures import draw_confusion

    fig = _new_figure(1.1 * len(classes) + 2.8, 1.0 * len(classes) + 2.2)
    draw_confusion(fig.add_subplot(), np.asarray(matrix), classes)
    return _png(fig)


def lab_contribution_png(contributions: list[dict], class_name: str, top: int = 10) -> bytes:
    """Horizontal bars of the signed lab contributions, largest magnitude on top."""
    items = sorted(contributions, key=lambda c: abs(float(c["contribution"])), reverse=True)[:top]
    items = items[::-1]
    fig = _new_figure(5.6, 0.35 * max(3, len(items)) + 1.2)
    ax = fig.add_subplot()
    values = [float(c["contribution"]) for c in items]
    labels = [_lab_label(c) for c in items]
    colours = ["#c0392b" if v > 0 else "#2e86c1" for v in values]
    ax.barh(range(len(items)), values, color=colours)
    ax.set_yticks(range(len(items)), labels)
    ax.axvline(0, color="#444", lw=0.8)
    ax.set_xlabel(f"Contribution to the logit of {class_name}")
    ax.set_title(
        f"Lab values for and against {class_name}\n(red: towards {class_name}, blue: away)",
        fontsize=9,
    )
    return _png(fig)


def _lab_label(item: dict) -> str:
    """'AQP4-IgG = 1:160', 'C3 = 0.62 g/L': the unit only where the value lacks one."""
    value = item.get("value")
    unit = str(item.get("unit") or "")
    if value is None or value == "":
        shown = "missing"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        shown = f"{value:g} {unit}".strip() if unit not in ("titer", "ratio") else f"{value:g}"
    else:
        shown = str(value)
        if _float(shown) is not None and unit not in ("", "titer", "ratio"):
            shown = f"{shown} {unit}"
    return f"{item.get('label') or item.get('feature')} = {shown}"


def survival_png(times: list[float], probability: list[float], risk_group: str) -> bytes:
    """The case's predicted progression-free survival curve."""
    fig = _new_figure(4.6, 3.2)
    ax = fig.add_subplot()
    ax.step(times, probability, where="post", color="#7d3c98")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Months from baseline")
    ax.set_ylabel("Progression-free probability")
    ax.set_title(f"Risk group: {risk_group}", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- cases


def case_views(sources: Sources) -> list[CaseView]:
    """Every explained case under ``cases/``: its numbers and its figures."""
    if sources.cases_dir is None:
        return []
    truth = true_diagnoses(sources)
    views = []
    for pred_path in sorted(sources.cases_dir.glob("*/prediction.json")):
        pred = _load_json(pred_path)
        views.append(case_view(pred, pred_path.parent, truth.get(str(pred.get("case_id")))))
    return views


def true_diagnoses(sources: Sources) -> dict[str, str]:
    """case_id -> the manifest's diagnosis, where one is recorded (pseudonymised ids match
    nothing, so their truth stays unknown)."""
    if sources.manifest is None:
        return {}
    with open(sources.manifest, newline="", encoding="utf-8-sig") as f:
        return {
            r["case_id"]: r["diagnosis"].strip()
            for r in csv.DictReader(f)
            if r.get("case_id") and (r.get("diagnosis") or "").strip()
        }


def case_view(pred: dict, case_dir: Path, truth: str | None = None) -> CaseView:
    """Numbers shown for one case (also written to metrics.json) and its figures.

    ``truth`` is the true diagnosis when known: the page then says whether the most likely
    class was right and whether the prediction set holds the truth.
    """
    case_id = str(pred["case_id"])
    explanation = pred.get("explanation", {})
    numbers = {
        "true_diagnosis": truth,
        "correct": None if truth is None else pred.get("predicted") == truth,
        "true_in_set": None if truth is None else truth in (pred.get("prediction_set") or []),
        "predicted": pred.get("predicted"),
        "probabilities": pred.get("probabilities", {}),
        "prediction_set": pred.get("prediction_set", []),
        "alpha": pred.get("alpha"),
        "coverage": None if pred.get("alpha") is None else 1 - float(pred["alpha"]),
        "risk_score": pred.get("risk_score"),
        "risk_group": pred.get("risk_group"),
        "explained_class": explanation.get("explained_class"),
        "method": explanation.get("method"),
        "modality_share": pred.get("modality_share"),
        "lab_contributions": {
            c.get("feature"): c.get("contribution") for c in pred.get("lab_contributions", [])
        },
        "regions": [
            {k: r.get(k) for k in ("name", "band", "volume_ml", "share")}
            for r in pred.get("regions", [])[:5]
        ],
        "warnings": list(pred.get("warnings", [])),
    }
    key = case_id_slug(case_id)
    figures = []
    snapshot = case_dir / "snapshot.png"
    if snapshot.is_file():
        figures.append(
            Figure(
                f"case_{key}_snapshot",
                "Evidence overlay (axial, coronal, sagittal)",
                snapshot.read_bytes(),
            )
        )
    if pred.get("lab_contributions"):
        target = numbers["explained_class"] or numbers["predicted"]
        figures.append(
            Figure(
                f"case_{key}_labs",
                "Lab-value contributions",
                lab_contribution_png(pred["lab_contributions"], str(target)),
            )
        )
    survival = pred.get("survival") or {}
    if survival.get("times_months"):
        figures.append(
            Figure(
                f"case_{key}_survival",
                "Predicted progression-free survival",
                survival_png(
                    survival["times_months"], survival["probability"], str(pred.get("risk_group"))
                ),
            )
        )
    return CaseView(case_id, numbers, figures)


# --------------------------------------------------------------------------- HTML

TEMPLATE = "report.html.j2"
# Labels for the keys of metrics.json that the page shows (raw keys never reach the page).
CALIBRATION_LABELS = {
    "ece_before_calibration": "ECE before temperature scaling",
    "ece_uncalibrated": "ECE before temperature scaling",
    "ece": "ECE after temperature scaling",
    "temperature": "Temperature",
    "ece_validation_before": "ECE on the calibration cases, before",
    "ece_validation_after": "ECE on the calibration cases, after",
}
CONFORMAL_LABELS = {
    "method": "Score",
    "alpha": "Error rate alpha",
    "target_coverage": "Target coverage",
    "coverage": "Measured coverage",
    "mean_set_size": "Mean set size (classes)",
    "class_conditional": "Class-conditional (each class its own threshold)",
    "class_floor_coverage": "Coverage floor for each class (beside the target coverage)",
    "threshold": "Threshold",
    "n_calibration": "Calibration cases",
    "lam": "RAPS penalty (lambda)",
    "k_reg": "RAPS classes without penalty (k_reg)",
}
CONFORMAL_METHODS = {
    "lac": "LAC (one minus the probability)",
    "raps": "RAPS (regularised adaptive sets)",
    "aps": "APS (adaptive sets)",
}
METHOD_LABELS = {
    "integrated_gradients": "Integrated Gradients",
    "gradient_shap": "GradientShap",
    "gradientshap": "GradientShap",
    "occlusion": "Occlusion",
    "layer_gradcam": "LayerGradCam",
    "layergradcam": "LayerGradCam",
    "saliency": "Saliency",
}
QUALITY_SUMMARY_LABELS = {
    "n_cases": "Cases measured",
    "recommended_default": "Recommended default method",
    "failing_sanity": "Methods failing the sanity check",
}
STAGE_LABELS = {
    "cohort": "Generate the synthetic cohort",
    "train": "Train the fused model and baselines",
    "evaluate": "Evaluate on the test split",
    "quality": "Measure explanation quality",
    "explain": "Explain test cases",
    "report": "Write the report",
}
SETTING_LABELS = {
    "cases": "cases",
    "seed": "seed",
    "full": "full configuration",
    "epochs": "epochs",
    "quality_cases": "explanation-quality cases",
    "quality_methods": "explanation-quality methods",
    "panel": "panel",
    "synth_options": "cohort generator options",
    "train_options": "training options",
}
VERDICTS = {
    True: ("met", "met"),
    False: ("not met", "missed"),
    None: ("too few cases to measure", "unknown"),
}


def render_html(metrics: dict, figures: list[Figure], cases: list[CaseView]) -> str:
    """The whole page from the (cleaned) metrics, evaluation figures and case views.

    A Jinja2 template with autoescaping: every value is escaped; only the figures' data URIs
    (built here from PNG bytes) are marked safe.
    """
    page = {
        "css": Markup(CSS),
        "statement": SYNTHETIC_STATEMENT,
        "synthetic": metrics.get("report", {}).get("synthetic_data", True),
        "version": __version__,
        "cohort_rows": cohort_rows(metrics.get("cohort_summary", {})),
        "comparison": comparison_view(metrics),
        "calibration_rows": calibration_rows(metrics),
        "targets": target_rows(metrics.get("targets")),
        "figures": [_figure_view(f) for f in figures],
        "conformal": conformal_view(metrics.get("conformal") or {}),
        "quality": quality_view(metrics.get("explanation_quality")),
        "cases": [case_page(c, metrics.get("explained_cases", {})) for c in cases],
        "run": run_view(metrics.get("demo_run")),
    }
    return _template().render(**page)


def _template():
    """The page template, shipped as package data beside this module (no network, no cwd)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE)


def _figure_view(fig: Figure) -> dict:
    data = base64.b64encode(fig.png).decode("ascii")
    return {
        "key": fig.key,
        "title": fig.title,
        "caption": fig.caption,
        "src": Markup(f"data:image/png;base64,{data}"),
    }


def _human(key: str) -> str:
    """A fallback label for a key the tables above do not name: ``n_cases`` -> "N cases"."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def cohort_rows(cohort: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, object]] = []
    if "cases" in cohort:
        rows.append(("Cases", cohort["cases"]))
    for name, n in cohort.get("per_class", {}).items():
        rows.append((f"Diagnosis {name}", n))
    for name, n in cohort.get("per_split", {}).items():
        rows.append((f"Split {name}", n))
    if "with_follow_up" in cohort:
        rows.append(("Cases with follow-up", cohort["with_follow_up"]))
        rows.append(("Progression events", cohort["events"]))
        rows.append(("Median follow-up (months)", cohort["median_follow_up_months"]))
    split = cohort.get("evaluated_split")
    label = f"Cases evaluated ({split} split)" if split else "Cases evaluated"
    rows.append((label, cohort.get("evaluated_cases")))
    for name, n in cohort.get("evaluated_per_class", {}).items():
        rows.append((f"Evaluated {name}", n))
    return [(label, fmt(value, 1)) for label, value in rows]


def comparison_view(metrics: dict) -> dict:
    rows = []
    notes = []
    for key, label, values in comparison_rows(metrics):
        cells = [(k, fmt(v)) for (_, k, _), v in zip(COMPARISON_COLUMNS, values)]
        rows.append({"key": key, "label": label, "cells": cells})
    for name, baseline in (metrics.get("baselines") or {}).items():
        reason = baseline.get("reason") if isinstance(baseline, dict) else None
        if reason:
            notes.append(f"{MODEL_LABELS.get(name, _human(name))}: {reason}.")
    return {"columns": [label for _, _, label in COMPARISON_COLUMNS], "rows": rows, "notes": notes}


def calibration_rows(metrics: dict) -> list[tuple[str, str]]:
    """ECE before and after temperature scaling and the calibration's own figures, labelled."""
    rows = []
    diagnosis = metrics.get("diagnosis", {})
    for key, value in diagnosis.items():
        if "ece" in key and key != "ece" and _number(value) is not None:
            rows.append((CALIBRATION_LABELS.get(key, _human(key)), fmt(_number(value))))
    if _number(diagnosis.get("ece")) is not None and rows:
        rows.append((CALIBRATION_LABELS["ece"], fmt(_number(diagnosis["ece"]))))
    if _number(metrics.get("temperature")) is not None:
        rows.append((CALIBRATION_LABELS["temperature"], fmt(_number(metrics["temperature"]))))
    for key, value in (metrics.get("calibration") or {}).items():
        if isinstance(value, str) and len(value) < 200:
            rows.append((CALIBRATION_LABELS.get(key, _human(key)), value))
        elif _number(value) is not None:
            rows.append((CALIBRATION_LABELS.get(key, _human(key)), fmt(_number(value))))
    return rows


def target_rows(targets: object) -> list[dict]:
    """The "Targets" table: goal, measured value with its 95% interval, verdict, note.

    ``targets`` is ``metrics.json``'s list of ``{name, target, measured, ci, met, note}``; an
    older metrics.json without it gives an empty table (the page says so).
    """
    if not isinstance(targets, list):
        return []
    rows = []
    for t in targets:
        if not isinstance(t, dict):
            continue
        measured = _number(t.get("measured"))
        ci = t.get("ci")
        text = fmt(measured)
        if isinstance(ci, list) and len(ci) == 2 and all(_number(x) is not None for x in ci):
            text += f" ({fmt(ci[0])} to {fmt(ci[1])})"
        met = t.get("met") if isinstance(t.get("met"), bool) else None
        verdict, css = VERDICTS[met]
        if measured is None and met is None:
            verdict = "not measurable on these cases"
        rows.append(
            {
                "name": str(t.get("name", "")),
                "label": str(t.get("label") or _human(t.get("name", ""))),
                "goal": str(t.get("target", "")),
                "measured": text,
                "verdict": verdict,
                "css": css,
                "note": str(t.get("note") or ""),
            }
        )
    return rows


def conformal_view(conformal: dict) -> dict | None:
    """Labelled rows, the set-size counts and the per-class coverage of the conformal sets."""
    if not conformal:
        return None
    rows = []
    for key, value in conformal.items():
        if isinstance(value, dict | list) or key == "guarantee":
            continue
        if key == "class_floor_coverage" and value is None:  # no floor: nothing to say
            continue
        label = CONFORMAL_LABELS.get(key, _human(key))
        if key == "method":
            value = CONFORMAL_METHODS.get(str(value), str(value))
        rows.append((label, fmt(value)))
    sizes = conformal.get("set_size_counts") or {}
    per_class = conformal.get("per_class_coverage") or {}
    guarantee = conformal.get("guarantee")
    return {
        "rows": rows,
        "set_sizes": [(str(k), fmt(v)) for k, v in sizes.items()],
        "per_class": [(str(k), fmt(_coverage_value(v))) for k, v in per_class.items()],
        "guarantee": str(guarantee) if guarantee else "",
    }


def _coverage_value(value: object) -> object:
    """A per-class coverage entry: a number, or a dict holding one under ``coverage``."""
    if isinstance(value, dict):
        return value.get("coverage")
    return value


def quality_view(quality: dict | None) -> dict | None:
    """Explanation quality with measures as rows and methods as columns (fits the page)."""
    if not quality:
        return None
    table = _method_table(quality)
    view: dict = {"methods": [], "rows": [], "summary_rows": []}
    if table is not None:
        methods, columns = table
        view["methods"] = [METHOD_LABELS.get(m, _human(m)) for m in methods]
        for column in columns:
            label = QUALITY_COLUMNS.get(column, _human(column))
            view["rows"].append((label, [fmt(values.get(column)) for values in methods.values()]))
    for key in ("n_cases", "recommended_default", "failing_sanity"):
        if key not in quality:
            continue
        value = quality[key]
        if key == "recommended_default":
            value = METHOD_LABELS.get(str(value), str(value))
        elif isinstance(value, list):
            value = ", ".join(METHOD_LABELS.get(str(m), str(m)) for m in value) or "none"
        view["summary_rows"].append((QUALITY_SUMMARY_LABELS[key], fmt(value)))
    view |= channel_quality_view(quality)
    return view


# Per-channel explanation quality (multi-contrast panels), in this order, when present.
CHANNEL_QUALITY_COLUMNS = {
    "share": "Share of the positive attribution",
    "rma_over_lesion_fraction": "RMA / lesion fraction",
    "pointing_game": "Pointing game",
    "randomisation_spearman": "Randomisation Spearman",
    "deletion_over_random": "Deletion / random (image evidence)",
    "passes_sanity": "Passes sanity check",
}
LESION_KIND_COLUMNS = {
    "share": "{kind} (true mask): share of the evidence inside",
    "pointing_game": "{kind} (true mask): pointing game",
    "cases": "{kind} (true mask): cases that have one",
}


def channel_quality_view(quality: dict) -> dict:
    """The recommended method's figures per image channel (channels as columns), and per
    kind of true lesion each channel's share of the evidence inside it; no rows when the
    measurement has one channel (the template reads the keys either way)."""
    found = quality.get("methods")
    methods: dict = found if isinstance(found, dict) else {}
    method = quality.get("recommended_default")
    if method not in methods:
        method = next(iter(methods), None)
    channels = methods.get(method, {}).get("channels") if method else None
    if not isinstance(channels, dict) or not channels:
        return {"channel_method": "", "channel_names": [], "channel_rows": []}
    names = list(channels)
    rows = [
        (label, [fmt(channels[n].get(key)) for n in names])
        for key, label in CHANNEL_QUALITY_COLUMNS.items()
        if any(key in channels[n] for n in names)
    ]
    kinds = [k[: -len("_cases")] for k in channels[names[0]] if k.endswith("_cases")]
    for kind in kinds:
        shown = kind.replace("_", " ")
        for suffix, label in LESION_KIND_COLUMNS.items():
            values = [fmt(channels[n].get(f"{kind}_{suffix}")) for n in names]
            rows.append((label.format(kind=shown.capitalize()), values))
    return {
        "channel_method": METHOD_LABELS.get(str(method), _human(str(method))),
        "channel_names": names,
        "channel_rows": rows,
    }


def _method_key(quality: dict) -> str | None:
    for key in ("methods", "per_method", "by_method"):
        if isinstance(quality.get(key), dict):
            return key
    return None


def _method_table(quality: dict) -> tuple[dict[str, dict], list[str]] | None:
    """A {method: {metric: value}} table from the explanation-quality JSON, if it has one.

    Only the measures ``QUALITY_COLUMNS`` names are shown, in its order.
    """
    key = _method_key(quality)
    if key is None:
        return None
    methods = {}
    columns: list[str] = []
    for name, values in quality[key].items():
        if not isinstance(values, dict):
            continue
        flat = {k: v for k, v in values.items() if not isinstance(v, dict | list)}
        methods[name] = flat
        columns += [c for c in flat if c not in columns]
    return methods, [c for c in QUALITY_COLUMNS if c in columns]


def case_page(case: CaseView, numbers: dict) -> dict:
    """What the page shows for one explained case (every number from ``numbers``)."""
    n = numbers.get(case.case_id, {})
    truth = n.get("true_diagnosis")
    predicted = n.get("predicted")
    in_set = n.get("true_in_set")
    if truth:
        right = "right" if predicted == truth else "wrong"
        inside = "in the prediction set" if in_set else "not in the prediction set"
        verdict = f"the most likely class is {right}, and the true one is {inside}"
        css = "right" if predicted == truth else "wrong"
    else:
        verdict, css = "", ""
    share = n.get("modality_share")
    share_text = ""
    if isinstance(share, dict):
        parts = [
            f"{_human(k)} {fmt(_number(v))}" for k, v in share.items() if _number(v) is not None
        ]
        share_text = ", ".join(parts)
    regions = [
        {
            "name": str(r.get("name") or "unnamed region"),
            "band": str(r.get("band") or ""),
            "volume": fmt(_number(r.get("volume_ml")), 2),
            "share": fmt(_number(r.get("share"))),
        }
        for r in n.get("regions") or []
    ]
    return {
        "case_id": case.case_id,
        "anchor": case_id_slug(case.case_id),
        "coverage": fmt(n.get("coverage"), 2),
        "set_text": " or ".join(n.get("prediction_set") or []) or "empty",
        "predicted": str(predicted),
        "truth": str(truth) if truth else "",
        "verdict": verdict,
        "verdict_css": css,
        "risk_group": str(n.get("risk_group")),
        "risk_score": fmt(n.get("risk_score")),
        "probabilities": [(c, fmt(p)) for c, p in (n.get("probabilities") or {}).items()],
        "share": share_text,
        "explained": str(n.get("explained_class") or predicted),
        "regions": regions,
        "warnings": [str(w) for w in n.get("warnings") or []],
        "figures": [_figure_view(f) for f in case.figures],
    }


def run_view(run: dict | None) -> dict | None:
    """Stage times and memory, and the run's settings in words (no Python reprs)."""
    if not run:
        return None
    stages = [
        (
            STAGE_LABELS.get(name, _human(name)),
            fmt(s.get("seconds"), 1),
            fmt(s.get("peak_rss_mb"), 1),
        )
        for name, s in run.get("stages", {}).items()
    ]
    settings = [
        (SETTING_LABELS.get(k, _human(k)), _setting_text(k, v))
        for k, v in (run.get("config") or {}).items()
    ]
    return {"stages": stages, "settings": settings}


def _setting_text(key: str, value: object) -> str:
    """``None`` -> "default", ``{}`` -> "none", lists and dicts as plain words."""
    if value is None:
        return "all" if key == "quality_methods" else "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(f"{_human(k).lower()} {_setting_text(k, v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(METHOD_LABELS.get(str(v), str(v)) for v in value) or "none"
    return fmt(value)


# --------------------------------------------------------------------------- helpers


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"not readable JSON ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=path)
    return data
