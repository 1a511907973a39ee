"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A run killed at any moment leaves either the old file, the complete new one, or a
``.tmp-*`` file that no reader mistakes for output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.seg.nrrd``) so that writers
    which choose a format by extension work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(
        prefix=f".tmp-{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal modes
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_with(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


# Cells a spreadsheet reads as a formula (OWASP "CSV injection"): a leading =, +, -, @, or a
# tab / carriage return that some spreadsheets skip before looking for one of those.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
SPREADSHEET_TEXT_PREFIX = "'"
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula.

    Text starting with one of ``FORMULA_START`` gets a leading apostrophe (the spreadsheet
    "this is text" mark, OWASP's advice), unless the text is a plain number such as ``-0.25``
    or ``+3e-2``: negative numbers in numeric columns stay numbers. Text that already starts
    with apostrophes before such a character gets one more, so ``unescape_cell`` restores
    every cell exactly when the product reads its own CSV back. Non-text values are returned
    unchanged.
    """
    if not isinstance(value, str):
        return value
    if not value.lstrip(SPREADSHEET_TEXT_PREFIX).startswith(FORMULA_START):
        return value
    if _PLAIN_NUMBER.match(value):
        return value
    return SPREADSHEET_TEXT_PREFIX + value


def unescape_cell(text: str) -> str:
    """The cell as it was before ``spreadsheet_safe`` (``'=x`` -> ``=x``; others unchanged)."""
    if text.startswith(SPREADSHEET_TEXT_PREFIX) and text.lstrip(SPREADSHEET_TEXT_PREFIX).startswith(
        FORMULA_START
    ):
        return text[1:]
    return text


def _cell(value: object) -> object:
    """A value as written in a CSV cell: floats with 6 significant digits, text made safe."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return f"{v:.6g}" if math.isfinite(v) else ""
    if isinstance(value, np.integer):
        return int(value)
    if value is None:
        return ""
    return spreadsheet_safe(value if isinstance(value, int | str) else str(value))


def csv_text(
    rows: Iterable[Mapping[str, object] | Sequence[object]],
    columns: Sequence[str],
    *,
    delimiter: str = ",",
) -> str:
    """CSV text with a header: every cell through ``spreadsheet_safe`` (see ``write_csv``).

    A row is a mapping (missing columns left blank, extra keys ignored) or a sequence in the
    order of ``columns``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    # The csv module quotes only the line terminator's characters: a row with a bare CR in
    # a cell is written fully quoted, so that no reader takes the CR for a line end.
    quoted = csv.writer(buf, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow([spreadsheet_safe(str(c)) for c in columns])
    for row in rows:
        values = [row.get(c, "") for c in columns] if isinstance(row, Mapping) else list(row)
        cells = [_cell(v) for v in values]
        has_cr = any(isinstance(c, str) and "\r" in c for c in cells)
        (quoted if has_cr else writer).writerow(cells)
    return buf.getvalue()


def write_csv(
    path: str | Path,
    rows: Iterable[Mapping[str, object] | Sequence[object]],
    columns: Sequence[str],
    *,
    delimiter: str = ",",
) -> Path:
    """Write a CSV atomically with every text cell neutralised for spreadsheets.

    The one writer for every CSV the product produces (predictions, errors, manifests it
    writes, truth tables): a case id such as ``=HYPERLINK(...)`` opened in a spreadsheet
    shows as text and runs nothing.
    """
    return write_text(path, csv_text(rows, columns, delimiter=delimiter))


@overload
def json_safe(obj: dict[Any, Any]) -> dict[str, Any]: ...
@overload
def json_safe(obj: object) -> object: ...
def json_safe(obj: object) -> object:
    """NaN/inf -> None and NumPy values -> Python ones, recursively, so output is strict JSON
    (a dict stays a dict, with string keys)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it is writable; else one-line InputError."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("output path exists and is not a folder", file=folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output folder is not writable ({exc.strerror})", file=folder) from None
    return folder
