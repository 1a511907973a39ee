"""The Slicer module without the desktop application.

What Slicer itself would check at run time is checked here statically (the .ui, the widgets
the code uses, the parameter bindings, every Slicer/Qt/CTK name the module uses against the
list ``SLICER_API`` read from Slicer's 5.10 and 5.12 sources, Python 3.12 syntax and Python 3.9
syntax for what runs before the version check, no Qt in the package), and everything the
module *does* runs for real on the MRML libraries of the ``slicer-core`` wheel: volume node +
serology in, nodes out, scene saved and reloaded, background processes with progress and
cancel. The background processes run in a stand-in for ``PythonSlicer`` (``pythonslicer_env``:
the wheel's ``slicer`` without the classes of loadable modules), as they do in the application.
The end-to-end test runs the same scenario as ``AutoimmuneAITest``.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "AutoimmuneAI"
MODULE_FILE = MODULE_DIR / "AutoimmuneAI.py"
LIB = MODULE_DIR / "AutoimmuneAILib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AutoimmuneAI.ui"
QT_FILES = (MODULE_FILE, LIB / "widgethelpers.py", LIB / "parameters.py")  # the Qt layer
QT_MODULES = {
    "qt",
    "ctk",
    "PythonQt",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "slicer.parameterNodeWrapper",
}

sys.path.insert(0, str(MODULE_DIR))  # AutoimmuneAILib, as Slicer puts the module folder on the path

from AutoimmuneAILib import registerPackage  # noqa: E402
from AutoimmuneAILib.labform import (  # noqa: E402
    checkEntry,
    checkSerology,
    cohortWarnings,
    formRows,
    readCohortCase,
    readTable,
    writeTable,
)
from AutoimmuneAILib.process import BackgroundProcess, parse_progress  # noqa: E402
from pythonslicer_env import make_pythonslicer  # noqa: E402

slicer = pytest.importorskip("slicer")


# -- the .ui and the code that uses it -------------------------------------------------------
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def ui_layouts() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    return {lay.get("name"): lay.get("class") for lay in root.iter("layout")}


def parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


def test_ui_is_qt_designer_xml_with_declared_custom_widgets():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "AutoimmuneAI"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"
    # Node selectors get the scene from the module widget.
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    selectors = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors <= receivers


SUFFIX_CLASSES = {
    "Button": {"QPushButton", "QToolButton", "ctkCollapsibleButton"},
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Selector": {"qMRMLNodeComboBox"},
    "LineEdit": {"QLineEdit", "ctkPathLineEdit"},
    "PathLineEdit": {"ctkPathLineEdit"},
    "ComboBox": {"QComboBox"},
    "Label": {"QLabel"},
    "TableWidget": {"QTableWidget"},
    "ProgressBar": {"QProgressBar"},
    "SpinBox": {"QDoubleSpinBox", "QSpinBox"},
    "GroupBox": {"QGroupBox"},
    "Frame": {"QFrame"},
    "CheckBox": {"QCheckBox"},
    "Layout": {"QFormLayout", "QVBoxLayout", "QHBoxLayout", "QGridLayout"},
}


def referenced_ui_names() -> dict[str, set[str]]:
    """``self.ui.NAME`` / ``ui.NAME`` in the Qt layer, with the attributes used on each."""
    out: dict[str, set[str]] = {}
    for path in QT_FILES:
        for match in re.finditer(r"\bui\.(\w+)(?:\.(\w+))?", path.read_text(encoding="utf-8")):
            out.setdefault(match.group(1), set()).add(match.group(2) or "")
    return out


def expected_classes(name: str) -> set[str]:
    suffix = max(
        (s for s in SUFFIX_CLASSES if name.lower().endswith(s.lower())), key=len, default=None
    )
    assert suffix, f"{name}: name does not say what widget it is"
    return SUFFIX_CLASSES[suffix]


def test_every_widget_the_code_uses_exists_with_the_expected_class():
    widgets, layouts = ui_widgets(), ui_layouts()
    referenced = referenced_ui_names()
    assert len(referenced) >= 20
    for name, attributes in referenced.items():
        actual = widgets[name].get("class") if name in widgets else layouts.get(name)
        assert actual is not None, f"self.ui.{name} is not in {UI_FILE.name}"
        assert actual in expected_classes(name), f"{name} is a {actual}"
        if "currentPath" in attributes:
            assert actual == "ctkPathLineEdit", f"{name}.currentPath needs a ctkPathLineEdit"
        if "currentData" in attributes or "addItems" in attributes:
            assert actual == "QComboBox"


def wrapper_fields() -> dict[str, ast.expr]:
    tree = ast.parse((LIB / "parameters.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert any(getattr(d, "id", "") == "parameterNodeWrapper" for d in cls.decorator_list)
    return {
        s.target.id: s.annotation
        for s in cls.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    }


def test_every_parameter_is_bound_to_a_widget_that_can_show_it():
    fields = wrapper_fields()
    assert {
        "inputVolume",
        "bundlePath",
        "targetClass",
        "attributionMethod",
        "evidenceBands",
        "conformalAlpha",
    } <= set(fields)
    bound = {}
    for widget in ui_widgets().values():
        param = parameter_name(widget)
        if param:
            assert param not in bound, f"{param} bound twice"
            bound[param] = widget.get("class")
    assert set(bound) == set(fields), (
        f"unbound: {set(fields) - set(bound)}, unknown: {set(bound) - set(fields)}"
    )
    for param, annotation in fields.items():
        text = ast.unparse(annotation)
        widget_class = bound[param]
        if "vtkMRML" in text:
            assert widget_class == "qMRMLNodeComboBox", param
        elif text == "Path":
            assert widget_class == "ctkPathLineEdit", param
        elif "Choice" in text:  # Slicer's combo-box connector needs the Choice annotation
            assert widget_class == "QComboBox", param
        elif text.startswith("Annotated[float") or text == "float":
            assert widget_class in ("QDoubleSpinBox", "ctkSliderWidget"), param
        elif text == "str":
            assert widget_class == "QLineEdit", param
        elif text == "bool":
            assert widget_class == "QCheckBox", param
        else:
            pytest.fail(f"{param}: no widget rule for {text}")


def test_attribution_methods_are_the_ones_predict_accepts():
    from AutoimmuneAILib.logic import METHODS

    from autoimmuneai.explain import attribution, methods

    assert METHODS is methods.METHODS is attribution.METHODS  # one list, where methods dispatch
    assert METHODS[0] == methods.DEFAULT_METHOD == "integrated_gradients"


# -- Python 3.12 (Slicer 5.10+) and no Qt below the module ------------------------------------
def module_sources() -> list[Path]:
    return sorted(MODULE_DIR.rglob("*.py"))


def test_every_module_file_compiles_under_python_3_12_syntax():
    removed_in_312 = {"imp", "distutils", "asynchat", "asyncore", "smtpd"}
    for path in module_sources():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path), feature_version=(3, 12))
        compile(tree, str(path), "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & removed_in_312, f"{path.name} imports {names & removed_in_312}"


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved in its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = "autoimmuneai" if "Logic" in path.parts else "AutoimmuneAILib"
    if path.parent.name == "synth":
        package = "autoimmuneai.synth"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                out.add(f"{base}.{node.module}" if node.module else base)
                if not node.module:
                    out |= {f"{base}.{a.name}" for a in node.names}
            else:
                out.add(node.module or "")
    return out


# -- Slicer 5.8 (Python 3.9) gets a one-line refusal, 5.10+ the module ----------------------------
GATE_FILES = (
    MODULE_FILE,
    LIB / "__init__.py",
    LIB / "compat.py",
)  # what Slicer imports before the version check has run


def only_310_constructs(tree: ast.AST) -> list[str]:
    """Python 3.10+ constructs that parse under 3.9's grammar but fail when they run there."""

    def union(node: ast.AST) -> bool:
        return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if any(k.arg == "strict" for k in node.keywords):
            found.append(f"line {node.lineno}: zip/map(strict=) needs 3.10")
        name = getattr(node.func, "id", "")
        if name in ("isinstance", "issubclass") and len(node.args) == 2 and union(node.args[1]):
            found.append(f"line {node.lineno}: {name}(x, A | B) needs 3.10")
    return found


@pytest.mark.parametrize("path", GATE_FILES, ids=lambda p: p.name)
def test_what_runs_before_the_version_check_is_python_3_9(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    assert not only_310_constructs(tree), only_310_constructs(tree)
    imported = imported_modules(path)
    heavy = {m for m in imported if m.startswith(("autoimmuneai", "AutoimmuneAILib."))}
    assert heavy <= {"AutoimmuneAILib.compat"}, f"{path.name} imports {heavy} before the check"
    # The check itself can fail:
    assert (
        len(only_310_constructs(ast.parse("isinstance(x, int | None)\nzip(a, strict=True)"))) == 2
    )


STAND_IN_APPLICATION = {
    # Just enough of the application's namespace for the module file to load (no Slicer here).
    "slicer/__init__.py": (
        "import os\n"
        "class _App:\n"
        "    def __init__(self):\n"
        "        self.majorVersion = int(os.environ['STAND_IN_SLICER'].split('.')[0])\n"
        "        self.minorVersion = int(os.environ['STAND_IN_SLICER'].split('.')[1])\n"
        "        self.cachePath = '.'\n"
        "        self.connected = []\n"
        "    def connect(self, signal, slot):\n"
        "        self.connected.append(signal)\n"
        "app = _App()\n"
    ),
    "slicer/i18n.py": "def tr(text):\n    return text\ndef translate(context, text):\n    return text\n",
    "slicer/util.py": "class VTKObservationMixin:\n    def __init__(self):\n        pass\n",
    "slicer/ScriptedLoadableModule.py": (
        "import unittest\n"
        "class _Layout:\n"
        "    def __init__(self):\n"
        "        self.widgets = []\n"
        "    def addWidget(self, widget):\n"
        "        self.widgets.append(widget)\n"
        "    def addStretch(self, factor):\n"
        "        pass\n"
        "class ScriptedLoadableModule:\n"
        "    def __init__(self, parent):\n"
        "        self.parent = parent\n"
        "class ScriptedLoadableModuleWidget:\n"
        "    def __init__(self, parent=None):\n"
        "        self.parent = parent\n"
        "        self.layout = _Layout()\n"
        "    def setup(self):\n"
        "        pass\n"
        "class ScriptedLoadableModuleTest(unittest.TestCase):\n"
        "    pass\n"
    ),
    "qt.py": (
        "class QLabel:\n"
        "    def __init__(self, text=''):\n"
        "        self.text = text\n"
        "        self.wordWrap = False\n"
    ),
    "vtk.py": "",
}

GATE_PROBE = """
import json, logging, sys, types
logged = []
class Keep(logging.Handler):
    def emit(self, record):
        logged.append(record.getMessage())
logging.getLogger().addHandler(Keep())
import slicer
import AutoimmuneAI
parent = types.SimpleNamespace()
AutoimmuneAI.AutoimmuneAI(parent)
widgets = []
if AutoimmuneAI.unsupported():
    widget = AutoimmuneAI.AutoimmuneAIWidget()
    widget.setup()
    widgets = [w.text for w in widget.layout.widgets]
print(json.dumps({
    "help": parent.helpText, "logged": logged, "connected": slicer.app.connected,
    "widgets": widgets,
    "loaded": sorted(m for m in sys.modules if m.startswith(("autoimmuneai.", "AutoimmuneAILib."))),
}))
"""


def python_39() -> str | None:
    """A Python 3.9 interpreter (Slicer 5.8's version) when this machine has one."""
    import shutil

    candidates = [*Path.home().glob(".pyenv/versions/3.9*/bin/python"), shutil.which("python3.9")]
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run(
            [str(candidate), "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if probe.stdout.strip() == "True":
            return str(candidate)
    return None


def run_gate(tmp_path: Path, python: str, slicer_version: str) -> dict:
    stand_in = tmp_path / "app"
    for name, text in STAND_IN_APPLICATION.items():
        (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_in / name).write_text(text, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(stand_in), str(MODULE_DIR)]),
        "STAND_IN_SLICER": slicer_version,
    }
    done = subprocess.run(
        [python, "-c", GATE_PROBE],
        env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_version_check_refuses_slicer_5_8_in_one_line_and_loads_nothing_else(tmp_path):
    from AutoimmuneAILib.compat import unsupportedReason

    reason = unsupportedReason((5, 8), (3, 9))
    assert "\n" not in reason and "5.8" in reason and "Python 3.9" in reason and "5.12" in reason
    assert unsupportedReason((5, 10), (3, 12)) == unsupportedReason((5, 13), (3, 12)) == ""
    assert unsupportedReason((5, 12), (3, 9)) != ""  # a 5.12 build on an old Python, too
    interpreters = [sys.executable] + ([python_39()] if python_39() else [])
    for python in interpreters:  # Slicer 5.8 runs Python 3.9: the refusal must run there
        out = run_gate(tmp_path / Path(python).name, python, "5.8")
        assert out["logged"] == [out["widgets"][0]], out
        assert out["widgets"][0].startswith("AutoimmuneAI needs 3D Slicer 5.10")
        assert out["help"].startswith(out["widgets"][0])
        assert out["connected"] == []  # no Sample Data entry, nothing else started
        assert out["loaded"] == ["AutoimmuneAILib.compat"], out["loaded"]


def test_version_check_lets_slicer_5_12_start_without_importing_the_library(tmp_path):
    out = run_gate(tmp_path, sys.executable, "5.12")
    assert out["logged"] == [] and out["connected"] == ["startupCompleted()"]
    assert out["loaded"] == ["AutoimmuneAILib.compat"]  # the library loads when first used
    assert "research use only" in out["help"].lower()


# -- every Slicer, Qt and CTK name the module uses, checked against Slicer's sources -------------
# One list, read by the tests below: NAME -> (file in github.com/Slicer/Slicer, text that defines
# NAME there, release branches it was read on). Read on the 5.10 and 5.12 branches while writing
# this list; test_slicer_api_list_matches_slicer_source re-reads them from a checkout
# (SLICER_SOURCE_DIR=/path/to/Slicer, a git clone with its release branches). Entries without a
# Slicer file come from PythonQt's generated Qt wrappers or from an extension, cited in the text.
UTIL = "Base/Python/slicer/util.py"
SLM = "Base/Python/slicer/ScriptedLoadableModule.py"
PNW = "Base/Python/slicer/parameterNodeWrapper/"
APP_H = "Base/QTCore/qSlicerCoreApplication.h"
SCENE_H = "Libs/MRML/Core/vtkMRMLScene.h"
BOTH = ("5.10", "5.12")
PYTHONQT = "PythonQt generated wrappers (generated_cpp*/com_trolltech_qt_gui), Slicer's qt module"
SLICER_API: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # slicer.util (Base/Python/slicer/util.py)
    "slicer.util.VTKObservationMixin": (UTIL, "class VTKObservationMixin", BOTH),
    "slicer.util.childWidgetVariables": (UTIL, "def childWidgetVariables(", BOTH),
    "slicer.util.confirmOkCancelDisplay": (UTIL, "def confirmOkCancelDisplay(", BOTH),
    "slicer.util.createProgressDialog": (UTIL, "def createProgressDialog(", BOTH),
    "slicer.util.errorDisplay": (UTIL, "def errorDisplay(", BOTH),
    "slicer.util.warningDisplay": (UTIL, "def warningDisplay(", BOTH),
    "slicer.util.loadUI": (UTIL, "def loadUI(", BOTH),
    "slicer.util.pip_install": (UTIL, "def pip_install(", BOTH),  # install.py (5.10)
    "slicer.util.resetThreeDViews": (UTIL, "def resetThreeDViews(", BOTH),
    "slicer.util.setSliceViewerLayers": (UTIL, "def setSliceViewerLayers(", BOTH),
    "slicer.util.showStatusMessage": (UTIL, "def showStatusMessage(", BOTH),
    "slicer.util.startupEnvironment": (UTIL, "def startupEnvironment(", BOTH),
    "slicer.util.tryWithErrorDisplay": (UTIL, "def tryWithErrorDisplay(", BOTH),
    # slicer.packaging: 5.12 and later only (install.py falls back to slicer.util on 5.10)
    "slicer.packaging.pip_ensure": ("Base/Python/slicer/packaging.py", "def pip_ensure(", ("5.12",)),
    # scripted-module framework and translation
    "slicer.ScriptedLoadableModule.ScriptedLoadableModule": (SLM, "class ScriptedLoadableModule:", BOTH),
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget": (SLM, "class ScriptedLoadableModuleWidget:", BOTH),
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic": (SLM, "class ScriptedLoadableModuleLogic:", BOTH),
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest": (SLM, "class ScriptedLoadableModuleTest(", BOTH),
    "slicer.i18n.tr": ("Base/Python/slicer/i18n.py", "def tr(", BOTH),
    "slicer.i18n.translate": ("Base/Python/slicer/i18n.py", "def translate(", BOTH),
    # parameter node wrapper and the GUI connectors the parameter types need
    "slicer.parameterNodeWrapper.parameterNodeWrapper": (PNW + "wrapper.py", "def parameterNodeWrapper(", BOTH),
    "slicer.parameterNodeWrapper.Choice": (PNW + "validators.py", "class Choice(", BOTH),
    "slicer.parameterNodeWrapper.WithinRange": (PNW + "validators.py", "class WithinRange(", BOTH),
    "parameter vtkMRMLScalarVolumeNode, vtkMRMLTableNode -> qMRMLNodeComboBox": (PNW + "guiConnectors.py", "class qMRMLNodeComboBoxToNodeConnector(", BOTH),
    "parameter Path -> ctkPathLineEdit": (PNW + "guiConnectors.py", "class ctkPathLineEditToPathConnector(", BOTH),
    "parameter str -> QLineEdit": (PNW + "guiConnectors.py", "class QLineEditToStrConnector(", BOTH),
    "parameter Annotated[str, Choice] -> QComboBox": (PNW + "guiConnectors.py", "class QComboBoxToStringableConnector(", BOTH),
    "parameter Annotated[float, WithinRange] -> QDoubleSpinBox": (PNW + "guiConnectors.py", "class QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector(", BOTH),
    "parameter bool -> QCheckBox": (PNW + "guiConnectors.py", "class QCheckBoxToBoolConnector(", BOTH),
    # the application object (only in the application; PythonSlicer has no slicer.app)
    "slicer.app": ("Base/Python/slicer/__init__.py", ".. py:attribute:: app", BOTH),
    "slicer.app.cachePath": (APP_H, "Q_PROPERTY(QString cachePath", BOTH),
    "slicer.app.majorVersion": (APP_H, "Q_PROPERTY(int majorVersion", BOTH),  # compat.py
    "slicer.app.minorVersion": (APP_H, "Q_PROPERTY(int minorVersion", BOTH),  # compat.py
    "slicer.app.connect": ("Base/QTGUI/qSlicerApplication.h", "void startupCompleted();", BOTH),
    "slicer.mrmlScene": ("Base/Python/slicer/__init__.py", ".. py:attribute:: mrmlScene", BOTH),
    "slicer.mrmlScene.AddNewNodeByClass": (SCENE_H, "vtkMRMLNode* AddNewNodeByClass(", BOTH),
    "slicer.mrmlScene.GetFirstNodeByClass": (SCENE_H, "vtkMRMLNode* GetFirstNodeByClass(", BOTH),
    "slicer.mrmlScene.StartCloseEvent": (SCENE_H, "StartCloseEvent = ", BOTH),
    "slicer.mrmlScene.EndCloseEvent": (SCENE_H, "EndCloseEvent = ", BOTH),
    "slicer.modules.plots.logic": ("Modules/Loadable/Plots/Logic/vtkSlicerPlotsLogic.h", "void ShowChartInLayout(vtkMRMLPlotChartNode* chartNode);", BOTH),
    "slicer.vtkMRMLScene": (SCENE_H, "class VTK_MRML_EXPORT vtkMRMLScene ", BOTH),
    "slicer.vtkMRMLScalarVolumeNode": ("Libs/MRML/Core/vtkMRMLScalarVolumeNode.h", "class VTK_MRML_EXPORT vtkMRMLScalarVolumeNode ", BOTH),
    "slicer.vtkMRMLTableNode": ("Libs/MRML/Core/vtkMRMLTableNode.h", "class VTK_MRML_EXPORT vtkMRMLTableNode ", BOTH),
    # Sample Data: a custom downloader is called from the module's button only, with the source
    "SampleData.SampleDataLogic.registerCustomSampleDataSource": ("Modules/Scripted/SampleData/SampleData.py", "def registerCustomSampleDataSource(", BOTH),
    "SampleData customDownloader(source)": ("Modules/Scripted/SampleData/SampleData.py", 'b.connect("clicked()", lambda s=source: s.customDownloader(s))', BOTH),
    # the PyTorch extension (github.com/fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py)
    "PyTorchUtils.PyTorchUtilsLogic": ("", "SlicerPyTorch: PyTorchUtilsLogic.installTorch(askConfirmation, torchVersionRequirement)", ()),
    # Qt classes (PythonQt) and the .ui's widget classes
    "qt.QBrush": ("Modules/Scripted/ExtensionWizard/ExtensionWizardLib/EditableTreeWidget.py", "qt.QBrush", BOTH),
    "qt.QColor": (PNW + "guiConnectors.py", "qt.QColor", BOTH),
    "qt.QCompleter": ("", PYTHONQT + ": PythonQtWrapper_QCompleter", ()),
    "qt.QStringListModel": ("", PYTHONQT + ": PythonQtWrapper_QStringListModel", ()),
    "qt.QFormLayout": ("Applications/SlicerApp/Testing/Python/AtlasTests.py", "qt.QFormLayout", BOTH),
    "qt.QHBoxLayout": (SLM, "qt.QHBoxLayout", BOTH),
    "qt.QLabel": ("Applications/SlicerApp/Testing/Python/UtilTest.py", "qt.QLabel", BOTH),
    "qt.QLineEdit": (PNW + "guiConnectors.py", "qt.QLineEdit", BOTH),
    "qt.QTableWidgetItem": ("Modules/Scripted/DICOMLib/DICOMBrowser.py", "qt.QTableWidgetItem", BOTH),
    "qt.QTimer.singleShot": ("Applications/SlicerApp/Testing/Python/WebEngine.py", "qt.QTimer.singleShot", BOTH),
    "qt.QProgressDialog (createProgressDialog, canceled())": (UTIL, "qt.QProgressDialog", BOTH),
    "ui qMRMLWidget": ("Libs/MRML/Widgets/qMRMLWidget.h", "class QMRML_WIDGETS_EXPORT qMRMLWidget", BOTH),
    "ui qMRMLNodeComboBox": ("Libs/MRML/Widgets/qMRMLNodeComboBox.h", "class QMRML_WIDGETS_EXPORT qMRMLNodeComboBox", BOTH),
    "slicer.qMRMLNodeComboBox": ("Libs/MRML/Widgets/qMRMLNodeComboBox.h", "Q_PROPERTY(QString noneDisplay READ noneDisplay WRITE setNoneDisplay)", BOTH),  # widgethelpers.ChannelSelectors
    "ui ctkCollapsibleButton": ("Base/QTApp/Resources/UI/qSlicerMainWindow.ui", "ctkCollapsibleButton", BOTH),
    "ui ctkPathLineEdit": ("Applications/SlicerApp/Testing/Python/Resources/UI/ScenePerformance.ui", 'class="ctkPathLineEdit"', BOTH),
    "ui QDoubleSpinBox, QTableWidget, QProgressBar, QComboBox, QPushButton, QLineEdit, QLabel, QFrame, QCheckBox": ("", "QtWidgets classes, created by Slicer's .ui loader (ctk/Qt designer plugins)", ()),
}  # fmt: skip

QT_LAYER = (MODULE_FILE, *sorted(LIB.glob("*.py")))
ROOTS = ("slicer", "qt", "ctk", "SampleData", "PyTorchUtils")


def slicer_names_used() -> set[str]:
    """``slicer.X.Y``, ``qt.X``, ``ctk.X``, ... as the module's code writes them (longest chains)."""

    def dotted(node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None

    used: set[str] = set()
    for path in QT_LAYER:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ROOTS:
                used |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Attribute):
                name = dotted(node)
                if name and name.split(".")[0] in ROOTS:
                    used.add(name)
    return {n for n in used if not any(o.startswith(n + ".") for o in used)}


def test_every_slicer_qt_and_ctk_name_the_module_uses_is_on_the_checked_list():
    used = slicer_names_used()
    assert len(used) >= 30
    unlisted = sorted(
        n for n in used if n not in SLICER_API and not n.startswith(("slicer.vtkMRML",))
    )
    assert not unlisted, f"add these to SLICER_API (with where Slicer defines them): {unlisted}"
    # MRML classes imported from slicer must be listed too
    mrml = sorted(n for n in used if n.startswith("slicer.vtkMRML") and n not in SLICER_API)
    assert not mrml, mrml
    # The .ui's custom widget classes and the parameter types are on the list:
    custom = {c.findtext("class") for c in ET.parse(UI_FILE).getroot().iter("customwidget")}
    assert {f"ui {c}" for c in custom} <= set(SLICER_API), custom
    annotations = {ast.unparse(a) for a in wrapper_fields().values()}
    assert annotations <= {
        "vtkMRMLScalarVolumeNode", "vtkMRMLTableNode", "Path", "str",
        "Annotated[str, Choice(list(METHODS))]", "Annotated[str, Choice(list(BANDS))]",
        "Annotated[float, WithinRange(0.01, 0.5)]", "bool",
    }, annotations  # fmt: skip
    for entry, (source, text, branches) in SLICER_API.items():
        assert text and (source or not branches), f"{entry}: no citation"


def slicer_git_dir() -> Path | None:
    """The git directory of a Slicer clone named by SLICER_SOURCE_DIR (work tree or bare)."""
    path = Path(os.environ.get("SLICER_SOURCE_DIR", "") or "/nonexistent")
    for candidate in (path / ".git", path):
        if (candidate / "HEAD").is_file():
            return candidate
    return None


def test_slicer_api_list_matches_slicer_source():
    """Re-reads every cited definition on Slicer's 5.10 and 5.12 branches (needs a checkout)."""
    git_dir = slicer_git_dir()
    if git_dir is None:
        pytest.skip("set SLICER_SOURCE_DIR to a git clone of github.com/Slicer/Slicer")
    cache: dict[tuple[str, str], str] = {}
    missing = []
    for entry, (source, text, branches) in SLICER_API.items():
        for branch in branches:
            key = (branch, source)
            if key not in cache:
                shown = subprocess.run(
                    ["git", f"--git-dir={git_dir}", "show", f"{branch}:{source}"],
                    capture_output=True, text=True, encoding="utf-8", errors="replace", check=False,
                )  # fmt: skip
                cache[key] = shown.stdout if shown.returncode == 0 else ""
            if text not in cache[key]:
                missing.append(f"{entry}: {text!r} not in {branch}:{source}")
    assert not missing, "\n".join(missing)
    # And the 5.12-only entry really is absent from 5.10 (the list says which branches):
    shown = subprocess.run(
        ["git", f"--git-dir={git_dir}", "cat-file", "-e", "5.10:Base/Python/slicer/packaging.py"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert shown.returncode != 0


def package_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = MODULE_DIR / "Logic" / Path(*parts) if parts else MODULE_DIR / "Logic"
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_module_imports_nothing_from_autoimmuneai_that_needs_qt():
    seen: set[Path] = set()
    todo = [
        m
        for f in [MODULE_FILE, *LIB.glob("*.py")]
        for m in imported_modules(f)
        if m.startswith("autoimmuneai")
    ]
    assert todo, "the module should use the package"
    while todo:
        path = package_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        imports = imported_modules(path)
        assert not {m.split(".")[0] for m in imports} & QT_MODULES, f"{path.name} imports Qt"
        assert "slicer.ScriptedLoadableModule" not in imports
        todo += [m for m in imports if m.startswith("autoimmuneai")]
    assert len(seen) >= 3
    # And the whole package, not only what the module uses today:
    for path in (MODULE_DIR / "Logic").rglob("*.py"):
        assert not {m.split(".")[0] for m in imported_modules(path)} & {"qt", "ctk"}, path


def test_gui_free_library_imports_without_qt():
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import AutoimmuneAILib.logic, AutoimmuneAILib.labform, AutoimmuneAILib.process
        import AutoimmuneAILib.install, AutoimmuneAILib.compat, AutoimmuneAILib.demo
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt'))
        print(bad)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_logic_folder_is_registered_as_autoimmuneai_when_not_installed():
    module = registerPackage("autoimmuneai_registered_copy", MODULE_DIR / "Logic")
    try:
        assert module.__registeredFrom__ == str(MODULE_DIR / "Logic")
        from autoimmuneai_registered_copy.data.panel import load_panel  # relative imports work

        assert load_panel().classes[:2] == ("MS", "NMOSD")
        with pytest.raises(ImportError):
            registerPackage("autoimmuneai_nowhere", MODULE_DIR / "no-such-folder")
    finally:
        for name in [m for m in sys.modules if m.startswith("autoimmuneai_registered_copy")]:
            del sys.modules[name]


# -- background process ----------------------------------------------------------------------
def test_progress_is_read_from_tqdm_and_counts_but_not_titres():
    assert parse_progress("predict:  40%|####      | 2/5 [00:01<00:01]").fraction == pytest.approx(
        0.4
    )
    assert parse_progress("case 3/12 done").fraction == pytest.approx(0.25)
    assert parse_progress("AQP4-IgG 1:160").fraction is None
    assert parse_progress("date 2024/01/05").fraction is None
    assert parse_progress("epoch 7/5").fraction is None


def test_background_process_reports_progress_lines_and_exit_status():
    script = "import sys,time\nfor i in range(1,5):\n    print(f'step {i}/4', flush=True)\n    sys.stderr.write(f'\\r{25*i}%|##|\\r'); sys.stderr.flush()\nsys.exit(3)"
    seen, lines = [], []
    proc = BackgroundProcess(
        [sys.executable, "-c", script],
        onLine=lines.append,
        onProgress=lambda p: seen.append(p.fraction),
    )
    proc.start()
    assert proc.wait(timeout=60) == 3
    assert "step 4/4" in lines and "100%|##|" in lines
    assert seen[-1] == 1.0 and min(seen) == 0.25
    assert all(b >= a for a, b in zip(seen[::2], seen[2::2]))


def test_cancel_kills_the_whole_process_tree():
    child = "import subprocess,sys,time\np=subprocess.Popen([sys.executable,'-c','import time; time.sleep(120)'])\nprint('grandchild', p.pid, flush=True)\ntime.sleep(120)"
    proc = BackgroundProcess([sys.executable, "-c", child])
    proc.start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("grandchild") for line in proc.lines):
        proc.poll()
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.05)
    grandchild = int(next(line for line in proc.lines if line.startswith("grandchild")).split()[1])
    started = time.monotonic()
    proc.cancel()
    assert proc.wait(timeout=20) < 0  # CANCELLED
    assert time.monotonic() - started < 15
    for _ in range(100):  # the grandchild is gone too (reaped by init once killed)
        try:
            os.kill(grandchild, 0)
            with open(f"/proc/{grandchild}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild still running after cancel")


# -- serology form -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def panel():
    from autoimmuneai.data.panel import load_panel

    return load_panel("cns_autoimmune")


def test_form_rows_follow_the_panel_with_units_and_ranges(panel):
    rows = formRows(panel)
    assert [r.name for r in rows] == list(panel.feature_names)
    c3 = next(r for r in rows if r.name == "c3")
    assert c3.unit == panel.feature("c3").unit and c3.unit
    assert "Plausible range" in c3.tooltip
    aqp4 = next(r for r in rows if r.name == "aqp4_igg")
    assert aqp4.unit == "" and "1:160" in aqp4.placeholder


def test_bad_values_are_flagged_with_a_reason_and_missing_is_allowed(panel):
    aqp4 = panel.feature("aqp4_igg")
    assert checkEntry("1:640", aqp4).value.value == 640
    assert checkEntry("", aqp4).ok and checkEntry("", aqp4).value.missing
    bad = checkEntry("lots", aqp4)
    assert not bad.ok and "titre" in bad.error and bad.display(aqp4) == bad.error
    assert not checkEntry("-5 g/L", panel.feature("c3")).ok
    checks = checkSerology({"aqp4_igg": "1:640", "ocb": "maybe"}, panel)
    assert checks["aqp4_igg"].ok and not checks["ocb"].ok and checks["c3"].ok
    from autoimmuneai.errors import InputError

    with pytest.raises(InputError, match="not_a_lab"):
        checkSerology({"not_a_lab": "1"}, panel)


def test_serology_values_are_stored_in_a_table_node(panel):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", "Serology")
    values = {"aqp4_igg": "1:640", "c3": "95 mg/dL", "sex": "F"}
    writeTable(node, values, panel)
    assert node.GetTable().GetNumberOfRows() == len(panel.features)
    assert node.GetAttribute("AutoimmuneAI.panel") == panel.name
    assert readTable(node) == values


def test_load_from_cohort_file_by_case_id(tmp_path, panel):
    manifest = tmp_path / "cohort.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "image_flair", "aqp4_igg", "ocb", "patient_name"])
        w.writerow(["p1", "a.nii.gz", "1:320", "pos", "Jane Doe"])
        w.writerow(["p2", "b.nii.gz", "neg", "", "John Roe"])
    values = readCohortCase(manifest, "p2", panel)
    assert values == {"aqp4_igg": "neg", "ocb": ""}
    assert "patient_name" not in readCohortCase(manifest, "p1", panel)
    from autoimmuneai.errors import InputError

    with pytest.raises(InputError, match="p9"):
        readCohortCase(manifest, "p9", panel)


# -- logic on real MRML --------------------------------------------------------------------------
def oblique_affine() -> np.ndarray:
    a = np.deg2rad(15)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    affine[:3, 3] = [-30.0, -40.0, -20.0]
    return affine


def fake_bundle(tmp_path: Path, panel_value) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(
        json.dumps({"panel": panel_value}), encoding="utf-8"
    )
    return bundle


def test_bundle_is_checked_and_its_panel_read(tmp_path, panel):
    from AutoimmuneAILib.logic import checkBundle, panelForBundle
    from example_panel import EXAMPLE_PANEL

    from autoimmuneai.errors import BundleError

    with pytest.raises(BundleError, match="no configs/metadata.json"):
        checkBundle(tmp_path)
    with pytest.raises(BundleError, match="no model bundle"):
        checkBundle("")
    bundle = fake_bundle(tmp_path, json.loads(Path(panel.source).read_text(encoding="utf-8")))
    assert panelForBundle(bundle).feature_names == panel.feature_names
    assert checkBundle(bundle / "configs" / "metadata.json") == bundle
    (bundle / "configs" / "metadata.json").write_text(
        json.dumps({"panel": EXAMPLE_PANEL}), encoding="utf-8"
    )
    assert panelForBundle(bundle).classes == ("RA", "PsA", "OA")  # a family the code never names
    (bundle / "configs" / "metadata.json").write_text(
        json.dumps({"panel": "cns_autoimmune"}), encoding="utf-8"
    )
    assert panelForBundle(bundle).name == "cns_autoimmune"  # a built-in panel named by the bundle


def test_case_inputs_are_written_in_the_cohort_contract(tmp_path, panel):
    from AutoimmuneAILib.logic import writeCaseInputs

    from autoimmuneai.data.imaging import Volume, load_volume
    from autoimmuneai.output.mrml import volume_to_node

    scene = slicer.vtkMRMLScene()
    array = np.zeros((20, 24, 16), np.float32)
    array[5:9, 10:14, 4:8] = 100.0
    node = volume_to_node(scene, Volume(array, oblique_affine()), "FLAIR")
    manifest = writeCaseInputs(tmp_path, "c1", node, {"aqp4_igg": "1:640"}, panel)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case_id"] == "c1" and rows[0]["aqp4_igg"] == "1:640"
    assert set(panel.feature_names) <= set(rows[0]) and rows[0]["c3"] == ""
    written = load_volume(tmp_path / rows[0]["image_flair"])
    np.testing.assert_allclose(written.affine, oblique_affine(), atol=1e-4)
    np.testing.assert_array_equal(written.array, array)


def test_a_bad_lab_value_is_refused_before_anything_runs(tmp_path, panel):
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    from autoimmuneai.errors import InputError

    bundle = fake_bundle(tmp_path, panel.name)
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene())
    with pytest.raises(InputError, match="column c3"):
        logic.process(None, {"c3": "high"}, bundle)
    with pytest.raises(InputError, match="not a class"):
        logic.process(None, {"age": "40", "sex": "F"}, bundle, targetClass="Flu")


def write_case(case_dir: Path, panel) -> tuple[dict, np.ndarray]:
    """A case folder as ``predict --explain`` writes it, with the package's own writer."""
    from autoimmuneai.data.imaging import Volume
    from autoimmuneai.output import mrml

    image = np.random.default_rng(0).normal(100, 5, (24, 28, 20)).astype(np.float32)
    labelmap = np.zeros(image.shape, np.uint8)
    labelmap[4:8, 5:9, 3:6] = 1
    labelmap[14:18, 15:20, 10:14] = 2
    attribution = labelmap.astype(np.float32) * 0.5
    segments = [
        mrml.SegmentSpec(1, "Evidence for MS - region 1, 0.4 mL, 40%", (0.9, 0.1, 0.1), "top 1%"),
        mrml.SegmentSpec(2, "Evidence for MS - region 2, 0.6 mL, 20%", (1.0, 0.8, 0.0), "top 5%"),
    ]
    probabilities = dict(zip(panel.classes, (0.55, 0.25, 0.1, 0.06, 0.04)))
    times, surv = [0.0, 12.0, 24.0, 36.0], [1.0, 0.9, 0.75, 0.6]
    labs = [
        {"feature": "ocb", "label": "CSF oligoclonal bands", "value": "pos", "unit": "", "contribution": 0.3},
        {"feature": "aqp4_igg", "label": "AQP4-IgG", "value": "neg", "unit": "", "contribution": -0.1},
    ]  # fmt: skip
    mrml.write_case_scene(
        case_dir, image=Volume(image, oblique_affine()), attribution=Volume(attribution, oblique_affine()),
        labelmap=labelmap, segments=segments, lab_contributions=labs, probabilities=probabilities,
        survival=(times, surv), class_name="MS",
    )  # fmt: skip
    prediction = {
        "case_id": case_dir.name, "classes": list(panel.classes), "probabilities": probabilities,
        "predicted": "MS", "prediction_set": ["MS", "NMOSD"], "alpha": 0.1, "risk_score": 0.4,
        "risk_group": "high", "survival": {"times_months": times, "probability": surv},
        "warnings": ["voxel size far from training"], "risk_by_class": {},
        "explanation": {"explained_class": "MS"}, "regions": [], "lab_contributions": labs,
        "modality_share": {"image": 0.6, "serology": 0.4},
    }  # fmt: skip
    (case_dir / "prediction.json").write_text(json.dumps(prediction), encoding="utf-8")
    return prediction, image


def test_case_outputs_become_nodes_and_the_scene_survives_save_and_reload(tmp_path, panel):
    from AutoimmuneAILib.demo import checkReloaded
    from AutoimmuneAILib.logic import AutoimmuneAILogic, PredictionResult, loadScene, saveScene

    from autoimmuneai.data.imaging import Volume
    from autoimmuneai.output.mrml import volume_to_node

    prediction, image = write_case(tmp_path / "c1", panel)
    scene = slicer.vtkMRMLScene()
    volume = volume_to_node(scene, Volume(image, oblique_affine()), "FLAIR")
    assert volume.GetDisplayNode() is not None  # slice views show nothing without one
    logic = AutoimmuneAILogic(scene=scene)
    nodes = logic.importCase(tmp_path / "c1", prediction, volume)
    result = PredictionResult("c1", tmp_path / "c1", prediction, nodes)
    assert result.predictionSet == ["MS", "NMOSD"] and result.riskGroup == "high"
    assert result.modalityShare == {"image": 0.6, "serology": 0.4}
    assert result.survival == ([0.0, 12.0, 24.0, 36.0], [1.0, 0.9, 0.75, 0.6])
    assert (
        nodes["image"] is volume and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    )
    assert nodes["attribution"].GetDisplayNode() is not None
    seg = nodes["segmentation"]
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume
    names = [
        seg.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(seg.GetSegmentation().GetNumberOfSegments())
    ]
    assert names == [
        "Evidence for MS - region 1, 0.4 mL, 40%",
        "Evidence for MS - region 2, 0.6 mL, 20%",
    ]
    for role in ("probability_chart", "survival_chart", "lab_chart"):
        assert (
            nodes[role].IsA("vtkMRMLPlotChartNode")
            and nodes[role].GetNumberOfPlotSeriesNodes() == 1
        )
    assert nodes["survival"].GetTable().GetNumberOfRows() == 4
    scene.SetURL("/user/scenes/mine.mrml")
    scene.SetRootDirectory("/user/scenes")
    stored = nodes["attribution"].GetStorageNode().GetFileName()
    reloaded = loadScene(saveScene(scene, tmp_path / "saved"))
    # Saving a copy leaves where the user's scene and its data are saved as they were.
    assert scene.GetURL() == "/user/scenes/mine.mrml"
    assert scene.GetRootDirectory() == "/user/scenes"
    assert nodes["attribution"].GetStorageNode().GetFileName() == stored
    checkReloaded(scene, reloaded)
    seg2 = reloaded.GetFirstNodeByName(seg.GetName())
    assert seg2.GetSegmentation().GetNumberOfSegments() == 2
    broken = reloaded.GetFirstNodeByName(volume.GetName())
    assert broken.GetDisplayNode() is not None
    from autoimmuneai.output.mrml import node_to_volume

    np.testing.assert_allclose(node_to_volume(broken).array, image, rtol=1e-6)


def chart_series(chart):
    return [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]


def test_a_prediction_without_explanation_gets_the_same_tables_and_charts(tmp_path, panel):
    from AutoimmuneAILib.logic import AutoimmuneAILogic, probabilityChanges

    prediction, _ = write_case(tmp_path / "c1", panel)
    scenes = [slicer.vtkMRMLScene() for _ in range(3)]  # kept alive: nodes refer to their scene
    explained = AutoimmuneAILogic(scene=scenes[0]).importCase(tmp_path / "c1", prediction)
    case = tmp_path / "c2"
    case.mkdir()
    (case / "prediction.json").write_text(
        json.dumps({**prediction, "case_id": "c2"}), encoding="utf-8"
    )
    nodes = AutoimmuneAILogic(scene=scenes[1]).importCase(case, prediction)
    for role in ("probabilities", "survival", "lab_contributions"):  # same columns, same rows
        a, b = explained[role].GetTable(), nodes[role].GetTable()
        columns = [a.GetColumnName(i) for i in range(a.GetNumberOfColumns())]
        assert columns == [b.GetColumnName(i) for i in range(b.GetNumberOfColumns())], role
        assert a.GetNumberOfRows() == b.GetNumberOfRows(), role
    table = nodes["probabilities"].GetTable()
    assert [table.GetValueByName(i, "class").ToString() for i in range(5)] == list(panel.classes)
    for role in ("probability_chart", "survival_chart", "lab_chart"):
        mine, theirs = chart_series(nodes[role]), chart_series(explained[role])
        assert [s.GetPlotType() for s in mine] == [s.GetPlotType() for s in theirs], role
        assert [s.GetXColumnName() for s in mine] == [s.GetXColumnName() for s in theirs], role
    survival = chart_series(nodes["survival_chart"])[0]
    # A curve against its months column: a scatter series drawn as a line (PlotTypeLine would
    # space the points equally and ignore the x column).
    assert survival.GetPlotType() == survival.PlotTypeScatter
    assert survival.GetLineStyle() == survival.LineStyleSolid
    assert survival.GetXColumnName() == "time"
    for role in ("survival_chart", "probability_chart"):
        chart = nodes[role]
        assert not chart.GetYAxisRangeAuto() and list(chart.GetYAxisRange()) == [0.0, 1.0]
    labs = nodes["lab_contributions"].GetTable()
    assert labs.GetValueByName(0, "label").ToString() == "CSF oligoclonal bands"
    without_labs = {k: v for k, v in prediction.items() if k != "lab_contributions"}
    plain = AutoimmuneAILogic(scene=scenes[2]).importCase(case, without_labs)
    assert "lab_chart" not in plain and "survival_chart" in plain
    after = {"probabilities": {**prediction["probabilities"], "MS": 0.25, "NMOSD": 0.55}}
    changes = probabilityChanges(prediction, after)
    assert {c[0] for c in changes[:2]} == {"MS", "NMOSD"}
    assert {c[0]: c[3] for c in changes}["MS"] == pytest.approx(-0.3)
    assert math.isclose(sum(c[3] for c in changes), 0.0, abs_tol=1e-9)


def test_the_command_runs_the_same_package_code():
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene())
    command = logic.cliCommand("predict", "--help")
    assert command[:3] == [sys.executable, "-m", "AutoimmuneAILib.cli"]  # as inside Slicer
    done = subprocess.run(
        command,
        env=logic.childEnvironment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    options = set(re.findall(r"--[a-z][a-z-]+", done.stdout))
    used = {"--bundle", "--cohort", "--out", "--explain", "--no-snapshot", "--target"}
    used |= {"--method", "--alpha", "--bands", "--resume"}  # every option the logic passes
    assert used <= options, used - options


# -- end to end, in the background processes the application starts -------------------------
def demo_processes(test):
    """Marks a test that trains the demo model and runs background processes: slow, and kept on
    one pytest-xdist worker (with ``--dist loadgroup``) so the demo is prepared once."""
    return pytest.mark.slow(pytest.mark.xdist_group("slicer_demo")(test))


class TimerLoop:
    """Stands in for ``qt.QTimer.singleShot`` (the logic's scheduler): runs due callbacks."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, object]] = []

    def __call__(self, ms: int, callback) -> None:
        self.pending.append((time.monotonic() + ms / 1000.0, callback))

    def run_until(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            now = time.monotonic()
            due = [p for p in self.pending if p[0] <= now]
            self.pending = [p for p in self.pending if p[0] > now]
            for _, callback in due:
                callback()
            time.sleep(0.02)


@pytest.fixture(scope="module")
def python_slicer(tmp_path_factory) -> str:
    """The stand-in PythonSlicer: what the module's background processes run in Slicer."""
    return str(make_pythonslicer(tmp_path_factory.mktemp("pythonslicer")))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, python_slicer):
    """ "Load demo case" / Sample Data: the demo prepared by a background job, polled on a timer."""
    from AutoimmuneAILib.demo import DemoCase, prepareDemo
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    work = tmp_path_factory.mktemp("demo")
    loop = TimerLoop()
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene(), python=python_slicer, scheduler=loop)
    lines, fractions, ended = [], [], []
    started = time.monotonic()
    job = prepareDemo(
        work, logic=logic, waitForCompletion=False, onLine=lines.append,
        onProgress=lambda p: fractions.append(p.fraction), onFinished=ended.append,
    )  # fmt: skip
    returned_after = time.monotonic() - started
    assert not job.done and job.process.isRunning()
    loop.run_until(lambda: job.done, timeout=900)
    assert ended == [job] and job.error is None, (job.error, lines[-5:])
    assert isinstance(job.result, DemoCase)
    return {
        "work": work,
        "job": job,
        "lines": lines,
        "fractions": fractions,
        "returned": returned_after,
    }


@demo_processes
def test_demo_is_prepared_in_a_background_process_with_progress(demo_dir):
    """The GUI thread only starts the job and polls it: it returns at once, progress arrives."""
    job, lines = demo_dir["job"], demo_dir["lines"]
    assert demo_dir["returned"] < 5.0  # no minute-long subprocess.run in the GUI thread
    assert any("loadable-module names removed" in line for line in lines)  # ran as PythonSlicer
    assert "Generating the demo cohort (step 1 of 2)" in lines
    assert "Training the demo model (step 2 of 2)" in lines
    assert lines[-1] == "Demo model ready"
    assert demo_dir["fractions"] and max(demo_dir["fractions"]) == 1.0
    demo = job.result
    assert (demo.bundlePath / "configs" / "metadata.json").is_file()
    assert demo.manifestPath.is_file() and demo.imagePath.is_file() and demo.serology


@demo_processes
def test_demo_job_can_be_cancelled(tmp_path, python_slicer, demo_dir):
    from AutoimmuneAILib.demo import prepareDemo
    from AutoimmuneAILib.logic import AutoimmuneAILogic, ProcessingCancelled

    shutil.copytree(demo_dir["work"] / "cohort", tmp_path / "cohort")  # training is what runs
    loop = TimerLoop()
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene(), python=python_slicer, scheduler=loop)
    lines: list[str] = []
    job = prepareDemo(tmp_path, logic=logic, waitForCompletion=False, onLine=lines.append)
    loop.run_until(lambda: "Training the demo model (step 2 of 2)" in lines, timeout=120)
    job.cancel()
    loop.run_until(lambda: job.done, timeout=60)
    assert isinstance(job.error, ProcessingCancelled)
    assert not (tmp_path / "bundle" / "configs" / "metadata.json").is_file()


@demo_processes
def test_demo_volume_is_shown_with_a_display_node(demo_dir):
    from AutoimmuneAILib.demo import loadDemoVolume

    scene = slicer.vtkMRMLScene()
    volume = loadDemoVolume(scene, demo_dir["job"].result)
    display = volume.GetDisplayNode()
    assert display is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode")
    assert volume.GetImageData().GetDimensions()[0] > 10


@pytest.fixture(scope="module")
def demo_run(demo_dir, python_slicer):
    """Run + import + save/reload (the self-test's scenario), the child in PythonSlicer's namespace."""
    from AutoimmuneAILib.demo import runDemoScenario
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene(), python=python_slicer)
    result, reloaded = runDemoScenario(demo_dir["work"], logic=logic)
    return demo_dir["work"], result, reloaded, logic


@demo_processes
def test_run_in_pythonslicer_namespace_brings_the_evidence_segmentation_into_the_scene(demo_run):
    """The Run button's path: ``predict --explain`` in the background, results in the scene."""
    _, result, reloaded, logic = demo_run
    segmentation = result.nodes["segmentation"]
    assert segmentation.GetScene() is logic.scene
    segments = segmentation.GetSegmentation()
    names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
    assert names and all(
        n.startswith(f"Evidence for {result.prediction['explanation']['explained_class']}")
        for n in names
    )
    from vtkmodules.vtkCommonCore import reference

    tag = reference("")
    first = segments.GetNthSegment(0)
    assert first.GetTag(first.GetTerminologyEntryTagName(), tag) and "Reference Region" in str(tag)
    assert (result.caseDir / "evidence.seg.nrrd").is_file()
    assert not (result.caseDir / "snapshot.png").exists()  # the module shows Slicer's own views
    count = reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    names = {
        reloaded.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName() for i in range(count)
    }
    # the demo bundle has the clinical-scan stage: its brain mask comes in beside the evidence
    assert result.quality.available and result.quality.figures
    assert names == {f"{result.caseId} evidence", f"{result.caseId} brain mask"}


@demo_processes
def test_class_switch_and_what_if_in_pythonslicer_namespace(demo_run):
    from AutoimmuneAILib.demo import loadDemoVolume, prepareDemo

    work, before, _, logic = demo_run
    demo = prepareDemo(work, logic=logic)  # already prepared: returns at once
    volume = loadDemoVolume(logic.scene, demo)
    other = next(c for c in before.classes if c != before.predicted)
    switched = logic.process(
        volume, demo.serology, demo.bundlePath, caseId=demo.caseId, targetClass=other
    )
    assert switched.prediction["explanation"]["explained_class"] == other
    seg = switched.nodes["segmentation"].GetSegmentation()
    assert seg.GetNumberOfSegments() >= 1 and other in seg.GetNthSegment(0).GetName()
    assert switched.probabilities == before.probabilities  # same case, another explanation
    charts = logic.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode")
    strong = logic.whatIf(volume, demo.serology, demo.bundlePath, "aqp4_igg", "1:10000")
    assert set(strong.probabilities) == set(before.probabilities)
    assert strong.probabilities != before.probabilities
    assert (
        strong.nodes == {} and logic.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == charts
    )


def test_the_pythonslicer_stand_in_has_no_loadable_module_classes(python_slicer):
    """The stand-in is what the test above relies on: the old module-logic calls fail in it."""
    code = (
        "import slicer, numpy\n"
        "assert not hasattr(slicer, 'vtkSlicerSegmentationsModuleLogic')\n"
        "assert not hasattr(slicer, 'vtkSlicerTerminologyEntry') and not hasattr(slicer, 'app')\n"
        "assert hasattr(slicer, 'vtkMRMLSegmentationNode') and hasattr(slicer, 'vtkSegment')\n"
        "try:\n"
        "    import slicer_core.vtkSlicerTerminologiesModuleLogic\n"
        "except ImportError:\n"
        "    print('blocked', len(REMOVED))\n"
    )
    done = subprocess.run([python_slicer, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("blocked") and int(done.stdout.split()[1]) > 50


@demo_processes
def test_what_if_and_cohort_batch_on_the_demo(demo_run):
    from AutoimmuneAILib.demo import prepareDemo

    from autoimmuneai.contracts import ERRORS_CSV_COLUMNS, predictions_csv_columns
    from autoimmuneai.data.cohort import read_manifest

    work, _, _, logic = demo_run
    demo = prepareDemo(work, logic=logic)
    table = read_manifest(demo.manifestPath).head(3).copy()
    table.loc[2, "image_flair"] = "missing.nii.gz"
    manifest = demo.manifestPath.parent / "three.csv"
    table.to_csv(manifest, index=False)
    summary = logic.processCohort(manifest, demo.bundlePath, work / "batch", explain=False)
    assert (summary.nOk, summary.nFailed) == (2, 1)
    assert summary.errors[0]["case_id"] == table.loc[2, "case_id"]
    with open(summary.predictionsPath, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == predictions_csv_columns(list(demo_run[1].classes))
    with open(summary.errorsPath, newline="", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == ERRORS_CSV_COLUMNS
    again = logic.processCohort(manifest, demo.bundlePath, work / "batch", explain=False)
    assert (again.nOk, again.nFailed) == (2, 1)


@demo_processes
def test_prediction_json_has_exactly_the_contract_keys(demo_run):
    from autoimmuneai.contracts import EXPLANATION_KEYS, OPTIONAL_KEYS, PREDICTION_KEYS, Survival

    _, result, _, _ = demo_run
    written = json.loads((result.caseDir / "prediction.json").read_text(encoding="utf-8"))
    required = set(PREDICTION_KEYS) | set(EXPLANATION_KEYS)
    assert required <= set(written) <= required | set(OPTIONAL_KEYS), set(written) ^ required
    assert set(written["survival"]) == set(Survival.__annotations__)
    assert len(result.survival[0]) == len(result.survival[1]) >= 2


def test_the_writer_is_checked_against_the_contract():
    """The predictor's dataclass is checked against the prediction.json TypedDict at import: a
    key renamed or retyped on one side only is refused, naming the key."""
    import dataclasses
    import typing

    from autoimmuneai.contracts import Prediction, check_matches_contract
    from autoimmuneai.inference.predictor import CasePrediction

    check_matches_contract(CasePrediction, Prediction)  # the writer as it is: no error
    hints = typing.get_type_hints(CasePrediction)

    def variant(rename: dict[str, str], retype: dict[str, type]) -> type:
        fields = [(rename.get(k, k), retype.get(k, t)) for k, t in hints.items()]
        return dataclasses.make_dataclass("Variant", fields)

    with pytest.raises(TypeError, match=r"missing \['risk_group'\].*contract \['riskgroup'\]"):
        check_matches_contract(variant({"risk_group": "riskgroup"}, {}), Prediction)
    with pytest.raises(TypeError, match=r"other types \['alpha'\]"):
        check_matches_contract(variant({}, {"alpha": str}), Prediction)


def test_gui_process_imports_nothing_that_is_installed_on_first_use():
    """Before the one confirmation, the GUI side must not import what Slicer does not ship."""
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("pandas", "torch", "monai", "captum", "lifelines", "skimage", "sklearn",
                     "nibabel", "tqdm", "matplotlib", "safetensors", "openpyxl", "nilearn",
                     "psutil"):
            sys.modules[name] = None  # not installed yet
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import AutoimmuneAILib.logic, AutoimmuneAILib.labform, AutoimmuneAILib.install
        import AutoimmuneAILib.demo, AutoimmuneAILib.process, AutoimmuneAILib.compat
        import autoimmuneai.output.mrml
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- dependencies: checked on first use, one confirmation, Slicer's packages kept -----------------
def test_dependency_plan_lists_what_is_missing_and_never_touches_slicer_packages(tmp_path):
    from AutoimmuneAILib.install import PROTECTED, DependencyInstaller, makePlan, readRequirements

    assert {"numpy", "scipy", "SimpleITK", "pydicom", "requests", "vtk"} <= set(PROTECTED)
    assert DependencyInstaller().plan().empty  # this environment has everything
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\nnumpy>=999\nSimpleITK>=999\ntorch>=999\nscipy>=999\nautoimmuneai-absent-pkg>=1.0\n"
    )
    plan = makePlan(readRequirements(requirements))
    assert plan.toInstall == ["autoimmuneai-absent-pkg>=1.0"]
    assert plan.torch == "torch>=999"
    assert plan.refused == ["numpy>=999", "SimpleITK>=999", "scipy>=999"]
    assert {"numpy", "scipy", "SimpleITK"} <= set(plan.pinned)
    text = plan.describe()
    assert "autoimmuneai-absent-pkg>=1.0" in text and "torch>=999" in text and "scipy" in text


def test_install_asks_once_and_pins_slicer_packages(tmp_path):
    from AutoimmuneAILib.install import DependencyInstaller

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("autoimmuneai-absent-pkg>=1.0\nnumpy>=1\n", encoding="utf-8")
    asked, calls, constraints = [], [], []

    def pip(args):  # records what would be installed instead of touching the environment
        calls.append(args)
        constraints.append(Path(args[args.index("-c") + 1]).read_text(encoding="utf-8"))

    declined = DependencyInstaller(
        requirements, confirm=lambda t: asked.append(t) or False, pipInstall=pip, log=lambda m: None
    )
    assert declined.ensure() is False and len(asked) == 1 and calls == []
    accepted = DependencyInstaller(
        requirements, confirm=lambda t: True, pipInstall=pip, log=lambda m: None
    )
    with pytest.raises(RuntimeError, match="still missing"):
        accepted.ensure()  # the recorder installed nothing, and the installer notices
    assert calls == [["-c", calls[0][1], "autoimmuneai-absent-pkg>=1.0"]]
    pins = constraints[0].splitlines()
    assert f"numpy=={np.__version__}" in pins
    import scipy

    assert f"scipy=={scipy.__version__}" in pins


class StandInSlicer:
    """The parts of the application's ``slicer`` namespace that ``installerFor`` looks at.

    Records calls instead of installing. ``release`` "5.12" has ``slicer.packaging`` (the real
    module is ``Base/Python/slicer/packaging.py``, 5.12+); "5.10" has only ``slicer.util``.
    """

    def __init__(self, release: str) -> None:
        import types

        self.__name__ = "stand_in_slicer"
        self.app = object()
        self.calls: list[tuple] = []
        self.util = types.SimpleNamespace(
            pip_install=lambda args: self.calls.append(("pip_install", args))
        )
        if release == "5.12":
            self.packaging = types.SimpleNamespace(
                pip_ensure=lambda requirements, **kw: self.calls.append(
                    ("pip_ensure", requirements, kw)
                )
            )


def test_slicer_5_12_installs_with_pip_ensure_and_5_10_with_pip_install():
    from AutoimmuneAILib.install import _defaultPipInstall, installerFor

    args = ["-c", "/tmp/constraints.txt", "monai>=1.3", "pandas>=2.0"]
    new = StandInSlicer("5.12")
    installerFor(new)(args)
    assert new.calls == [
        ("pip_ensure", ["monai>=1.3", "pandas>=2.0"],
         {"constraints": "/tmp/constraints.txt", "prompt_install": False, "requester": "AutoimmuneAI"}),
    ]  # fmt: skip
    old = StandInSlicer("5.10")
    installerFor(old)(args)
    assert old.calls == [("pip_install", args)]
    assert installerFor(None) is _defaultPipInstall  # plain Python: python -m pip


def test_requirements_file_reads_as_slicer_5_12_reads_it():
    """``slicer.packaging.load_requirements`` (5.12) skips only whole-line comments and options."""
    from packaging.requirements import Requirement

    path = MODULE_DIR / "Resources" / "requirements.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]
    assert requirements and all("#" not in str(r) for r in requirements)
    assert "torch" in {r.name for r in requirements}


def test_a_misspelt_lab_column_of_the_cohort_file_is_named_with_the_closest_feature(
    tmp_path, panel
):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,AQP4,age,sex\np1,1:160,41,F\np2,neg,35,M\n", encoding="utf-8")
    warnings = cohortWarnings(manifest, panel)
    assert any("AQP4" in w and "aqp4_igg" in w for w in warnings), warnings
    clean = tmp_path / "clean.csv"
    clean.write_text("case_id,aqp4_igg,age,sex\np1,1:160,41,F\n", encoding="utf-8")
    assert not any("AQP4" in w or "aqp4_igg?" in w for w in cohortWarnings(clean, panel))
