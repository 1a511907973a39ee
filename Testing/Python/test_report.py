"""The HTML report: self-contained, honest about the data, and every number traceable.

Built from a real demo-layout folder (``tiny_demo``: evaluation on the test split,
explanation quality and explained cases from the tiny fixtures).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autoimmuneai.cli import main
from autoimmuneai.output.report import BASELINES, SYNTHETIC_STATEMENT, build_report

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


class Page(HTMLParser):
    """Tags with their attributes, visible text, and the comparison table's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.cells: dict[tuple[str, str], str] = {}
        self._skip = 0
        self._row: str | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "tr" and "data-model" in a:
            self._row = a["data-model"]
        if tag == "td" and self._row and "data-metric" in a:
            self._cell = a["data-metric"]
            self.cells[(self._row, self._cell)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1
        if tag == "td":
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._row and self._cell:
            self.cells[(self._row, self._cell)] += data.strip()


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def numbers_in(obj: object) -> set[str]:
    """Every number in a JSON value, formatted as the report may show it (0-3 decimals)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= numbers_in(v)
            if str(k).isdigit():  # keys such as set_size_counts' "1".."5"
                out.add(str(k))
    elif isinstance(obj, list):
        for v in obj:
            out |= numbers_in(v)
    else:
        out |= scalar_numbers(obj)
    return out


def scalar_numbers(obj: object) -> set[str]:
    """The ways the report may show one JSON scalar (booleans and null show no number)."""
    if isinstance(obj, bool) or obj is None:
        return set()
    if isinstance(obj, int):
        return {str(obj)} | {f"{obj:.{d}f}" for d in range(1, 4)}
    if isinstance(obj, float):
        out = {f"{obj:.{d}f}" for d in range(0, 4)}
        return out | {str(int(obj))} if obj.is_integer() else out
    if isinstance(obj, str):
        return set(NUMBER.findall(obj))  # numbers inside stored strings (region names)
    return set()


@pytest.fixture(scope="module")
def report(tiny_demo: Path) -> Path:
    return build_report(tiny_demo)


@pytest.fixture(scope="module")
def metrics(report: Path) -> dict:
    return json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))


def test_report_is_self_contained(report: Path) -> None:
    assert report == report.parent / "report.html"
    page = parse(report)
    images = [a for tag, a in page.tags if tag == "img"]
    assert len(images) >= 4
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed"), tag
        if tag == "link":
            assert attrs.get("rel") not in ("stylesheet", "preload", "import"), attrs
        for name in ("src", "href", "data", "srcset", "poster"):
            value = attrs.get(name) or ""
            assert not re.match(r"^\s*(https?:|//|file:)", value, re.I), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
    html_text = report.read_text(encoding="utf-8")
    assert "@import" not in html_text and "url(" not in html_text


def test_report_states_synthetic_data_and_research_use(report: Path) -> None:
    text = " ".join(" ".join(parse(report).text).split())
    assert SYNTHETIC_STATEMENT in text
    assert "research" in text.lower() and "synthetic" in text.lower()


def test_comparison_table_matches_metrics_json(report: Path, metrics: dict) -> None:
    cells = parse(report).cells
    models = {model for model, _ in cells}
    assert models == {"fused", *BASELINES}, models
    evaluation = json.loads(
        (report.parent / "evaluation" / "metrics.json").read_text(encoding="utf-8")
    )
    shown = 0
    for (model, metric), cell in cells.items():
        source = metrics if model == "fused" else metrics["baselines"][model]
        section = (
            "diagnosis"
            if metric in ("balanced_accuracy", "macro_auroc", "ece")
            else ("progression")
        )
        value = source[section][metric]
        same = evaluation if model == "fused" else evaluation["baselines"][model]
        assert same[section][metric] == value  # metrics.json keeps the evaluation's figures
        if value is None:
            assert cell == "n/a", (model, metric, cell)
        else:
            assert cell == f"{value:.3f}", (model, metric, cell, value)
            shown += 1
    assert shown >= 8  # most of the table holds real numbers
    assert cells[("fused", "balanced_accuracy")] != "n/a"
    assert cells[("fused", "c_index")] != "n/a"


def test_every_number_on_the_page_is_in_metrics_json(report: Path, metrics: dict) -> None:
    allowed = numbers_in(metrics)
    text = " ".join(parse(report).text)
    found = NUMBER.findall(text)
    assert len(found) > 30
    missing = sorted({n for n in found if n not in allowed})
    assert not missing, f"numbers on the page but not in metrics.json: {missing}"


def test_figures_saved_as_png_and_listed(report: Path, metrics: dict) -> None:
    figures = sorted((report.parent / "figures").glob("*.png"))
    listed = sorted(metrics["report_figures"])
    assert [f"figures/{p.name}" for p in figures] == listed
    page = parse(report)
    assert len([1 for tag, _ in page.tags if tag == "img"]) == len(figures)
    for key in ("roc", "reliability", "confusion", "km", "set_sizes"):
        assert (report.parent / "figures" / f"{key}.png").is_file(), key
    for path in figures:
        assert path.read_bytes().startswith(b"\x89PNG")


def test_every_explained_case_is_shown(report: Path, metrics: dict, tiny_demo: Path) -> None:
    cases = sorted(p.parent.name for p in (tiny_demo / "cases").glob("*/prediction.json"))
    assert cases and sorted(metrics["explained_cases"]) == cases
    page_ids = {a.get("id") for _, a in parse(report).tags}
    for case_id in cases:
        assert f"case-{case_id}" in page_ids
        assert f"fig-case_{case_id}_snapshot" in page_ids
        assert f"fig-case_{case_id}_labs" in page_ids
        assert f"fig-case_{case_id}_survival" in page_ids
        pred = json.loads(
            (tiny_demo / "cases" / case_id / "prediction.json").read_text(encoding="utf-8")
        )
        shown = metrics["explained_cases"][case_id]
        assert shown["prediction_set"] == pred["prediction_set"]
        assert shown["probabilities"] == pred["probabilities"]
    # At least one explained case per class of the evaluated test split.
    with open(tiny_demo / "cohort" / "manifest.csv", newline="", encoding="utf-8") as f:
        truth = {r["case_id"]: r["diagnosis"] for r in csv.DictReader(f)}
    with open(tiny_demo / "evaluation" / "predictions.csv", newline="", encoding="utf-8") as f:
        tested = {truth[r["case_id"]] for r in csv.DictReader(f)}
    assert tested <= {truth[c] for c in cases}


def test_explanation_quality_table(report: Path, metrics: dict) -> None:
    """Measures as rows, methods as columns: the table is as wide as the methods are many,
    so "passes sanity check" and "seconds per case" stay on the page."""
    quality = metrics.get("explanation_quality")
    assert quality, "explain_quality.json was not picked up"
    rows = table_rows(report, "explanation-quality")
    assert rows[0] == ["Measure", "Integrated Gradients"]
    by_label = {r[0]: r[1:] for r in rows[1:]}
    ig = quality["methods"]["integrated_gradients"]
    assert by_label["Passes sanity check"] == ["yes" if ig["passes_sanity"] else "no"]
    assert by_label["Seconds per case"] == [f"{ig['seconds_per_case']:.3f}"]
    summary = dict(table_rows(report, "explanation-quality-summary"))
    failing = ", ".join(quality["failing_sanity"]) or "none"
    assert summary["Methods failing the sanity check"] == failing


class Tables(HTMLParser):
    """The text of every cell of every table, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(path: Path, table_id: str) -> list[list[str]]:
    tables = Tables()
    tables.feed(path.read_text(encoding="utf-8"))
    assert table_id in tables.tables, sorted(tables.tables)
    return tables.tables[table_id]


def visible_text(path: Path) -> str:
    return " ".join(" ".join(parse(path).text).split())


def test_no_raw_keys_or_python_reprs_on_the_page(report: Path) -> None:
    text = visible_text(report)
    for raw in ("ece_before_calibration", "set_size_counts", "failing_sanity", "=None",
                "={}", "synth_options", "target_coverage", "{'", "[]", "None"):  # fmt: skip
        assert raw not in text, raw
    assert "ECE before temperature scaling" in text
    settings = [t for t in parse(report).text if t.startswith("Settings:")]
    assert (
        settings and "epochs: 2" in settings[0] and "cohort generator options: none" in settings[0]
    )


def test_explained_cases_show_truth_and_whether_right(
    report: Path, metrics: dict, tiny_demo: Path
) -> None:
    with open(tiny_demo / "cohort" / "manifest.csv", newline="", encoding="utf-8") as f:
        truth = {r["case_id"]: r["diagnosis"] for r in csv.DictReader(f)}
    html_text = report.read_text(encoding="utf-8")
    verdicts = set()
    for case_id, shown in metrics["explained_cases"].items():
        assert shown["true_diagnosis"] == truth[case_id]
        assert shown["correct"] == (shown["predicted"] == truth[case_id])
        assert shown["true_in_set"] == (truth[case_id] in shown["prediction_set"])
        block = html_text.split(f'id="case-{case_id}"')[1].split('<div class="case"')[0]
        assert f"True diagnosis: <strong>{truth[case_id]}</strong>" in block
        verdict = "right" if shown["correct"] else "wrong"
        assert f"the most likely class is {verdict}" in block
        verdicts.add(verdict)
        regions = [r["name"] for r in shown["regions"]]
        assert regions, case_id
        for name in regions:  # every evidence region is named in the case's table
            assert f'<td class="name">{name}</td>' in block.replace("&#39;", "'"), name


TARGETS = [
    {"name": "mean_set_size", "target": "<= 2.0", "measured": 1.734, "ci": [1.52, 1.96],
     "met": True, "note": "mean over 50 cases"},
    {"name": "ece", "target": "<= 0.08", "measured": 0.121, "ci": [0.07, 0.18],
     "met": False, "note": "<b>bold</b> & co"},
    {"name": "coverage_NMOSD", "target": ">= 0.80", "measured": 0.75, "ci": [0.41, 0.93],
     "met": None, "note": "too few cases to tell (8 < 30)"},
    {"name": "c_index_vs_serology", "target": ">= 0", "measured": None, "ci": None,
     "met": None, "note": "not computable"},
]  # fmt: skip


def test_targets_table_compares_each_target_with_its_result(
    tiny_demo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "eval"
    shutil.copytree(tiny_demo / "evaluation", folder)
    metrics_path = folder / "metrics.json"
    data = json.loads(metrics_path.read_text(encoding="utf-8"))
    data["targets"] = TARGETS
    data["conformal"]["guarantee"] = "class-conditional: each class its own 90% coverage"
    metrics_path.write_text(json.dumps(data), encoding="utf-8")
    path = build_report(folder)
    rows = table_rows(path, "targets")
    assert rows[0] == ["Target", "Goal", "Measured (95% CI)", "Verdict", "Note"]
    body = {r[0]: r[1:] for r in rows[1:]}
    assert body["Mean set size"] == [
        "<= 2.0",
        "1.734 (1.520 to 1.960)",
        "met",
        "mean over 50 cases",
    ]
    assert body["Ece"][1:3] == ["0.121 (0.070 to 0.180)", "not met"]
    assert body["Coverage NMOSD"][2] == "too few cases to measure"
    assert body["C index vs serology"][1:3] == ["n/a", "not measurable on these cases"]
    html_text = path.read_text(encoding="utf-8")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html_text and "<b>bold</b>" not in html_text
    assert "Guarantee: class-conditional: each class its own 90% coverage." in visible_text(path)
    # Every number of the targets table is in metrics.json too.
    merged = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert merged["targets"] == TARGETS


def test_report_without_targets_says_so(report: Path, metrics: dict) -> None:
    if "targets" in metrics:  # evaluate writes them: check the table instead
        assert len(table_rows(report, "targets")) == len(metrics["targets"]) + 1
    else:
        assert "holds no measured targets" in visible_text(report)


def test_confusion_matrix_drawn_with_readable_numbers(tmp_path: Path) -> None:
    """scikit-learn's display with 13-pt counts, shaded by the row fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from autoimmuneai.output.figures import draw_confusion

    cm = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
    fig, ax = plt.subplots()
    draw_confusion(ax, cm, ["MS", "NMOSD", "SVD"])
    texts = {t.get_text(): t for t in ax.texts}
    assert {"8", "2", "1", "0"} <= set(texts)
    assert all(t.get_fontsize() >= 12 for t in ax.texts)
    assert texts["8"].get_color() == "white" and texts["2"].get_color() == "black"
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel() == "True class"
    plt.close(fig)


def test_report_command_rebuilds_from_saved_results(
    report: Path, tiny_demo: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere" / "r.html"
    assert main(["report", "--eval", str(tiny_demo), "--out", str(target)]) == 0
    assert parse(target).cells == parse(report).cells
    assert (target.parent / "metrics.json").is_file()
    assert (target.parent / "figures" / "roc.png").is_file()


def test_report_on_a_plain_evaluate_folder(tiny_demo: Path, tmp_path: Path) -> None:
    """``report --eval`` also accepts an ``evaluate`` output folder on its own."""
    folder = tmp_path / "eval"
    shutil.copytree(tiny_demo / "evaluation", folder)
    path = build_report(folder)
    assert path == folder / "report.html"
    merged = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    original = json.loads((tiny_demo / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    for key, value in original.items():  # the evaluation's own figures are kept as they were
        assert merged[key] == value, key
    assert parse(path).cells[("fused", "balanced_accuracy")] != "n/a"


# --------------------------------------------------------------------------- the demo command


def test_demo_records_every_stage(tiny_demo: Path) -> None:
    from autoimmuneai.workflows.demo import STAGES_FILE

    stages = json.loads((tiny_demo / STAGES_FILE).read_text(encoding="utf-8"))
    names = ["cohort", "train", "evaluate", "quality", "explain", "report"]
    assert list(stages["stages"]) == names
    for name in names[2:]:  # the stages this run did itself
        entry = stages["stages"][name]
        assert entry["done"] and entry["seconds"] > 0 and entry["peak_rss_mb"] > 50, entry
    for path in ("report.html", "metrics.json", "evaluation/metrics.json", "cases/predictions.csv"):
        assert (tiny_demo / path).is_file(), path
    assert (tiny_demo / "evaluation" / "explain_quality.json").is_file()
    metrics = json.loads((tiny_demo / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["demo_run"]["stages"]) == set(names)


def _demo_copy(tiny_demo: Path, tmp_path: Path) -> Path:
    """A copy of the session's demo folder (file times kept) for a test that runs in it."""
    return Path(shutil.copytree(tiny_demo, tmp_path / "demo"))


def test_demo_resume_reuses_finished_stages(tiny_demo: Path, tmp_path: Path) -> None:
    from autoimmuneai.workflows.demo import run_demo

    demo = _demo_copy(tiny_demo, tmp_path)  # the session's folder stays as the demo left it
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    stages = json.loads((demo / "stages.json").read_text(encoding="utf-8"))["config"]
    rc = run_demo(
        demo,
        cases=stages["cases"],
        seed=stages["seed"],
        epochs=stages["epochs"],
        resume=True,
        quality_cases=stages["quality_cases"],
        quality_methods=stages["quality_methods"],
    )
    assert rc == 0
    after = {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(demo)) for p in after if after[p] != before.get(p))
    assert changed == ["stages.json"], changed  # nothing recomputed


def test_demo_resume_with_other_settings_is_refused(
    tiny_demo: Path, tmp_path: Path, capsys
) -> None:
    rc = main(["demo", "--out", str(_demo_copy(tiny_demo, tmp_path)), "--resume", "--cases", "55"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(line) == 1 and "stages.json" in line[0] and "other settings" in line[0], err


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys) -> None:
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "precious.txt").write_text("keep me", encoding="utf-8")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not a demo folder" in capsys.readouterr().err
    assert (tmp_path / "cohort" / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_demo_eta_comes_from_measured_costs_only(tmp_path: Path) -> None:
    """No guess before anything is measured; then this run's own speed; or, before the first
    stage of a rerun, the earlier run's seconds (per case where the cost grows with cases)."""
    from autoimmuneai.workflows.demo import Eta, build_stages, demo_config, previous_seconds

    config = demo_config(100, 0, False, None)
    stages = build_stages(tmp_path, config)
    expected = [s.expected_s for s in stages]
    eta = Eta(expected)
    assert eta.remaining(0) is None  # nothing measured yet: no made-up figure
    eta.done(0, 2.0 * expected[0])  # this machine runs at half the reference speed
    assert eta.remaining(1) == pytest.approx(2.0 * sum(expected[1:]))
    eta.skip(2)
    assert eta.remaining(1) == pytest.approx(2.0 * (sum(expected[1:]) - expected[2]))

    seconds = {"cohort": 30.0, "train": 120.0, "evaluate": 9.0, "quality": 14.0,
               "explain": 5.0, "report": 1.0}  # fmt: skip
    old = {"config": {"cases": 50},
           "stages": {n: {"done": True, "seconds": v} for n, v in seconds.items()}}  # fmt: skip
    previous = previous_seconds(old, stages, config.cases)
    # cohort, train and evaluate (it preprocesses every test image) scale with the cases
    assert previous == [60.0, 240.0, 18.0, 14.0, 5.0, 1.0]
    assert Eta(expected, previous).remaining(0) == pytest.approx(sum(previous))
    old["stages"]["quality"]["done"] = False
    assert Eta(expected, previous_seconds(old, stages, 100)).remaining(0) is None
    assert previous_seconds(None, stages, 100) is None

    # the evaluation's reference cost follows the test split: 20% of 100 cases, 52% with --full
    full = build_stages(tmp_path, demo_config(1000, 0, True, None))
    assert full[2].expected_s / expected[2] == pytest.approx(520 / 20)


def test_peak_memory_reads_the_resident_memory_of_the_process_and_its_children() -> None:
    """The demo's memory figure (stages.json peak_rss_mb): this process's RSS in MiB as psutil
    reads it, plus live child processes, and a peak that sees an allocation freed before the
    block ends."""
    import mmap
    import subprocess
    import sys
    import time

    import psutil

    from autoimmuneai.workflows.demo import PeakMemory, current_rss_mb

    own = psutil.Process().memory_info().rss / 2**20
    now = current_rss_mb()
    assert now > 10 and abs(now - own) < max(20.0, 0.05 * own), (now, own)
    with PeakMemory(interval=0.01) as memory:
        # 96 MiB of fresh pages, touched: an anonymous map, because a large process's heap
        # may hand back memory that is already resident (the RSS would not grow)
        block = mmap.mmap(-1, 96 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.2)
        block.close()
        time.sleep(0.05)
    assert memory.peak_mb >= own + 80, (memory.peak_mb, own)
    assert current_rss_mb() < memory.peak_mb - 60  # freed again: the peak is not a current value
    code = (
        "import numpy, sys; a = numpy.ones(64 * 2**20, numpy.uint8); "
        "print('ok', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        child_mb = psutil.Process(child.pid).memory_info().rss / 2**20
        assert child_mb > 64
        with_child = current_rss_mb()
        own = psutil.Process().memory_info().rss / 2**20
        assert abs(with_child - (own + child_mb)) < max(20.0, 0.05 * with_child)
    finally:
        child.communicate("")


def test_report_template_ships_as_package_data() -> None:
    """Every template file is matched by pyproject's package-data, so a wheel carries it."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    patterns = re.findall(r'"([^"]+)"', re.search(r"^autoimmuneai\s*=\s*\[(.*?)\]", section,
                                                    re.M | re.S).group(1))  # fmt: skip
    package = root / "AutoimmuneAI" / "Logic"
    templates = sorted(p for p in (package / "output" / "templates").iterdir() if p.is_file())
    assert templates, "no template files"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(templates) <= shipped, (patterns, templates)
