"""Privacy and network isolation of the batch command and the report.

* ``predict --explain`` works with every socket blocked (no network at run time);
* identifying manifest columns (a patient's name, MRN, birth date) never reach any output
  file, log line or the report: only ``case_id`` identifies a case;
* ``--hash-ids SALT`` replaces ``case_id`` everywhere: file and folder names and contents.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import socket
from pathlib import Path

import pytest
from conftest import write_rows

from autoimmuneai.cli import main

NAMES = ["Zebulon Quixote-Marchbanks", "Philippa Wetherspoon-Ngata", "Ottoline Vasquez-Brandt"]
MRNS = ["MRN-77310452", "MRN-99020318", "MRN-55501234"]
BIRTH = ["1961-03-14", "1979-11-02", "1990-07-23"]


def run_cli(argv: list[str], caplog: pytest.LogCaptureFixture | None = None) -> tuple[int, str]:
    """Run the CLI in-process; return the exit status and everything it printed or logged."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    logged = caplog.text if caplog is not None else ""
    return rc, out.getvalue() + err.getvalue() + logged


def file_texts(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` as bytes (gzip members decompressed too)."""
    texts = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                with contextlib.suppress(OSError, EOFError):
                    data += gzip.decompress(data)
            texts[path] = data
    return texts


def assert_absent(words: list[str], folder: Path, logs: str = "") -> None:
    for path, data in file_texts(folder).items():
        for word in words:
            assert word.encode() not in data, f"{word!r} found in {path}"
            assert word not in str(path), f"{word!r} in the file name {path}"
    for word in words:
        assert word not in logs, f"{word!r} in the logs"


@pytest.fixture
def block_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to open a socket raises (and is recorded)."""
    attempts: list[str] = []

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            attempts.append(f"socket{args}")
            raise OSError("network access is blocked in this test")

    def no_connection(*args, **kwargs):
        attempts.append(f"create_connection{args}")
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", no_connection)
    monkeypatch.setattr(socket, "getaddrinfo", no_connection)
    return attempts


def test_predict_with_network_blocked(
    block_network: list[str], cohort_copy, tiny_bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("example.org", 443), timeout=1)
    block_network.clear()
    manifest, rows = cohort_copy(tmp_path / "cohort", n=2)
    rc, printed = run_cli(
        [
            "predict",
            "--bundle",
            tiny_bundle,
            "--cohort",
            manifest,
            "--out",
            tmp_path / "out",
            "--explain",
        ]
    )
    assert rc == 0, printed
    assert block_network == [], f"tried to use the network: {block_network}"
    for row in rows:
        pred = json.loads(
            (tmp_path / "out" / row["case_id"] / "prediction.json").read_text(encoding="utf-8")
        )
        assert pred["case_id"] == row["case_id"]
        assert (tmp_path / "out" / row["case_id"] / "snapshot.png").is_file()


def _with_identifiers(manifest: Path, rows: list[dict], columns: list[str]) -> None:
    for row, name, mrn, born in zip(rows, NAMES, MRNS, BIRTH):
        row.update(patient_name=name, mrn=mrn, date_of_birth=born)
    write_rows(manifest, rows, ["patient_name", "mrn", *columns, "date_of_birth"])


def test_identifying_columns_never_leave_the_manifest(
    cohort_copy, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manifest, rows = cohort_copy(tmp_path / "cohort", n=2)
    _with_identifiers(manifest, rows, cohort_copy.columns)
    results = tmp_path / "results"
    printed = ""
    for argv in (
        ["validate", "--cohort", manifest],
        [
            "predict",
            "--bundle",
            tiny_bundle,
            "--cohort",
            manifest,
            "--out",
            results / "cases",
            "--explain",
        ],
        [
            "evaluate",
            "--bundle",
            tiny_bundle,
            "--cohort",
            manifest,
            "--out",
            results / "evaluation",
        ],
        ["report", "--eval", results],
    ):
        rc, text = run_cli(argv, caplog)
        printed += text
        assert rc == 0, text
    assert (results / "report.html").is_file()
    report = (results / "report.html").read_text(encoding="utf-8")
    for row in rows:  # the report does show the cases, by case_id
        assert row["case_id"] in report
    assert_absent(NAMES + MRNS + BIRTH, results, printed)
    assert "patient_name" not in report


def _hashed_run(manifest: Path, bundle: Path, salt: str, out: Path, *extra: str) -> tuple[int, str]:
    argv = ["predict", "--bundle", bundle, "--cohort", manifest, "--out", out]
    return run_cli([*argv, "--hash-ids", salt, *extra])


def test_hash_ids_replace_case_id_everywhere(
    cohort_copy, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manifest, rows = cohort_copy(tmp_path / "cohort", n=3)
    columns = list(rows[0])
    bad = dict(rows[0], case_id="broken9", c3="not-a-number")  # its id must not leak either
    write_rows(manifest, [*rows[:2], bad], columns)
    ids = [r["case_id"] for r in rows[:2]] + ["broken9"]

    out = tmp_path / "hashed"
    rc, printed = _hashed_run(manifest, tiny_bundle, "pepper-1", out, "--explain")
    assert rc == 3, printed  # the broken row fails, the others are predicted
    printed += caplog.text
    assert_absent(ids, out, printed)

    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        hashed = [r["case_id"] for r in csv.DictReader(f)]
    with open(out / "errors.csv", newline="", encoding="utf-8") as f:
        failed = [r["case_id"] for r in csv.DictReader(f)]
    assert len(hashed) == 2 and len(set(hashed)) == 2 and len(failed) == 1
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == sorted(hashed)
    for pseudonym in hashed:
        pred = json.loads((out / pseudonym / "prediction.json").read_text(encoding="utf-8"))
        assert pred["case_id"] == pseudonym

    # The same salt gives the same pseudonyms (linkable across runs); another salt does not.
    again, other = tmp_path / "again", tmp_path / "other"
    _hashed_run(manifest, tiny_bundle, "pepper-1", again)
    _hashed_run(manifest, tiny_bundle, "pepper-2", other)
    with open(again / "predictions.csv", newline="", encoding="utf-8") as f:
        assert sorted(r["case_id"] for r in csv.DictReader(f)) == sorted(hashed)
    with open(other / "predictions.csv", newline="", encoding="utf-8") as f:
        assert not set(r["case_id"] for r in csv.DictReader(f)) & set(hashed)
