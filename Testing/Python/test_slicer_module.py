"""The Slicer module without the desktop application.

What Slicer itself would check at run time is checked here statically (the .ui, the widgets
the code uses, the parameter bindings, Python 3.12 syntax, no Qt in the package), and
everything the module *does* runs for real on the MRML libraries of the ``slicer-core``
wheel: volume node + serology in, nodes out, scene saved and reloaded, background process
with progress and cancel. The end-to-end test runs the same scenario as ``AutoimmuneAITest``.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
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
    formRows,
    readCohortCase,
    readTable,
    writeTable,
)
from AutoimmuneAILib.process import BackgroundProcess, parse_progress  # noqa: E402

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
        else:
            pytest.fail(f"{param}: no widget rule for {text}")


def test_attribution_methods_are_the_ones_predict_accepts():
    from AutoimmuneAILib.logic import METHODS

    explain = ROOT / "AutoimmuneAI" / "Logic" / "explain.py"
    if explain.is_file():  # the names the package dispatches on
        source = explain.read_text(encoding="utf-8")
        missing = [m for m in METHODS if f'"{m}"' not in source]
        assert not missing, f"explain.py does not know {missing}"
    assert "integrated_gradients" in METHODS


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
        import AutoimmuneAILib.install, AutoimmuneAILib.resultnodes, AutoimmuneAILib.demo
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
        {
            "feature": "ocb",
            "label": "CSF oligoclonal bands",
            "value": "pos",
            "unit": "",
            "contribution": 0.3,
        },
        {
            "feature": "aqp4_igg",
            "label": "AQP4-IgG",
            "value": "neg",
            "unit": "",
            "contribution": -0.1,
        },
    ]
    mrml.write_case_scene(
        case_dir, image=Volume(image, oblique_affine()), attribution=Volume(attribution, oblique_affine()),
        labelmap=labelmap, segments=segments, lab_contributions=labs, probabilities=probabilities,
        survival=(times, surv), class_name="MS",
    )  # fmt: skip
    prediction = {
        "case_id": case_dir.name, "classes": list(panel.classes), "probabilities": probabilities,
        "predicted": "MS", "prediction_set": ["MS", "NMOSD"], "risk_score": 0.4, "risk_group": "high",
        "survival": {"times": times, "probabilities": surv}, "regions": [], "lab_contributions": labs,
        "modality_share": {"image": 0.6, "serology": 0.4}, "warnings": ["voxel size far from training"],
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
    logic = AutoimmuneAILogic(scene=scene)
    nodes = logic.importCase(tmp_path / "c1", prediction, volume)
    result = PredictionResult("c1", tmp_path / "c1", prediction, nodes)
    assert result.predictionSet == ["MS", "NMOSD"] and result.riskGroup == "high"
    assert result.modalityShare == {"image": 0.6, "serology": 0.4}
    assert (
        nodes["image"] is volume and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    )
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
    reloaded = loadScene(saveScene(scene, tmp_path / "saved"))
    checkReloaded(scene, reloaded)
    seg2 = reloaded.GetFirstNodeByName(seg.GetName())
    assert seg2.GetSegmentation().GetNumberOfSegments() == 2
    broken = reloaded.GetFirstNodeByName(volume.GetName())
    from autoimmuneai.output.mrml import node_to_volume

    np.testing.assert_allclose(node_to_volume(broken).array, image, rtol=1e-6)


def test_a_prediction_without_explanation_still_gets_its_charts(tmp_path, panel):
    from AutoimmuneAILib.logic import AutoimmuneAILogic
    from AutoimmuneAILib.resultnodes import probabilityChanges

    prediction, _ = write_case(tmp_path / "c1", panel)
    case = tmp_path / "c2"
    case.mkdir()
    (case / "prediction.json").write_text(
        json.dumps({**prediction, "case_id": "c2"}), encoding="utf-8"
    )
    scene = slicer.vtkMRMLScene()
    nodes = AutoimmuneAILogic(scene=scene).importCase(case, prediction)
    table = nodes["probabilities"].GetTable()
    assert [table.GetValueByName(i, "class").ToString() for i in range(5)] == list(panel.classes)
    assert [table.GetValueByName(i, "in_set").ToDouble() for i in range(5)] == [1, 1, 0, 0, 0]
    assert nodes["survival_chart"].GetNumberOfPlotSeriesNodes() == 1
    labs = nodes["lab_contributions"].GetTable()
    assert labs.GetValueByName(0, "feature").ToString() == "CSF oligoclonal bands"  # largest first
    assert nodes["lab_chart"].GetNumberOfPlotSeriesNodes() == 1
    after = {"probabilities": {**prediction["probabilities"], "MS": 0.25, "NMOSD": 0.55}}
    changes = probabilityChanges(prediction, after)
    assert {c[0] for c in changes[:2]} == {"MS", "NMOSD"}
    assert {c[0]: c[3] for c in changes}["MS"] == pytest.approx(-0.3)
    assert math.isclose(sum(c[3] for c in changes), 0.0, abs_tol=1e-9)


def test_the_command_runs_the_same_package_code():
    from AutoimmuneAILib.logic import AutoimmuneAILogic, predictOptions

    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene())
    command = logic.cliCommand("predict", "--help")
    assert command[:3] == [sys.executable, "-m", "autoimmuneai"]
    assert {
        "--bundle",
        "--cohort",
        "--out",
        "--explain",
        "--target",
        "--method",
        "--resume",
    } <= predictOptions()
    done = subprocess.run(
        command,
        env=logic.childEnvironment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    assert done.returncode == 0 and "--explain" in done.stdout


# -- end to end: the demo scenario (same function as AutoimmuneAITest) -----------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """synth + train (1 epoch, 12 cases) + process() + import + save/reload, all for real."""
    from AutoimmuneAILib.demo import runDemoScenario

    work = tmp_path_factory.mktemp("demo")
    result, reloaded = runDemoScenario(work, scene=slicer.vtkMRMLScene())
    return work, result, reloaded


def test_demo_case_end_to_end(demo_run):
    """The scenario AutoimmuneAITest runs inside Slicer (its checks raise inside it)."""
    _, result, reloaded = demo_run
    assert (result.caseDir / "snapshot.png").is_file()
    assert (result.caseDir / "evidence.seg.nrrd").is_file()
    assert reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert result.nodes["segmentation"].GetSegmentation().GetNumberOfSegments() >= 1


def test_what_if_and_cohort_batch_on_the_demo(demo_run):
    from AutoimmuneAILib.demo import loadDemoVolume, prepareDemo
    from AutoimmuneAILib.logic import AutoimmuneAILogic

    from autoimmuneai.data.cohort import read_manifest

    work, before, _ = demo_run
    demo = prepareDemo(work)
    logic = AutoimmuneAILogic(scene=slicer.vtkMRMLScene())
    volume = loadDemoVolume(logic.scene, demo)
    strong = logic.whatIf(volume, demo.serology, demo.bundlePath, "aqp4_igg", "1:10000")
    assert set(strong.probabilities) == set(before.probabilities)
    assert strong.probabilities != before.probabilities
    assert strong.nodes == {} and logic.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 0

    table = read_manifest(demo.manifestPath).head(3).copy()
    table.loc[2, "image_flair"] = "missing.nii.gz"
    manifest = demo.manifestPath.parent / "three.csv"
    table.to_csv(manifest, index=False)
    summary = logic.processCohort(manifest, demo.bundlePath, work / "batch", explain=False)
    assert (summary.nOk, summary.nFailed) == (2, 1)
    assert summary.errors[0]["case_id"] == table.loc[2, "case_id"]
    assert summary.predictionsPath.is_file() and summary.errorsPath.is_file()
    again = logic.processCohort(manifest, demo.bundlePath, work / "batch", explain=False)
    assert (again.nOk, again.nFailed) == (2, 1)


# -- dependencies: checked on first use, one confirmation, Slicer's packages kept -----------------
def test_dependency_plan_lists_what_is_missing_and_never_touches_slicer_packages(tmp_path):
    from AutoimmuneAILib.install import DependencyInstaller, makePlan, readRequirements

    assert DependencyInstaller().plan().empty  # this environment has everything
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\nnumpy>=999\nSimpleITK>=999\ntorch>=999\nscipy>=1.0\nautoimmuneai-absent-pkg>=1.0\n"
    )
    plan = makePlan(readRequirements(requirements))
    assert plan.toInstall == ["autoimmuneai-absent-pkg>=1.0"]
    assert plan.torch == "torch>=999"
    assert plan.refused == ["numpy>=999", "SimpleITK>=999"]
    assert "numpy" in plan.pinned and "SimpleITK" in plan.pinned
    text = plan.describe()
    assert "autoimmuneai-absent-pkg>=1.0" in text and "torch>=999" in text and "numpy" in text


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
    assert f"numpy=={np.__version__}" in constraints[0].splitlines()


def test_survival_curve_is_read_with_either_key_spelling():
    from AutoimmuneAILib.resultnodes import addSurvivalNodes

    scene = slicer.vtkMRMLScene()
    for survival in (
        {"times": [0, 12, 24], "probabilities": [1.0, 0.8, 0.7]},
        {"times_months": [0, 12, 24], "probability": [1.0, 0.8, 0.7]},
    ):
        nodes = addSurvivalNodes(scene, {"survival": survival, "risk_group": "low"}, "c")
        table = nodes["survival"].GetTable()
        assert [table.GetValue(i, 1).ToDouble() for i in range(3)] == [1.0, 0.8, 0.7]
        assert "low risk" in nodes["survival_chart"].GetName()
    assert (
        addSurvivalNodes(scene, {"survival": {"times": [0, 1], "probabilities": [1.0]}}, "c") == {}
    )
