"""No code outside the generator names a class or lab of a shipped panel: a disease family is data.

The names are read from the panel JSONs themselves (``cns_autoimmune`` and ``ms_course``), so
a new panel's names are checked too once it is added to ``PANELS``. The generator
(``autoimmuneai.synth``) is the data side: its per-family priors are allowed to name them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoimmuneai.data.panel import load_panel

ROOT = Path(__file__).resolve().parents[2] / "AutoimmuneAI"
PACKAGE = ROOT / "Logic"
PANELS = ("cns_autoimmune", "ms_course")


def _names() -> set[str]:
    names: set[str] = set()
    for panel in map(load_panel, PANELS):
        names |= set(panel.classes) | set(panel.feature_names)
    return names


def _sources() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "synth" not in p.relative_to(PACKAGE).parts]
    files += sorted((ROOT / "AutoimmuneAILib").rglob("*.py")) + [ROOT / "AutoimmuneAI.py"]
    return sorted(files)


def _hits(text: str, names: set[str]) -> list[str]:
    """Each ``name`` standing as a whole word (case-sensitive: ``MS`` the class, not ``ms``)."""
    out = []
    for name in sorted(names):
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text):
            out.append(name)
    return out


def test_the_two_panels_are_read_for_their_names():
    names = _names()
    # both families contribute (a failed load would leave the check empty and always passing)
    assert {"NMOSD", "RRMS", "aqp4_igg", "nfl", "edss"} <= names


def test_the_check_finds_a_name_written_in_code():
    names = _names()
    assert _hits('rule = {"aqp4_igg": 10}  # NMOSD first', names) == ["NMOSD", "aqp4_igg"]
    assert _hits("timestamps in ms; sexual; agent; edss_like", names) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_generator_names_a_class_or_lab(path):
    hits = _hits(path.read_text(encoding="utf-8"), _names())
    assert not hits, (
        f"{path.relative_to(ROOT)} names {', '.join(hits)} of a shipped panel: read it from "
        "the panel instead (panel.classes, panel.features, the panel's criteria section)"
    )
