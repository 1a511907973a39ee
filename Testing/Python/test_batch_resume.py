"""A batch ``predict --explain`` killed mid-way and resumed equals an uninterrupted run.

The run is a real subprocess killed with SIGKILL as soon as the first case's
``prediction.json`` appears (so the second case is being written). Then: every file that
does not carry a temporary name must be complete (it parses), ``--resume`` keeps the
finished case untouched and redoes the rest, and every case's outputs equal those of an
uninterrupted run.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import read_rows, write_rows

from autoimmuneai.inference.cohort_run import predict_cohort

N_CASES = 3


def predict_argv(bundle: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoimmuneai",
        "predict",
        "--bundle",
        str(bundle),
        "--cohort",
        str(manifest),
        "--out",
        str(out),
        "--explain",
        *extra,
    ]


def without_timings(obj: object) -> object:
    """A prediction.json without wall-clock fields (the only legitimate differences)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def assert_same(got: object, want: object, where: str = "", rel: float = 1e-6) -> None:
    """Equal structure and strings; floats equal to ``rel`` (summation order aside)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}", rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]", rel)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=1e-9), where
    else:
        assert got == want, where


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["case_id"])


def _typed(row: dict[str, str]) -> dict[str, object]:
    """CSV cells as floats where they are numbers (predictions.csv has 6 significant digits)."""
    out: dict[str, object] = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def assert_complete(path: Path) -> None:
    """A file with a final (non-temporary) name must be whole: it parses as what it claims."""
    name = path.name
    if name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith(".csv"):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n"), f"{path} ends mid-line"
        rows = list(csv.reader(text.splitlines()))
        assert all(len(r) == len(rows[0]) for r in rows), f"{path} has a short row"
    elif name.endswith(".nii.gz"):
        gzip.decompress(path.read_bytes())  # a cut stream raises
        nib.load(str(path)).get_fdata()
    elif name.endswith(".nrrd"):
        import nrrd

        nrrd.read(str(path))
    elif name.endswith(".png"):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"), path
    elif name.endswith(".mrml"):
        import xml.etree.ElementTree as ET

        ET.parse(path)


@pytest.fixture(scope="module")
def batch(cohort_copy, tiny_bundle: Path, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("batch_resume")
    manifest, rows = cohort_copy(folder / "cohort", n=N_CASES)
    reference = folder / "reference"  # the uninterrupted run, in a process like the others
    proc = subprocess.run(
        predict_argv(tiny_bundle, manifest, reference),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"manifest": manifest, "ids": [r["case_id"] for r in rows], "reference": reference}


def kill_after_first_case(argv: list[str], out: Path, first: str, timeout: float = 240) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not (out / first / "prediction.json").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "first case never finished"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_killed_batch_resumes_to_the_uninterrupted_result(
    batch: dict, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ids = sorted(batch["ids"])
    kill_after_first_case(predict_argv(tiny_bundle, batch["manifest"], out), out, ids[0])

    finished = [i for i in ids if (out / i / "prediction.json").is_file()]
    assert ids[0] in finished and len(finished) < len(ids), "the kill came too late to test"
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith(".tmp-"):
            assert_complete(path)  # nothing half-written under a final name
    first_json = out / ids[0] / "prediction.json"
    first_mtime = first_json.stat().st_mtime_ns

    argv = predict_argv(tiny_bundle, batch["manifest"], out, "--resume")
    proc = subprocess.run(
        argv, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({len(finished)} already complete)" in proc.stdout, proc.stdout
    assert first_json.stat().st_mtime_ns == first_mtime, "a complete case was redone"

    reference = batch["reference"]
    got_rows, want_rows = read_csv(out / "predictions.csv"), read_csv(reference / "predictions.csv")
    assert [r["case_id"] for r in got_rows] == [r["case_id"] for r in want_rows]
    for got_row, want_row in zip(got_rows, want_rows):
        assert_same(_typed(got_row), _typed(want_row), got_row["case_id"], rel=2e-5)
    assert read_csv(out / "errors.csv") == []
    for case_id in ids:
        got = json.loads((out / case_id / "prediction.json").read_text(encoding="utf-8"))
        want = json.loads((reference / case_id / "prediction.json").read_text(encoding="utf-8"))
        assert_same(without_timings(got), without_timings(want), case_id)
        names = sorted(
            p.name for p in (reference / case_id).iterdir() if not p.name.startswith(".")
        )
        assert sorted(p.name for p in (out / case_id).iterdir() if not p.name.startswith(".")) == (
            names
        )
        for name in names:
            assert_complete(out / case_id / name)
        ref_attr = nib.load(str(reference / case_id / "attribution.nii.gz")).get_fdata()
        got_attr = nib.load(str(out / case_id / "attribution.nii.gz")).get_fdata()
        assert np.allclose(got_attr, ref_attr, rtol=1e-5, atol=1e-12), case_id


def test_partial_case_folder_is_redone(batch: dict, tiny_bundle: Path, tmp_path: Path) -> None:
    """A folder with files but no prediction.json (killed mid-case) is not taken as done."""
    out = tmp_path / "out"
    first = sorted(batch["ids"])[0]
    one_case = batch["manifest"].with_name("first-case.csv")
    rows, columns = read_rows(batch["manifest"])
    write_rows(one_case, [r for r in rows if r["case_id"] == first], columns)
    partial = out / first
    partial.mkdir(parents=True)
    (partial / "attribution.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")  # as if cut
    (partial / ".tmp-prediction-abc.json").write_text('{"case_id": "', encoding="utf-8")
    result = predict_cohort(tiny_bundle, one_case, out, explain=True, resume=True, progress=False)
    assert result.n_failed == 0 and result.skipped == 0
    assert_complete(partial / "attribution.nii.gz")
    got = json.loads((partial / "prediction.json").read_text(encoding="utf-8"))
    want = json.loads((batch["reference"] / first / "prediction.json").read_text(encoding="utf-8"))
    assert_same(without_timings(got), without_timings(want), first)
