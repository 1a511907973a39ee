"""The HTML report: one self-contained file (inline CSS, images as data URIs, no links out).

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
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import write_bytes, write_text
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
    metrics = _clean(metrics)
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
        stages = _load_json(sources.stages)
        metrics["demo_run"] = {
            "config": stages.get("config", {}),
            "total_seconds": stages.get("total_seconds"),
            "stages": {
                name: {k: v for k, v in s.items() if k in ("seconds", "peak_rss_mb")}
                for name, s in stages.get("stages", {}).items()
            },
        }
    return metrics


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
            figures.append(Figure(_slug(path.stem), path.stem.replace("_", " "), path.read_bytes()))
    return figures


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


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
    fig = _new_figure(4.8, 4.2)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    high = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if matrix[i, j] > high / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour)
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
    ax.set_xlabel(f"Contribution to {class_name}")
    ax.set_title("red: pushed towards, blue: away from", fontsize=9)
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
    views = []
    for pred_path in sorted(sources.cases_dir.glob("*/prediction.json")):
        pred = _load_json(pred_path)
        views.append(case_view(pred, pred_path.parent))
    return views


def case_view(pred: dict, case_dir: Path) -> CaseView:
    """Numbers shown for one case (also written to metrics.json) and its figures."""
    case_id = str(pred["case_id"])
    explanation = pred.get("explanation", {})
    numbers = {
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
    key = _slug(case_id)
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


def render_html(metrics: dict, figures: list[Figure], cases: list[CaseView]) -> str:
    """The whole page from the (cleaned) metrics, evaluation figures and case views."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>AutoimmuneAI report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>AutoimmuneAI: MRI + serology differential diagnosis and progression risk</h1>",
        f'<p class="notice" id="synthetic-statement"><strong>Synthetic data, research use only.'
        f"</strong> {e(SYNTHETIC_STATEMENT)}</p>",
    ]
    if not metrics.get("report", {}).get("synthetic_data", True):
        parts.append(
            '<p class="notice">These results come from a cohort without generator ground '
            "truth; the model remains a research tool and not a clinical device.</p>"
        )
    parts += _cohort_section(metrics.get("cohort_summary", {}))
    parts += _comparison_section(metrics)
    parts += _figures_section(figures)
    parts += _conformal_section(metrics.get("conformal", {}))
    parts += _quality_section(metrics.get("explanation_quality"))
    parts += _cases_section(cases, metrics.get("explained_cases", {}))
    parts += _run_section(metrics.get("demo_run"))
    parts.append(
        f'<p class="small">Generated by autoimmuneai {e(__version__)}. Every number on this '
        "page is also in metrics.json beside it; every figure is in figures/ as a PNG.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _cohort_section(cohort: dict) -> list[str]:
    e = html.escape
    out = ["<h2>Cohort</h2>", '<table id="cohort"><tbody>']
    rows = []
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
    for label, value in rows:
        out.append(f'<tr><td class="name">{e(label)}</td><td>{e(fmt(value, 1))}</td></tr>')
    out.append("</tbody></table>")
    return out


def _comparison_section(metrics: dict) -> list[str]:
    e = html.escape
    out = [
        "<h2>Fused model against baselines</h2>",
        "<p>Held-out test split; every model evaluated on the same cases in the same run. "
        "Diagnosis: balanced accuracy, macro one-vs-rest AUROC, expected calibration error "
        "(lower is better). Progression: Harrell's c-index of the risk score and the "
        "integrated Brier score of the survival curves (lower is better).</p>",
        '<table id="comparison"><thead><tr><th class="name">Model</th>',
    ]
    out += [f"<th>{e(label)}</th>" for _, _, label in COMPARISON_COLUMNS]
    out.append("</tr></thead><tbody>")
    for key, label, values in comparison_rows(metrics):
        cells = "".join(
            f'<td data-metric="{k}">{fmt(v)}</td>'
            for (_, k, _), v in zip(COMPARISON_COLUMNS, values)
        )
        out.append(
            f'<tr class="{e(key)}" data-model="{e(key)}"><td class="name">{e(label)}</td>{cells}</tr>'
        )
    out.append("</tbody></table>")
    calib = {
        k: v
        for k, v in metrics.get("diagnosis", {}).items()
        if "ece" in k and k != "ece" and _number(v) is not None
    }
    calib.update(
        {
            f"calibration.{k}": v
            for k, v in (metrics.get("calibration") or {}).items()
            if _number(v) is not None
        }
    )
    if calib:
        out.append('<table id="calibration"><tbody>')
        for k, v in calib.items():
            out.append(f'<tr><td class="name">{e(k)}</td><td>{fmt(_number(v))}</td></tr>')
        out.append("</tbody></table>")
    return out


def _figures_section(figures: list[Figure]) -> list[str]:
    if not figures:
        return []
    out = ["<h2>Discrimination, calibration and progression</h2>", '<div class="figs">']
    out += [_figure_html(f) for f in figures]
    out.append("</div>")
    return out


def _figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    title = html.escape(fig.title)
    return (
        f'<figure id="fig-{html.escape(fig.key)}"><img alt="{title}" '
        f'src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'
    )


def _conformal_section(conformal: dict) -> list[str]:
    if not conformal:
        return []
    e = html.escape
    out = [
        "<h2>Conformal prediction sets</h2>",
        "<p>Split-conformal sets: the clinician-facing differential. At error rate alpha the "
        "sets should contain the true diagnosis in at least a fraction one minus alpha of "
        "the cases (target_coverage).</p>",
        '<table id="conformal"><tbody>',
    ]
    for key, value in _flatten(conformal):
        out.append(f'<tr><td class="name">{e(key)}</td><td>{e(fmt(value))}</td></tr>')
    out.append("</tbody></table>")
    return out


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Scalar leaves of a nested dict as (dotted key, value); lists of scalars joined."""
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, list):
            if all(isinstance(x, int | float | str) or x is None for x in v) and len(v) <= 12:
                out.append((key, ", ".join(fmt(x) for x in v)))
        else:
            out.append((key, v))
    return out


def _quality_section(quality: dict | None) -> list[str]:
    if not quality:
        return []
    e = html.escape
    out = [
        "<h2>Explanation quality</h2>",
        "<p>Measured on test cases where the true lesions are known: relevance mass "
        "accuracy and pointing game (localisation, against the lesion-volume fraction a "
        "random map scores), Spearman correlation with a parameter-randomised model "
        "(sanity: low is good) and deletion areas (faithfulness: voxels deleted in order of "
        "attribution magnitude against random order, over the first 5% of the head; the "
        "image evidence left is the distance of the probability from the probability with "
        "every hyperintensity removed).</p>",
    ]
    table = _method_table(quality)
    if table is not None:
        methods, columns = table
        out.append('<table id="explanation-quality"><thead><tr><th class="name">Method</th>')
        out += [f"<th>{e(QUALITY_COLUMNS.get(c, c))}</th>" for c in columns]
        out.append("</tr></thead><tbody>")
        for name, values in methods.items():
            cells = "".join(f"<td>{e(fmt(values.get(c)))}</td>" for c in columns)
            out.append(f'<tr><td class="name">{e(name)}</td>{cells}</tr>')
        out.append("</tbody></table>")
        rest = {k: v for k, v in quality.items() if k != _method_key(quality)}
    else:
        rest = quality
    rest = {k: v for k, v in rest.items() if k not in ("bundle", "cohort", "cases")}
    scalars = [(k, v) for k, v in _flatten(rest) if not isinstance(v, str) or len(v) < 120]
    if scalars:
        out.append('<table id="explanation-quality-summary"><tbody>')
        for key, value in scalars:
            out.append(f'<tr><td class="name">{e(key)}</td><td>{e(fmt(value))}</td></tr>')
        out.append("</tbody></table>")
    return out


def _method_key(quality: dict) -> str | None:
    for key in ("methods", "per_method", "by_method"):
        if isinstance(quality.get(key), dict):
            return key
    return None


def _method_table(quality: dict) -> tuple[dict[str, dict], list[str]] | None:
    """A {method: {metric: value}} table from the explanation-quality JSON, if it has one."""
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
    preferred = [c for c in QUALITY_COLUMNS if c in columns]
    return methods, preferred or columns


def _cases_section(cases: list[CaseView], numbers: dict) -> list[str]:
    if not cases:
        return []
    e = html.escape
    out = [
        "<h2>Explained cases</h2>",
        "<p>For each case: the evidence regions over the patient's own image (the Slicer "
        "view), how each lab value pushed the explained class, the conformal prediction set "
        "and the predicted progression-free survival.</p>",
    ]
    for case in cases:
        n = numbers.get(case.case_id, {})
        out.append(f'<div class="case" id="case-{e(_slug(case.case_id))}">')
        out.append(f"<h3>Case {e(case.case_id)}</h3>")
        coverage = n.get("coverage")
        out.append(
            f'<p>Prediction set ({e(fmt(coverage, 2))} coverage): <span class="set">'
            f"{e(' or '.join(n.get('prediction_set') or []) or 'empty')}</span>; most likely "
            f"{e(str(n.get('predicted')))}. Progression risk group {e(str(n.get('risk_group')))} "
            f"(risk score {e(fmt(n.get('risk_score')))}).</p>"
        )
        probs = n.get("probabilities") or {}
        if probs:
            out.append("<table><thead><tr>")
            out += [f"<th>{e(c)}</th>" for c in probs]
            out.append("</tr></thead><tbody><tr>")
            out += [f"<td>{e(fmt(p))}</td>" for p in probs.values()]
            out.append("</tr></tbody></table>")
        share = n.get("modality_share")
        if isinstance(share, dict) and share:
            text = ", ".join(f"{k} {fmt(v)}" for k, v in share.items() if _number(v) is not None)
            out.append(f"<p>Modality share: {e(text)}</p>")
        regions = n.get("regions") or []
        if regions:
            out.append("<ul>")
            out += [f"<li>{e(str(r.get('name')))}</li>" for r in regions]
            out.append("</ul>")
        for warning in n.get("warnings") or []:
            out.append(f'<p class="warn">Warning: {e(str(warning))}</p>')
        out.append('<div class="figs">')
        out += [_figure_html(f) for f in case.figures]
        out.append("</div></div>")
    return out


def _run_section(run: dict | None) -> list[str]:
    if not run:
        return []
    e = html.escape
    out = [
        "<h2>This run</h2>",
        '<table id="run"><thead><tr><th class="name">Stage</th><th>Seconds</th>'
        "<th>Peak memory (MB)</th></tr></thead><tbody>",
    ]
    for name, s in run.get("stages", {}).items():
        out.append(
            f'<tr><td class="name">{e(name)}</td><td>{fmt(s.get("seconds"), 1)}</td>'
            f"<td>{fmt(s.get('peak_rss_mb'), 1)}</td></tr>"
        )
    out.append("</tbody></table>")
    config = run.get("config") or {}
    if config:
        out.append(
            f'<p class="small">Settings: {e(", ".join(f"{k}={v}" for k, v in config.items()))}</p>'
        )
    return out


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


def _clean(value: object) -> object:
    """JSON-safe copy: NaN/inf become null, NumPy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
