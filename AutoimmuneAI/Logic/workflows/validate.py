"""``autoimmuneai validate``: is this cohort usable, and what does it hold?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.cohort import Cohort, load_cohort
from ..data.panel import load_panel
from ..errors import InputError, describe_field


@dataclass
class ValidationReport:
    """Problems (one line each) and a summary of the usable cases."""

    manifest: Path
    n_rows: int
    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # usable, but probably not as meant

    @property
    def usable(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"cohort {self.manifest}: {self.n_rows} rows", *self.summary]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
            lines.append("NOT usable: fix the rows above.")
        elif self.warnings:
            lines.append("usable, but read the warnings above.")
        else:
            lines.append("usable: no problems found.")
        return "\n".join(lines)


def validate_manifest(
    manifest: str | Path, panel: str | Path = "cns_autoimmune", *, allow_outside_root: bool = False
) -> ValidationReport:
    """Check every row and every image of a manifest; never stops at the first problem."""
    cohort = load_cohort(
        manifest,
        load_panel(panel),
        check_images=True,
        read_images=True,
        allow_outside_root=allow_outside_root,
        strict=False,
    )
    n_rows = len(cohort.cases) + len(cohort.failed)
    report = ValidationReport(Path(manifest), n_rows)
    report.problems = [_row_first(p) for p in cohort.problems]
    report.summary = summarize(cohort)
    report.warnings = [_after_file(w, cohort.path) for w in cohort.warnings]
    return report


def _row_first(problem: InputError) -> str:
    parts = []
    if problem.row is not None:
        parts.append(f"row {problem.row}")
    if problem.field:
        parts.append(describe_field(problem.field))
    return f"{', '.join(parts)}: {problem.reason}" if parts else problem.reason


def _after_file(line: str, path: Path) -> str:
    """A warning without its leading manifest path (the report's first line names it)."""
    prefix = f"{path}, "
    return line[len(prefix) :] if line.startswith(prefix) else line


def summarize(cohort: Cohort) -> list[str]:
    """Cases per class, missingness per feature and follow-up, as printable lines."""
    lines = [f"usable cases: {len(cohort)}"]
    if not cohort.cases:
        return lines
    labels = cohort.labels()
    counts = [f"{c} {int((labels == i).sum())}" for i, c in enumerate(cohort.panel.classes)]
    unlabelled = int((labels < 0).sum())
    lines.append(
        "cases per class: "
        + ", ".join(counts)
        + (f", unlabelled {unlabelled}" if unlabelled else "")
    )
    _, missing = cohort.lab_matrix()
    rates = [
        f"{name} {100 * m:.0f}%" for name, m in zip(cohort.panel.feature_names, missing.mean(0))
    ]
    lines.append("missing per feature: " + ", ".join(rates))
    times, events = cohort.survival()
    has = np.isfinite(times)
    if has.any():
        lines.append(
            f"follow-up: {int(has.sum())} cases, median {np.median(times[has]):.1f} months, "
            f"{int(np.nansum(events))} events"
        )
    else:
        lines.append("follow-up: none recorded")
    return lines
