"""The extension as the Slicer build and the ExtensionsIndex see it, checked offline.

The catalog entry is validated against the schema Slicer publishes (the copy in
``Testing/Data``: the repository is self-contained) and against the index checker's other rules;
the CMake files are read to check that every script and resource they list exists and that
every ``.py`` under ``AutoimmuneAI/`` is listed (a file missing from the list would be missing
from the installed extension).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "AutoimmuneAI"
SCHEMA_NAME = "slicer-extension-catalog-entry-schema-v1.0.2.json"
ACCEPTED_CATEGORIES = {
    "Analysis",
    "Quantification",
    "Neuroimaging",
    "Segmentation",
    "Informatics",
    "Utilities",
}


SCHEMA_DIR = ROOT / "Testing" / "Data"
"""Slicer's published catalog-entry schema, kept in the repository (Schemas/ of Slicer/Slicer)."""

# The 5.10 extension template's first line (Utilities/Templates/Extensions/Default/CMakeLists.txt
# on Slicer's 5.10 branch); the 5.12 template asks for 3.28, which 5.10 builds need not have.
TEMPLATE_CMAKE_MINIMUM = "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"


def strip_comments(cmake: str) -> str:
    return "\n".join(
        line.split("#", 1)[0] if not line.lstrip().startswith("set(EXTENSION_") else line
        for line in cmake.splitlines()
    )


def cmake_sets(text: str) -> dict[str, str]:
    """``set(NAME "value")`` and ``set(NAME a b c)`` of a CMake file."""
    out = {}
    for match in re.finditer(r"set\(\s*(\w+)\s+(.*?)\)\s*(?:#.*)?$", text, re.S | re.M):
        out[match.group(1)] = match.group(2).strip()
    return out


def unquote(value: str) -> str:
    return value.strip().strip('"')


# -- top-level CMakeLists.txt ------------------------------------------------------------------
def top_cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def test_top_level_cmake_declares_the_extension():
    text = top_cmake()
    assert text.splitlines()[0] == TEMPLATE_CMAKE_MINIMUM
    assert re.search(r"^project\(AutoimmuneAI\)", text, re.M)
    sets = cmake_sets(text)
    for name in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert unquote(sets.get(name, "")), f"{name} is not set"
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in unquote(sets[name]).split():
            assert urlparse(url).scheme == "https" and urlparse(url).netloc, f"{name}: {url}"
    assert unquote(sets["EXTENSION_ICONURL"]).endswith(
        "AutoimmuneAI/Resources/Icons/AutoimmuneAI.png"
    )
    assert "PyTorch" in unquote(sets["EXTENSION_DEPENDS"]).split()
    # Contributors as the index lists them, "Name (Organization)", never a placeholder; the
    # module's own contributors line says the same.
    contributors = unquote(sets["EXTENSION_CONTRIBUTORS"])
    assert re.fullmatch(r"[^(),]+ \([^()]+\)(, [^(),]+ \([^()]+\))*", contributors), contributors
    assert "contributors" not in contributors.lower()
    module = (MODULE_DIR / "AutoimmuneAI.py").read_text(encoding="utf-8")
    assert f"self.parent.contributors = [{contributors!r}]".replace("'", '"') in module
    assert unquote(sets["EXTENSION_CATEGORY"]) in ACCEPTED_CATEGORIES
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(AutoimmuneAI)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.find(line) for line in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions)


# -- catalog entry -------------------------------------------------------------------------------
def test_catalog_entry_validates_against_the_published_schema():
    import jsonschema

    entry_path = ROOT / "AutoimmuneAI.json"
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    schema = json.loads((SCHEMA_DIR / SCHEMA_NAME).read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    assert entry["$schema"].split("/")[-1].rstrip("#") == SCHEMA_NAME
    # The validator does reject a bad entry (the check can fail):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry, "homepage": "x"}, schema)


def test_catalog_entry_follows_the_index_rules():
    entry_path = ROOT / "AutoimmuneAI.json"
    raw = entry_path.read_bytes()
    entry = json.loads(raw)
    project = re.search(r"^project\((\w+)\)", top_cmake(), re.M).group(1)
    assert entry_path.stem == project
    assert not project.startswith("Slicer")
    assert urlparse(entry["scm_url"]).scheme in ("https", "git")
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert entry["category"] == unquote(cmake_sets(top_cmake())["EXTENSION_CATEGORY"])
    assert entry["build_dependencies"] == ["PyTorch"]
    assert b"\r" not in raw, "the catalog entry must use LF line endings"
    licenses = [
        p for p in ROOT.iterdir() if p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))
    ]
    assert licenses and licenses[0].read_text(encoding="utf-8").strip()


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "AutoimmuneAI.png") as image:
        assert image.format == "PNG" and image.size == (128, 128)
        colors = image.convert("RGB").getcolors(128 * 128)
        assert len(colors) > 20, "the icon should be a picture, not a flat square"


# -- module CMakeLists.txt -----------------------------------------------------------------------
def module_cmake() -> str:
    return (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")


def listed_items(variable: str) -> list[str]:
    text = strip_comments(module_cmake())
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [item.replace("${MODULE_NAME}", "AutoimmuneAI") for item in match.group(1).split()]


def glob_patterns(variable: str) -> list[str]:
    text = strip_comments(module_cmake())
    match = re.search(rf"file\(\s*GLOB\s+{variable}\s+RELATIVE\s+\S+\s+(.*?)\)", text, re.S)
    assert match, f"no file(GLOB {variable} ...)"
    patterns = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in match.group(1).split()]
    assert "list(APPEND" in text and variable in text.split("list(APPEND", 1)[1]
    return patterns


def uncovered(files: list[str], listed: list[str], patterns: list[str]) -> list[str]:
    """Files neither listed nor matched by a glob (CMake's ``*`` does not cross ``/``)."""
    return [
        f for f in files
        if f not in listed and not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)
    ]  # fmt: skip


def test_module_cmake_builds_a_scripted_module_with_its_self_test():
    text = module_cmake()
    assert re.search(r"set\(MODULE_NAME AutoimmuneAI\)", text)
    assert re.search(
        r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s+SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}\s+RESOURCES \$\{MODULE_PYTHON_RESOURCES\}",
        text,
    )
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_every_listed_script_and_resource_exists_and_every_py_is_listed():
    scripts = listed_items("MODULE_PYTHON_SCRIPTS")
    resources = listed_items("MODULE_PYTHON_RESOURCES")
    for item in scripts + resources:
        assert (MODULE_DIR / item).is_file(), f"listed but missing: {item}"
    package_globs = glob_patterns("AUTOIMMUNEAI_PACKAGE_SCRIPTS")
    panel_globs = glob_patterns("AUTOIMMUNEAI_PANELS")
    for pattern in package_globs + panel_globs:
        assert list(MODULE_DIR.glob(pattern)), f"glob {pattern} matches nothing"
    on_disk = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert not uncovered(on_disk, scripts, package_globs), (
        "not listed in AutoimmuneAI/CMakeLists.txt"
    )
    # Only the module file may sit at the top: Slicer loads every top-level .py as a module.
    assert [f for f in on_disk if "/" not in f] == ["AutoimmuneAI.py"]
    panels = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for p in (MODULE_DIR / "Resources" / "Panels").glob("*.json")
    )
    assert panels and not uncovered(panels, resources, panel_globs)
    template_globs = glob_patterns("AUTOIMMUNEAI_TEMPLATES")
    templates = sorted(
        p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Logic").rglob("*.j2")
    )
    assert templates and not uncovered(templates, resources, template_globs), (
        "a template the package reads is not shipped by AutoimmuneAI/CMakeLists.txt"
    )
    for resource in (
        "Resources/UI/AutoimmuneAI.ui",
        "Resources/Icons/AutoimmuneAI.png",
        "Resources/requirements.txt",
    ):
        assert resource in resources
    # The coverage check itself can fail:
    assert uncovered(
        ["Logic/new.py", "Logic/deep/x.py", "AutoimmuneAILib/x.py"], scripts, package_globs
    ) == ["Logic/deep/x.py", "AutoimmuneAILib/x.py"]


# -- dependencies installed inside Slicer --------------------------------------------------------
def _protected() -> tuple[str, ...]:
    import sys

    sys.path.insert(0, str(MODULE_DIR))
    from AutoimmuneAILib.install import PROTECTED

    return PROTECTED


def test_requirements_match_pyproject_and_leave_slicer_packages_alone():
    from packaging.utils import canonicalize_name

    protected = {canonicalize_name(p) for p in _protected()}
    requirements = [
        Requirement(line.split("#")[0].strip())
        for line in (MODULE_DIR / "Resources" / "requirements.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if line.split("#")[0].strip()
    ]
    names = {canonicalize_name(r.name) for r in requirements}
    assert not names & protected, f"never install Slicer's own packages: {names & protected}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {canonicalize_name(Requirement(d).name) for d in pyproject["project"]["dependencies"]}
    assert needed - protected <= names, (
        f"missing from requirements.txt: {needed - protected - names}"
    )
    assert "torch" in names
