"""Python dependencies of the module: checked on first use, installed after one confirmation.

Nothing is installed at import. ``DependencyInstaller.plan()`` compares
``Resources/requirements.txt`` with what this Python has; ``ensure()`` asks once, listing
everything it will install, then installs torch through the PyTorch extension's utilities
when present (``PyTorchUtils`` picks the build that fits the GPU) and the rest with pip,
constrained so that pip can never replace the packages Slicer itself ships (SimpleITK with
Slicer's IO, numpy, scipy, VTK, ...): it must find versions compatible with them or fail.

Which installer runs (``installerFor``): Slicer 5.12 and later have ``slicer.packaging``, whose
``pip_ensure`` checks, installs and offers a restart when an imported package changed; Slicer
5.10 has only ``slicer.util.pip_install``; outside Slicer, ``python -m pip``. All three get
the same requirements and the same constraints file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
# Packages that Slicer ships and that other Slicer code relies on: never installed or upgraded.
PROTECTED = (
    "numpy",
    "scipy",
    "SimpleITK",
    "vtk",
    "requests",
    "pydicom",
    "Pillow",
    "packaging",
    "pip",
    "setuptools",
)
TORCH = "torch"


@dataclass
class InstallPlan:
    """What ``ensure()`` would do: the requirements to install, torch, and the pins it keeps."""

    toInstall: list[str] = field(default_factory=list)
    torch: str = ""  # a torch requirement to satisfy, "" when torch is fine
    pinned: dict[str, str] = field(default_factory=dict)  # protected package -> installed version
    refused: list[str] = field(default_factory=list)  # protected requirements not met (warn)

    @property
    def empty(self) -> bool:
        return not self.toInstall and not self.torch

    def describe(self) -> str:
        """The text of the one confirmation: every package that will be installed."""
        lines = ["AutoimmuneAI needs these Python packages, which will now be installed:", ""]
        if self.torch:
            lines.append(f"  {self.torch}  (through the PyTorch extension)")
        lines += [f"  {r}" for r in self.toInstall]
        if self.pinned:
            kept = ", ".join(f"{k} {v}" for k, v in sorted(self.pinned.items()))
            lines += ["", f"Slicer's own packages are kept as they are: {kept}."]
        lines += ["", "This can take several minutes and needs an internet connection."]
        return "\n".join(lines)


def readRequirements(path: str | Path = REQUIREMENTS) -> list[Requirement]:
    """Requirements of a requirements file (comments and blank lines ignored)."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(Requirement(text))
        except InvalidRequirement as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    return out


def installedVersion(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def isSatisfied(requirement: Requirement) -> bool:
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    version = installedVersion(requirement.name)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def makePlan(
    requirements: Sequence[Requirement], protected: Sequence[str] = PROTECTED
) -> InstallPlan:
    """Sort requirements into: satisfied, torch, protected (never touched), to install."""
    protectedNames = {canonicalize_name(p) for p in protected}
    plan = InstallPlan()
    for name in protected:
        version = installedVersion(name)
        if version is not None:
            plan.pinned[name] = str(version)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if isSatisfied(requirement):
            continue
        if name == TORCH:
            plan.torch = str(requirement)
        elif name in protectedNames:
            plan.refused.append(str(requirement))
        else:
            plan.toInstall.append(str(requirement))
    return plan


def pipInstallArgs(plan: InstallPlan, constraintsPath: str | Path) -> list[str]:
    """pip arguments that install the plan while keeping the pinned packages."""
    return ["-c", str(constraintsPath), *plan.toInstall]


def _defaultPipInstall(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True)


def installerFor(slicerModule=None) -> Callable[[list[str]], None]:
    """The pip front end of this Python: ``slicer.packaging`` (5.12+), ``slicer.util`` (5.10), pip.

    ``slicerModule`` is the ``slicer`` namespace (None outside the application). Every front
    end receives ``pipInstallArgs``: ``-c CONSTRAINTS REQUIREMENT...``.
    """
    if slicerModule is None or not hasattr(slicerModule, "app"):
        return _defaultPipInstall
    packaging = _packagingOf(slicerModule)
    if packaging is not None:

        def ensure(args: list[str]) -> None:
            constraints, requirements = _splitConstraints(args)
            # The confirmation was given once for the whole plan (DependencyInstaller.ensure);
            # pip_ensure still offers the restart when an imported package was replaced.
            packaging.pip_ensure(
                requirements,
                constraints=constraints,
                prompt_install=False,
                requester="AutoimmuneAI",
            )

        return ensure
    util = slicerModule.util

    def install(args: list[str]) -> None:
        util.pip_install(args)

    return install


def _packagingOf(slicerModule):
    """``slicer.packaging`` when this Slicer has it (5.12+: ``Base/Python/slicer/packaging.py``)."""
    packaging = getattr(slicerModule, "packaging", None)
    if packaging is None:
        try:
            packaging = importlib.import_module(f"{slicerModule.__name__}.packaging")
        except ImportError:
            return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def _splitConstraints(args: list[str]) -> tuple[str | None, list[str]]:
    """(constraints file, requirements) from ``-c FILE REQ...`` arguments."""
    args = list(args)
    constraints = None
    if "-c" in args:
        index = args.index("-c")
        constraints = args[index + 1]
        del args[index : index + 2]
    return constraints, args


class DependencyInstaller:
    """Check and install the module's Python dependencies (usage: ``ensure()`` before a run)."""

    def __init__(
        self,
        requirementsPath: str | Path = REQUIREMENTS,
        confirm: Callable[[str], bool] | None = None,
        pipInstall: Callable[[list[str]], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.requirementsPath = Path(requirementsPath)
        self.confirm = confirm
        self.pipInstall = pipInstall or installerFor(_slicerModule())
        self.log = log

    def plan(self) -> InstallPlan:
        return makePlan(readRequirements(self.requirementsPath))

    def ensure(self) -> bool:
        """Install what is missing after one confirmation; True when everything is present.

        Returns False when the user declines. Raises RuntimeError when torch is needed inside
        Slicer but the PyTorch extension is not installed.
        """
        plan = self.plan()
        for requirement in plan.refused:
            self.log(f"Keeping Slicer's own package although {requirement} was requested.")
        if plan.empty:
            return True
        if self.confirm is not None and not self.confirm(plan.describe()):
            self.log("Installation declined: the module cannot run without these packages.")
            return False
        if plan.torch:
            self._installTorch(plan.torch)
            plan.pinned[TORCH] = str(installedVersion(TORCH) or "")
        if plan.toInstall:
            with tempfile.TemporaryDirectory() as tmp:
                constraints = Path(tmp) / "constraints.txt"
                constraints.write_text(
                    "".join(f"{k}=={v}\n" for k, v in sorted(plan.pinned.items()) if v),
                    encoding="utf-8",
                )
                self.log("Installing " + ", ".join(plan.toInstall))
                self.pipInstall(pipInstallArgs(plan, constraints))
        remaining = self.plan()
        if not remaining.empty:
            raise RuntimeError("still missing after installation: " + remaining.describe())
        return True

    def _installTorch(self, requirement: str) -> None:
        try:
            import PyTorchUtils  # the PyTorch extension (a dependency of this extension)
        except ImportError:
            if _insideSlicer():
                raise RuntimeError(
                    "PyTorch is needed: install the PyTorch extension from the Extensions "
                    "Manager, restart Slicer, and run again."
                ) from None
            self.pipInstall([requirement])
            return
        specifier = str(Requirement(requirement).specifier)
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=specifier
        )
        if torch is None:
            raise RuntimeError("PyTorch could not be installed by the PyTorch extension")


def _insideSlicer() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app")


def _slicerModule():
    """The application's ``slicer`` namespace, or None outside the application."""
    return sys.modules["slicer"] if _insideSlicer() else None
