"""Which generator makes the synthetic cohort of a panel (one per disease family).

``synth --panel NAME`` and ``demo --panel NAME`` look the panel's name up here: the CNS
differential (``cohort.generate_cohort``) and the MS course (``ms_course.generate_cohort``).
A new family adds its generator module and one entry; nothing outside ``synth/`` changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError

DEFAULT_FAMILY = "cns_autoimmune"


def _cns() -> tuple[Callable[..., Path], Callable[..., Any]]:
    from .cohort import generate_cohort
    from .config import SynthConfig

    return generate_cohort, SynthConfig


def _ms_course() -> tuple[Callable[..., Path], Callable[..., Any]]:
    from .ms_course import MSCourseConfig, generate_cohort

    return generate_cohort, MSCourseConfig


FAMILIES: dict[str, Callable[[], tuple[Callable[..., Path], Callable[..., Any]]]] = {
    "cns_autoimmune": _cns,
    "ms_course": _ms_course,
}


def _family(panel: str | Path) -> tuple[Callable[..., Path], Callable[..., Any]]:
    name = Path(str(panel)).stem
    if name not in FAMILIES:
        raise InputError(
            f"no synthetic cohort generator for panel {name!r} (generators: {', '.join(FAMILIES)})",
            field="--panel",
        )
    return FAMILIES[name]()


def generator_for(panel: str | Path = DEFAULT_FAMILY) -> Callable[..., Path]:
    """The ``generate_cohort(out_dir, n_cases, seed, **options)`` of the panel's family."""
    return _family(panel)[0]


def config_for(panel: str | Path = DEFAULT_FAMILY, **fields: Any) -> Any:
    """The family's generator config with ``fields`` set (e.g. ``split_fractions``)."""
    return _family(panel)[1](**fields)
