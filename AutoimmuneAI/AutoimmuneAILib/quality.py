"""Quality control a user can see, without Qt: the QC text and the brain-mask / template nodes.

A bundle with the clinical-scan stage writes, per case, the registration and brain-mask
figures into ``prediction.json`` (``quality``, with its own ``warnings``) and, per explained
case, ``brain_mask.nii.gz`` (the template brain mask on the patient's own voxels) and
``image_mni.nii.gz`` (the standardised image in template space). Here the figures become a
short text for the results area (``qualityReport``: what to say, and whether it is a warning),
and the two files become nodes (``importQualityNodes``): the mask as an outlined segment over
the patient's image, so a registration that put the brain on the scalp is seen at a glance,
and the template-space image as a scalar volume. The widget only puts ``QualityReport.text``
into a label with ``QUALITY_STYLES[report.state]``.

Nodes are built from MRML core and ``vtkSegmentationCore`` only (no module logic), like the
evidence segmentation, so the same code runs in every ``slicer`` namespace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import registerPackage

registerPackage()

from autoimmuneai.contracts import CASE_FILES  # noqa: E402

QUALITY_FILES: dict[str, str] = {role: CASE_FILES[role] for role in ("brain_mask", "image_mni")}
"""Role -> file name of the preprocessing outputs in a case folder (``explain/case_folder.py``
writes them for bundles with the clinical-scan stage)."""

BRAIN_MASK_COLOR = (0.0, 0.85, 1.0)  # cyan: apart from the evidence colours
BRAIN_MASK_LABEL = 1

QUALITY_STYLES: dict[str, str] = {
    "passed": "color: #2e7d32;",
    "failed": "color: #b00020; font-weight: bold;",
    "unavailable": "color: #666666;",
}
"""Style sheet of the quality label by ``QualityReport.state``."""

WARNING_SIGN = "\u26a0"


@dataclass(frozen=True)
class QualityReport:
    """A case's registration and brain-mask quality, in words.

    ``available`` is False for bundles without the clinical-scan stage (nothing was
    registered); ``warnings`` are the stage's own (a doubtful registration or brain mask, a
    brain partly outside the image); ``figures`` the measured values, one short phrase each.
    """

    available: bool
    figures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.available and not self.warnings

    @property
    def state(self) -> str:
        """``passed``, ``failed`` or ``unavailable`` (the key of ``QUALITY_STYLES``)."""
        if self.warnings:
            return "failed"
        return "passed" if self.available else "unavailable"

    @property
    def headline(self) -> str:
        if not self.available and self.warnings:
            return (
                f"{WARNING_SIGN} Channel co-registration check failed: compare the channels "
                "on the image before reading the result"
            )
        if not self.available:
            return (
                "Registration quality: not measured (this model has no clinical-scan stage: "
                "it expects skull-stripped, upright images)"
            )
        if self.warnings:
            return (
                f"{WARNING_SIGN} Registration / brain-mask check failed: look at the "
                "brain-mask outline on the image before reading the result"
            )
        return "Registration and brain mask: passed"

    @property
    def text(self) -> str:
        """What the results area shows: headline, the figures on one line, then each warning."""
        lines = [self.headline]
        if self.figures:
            lines.append(", ".join(self.figures))
        lines += [f"{WARNING_SIGN} {w}" for w in self.warnings]
        return "\n".join(lines)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def qualityReport(prediction: dict) -> QualityReport:
    """The quality block of a ``prediction.json`` as a QualityReport (figures it lacks are
    left out, so files from other versions of the stage still read)."""
    quality = prediction.get("quality") or {}
    if not isinstance(quality, dict) or not quality:
        return QualityReport(False)
    channels = channelFigures(quality.get("channels"))
    warnings = tuple(str(w) for w in quality.get("warnings") or ())
    if not any(key in quality for key in REGISTRATION_KEYS):  # no clinical-scan stage
        return QualityReport(False, channels, warnings)
    figures = []
    ncc = _number(quality.get("registration_ncc"))
    if ncc is not None:
        thorough = " (after a thorough search)" if quality.get("registration_thorough") else ""
        figures.append(f"registration correlation {ncc:.2f}{thorough}")
    coverage = _number(quality.get("brain_coverage"))
    if coverage is not None:
        figures.append(f"brain coverage {coverage:.0%}")
    edge = _number(quality.get("brain_edge_contrast"))
    if edge is not None:
        figures.append(f"brain-edge contrast {edge:.2f}")
    volume = _number(quality.get("brain_volume_ml"))
    if volume is not None:
        figures.append(f"brain volume {volume:.0f} mL")
    scale = quality.get("scale")
    factors = [f for f in map(_number, scale) if f is not None] if isinstance(scale, list) else []
    if factors and len(factors) == len(scale):
        figures.append(f"template scaled x{math.prod(factors):.2f} in volume")
    metric = _number(quality.get("registration_metric"))
    if metric is not None:
        figures.append(f"registration metric {metric:.3f}")
    return QualityReport(True, tuple(figures) + channels, warnings)


REGISTRATION_KEYS = ("registration_ncc", "brain_coverage", "brain_edge_contrast")
"""Figures only the clinical-scan stage writes: their presence says the case was registered."""


def channelFigures(channels) -> tuple[str, ...]:
    """One phrase per further channel of a multi-contrast case: how it was co-registered to
    the reference channel (``quality["channels"]``, written by ``preprocess.channels``)."""
    if not isinstance(channels, dict):
        return ()
    phrases = []
    for name, fit in channels.items():
        if not isinstance(fit, dict):
            continue
        status = str(fit.get("status") or "not checked")
        moved = _number(fit.get("motion_mm_max"))
        motion = f", {moved:.1f} mm of motion" if moved is not None else ""
        phrases.append(f"{name} vs {fit.get('reference', 'reference')}: {status}{motion}")
    return tuple(phrases)


def otherWarnings(prediction: dict) -> list[str]:
    """The prediction's warnings that the quality report does not already show."""
    shown = set(qualityReport(prediction).warnings)
    return [str(w) for w in prediction.get("warnings", []) if str(w) not in shown]


def importQualityNodes(scene, caseDir: str | Path, prefix: str, referenceNode=None) -> dict:
    """The case's brain mask and template-space image as nodes of ``scene``, by role.

    ``brain_mask``: a segmentation "<prefix> brain mask" with one segment, read from
    ``brain_mask.nii.gz`` by Slicer's own volume reader (so its voxels keep the file's
    geometry), on ``referenceNode``'s geometry when given (the patient's image), drawn as an
    outline in the slice views and hidden in 3D (it would hide the evidence). ``image_mni``:
    the scalar volume "<prefix> (MNI152)" read from ``image_mni.nii.gz``, grey, not shown
    (it lies in template space, not the patient's). A file that is absent (a bundle without
    the clinical-scan stage, a prediction without explanation) gives no node.
    """
    from autoimmuneai.output.mrml import (
        ROLE_ATTRIBUTE,
        SegmentSpec,
        node_to_volume,
        segmentation_from_labelmap,
    )

    caseDir = Path(caseDir)
    nodes: dict = {}
    maskPath = caseDir / QUALITY_FILES["brain_mask"]
    if maskPath.is_file():
        labels = _readNode(scene, "vtkMRMLLabelMapVolumeNode", maskPath, f"{prefix} brain mask")
        try:
            volume = node_to_volume(labels)
        finally:
            _removeWithStorage(scene, labels)
        spec = SegmentSpec(
            BRAIN_MASK_LABEL,
            "brain mask",
            BRAIN_MASK_COLOR,
            "MNI152 template brain mask mapped onto the patient's voxels by the registration",
        )
        mask = (volume.array > 0).astype("int16") * BRAIN_MASK_LABEL
        segmentation = segmentation_from_labelmap(
            scene, mask, volume.affine, [spec], f"{prefix} brain mask", reference_node=referenceNode
        )
        display = segmentation.GetDisplayNode()
        display.SetOpacity2DFill(0.0)
        display.SetOpacity2DOutline(1.0)
        display.SetVisibility3D(False)
        nodes["brain_mask"] = segmentation
    mniPath = caseDir / QUALITY_FILES["image_mni"]
    if mniPath.is_file():
        image = _readNode(scene, "vtkMRMLScalarVolumeNode", mniPath, f"{prefix} (MNI152)")
        image.CreateDefaultDisplayNodes()
        display = image.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.AutoWindowLevelOn()
        nodes["image_mni"] = image
    for role, node in nodes.items():
        node.SetAttribute(ROLE_ATTRIBUTE, role)
    return nodes


def _readNode(scene, className: str, path: Path, name: str):
    """A node of ``className`` read from ``path`` with Slicer's storage node for the file."""
    from autoimmuneai.errors import InputError
    from autoimmuneai.output.mrml import attach_storage_node

    node = scene.AddNewNodeByClass(className, name)
    storage = attach_storage_node(node, path)
    if storage is None or not storage.ReadData(node):
        _removeWithStorage(scene, node)
        raise InputError("Slicer could not read the file", file=path)
    return node


def _removeWithStorage(scene, node) -> None:
    storage = node.GetStorageNode()
    display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
    scene.RemoveNode(node)
    for other in (storage, display):
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)
