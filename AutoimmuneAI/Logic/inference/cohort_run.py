"""Batch prediction over a cohort that loses nothing.

Every case gets its own folder; ``prediction.json`` is written last, so a folder without it
is partial and is redone by ``--resume``. A failing case (unreadable image, bad lab value,
wrong dimensions) goes to ``errors.csv`` with its reason and the run goes on. Every file is
written atomically (temporary name + rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import ensure_writable_folder, write_csv, write_text
from ..contracts import (
    CASE_FILES,
    ERRORS_CSV,
    ERRORS_CSV_COLUMNS,
    EXPLAIN_FILES,
    PREDICTIONS_CSV,
    predictions_csv_columns,
)
from ..data.cohort import Case, load_cohort, single_case_cohort
from ..data.imaging import Volume, load_volume
from ..errors import InputError, describe_field

log = logging.getLogger(__name__)

CASE_FILES_EXPLAIN = tuple(CASE_FILES[role] for role in EXPLAIN_FILES)
ERROR_COLUMNS = list(ERRORS_CSV_COLUMNS)
SHOWN_FAILURES = 5  # failures named in the summary line; errors.csv lists them all


@dataclass
class BatchResult:
    """What a batch run did: predictions by case, failures by case."""

    out_dir: Path
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # about the manifest as a whole

    @property
    def n_failed(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        text = (
            f"{len(self.rows)} case(s) predicted ({self.skipped} already complete), "
            f"{self.n_failed} failed, {self.seconds:.1f} s -> {self.out_dir / 'predictions.csv'}"
        )
        if self.errors:
            text += f"; failures in {self.out_dir / 'errors.csv'}"
            for error in self.errors[:SHOWN_FAILURES]:
                text += "\n  " + _failure_line(error)
            if len(self.errors) > SHOWN_FAILURES:
                text += f"\n  ... and {len(self.errors) - SHOWN_FAILURES} more"
        if self.warnings:
            text += f"\n{len(self.warnings)} warning(s) about the manifest:"
            text += "".join(f"\n  {w}" for w in self.warnings)
        return text


def _failure_line(error: dict) -> str:
    """``case X, row 7, column lab_a: reason``: one errors.csv row as the summary shows it."""
    where = [f"case {error['case_id']}"] if error.get("case_id") else []
    if error.get("row") not in ("", None):
        where.append(f"row {error['row']}")
    if error.get("field"):
        where.append(describe_field(str(error["field"])))
    return f"{', '.join(where)}: {error['reason']}" if where else str(error["reason"])


def output_id(case_id: str, salt: str | None) -> str:
    """The id used in outputs: the case_id, or a salted SHA-256 prefix when pseudonymising."""
    if not salt:
        return case_id
    return "case-" + hashlib.sha256(f"{salt}:{case_id}".encode()).hexdigest()[:16]


def case_complete(case_dir: Path, explain: bool, snapshot: bool) -> bool:
    """A case folder is complete when prediction.json and every expected file exist."""
    needed = ["prediction.json"]
    if explain:
        needed += list(CASE_FILES_EXPLAIN) + (["snapshot.png"] if snapshot else [])
    return all((case_dir / name).is_file() for name in needed)


def predict_cohort(
    bundle_path: str | Path,
    cohort_path: str | Path | None,
    out_dir: str | Path,
    *,
    explain: bool = False,
    method: str | None = None,
    target: str | None = None,
    resume: bool = False,
    snapshot: bool = True,
    hash_salt: str | None = None,
    allow_outside_root: bool = False,
    progress: bool = True,
    alpha: float | None = None,
    bands: tuple[float, ...] | None = None,
    image: str | Path | None = None,
    labs: Mapping[str, object] | None = None,
    case_id: str | None = None,
    series: str | None = None,
) -> BatchResult:
    """Predict (and explain) every case of a manifest; see the module docstring.

    Without a manifest (``cohort_path`` None) the one case is ``image`` with ``labs``
    (``{feature: lab text}``, parsed as manifest cells are against the bundle's panel);
    ``series`` picks one series of a DICOM study folder given as ``image`` (a manifest has
    its own ``series`` column).
    """
    from .predictor import Predictor

    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    ensure_writable_folder(out_dir)
    predictor = Predictor(bundle_path, alpha=alpha)
    if target is not None and target not in predictor.classes:
        raise InputError(
            f"unknown class {target!r} (one of {', '.join(predictor.classes)})", field="--target"
        )
    manifest: Path | None = None  # errors inside the manifest need no file name
    if cohort_path is None:
        if image is None:
            raise InputError("give a manifest (--cohort) or an image (--image)", field="--cohort")
        cohort = single_case_cohort(
            image, labs or {}, predictor.panel, case_id=case_id, series=series
        )
    else:
        cohort = load_cohort(
            cohort_path,
            predictor.panel,
            check_images=False,
            allow_outside_root=allow_outside_root,
            strict=False,
        )
        manifest = cohort.path
    result = BatchResult(out_dir, warnings=list(cohort.warnings))
    for warning in cohort.warnings:
        log.warning("warning: %s", warning)
    for case_id, problem in cohort.failed.items():
        result.errors.append(_error_row(output_id(case_id, hash_salt), problem, manifest))

    for case in tqdm(cohort.cases, desc="predict", unit="case", disable=not progress):
        oid = output_id(case.case_id, hash_salt)
        case_dir = out_dir / oid
        if resume and case_complete(case_dir, explain, snapshot):
            result.rows.append(_row_from_json(case_dir / "prediction.json"))
            result.skipped += 1
            continue
        try:
            prediction = run_case(
                predictor,
                case,
                case_dir,
                oid,
                explain=explain,
                method=method,
                target=target,
                snapshot=snapshot,
                bands=bands,
            )
        except InputError as exc:
            log.warning("case %s failed: %s", oid, exc.reason)
            result.errors.append(_error_row(oid, exc, manifest))
            continue
        except Exception as exc:  # a bug or an unforeseen file: record it, keep going
            log.debug("case %s failed", oid, exc_info=True)
            log.warning("case %s failed: %s: %s", oid, type(exc).__name__, exc)
            result.errors.append(
                {
                    "case_id": oid,
                    "row": "" if case.row is None else case.row,
                    "field": "",
                    "reason": f"{type(exc).__name__}: {exc}",
                }
            )
            continue
        result.rows.append(_row(prediction))
        _write_tables(
            out_dir, result, predictor.classes
        )  # after every case: nothing lost if killed
    _write_tables(out_dir, result, predictor.classes)
    result.seconds = time.perf_counter() - start
    return result


def run_case(
    predictor,
    case: Case,
    case_dir: Path,
    oid: str,
    *,
    explain: bool,
    method: str | None,
    target: str | None,
    snapshot: bool,
    bands: tuple[float, ...] | None = None,
) -> dict:
    """Predict and explain one case into ``case_dir``; return the prediction.json content."""
    channels = predictor.panel.channels
    volume = _load_case_image(case, channels[0])
    others = {c: _load_case_image(case, c) for c in channels[1:] if c in case.images}
    prepared = predictor.prepare(volume, case.labs, others)
    prediction = predictor.predict_prepared(prepared, oid).to_json()
    if explain:
        from ..explain.case_folder import explain_into

        prediction.update(
            explain_into(
                predictor,
                prepared,
                prediction,
                case_dir,
                method=method,
                target=target,
                snapshot=snapshot,
                bands=bands,
            )
        )
    write_text(case_dir / "prediction.json", json.dumps(prediction, indent=2, allow_nan=False))
    return prediction


def _load_case_image(case: Case, channel: str) -> Volume:
    path = case.images.get(channel)
    column = f"image_{channel}" if case.row is not None else "--image"
    if path is None:
        raise InputError(f"no image for channel {channel!r}", row=case.row, field=column)
    try:
        return load_volume(path, series=case.series.get(channel))
    except InputError as exc:
        raise InputError(exc.reason, file=exc.file, row=case.row, field=column) from None


def _row(prediction: dict) -> dict:
    row = {"case_id": prediction["case_id"]}
    row.update({f"p_{c}": prediction["probabilities"][c] for c in prediction["classes"]})
    row["predicted"] = prediction["predicted"]
    row["prediction_set"] = "|".join(prediction["prediction_set"])
    row["risk_score"] = prediction["risk_score"]
    row["risk_group"] = prediction["risk_group"]
    row["warnings"] = len(prediction.get("warnings", []))
    return row


def _row_from_json(path: Path) -> dict:
    return _row(json.loads(path.read_text(encoding="utf-8")))


def _error_row(case_id: str, problem: InputError, manifest: Path | None = None) -> dict:
    """An errors.csv row; the reason names the file at fault (an image) unless it is the
    manifest itself, which the row number already points into."""
    reason = problem.reason
    if problem.file and (manifest is None or Path(problem.file) != manifest):
        reason = f"{problem.file}: {reason}"
    return {
        "case_id": case_id,
        "row": problem.row if problem.row is not None else "",
        "field": problem.field or "",
        "reason": reason,
    }


def _write_tables(out_dir: Path, result: BatchResult, classes: list[str]) -> None:
    columns = predictions_csv_columns(classes)
    rows = sorted(result.rows, key=lambda r: r["case_id"])
    write_csv(out_dir / PREDICTIONS_CSV, rows, columns)
    write_csv(out_dir / ERRORS_CSV, result.errors, ERROR_COLUMNS)
