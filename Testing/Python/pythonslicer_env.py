"""A stand-in for ``PythonSlicer``: this Python with the ``slicer`` namespace the real one has.

Slicer's ``PythonSlicer`` (what a background process started by the module runs) loads only
the kits of ``Base/Python/CMakeLists.txt`` into ``slicer``: MRML core/CLI/logic/displayable
managers, ``vtkAddon``, ``vtkSegmentationCore``, the base logic. Classes of loadable modules
(``vtkSlicerSegmentationsModuleLogic``, the terminology classes, ...) are added only by the
running application, and ``slicer.app``/``slicer.mrmlScene``/``slicer.modules`` exist only there.
The ``slicer-core`` wheel puts everything into ``slicer``, so code can pass with it and fail in
the application's background process.

``make_pythonslicer(folder)`` writes an executable that strips from ``slicer`` every attribute
defined by a ``vtkSlicer*Module*`` library (and blocks importing those libraries), then runs
its arguments like ``python``: ``-m MODULE ARGS`` or ``-c CODE``. Tests pass it as the logic's
``python``, so the module's real child entry point runs in that namespace.
"""

from __future__ import annotations

import sys
from pathlib import Path

BOOTSTRAP = r"""
import re
import runpy
import sys
import types

LOADABLE = re.compile(r"^vtkSlicer\w*Module\w*$")


def _library(value):
    name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", "")
    return str(name or "").rsplit(".", 1)[-1]


def strip():
    import slicer

    removed = []
    namespaces = [slicer] + [m for m in (getattr(slicer, "slicer_core", None),) if m is not None]
    for namespace in namespaces:
        for name in list(vars(namespace)):
            value = getattr(namespace, name)
            if LOADABLE.match(name) or LOADABLE.match(_library(value)):
                delattr(namespace, name)
                removed.append(name)
    for name in ("app", "mrmlScene", "modules", "slicer_core", "slicer_layer_dm"):
        if hasattr(slicer, name):
            delattr(slicer, name)
    for key in list(sys.modules):
        if LOADABLE.match(key.rsplit(".", 1)[-1]):
            sys.modules[key] = None  # "import slicer_core.vtkSlicer...Module..." fails too
    return removed


REMOVED = strip()
args = sys.argv[1:]
if args[:1] == ["-m"]:
    print(f"PythonSlicer stand-in: {len(REMOVED)} loadable-module names removed", file=sys.stderr)
    sys.argv = [args[1]] + args[2:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
elif args[:1] == ["-c"]:
    sys.argv = ["-c"] + args[2:]
    exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "REMOVED": REMOVED})
else:
    raise SystemExit("usage: PythonSlicer -m MODULE ARGS | -c CODE")
"""


def make_pythonslicer(folder: Path) -> Path:
    """Write the stand-in ``PythonSlicer`` executable into ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "PythonSlicer"
    path.write_text(f"#!{sys.executable}\n{BOOTSTRAP}", encoding="utf-8")
    path.chmod(0o755)
    return path
