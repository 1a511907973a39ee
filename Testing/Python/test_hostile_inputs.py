"""Hostile and broken input: every row of the matrix is a real file or situation.

Three kinds of checks:

* per-case problems (a bad row or a bad image among good ones): ``predict`` records the case
  in ``errors.csv`` with its row, column and reason, predicts the other cases and exits 3;
  a command that needs every case (``evaluate``) stops with one line naming the file, row
  and column, exit 2, no traceback;
* whole-command problems (manifest, bundle, output folder): one line, exit 2, no traceback;
* messy but valid manifests (BOM, semicolons, Excel) must work.

The CLI runs in-process (``autoimmuneai.cli.main``) with stderr captured; two cases run as
a subprocess to prove that no traceback reaches the terminal, and ``--debug`` shows one.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import read_rows, write_rows

from autoimmuneai.cli import main

# --------------------------------------------------------------------------- helpers


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the command line in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def error_line(stderr: str, command: str) -> str:
    """The single 'autoimmuneai <cmd>: error: ...' line (asserts there is exactly one)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ": error: " in ln]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"autoimmuneai {command}: error: "), lines[0]
    return lines[0]


def errors_by_row(out_dir: Path) -> dict[int, dict[str, str]]:
    with open(out_dir / "errors.csv", newline="", encoding="utf-8") as f:
        return {int(r["row"]): r for r in csv.DictReader(f) if r["row"]}


def predicted_ids(out_dir: Path) -> list[str]:
    with open(out_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        return [r["case_id"] for r in csv.DictReader(f)]


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) * 2 if affine is None else affine), str(path))
    return path.name


def huge_header_only(path: Path) -> None:
    """A NIfTI header declaring 5000^3 float32 voxels (500 GB) and no data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape((5000, 5000, 5000))
    header.set_data_dtype(np.float32)
    header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4)


# --------------------------------------------------------------------------- per-case matrix


@dataclass(frozen=True)
class RowProblem:
    """A manifest row made bad in one way; ``mutate(row, folder, good_rows)``."""

    name: str
    field: str
    reason: str  # fragment of the reason, lower case
    mutate: Callable[[dict, Path, list[dict]], None]
    image_content: bool = False  # only visible when the image is read


def _set(column: str, value: str) -> Callable[[dict, Path, list[dict]], None]:
    def mutate(row: dict, folder: Path, good: list[dict]) -> None:
        row[column] = value

    return mutate


def _image(make: Callable[[Path], None], name: str) -> Callable[[dict, Path, list[dict]], None]:
    def mutate(row: dict, folder: Path, good: list[dict]) -> None:
        target = folder / "hostile" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        make(target)
        row["image_flair"] = f"hostile/{name}"

    return mutate


def _truncated(path: Path, folder_of: list[Path]) -> None:
    data = folder_of[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _duplicate(row: dict, folder: Path, good: list[dict]) -> None:
    row["case_id"] = good[0]["case_id"]


def _case_collision(row: dict, folder: Path, good: list[dict]) -> None:
    row["case_id"] = good[0]["case_id"].swapcase()
    assert row["case_id"] != good[0]["case_id"]


def _with_nan() -> np.ndarray:
    array = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    array[3, 4, 5] = np.nan
    return array


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("not a DICOM series", encoding="utf-8")


FORMULA_ID = '=HYPERLINK("http://x","y")'
ROW_PROBLEMS = [
    RowProblem("duplicate_case_id", "case_id", "duplicate", _duplicate),
    RowProblem("case_ids_differing_only_in_case", "case_id", "ignoring case", _case_collision),
    RowProblem("case_id_with_path", "case_id", "may use only", _set("case_id", "../escape")),
    RowProblem("case_id_formula", "case_id", "may use only", _set("case_id", FORMULA_ID)),
    RowProblem("unknown_class_label", "diagnosis", "unknown class", _set("diagnosis", "Lupus")),
    RowProblem("non_numeric_lab", "c3", "not a number", _set("c3", "high-ish")),
    RowProblem("implausible_lab", "esr", "implausible", _set("esr", "900")),
    RowProblem("wrong_unit", "c3", "unknown unit", _set("c3", "1.1 mmol/L")),
    RowProblem("titre_garbage", "aqp4_igg", "not a titre", _set("aqp4_igg", "1:abc")),
    RowProblem("unknown_category", "sex", "not one of", _set("sex", "X")),
    RowProblem("required_lab_missing", "age", "required", _set("age", "")),
    RowProblem("negative_event_time", "event_time", ">= 0", _set("event_time", "-3")),
    RowProblem("event_not_binary", "event", "0 (censored) or 1", _set("event", "2")),
    RowProblem("path_traversal", "image_flair", "outside", _set("image_flair", "../../etc/passwd")),
    RowProblem("image_missing", "image_flair", "not found", _set("image_flair", "nope.nii.gz")),
    RowProblem(
        "image_is_directory",
        "image_flair",
        "no dicom series",
        _image(_directory, "folder.nii.gz"),
        image_content=True,
    ),
    RowProblem(
        "image_not_an_image",
        "image_flair",
        "cannot read the image",
        _image(
            lambda p: p.write_text("patient notes, not an image\n", encoding="utf-8"), "text.nii.gz"
        ),
        image_content=True,
    ),
    RowProblem(
        "image_truncated_gzip",
        "image_flair",
        "cannot read the image",
        _image(lambda p: None, "truncated.nii.gz"),  # filled in by the fixture
        image_content=True,
    ),
    RowProblem(
        "image_2d",
        "image_flair",
        "2d image",
        _image(lambda p: save_nifti(p, np.random.rand(32, 32).astype(np.float32)), "flat.nii.gz"),
        image_content=True,
    ),
    RowProblem(
        "image_single_voxel",
        "image_flair",
        "single voxel",
        _image(lambda p: save_nifti(p, np.ones((1, 1, 1), np.float32)), "dot.nii.gz"),
        image_content=True,
    ),
    RowProblem(
        "image_4d",
        "image_flair",
        "4d image",
        _image(
            lambda p: save_nifti(p, np.random.rand(12, 12, 12, 3).astype(np.float32)), "dwi.nii.gz"
        ),
        image_content=True,
    ),
    RowProblem(
        "image_all_zero",
        "image_flair",
        "every voxel is zero",
        _image(lambda p: save_nifti(p, np.zeros((16, 16, 16), np.float32)), "zero.nii.gz"),
        image_content=True,
    ),
    RowProblem(
        "image_nan_voxels",
        "image_flair",
        "nan",
        _image(lambda p: save_nifti(p, _with_nan()), "nan.nii.gz"),
        image_content=True,
    ),
    RowProblem(
        "image_huge_dimensions",
        "image_flair",
        "more than the limit",
        _image(huge_header_only, "huge.nii"),
        image_content=True,
    ),
]


@pytest.fixture(scope="module")
def hostile_batch(tiny_bundle: Path, cohort_copy, tmp_path_factory) -> dict:
    """One ``predict`` over 2 good cases and one bad row per ROW_PROBLEMS entry."""
    folder = tmp_path_factory.mktemp("hostile_batch")
    manifest, good = cohort_copy(folder, n=2)
    columns = cohort_copy.columns
    rows = [dict(r) for r in good]
    row_of: dict[str, int] = {}
    for i, problem in enumerate(ROW_PROBLEMS):
        row = dict(good[1])
        row["case_id"] = f"bad-{i:02d}"
        if problem.name == "image_truncated_gzip":
            src = folder / good[1]["image_flair"]
            target = folder / "hostile" / "truncated.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            _truncated(target, [src])
            row["image_flair"] = "hostile/truncated.nii.gz"
        else:
            problem.mutate(row, folder, good)
        rows.append(row)
        row_of[problem.name] = len(rows) + 1  # header is row 1
    write_rows(manifest, rows, columns)
    out = folder / "out"
    rc, stdout, stderr = run_cli(
        ["predict", "--bundle", tiny_bundle, "--cohort", manifest, "--out", out]
    )
    return {
        "rc": rc,
        "stdout": stdout,
        "stderr": stderr,
        "out": out,
        "row_of": row_of,
        "good": [r["case_id"] for r in good],
        "manifest": manifest,
        "rows": rows,
        "folder": folder,
    }


def test_batch_exit_status_and_good_cases(hostile_batch: dict) -> None:
    assert hostile_batch["rc"] == 3, hostile_batch["stderr"]
    assert "Traceback" not in hostile_batch["stderr"]
    ids = predicted_ids(hostile_batch["out"])
    assert sorted(ids) == sorted(hostile_batch["good"])  # nothing bad slipped through
    for case_id in hostile_batch["good"]:
        pred = json.loads(
            (hostile_batch["out"] / case_id / "prediction.json").read_text(encoding="utf-8")
        )
        assert abs(sum(pred["probabilities"].values()) - 1.0) < 1e-3
    assert len(errors_by_row(hostile_batch["out"])) == len(ROW_PROBLEMS)


def test_errors_csv_is_safe_to_open_in_a_spreadsheet(hostile_batch: dict) -> None:
    """No cell of errors.csv or predictions.csv starts a formula (OWASP CSV injection); the
    rejected id is kept, marked as text; numbers, negative ones included, stay numbers."""
    from autoimmuneai.atomic import FORMULA_START

    number = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    cells = []
    for name in ("errors.csv", "predictions.csv"):
        with open(hostile_batch["out"] / name, newline="", encoding="utf-8") as f:
            cells += [c for row in csv.reader(f) for c in row]
    assert cells
    for cell in cells:
        assert not cell.startswith(FORMULA_START) or number.match(cell), cell
    errors = errors_by_row(hostile_batch["out"])
    formula = errors[hostile_batch["row_of"]["case_id_formula"]]
    assert formula["case_id"] == "'" + FORMULA_ID
    risks = [c for c in cells if number.match(c) and c.startswith("-")]
    with open(hostile_batch["out"] / "predictions.csv", newline="", encoding="utf-8") as f:
        scores = [r["risk_score"] for r in csv.DictReader(f)]
    assert all(number.match(s) for s in scores), scores  # risk scores stay numbers
    assert all(c in scores for c in risks)


def test_errors_csv_names_the_missing_image_and_the_summary_the_reasons(
    hostile_batch: dict,
) -> None:
    errors = errors_by_row(hostile_batch["out"])
    missing = errors[hostile_batch["row_of"]["image_missing"]]
    assert missing["reason"].endswith("nope.nii.gz: image not found"), missing
    assert Path(missing["reason"].split(": ")[0]).is_absolute()
    stdout = hostile_batch["stdout"]
    row = hostile_batch["row_of"]["unknown_class_label"]
    assert f"row {row}, column diagnosis: unknown class 'Lupus'" in stdout, stdout
    assert f"and {len(ROW_PROBLEMS) - 5} more" in stdout


@pytest.mark.parametrize("problem", ROW_PROBLEMS, ids=lambda p: p.name)
def test_bad_case_is_recorded_and_batch_goes_on(hostile_batch: dict, problem: RowProblem) -> None:
    row = hostile_batch["row_of"][problem.name]
    errors = errors_by_row(hostile_batch["out"])
    assert row in errors, f"row {row} ({problem.name}) not in errors.csv: {errors}"
    entry = errors[row]
    assert entry["field"] == problem.field, entry
    assert problem.reason in entry["reason"].lower(), entry
    assert "\n" not in entry["reason"]


def _two_good_rows_and(hostile_batch: dict, problem: RowProblem) -> tuple[Path, dict]:
    """A manifest of two good rows then ``problem``'s bad one (spreadsheet row 4), and that row."""
    rows = hostile_batch["rows"]
    bad = rows[hostile_batch["row_of"][problem.name] - 2]
    manifest = hostile_batch["folder"] / f"single-{problem.name}.csv"
    write_rows(manifest, [*rows[:2], bad], list(rows[0]))
    return manifest, bad


@pytest.mark.parametrize(
    "problem", [p for p in ROW_PROBLEMS if not p.image_content], ids=lambda p: p.name
)
def test_bad_row_stops_evaluate(
    hostile_batch: dict, tiny_bundle: Path, tmp_path: Path, problem: RowProblem
) -> None:
    """A bad manifest row stops ``evaluate``: one line naming the file, row and column; exit 2."""
    manifest, _ = _two_good_rows_and(hostile_batch, problem)
    rc, _, stderr = run_cli(
        ["evaluate", "--bundle", tiny_bundle, "--cohort", manifest, "--out", tmp_path / "eval"]
    )
    assert rc == 2, stderr
    line = error_line(stderr, "evaluate")
    assert problem.reason in line.lower(), line
    assert f"{manifest.name}, row 4, column {problem.field}:" in line, line


@pytest.mark.parametrize(
    "problem", [p for p in ROW_PROBLEMS if p.image_content], ids=lambda p: p.name
)
def test_unusable_image_is_left_out_of_evaluate_and_recorded(
    hostile_batch: dict, tiny_bundle: Path, tmp_path: Path, problem: RowProblem
) -> None:
    """An image found unusable only when read: ``evaluate`` goes on with the other cases,
    names the image and the reason in errors.csv, and exits 3."""
    manifest, bad = _two_good_rows_and(hostile_batch, problem)
    rc, stdout, stderr = run_cli(
        ["evaluate", "--bundle", tiny_bundle, "--cohort", manifest, "--out", tmp_path / "eval"]
    )
    assert rc == 3, stderr
    assert "1 case(s) failed" in stdout, stdout
    errors = errors_by_row(tmp_path / "eval")
    assert list(errors) == [4], errors
    assert errors[4]["case_id"] == bad["case_id"] and errors[4]["field"] == "image"
    assert problem.reason in errors[4]["reason"].lower(), errors[4]
    assert Path(bad["image_flair"]).name in errors[4]["reason"], errors[4]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["failed_cases"] == 1 and metrics["n_cases"] == 2


# --------------------------------------------------------------------------- whole command


def _tampered_weights(bundle: Path) -> None:
    weights = sorted((bundle / "models").iterdir())
    assert weights, "bundle has no weight files"
    data = bytearray(weights[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights[0].write_bytes(bytes(data))


def _metadata(bundle: Path) -> Path:
    return bundle / "configs" / "metadata.json"


def _other_panel(bundle: Path) -> None:
    """The bundle's panel becomes a test panel of another disease family (other classes, channel, labs)."""
    from example_panel import EXAMPLE_PANEL

    meta = json.loads(_metadata(bundle).read_text(encoding="utf-8"))
    meta["panel"] = EXAMPLE_PANEL
    _metadata(bundle).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _metadata_not_json(bundle: Path) -> None:
    _metadata(bundle).write_text("{ this is not json: [", encoding="utf-8")


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickled_code(bundle: Path) -> None:
    """Replace the model's weights by a pickle with code, and record its true SHA-256.

    The checksum then passes, so only the loader's refusal to unpickle stands between the
    file and code execution.
    """
    import hashlib

    rel = "models/model.safetensors"
    marker = bundle.parent / "PICKLE_CODE_RAN"
    (bundle / rel).write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    meta = json.loads(_metadata(bundle).read_text(encoding="utf-8"))
    assert rel in meta["weights"], meta["weights"]
    meta["weights"][rel]["sha256"] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    _metadata(bundle).write_text(json.dumps(meta, indent=2), encoding="utf-8")


@dataclass(frozen=True)
class CommandProblem:
    name: str
    build: Callable[[Path, Path, Path], list[str]]  # (tmp, manifest, bundle) -> argv
    command: str
    fragments: tuple[str, ...]  # lower-case fragments of the error line


def _bundle_copy(tmp: Path, bundle: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    damage(copy)
    return copy


def _predict(tmp: Path, manifest: Path, bundle: Path, *extra: str) -> list[str]:
    return ["predict", "--bundle", bundle, "--cohort", manifest, "--out", tmp / "out", *extra]


def _with_manifest(text: str | bytes, name: str = "manifest.csv"):
    def build(tmp: Path, manifest: Path, bundle: Path) -> list[str]:
        path = tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return _predict(tmp, path, bundle)

    return build


def _drop_column(column: str):
    def build(tmp: Path, manifest: Path, bundle: Path) -> list[str]:
        rows, columns = read_rows(manifest)
        write_rows(manifest, rows, [c for c in columns if c != column])
        return _predict(tmp, manifest, bundle)

    return build


COMMAND_PROBLEMS = [
    CommandProblem(
        "missing_manifest",
        lambda t, m, b: _predict(t, t / "absent.csv", b),
        "predict",
        ("absent.csv", "not found"),
    ),
    CommandProblem("empty_manifest", _with_manifest(""), "predict", ("manifest.csv", "empty")),
    CommandProblem(
        "header_only_manifest",
        _with_manifest("case_id,image_flair,age\n"),
        "predict",
        ("manifest.csv", "no cases"),
    ),
    CommandProblem(
        "manifest_is_directory",
        lambda t, m, b: _predict(t, m.parent, b),
        "predict",
        ("directory",),
    ),
    CommandProblem(
        "missing_required_column",
        _drop_column("image_flair"),
        "predict",
        ("manifest.csv", "column image_flair", "missing"),
    ),
    CommandProblem(
        "missing_required_lab_column",
        _drop_column("age"),
        "predict",
        ("manifest.csv", "column age", "missing"),
    ),
    CommandProblem(
        "excel_file_that_is_not_excel",
        _with_manifest(b"case_id,image_flair\nx,y\n", "cohort.xlsx"),
        "predict",
        ("cohort.xlsx", "cannot read manifest"),
    ),
    CommandProblem(
        "bundle_missing",
        lambda t, m, b: _predict(t, m, t / "no-bundle"),
        "predict",
        ("no-bundle",),
    ),
    CommandProblem(
        "bundle_tampered_weights",
        lambda t, m, b: _predict(t, m, _bundle_copy(t, b, _tampered_weights)),
        "predict",
        ("bundle", "sha-256"),
    ),
    CommandProblem(
        "bundle_other_panel",
        lambda t, m, b: _predict(t, m, _bundle_copy(t, b, _other_panel)),
        "predict",
        ("bundle", "panel"),
    ),
    CommandProblem(
        "bundle_metadata_not_json",
        lambda t, m, b: _predict(t, m, _bundle_copy(t, b, _metadata_not_json)),
        "predict",
        ("metadata.json", "json"),
    ),
    CommandProblem(
        "output_not_writable",
        lambda t, m, b: _predict(t, m, b)[:-2] + ["--out", _regular_file(t) / "sub"],
        "predict",
        ("not writable",),
    ),
    CommandProblem(
        "unknown_target_class",
        lambda t, m, b: _predict(t, m, b, "--target", "Lupus"),
        "predict",
        ("--target", "unknown class"),
    ),
    CommandProblem(
        "report_without_results",
        lambda t, m, b: ["report", "--eval", t],
        "report",
        ("no evaluation results",),
    ),
]


def _regular_file(tmp: Path) -> Path:
    path = tmp / "a-regular-file"
    path.write_text("I am a file, not a folder", encoding="utf-8")
    return path


@pytest.mark.parametrize("problem", COMMAND_PROBLEMS, ids=lambda p: p.name)
def test_whole_command_problem_is_one_line(
    problem: CommandProblem, cohort_copy, tiny_bundle: Path, tmp_path: Path
) -> None:
    manifest, _ = cohort_copy(tmp_path / "cohort", n=2)
    argv = problem.build(tmp_path, manifest, tiny_bundle)
    rc, _, stderr = run_cli(argv)
    assert rc == 2, stderr
    line = error_line(stderr, problem.command).lower()
    for fragment in problem.fragments:
        assert fragment.lower() in line, line
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_pickle_with_code_is_refused_and_never_executed(
    cohort_copy, tiny_bundle: Path, tmp_path: Path
) -> None:
    manifest, _ = cohort_copy(tmp_path / "cohort", n=1)
    bundle = _bundle_copy(tmp_path, tiny_bundle, _pickled_code)
    marker = bundle.parent / "PICKLE_CODE_RAN"
    rc, _, stderr = run_cli(_predict(tmp_path, manifest, bundle))
    assert rc == 2, stderr
    line = error_line(stderr, "predict").lower()
    assert "bundle" in line or "models" in line, line
    assert not marker.exists(), "unpickling ran code from the weights file"
    # The payload is real: plain unpickling would have created the marker.
    pickle.loads((bundle / "models" / "model.safetensors").read_bytes())
    assert marker.exists()


def test_path_traversal_allowed_when_asked(cohort_copy, tiny_bundle: Path, tmp_path: Path) -> None:
    """An image outside the cohort folder is accepted with --allow-outside-root."""
    manifest, rows = cohort_copy(tmp_path / "cohort", n=1)
    outside = tmp_path / "elsewhere" / "flair.nii.gz"
    outside.parent.mkdir()
    shutil.move(manifest.parent / rows[0]["image_flair"], outside)
    rows[0]["image_flair"] = "../elsewhere/flair.nii.gz"
    write_rows(manifest, rows, list(rows[0]))
    rc, _, stderr = run_cli(_predict(tmp_path, manifest, tiny_bundle))
    assert rc == 3
    assert "outside" in errors_by_row(tmp_path / "out")[2]["reason"]
    rc, _, stderr = run_cli(_predict(tmp_path, manifest, tiny_bundle, "--allow-outside-root"))
    assert rc == 0, stderr
    assert predicted_ids(tmp_path / "out") == [rows[0]["case_id"]]


# --------------------------------------------------------------------------- messy but valid


def _bom(manifest: Path) -> Path:
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    return manifest


def _semicolons(manifest: Path) -> Path:
    rows, columns = read_rows(manifest)
    for row in rows:  # European spreadsheets: decimal commas with ';' separators
        if row.get("c3"):
            row["c3"] = row["c3"].replace(".", ",")
    return write_rows(manifest, rows, columns, delimiter=";")


def _excel(manifest: Path) -> Path:
    import pandas as pd

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    target = manifest.with_suffix(".xlsx")
    table.to_excel(target, index=False)
    manifest.unlink()
    return target


@pytest.mark.parametrize("convert", [_bom, _semicolons, _excel], ids=["bom", "semicolons", "excel"])
def test_messy_manifest_formats_work(
    convert, cohort_copy, tiny_bundle: Path, tmp_path: Path
) -> None:
    manifest, rows = cohort_copy(tmp_path / "cohort", n=2)
    reference_out = tmp_path / "reference"
    assert (
        run_cli(_predict(tmp_path, manifest, tiny_bundle)[:-2] + ["--out", reference_out])[0] == 0
    )
    converted = convert(manifest)
    rc, stdout, stderr = run_cli(["validate", "--cohort", converted])
    assert rc == 0, stdout + stderr
    assert "usable cases: 2" in stdout
    rc, _, stderr = run_cli(_predict(tmp_path, converted, tiny_bundle))
    assert rc == 0, stderr
    assert sorted(predicted_ids(tmp_path / "out")) == sorted(r["case_id"] for r in rows)
    for row in rows:  # same numbers as the plain CSV
        a = json.loads(
            (tmp_path / "out" / row["case_id"] / "prediction.json").read_text(encoding="utf-8")
        )
        b = json.loads(
            (reference_out / row["case_id"] / "prediction.json").read_text(encoding="utf-8")
        )
        assert a["probabilities"] == b["probabilities"]


# --------------------------------------------------------------------------- no tracebacks


@pytest.mark.parametrize(
    "case", ["missing_manifest", "tampered_bundle"], ids=["missing_manifest", "tampered_bundle"]
)
def test_subprocess_shows_no_traceback(
    case: str, cohort_copy, tiny_bundle: Path, tmp_path: Path
) -> None:
    manifest, _ = cohort_copy(tmp_path / "cohort", n=1)
    if case == "missing_manifest":
        argv, command = ["validate", "--cohort", tmp_path / "absent.csv"], "validate"
    else:
        command = "predict"
        argv = _predict(tmp_path, manifest, _bundle_copy(tmp_path, tiny_bundle, _tampered_weights))
    proc = subprocess.run(
        [sys.executable, "-m", "autoimmuneai", *map(str, argv)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"autoimmuneai {command}: error: "), proc.stderr
    assert sum(": error: " in ln for ln in lines) == 1


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    """``--debug`` adds the traceback and keeps the bad-input status (2)."""
    rc, _, stderr = run_cli(["validate", "--cohort", tmp_path / "absent.csv", "--debug"])
    assert rc == 2
    assert "Traceback" in stderr and "InputError" in stderr
    assert stderr.strip().splitlines()[-1].endswith("absent.csv: manifest not found")


def test_gzip_helper_really_truncates(hostile_batch: dict) -> None:
    """Guard for the matrix itself: the truncated file is a real, cut gzip stream."""
    data = (hostile_batch["folder"] / "hostile" / "truncated.nii.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b"
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(data)


def test_csv_writer_neutralises_formula_text_and_keeps_numbers(tmp_path: Path) -> None:
    from autoimmuneai.atomic import write_csv
    from autoimmuneai.data.cohort import read_manifest

    row = {"case_id": "=1+1", "risk": -0.25, "text_number": "-0.5", "at": "@SUM(A1)",
           "tab": "\t=cmd", "cr": "\r=cmd", "dash": "-", "plus": "+", "plain": "neg",
           "quote": "'=x"}  # fmt: skip
    path = write_csv(tmp_path / "x.csv", [row], list(row))
    with open(path, newline="", encoding="utf-8") as f:
        written = next(csv.DictReader(f))
    assert written == {
        "case_id": "'=1+1", "risk": "-0.25", "text_number": "-0.5", "at": "'@SUM(A1)",
        "tab": "'\t=cmd", "cr": "'\r=cmd", "dash": "'-", "plus": "'+", "plain": "neg",
        "quote": "''=x",
    }  # fmt: skip
    # The product reads its own CSVs back exactly (a manifest it wrote, e.g. lab "-" = negative).
    back = read_manifest(path).iloc[0].to_dict()
    assert back == {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in row.items()}
