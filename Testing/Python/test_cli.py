"""The command line: every command has --help, and user errors are one line without a traceback."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoimmuneai.cli import (
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USER_ERROR,
    build_parser,
    main,
)

COMMANDS = ["demo", "synth", "validate", "train", "evaluate", "predict", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: autoimmuneai {command}" in capsys.readouterr().out


def test_parser_lists_every_command():
    text = build_parser().format_help()
    assert all(c in text for c in COMMANDS)


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "autoimmuneai", "validate", "--cohort", str(missing)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"autoimmuneai validate: error: {missing}: manifest not found"]


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoimmuneai",
            "validate",
            "--cohort",
            str(tmp_path / "x.csv"),
            "--debug",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr  # --debug keeps the status
    assert proc.stderr.strip().splitlines()[-1].endswith("manifest not found")


@pytest.mark.parametrize("value", ["-0.1", "much"])
def test_bad_raps_penalty_is_refused_before_any_work(tmp_path, value):
    proc = subprocess.run(
        [sys.executable, "-m", "autoimmuneai", "train", "--cohort", str(tmp_path / "m.csv"),
         "--out", str(tmp_path / "b"), "--raps-lam", value],
        capture_output=True, text=True, encoding="utf-8", errors="replace", check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"autoimmuneai train: error: --raps-lam must be a number >= 0 or 'tune', got '{value}'"
    ]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["1.5", "0", "most"])
def test_bad_class_coverage_is_refused_before_any_work(tmp_path, value):
    code, _, err = _run(
        ["train", "--cohort", str(tmp_path / "m.csv"), "--out", str(tmp_path / "b"),
         "--class-coverage", value]
    )  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        "autoimmuneai train: error: --class-coverage must be a number in (0, 1) or 'off', "
        f"got '{value}'"
    ]
    assert not (tmp_path / "b").exists()


def _run(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process: (exit status, stdout, stderr); argparse exits become statuses."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def _one_row_manifest(tmp_path: Path, **cells: str) -> Path:
    import nibabel as nib
    import numpy as np

    data = np.zeros((8, 9, 10), np.float32)
    data[2:5, 3:6, 4:7] = 1.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "img.nii.gz")
    row = {"case_id": "c1", "image_flair": "img.nii.gz", "age": "40", "sex": "F", **cells}
    path = tmp_path / "manifest.csv"
    path.write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n", encoding="utf-8")
    return path


def test_validate_exit_status_follows_the_table(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    good = _one_row_manifest(tmp_path / "good")
    rc, out, _ = _run(["validate", "--cohort", good])
    assert rc == EXIT_OK, out
    (tmp_path / "bad").mkdir()
    bad = _one_row_manifest(tmp_path / "bad", c3="high-ish")
    rc, out, _ = _run(["validate", "--cohort", bad])
    assert rc == EXIT_USER_ERROR, out
    assert "row 2, column c3:" in out and "NOT usable" in out


def test_option_errors_say_option(tmp_path: Path) -> None:
    rc, _, err = _run(["synth", "--out", tmp_path / "s", "--cases", "0"])
    assert rc == EXIT_USER_ERROR
    assert err.strip() == "autoimmuneai synth: error: option --cases: must be at least 1"


def test_bundle_file_instead_of_folder_is_pointed_at_the_folder(tmp_path: Path) -> None:
    metadata = tmp_path / "bundle" / "configs" / "metadata.json"
    metadata.parent.mkdir(parents=True)
    metadata.write_text("{}", encoding="utf-8")
    for command in (["predict", "--cohort", "m.csv"], ["evaluate", "--cohort", "m.csv"]):
        rc, _, err = _run([*command, "--bundle", metadata, "--out", tmp_path / "o"])
        assert rc == EXIT_USER_ERROR, err
        assert err.strip() == (
            f"autoimmuneai {command[0]}: error: {metadata}, option --bundle: is a file; pass the "
            f"bundle folder (the one holding configs/ and models/), e.g. --bundle {tmp_path / 'bundle'}"
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "option --cohort: give either --cohort (a manifest) or --image (one case), not neither"),
        (["--cohort", "m.csv", "--image", "x.nii.gz"], "not both"),
        (["--cohort", "m.csv", "--lab", "ocb=neg"], "--lab, --labs, --case-id and --series go with --image only"),
        (["--cohort", "m.csv", "--series", "FLAIR"], "a manifest has a series column"),
        (["--image", "x.nii.gz", "--lab", "ocb"], "option --lab: expected NAME=VALUE, got 'ocb'"),
    ],
)  # fmt: skip
def test_predict_case_options_are_checked_first(tmp_path: Path, extra, message) -> None:
    rc, _, err = _run(["predict", "--bundle", tmp_path, "--out", tmp_path / "o", *extra])
    assert rc == EXIT_USER_ERROR
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_internal_error_exits_1_with_its_traceback(tmp_path: Path, monkeypatch) -> None:
    import autoimmuneai.output.report as report

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(report, "build_report", broken)
    rc, _, err = _run(["report", "--eval", tmp_path])
    assert rc == EXIT_INTERNAL_ERROR
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1].startswith("autoimmuneai report: internal error")


def test_readme_exit_code_table_matches_the_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    table = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", section, flags=re.M))
    assert set(table) == {str(c) for c in (EXIT_OK, EXIT_INTERNAL_ERROR, EXIT_USER_ERROR,
                                           EXIT_PARTIAL, EXIT_INTERRUPTED)}  # fmt: skip
    assert "bad input" in table[str(EXIT_USER_ERROR)]
    assert "failed" in table[str(EXIT_PARTIAL)]
