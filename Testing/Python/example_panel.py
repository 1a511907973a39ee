"""A second disease family written by a test, to prove that a new panel needs no code.

A small hand-arthritis panel (other classes, another image channel, other labs with their
own units) that no module of the package names. Tests write it into a temporary folder and
load it by path, as a user would load their own panel file.
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLE_PANEL: dict = {
    "name": "hand_arthritis_example",
    "title": "Inflammatory arthritis of the hand (test panel)",
    "version": "1.0.0",
    "description": "Written by the tests: a disease family the package has never seen.",
    "channels": [{"name": "t1", "description": "Hand/wrist T1-weighted MRI"}],
    "classes": [
        {"name": "RA", "description": "Rheumatoid arthritis"},
        {"name": "PsA", "description": "Psoriatic arthritis"},
        {"name": "OA", "description": "Erosive hand osteoarthritis"},
    ],
    "features": [
        {
            "name": "rf",
            "label": "Rheumatoid factor",
            "kind": "continuous",
            "unit": "IU/mL",
            "units": {"IU/mL": 1.0, "kIU/L": 1.0},
            "range": [0, 5000],
            "reference_high": 14,
            "log": True,
        },
        {
            "name": "anti_ccp",
            "label": "anti-CCP",
            "kind": "continuous",
            "unit": "U/mL",
            "units": {"U/mL": 1.0},
            "range": [0, 5000],
            "reference_high": 20,
            "log": True,
        },
        {
            "name": "crp",
            "label": "CRP",
            "kind": "continuous",
            "unit": "mg/L",
            "units": {"mg/L": 1.0, "mg/dL": 10.0},
            "range": [0, 1000],
        },
        {
            "name": "age",
            "label": "Age",
            "kind": "continuous",
            "unit": "years",
            "range": [0, 110],
            "missing_allowed": False,
        },
    ],
}


def write_example_panel(folder: Path) -> Path:
    """Write ``EXAMPLE_PANEL`` as ``<folder>/hand_arthritis_example.json``; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{EXAMPLE_PANEL['name']}.json"
    path.write_text(json.dumps(EXAMPLE_PANEL, indent=2), encoding="utf-8")
    return path
