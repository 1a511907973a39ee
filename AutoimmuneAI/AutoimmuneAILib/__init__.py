"""GUI-side library of the AutoimmuneAI Slicer module.

The module file (``AutoimmuneAI.py``) only registers the module and hands over to this
folder. Everything here except ``parameters`` and ``widgethelpers`` runs without Qt, so it
is tested outside Slicer on the real MRML libraries of the ``slicer-core`` wheel.

Importing this package makes ``AutoimmuneAI/Logic/`` importable as ``autoimmuneai`` when it
is not installed already (inside Slicer it is not pip-installed: the extension ships it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE_NAME = "autoimmuneai"
LOGIC_DIR = Path(__file__).resolve().parent.parent / "Logic"


def registerPackage(name: str = PACKAGE_NAME, folder: Path = LOGIC_DIR) -> ModuleType:
    """Import ``folder`` as the package ``name`` unless a package of that name is importable.

    A pip-installed ``autoimmuneai`` (plain Python, CI) wins; inside Slicer the extension's own
    copy of ``Logic/`` is registered under the same name, so one import name works everywhere.
    """
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is not None:
        return importlib.import_module(name)
    init = Path(folder) / "__init__.py"
    if not init.is_file():
        raise ImportError(f"{name}: no package at {folder}")
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__registeredFrom__ = str(folder)  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


registerPackage()
