"""Which 3D Slicer releases the module runs in, checked before anything else is imported.

Slicer 5.8 bundles Python 3.9, where the ``autoimmuneai`` package cannot even be imported
(it uses Python 3.10+ syntax); Slicer 5.10 and 5.12 bundle Python 3.12, and the preview
(5.13) follows 5.12. The module file imports only this file before the check has passed, so
the check itself must run on Python 3.9: keep this file free of 3.10+ syntax (no ``X | Y``
outside annotations, no ``match``, no ``zip(strict=)``; the test suite parses it as 3.9).
"""

from __future__ import annotations

import sys

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)
SUPPORTED_TEXT = "3D Slicer 5.10, 5.12 (the current stable release) or the preview"


def unsupportedReason(slicerVersion, pythonVersion=None):
    """One line telling the user why the module cannot run here, or "" when it can.

    ``slicerVersion`` is (major, minor) of the running Slicer (``slicer.app.majorVersion``,
    ``slicer.app.minorVersion``); ``pythonVersion`` defaults to this interpreter's.
    """
    python = tuple(pythonVersion or sys.version_info[:2])[:2]
    slicer = tuple(int(v) for v in tuple(slicerVersion)[:2])
    if slicer >= MINIMUM_SLICER and python >= MINIMUM_PYTHON:
        return ""
    return (
        "AutoimmuneAI needs {supported}; this is Slicer {major}.{minor} with Python "
        "{pmajor}.{pminor}, and the module's code needs Python {need}: install the current "
        "Slicer from download.slicer.org."
    ).format(
        supported=SUPPORTED_TEXT,
        major=slicer[0],
        minor=slicer[1],
        pmajor=python[0],
        pminor=python[1],
        need=".".join(str(v) for v in MINIMUM_PYTHON) + "+",
    )


def runningSlicerVersion(app):
    """(major, minor) of the running application (``qSlicerCoreApplication`` properties)."""
    return (int(app.majorVersion), int(app.minorVersion))
