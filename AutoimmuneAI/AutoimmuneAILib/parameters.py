"""GUI state of the module: a parameter node wrapper, saved with the scene, and its logic.

Each field is bound to a widget of ``Resources/UI/AutoimmuneAI.ui`` through that widget's
``SlicerParameterName`` property (the test suite checks every field has one). Needs Slicer's
``slicer.parameterNodeWrapper`` (not in the ``slicer-core`` wheel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from .logic import METHODS, AutoimmuneAILogic

BANDS = ("1", "5", "1,5", "1,5,10")


@parameterNodeWrapper
class AutoimmuneAIParameterNode:
    """
    inputVolume - the volume of the panel's first (reference) channel, e.g. FLAIR; the other
        channels' volumes are node references of the same node (labform.storeChannelVolume).
    bundlePath - the model bundle folder (MONAI bundle layout).
    serologyTable - the patient's lab values (one row per panel feature), saved with the scene.
    caseId - the identifier written to outputs (never a patient name).
    targetClass - the class to explain ("" = the predicted class).
    attributionMethod - the image attribution method.
    evidenceBands - top-percentile bands of the evidence segmentation, e.g. "1,5".
    conformalAlpha - error rate of the conformal prediction set (0.1 = 90 % coverage).
    showQualityNodes - bring in the brain mask (outlined on the image) and the image in
        template space after a run (bundles with the clinical-scan stage). On by default:
        the outline is how a user sees a registration that missed the brain, and QC that
        must be asked for is rarely looked at.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    bundlePath: Path
    serologyTable: vtkMRMLTableNode
    caseId: str = "case"
    targetClass: str = ""
    attributionMethod: Annotated[str, Choice(list(METHODS))] = METHODS[0]
    evidenceBands: Annotated[str, Choice(list(BANDS))] = "1,5"
    conformalAlpha: Annotated[float, WithinRange(0.01, 0.5)] = 0.1
    showQualityNodes: bool = True


class AutoimmuneAISlicerLogic(AutoimmuneAILogic):
    """The logic on the application's scene; jobs started without waiting poll on a Qt timer."""

    def __init__(self) -> None:
        super().__init__(scene=slicer.mrmlScene, scheduler=qt.QTimer.singleShot)

    def getParameterNode(self):
        return AutoimmuneAIParameterNode(super().getParameterNode())
