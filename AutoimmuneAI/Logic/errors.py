"""User-facing errors: one line that names the file, row and field.

Every error caused by the user's input (a manifest, an image, a lab value, a bundle) is an
``InputError``. The command line prints ``str(error)`` without a traceback; ``--debug``
shows it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input from the user, described in one line."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = " ".join(str(reason).split())
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(describe_field(self.field))
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


def describe_field(name: str) -> str:
    """``column lab_a`` for a manifest column, ``option --alpha`` for a command-line option."""
    return f"option {name}" if name.startswith("-") else f"column {name}"


class ImageError(InputError):
    """An image file that cannot be used (missing, unreadable, wrong shape, bad values)."""


class BundleError(InputError):
    """A model bundle that cannot be trusted or does not fit (checksum, panel, format)."""
