"""The command line: every command has --help, and user errors are one line without a traceback."""

import subprocess
import sys

import pytest

from autoimmuneai.cli import build_parser, main

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
    assert proc.returncode != 0 and "Traceback" in proc.stderr


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
