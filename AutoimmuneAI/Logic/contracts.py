"""The output contract of ``predict``: ``prediction.json`` keys, ``predictions.csv`` columns, case files.

One typed definition shared by the writer (``inference``, ``explain``, ``output.mrml``), the
reader in the Slicer module (``AutoimmuneAILib``) and the tests, so that a key renamed in one
place cannot be read under its old name in another (the survival curve once was written as
``times_months``/``probability`` and read as ``times``/``probabilities``). Plain typing, no
imports from the rest of the package: every layer may import it.
"""

from __future__ import annotations

from typing import TypedDict, get_type_hints


class Survival(TypedDict):
    """The predicted progression-free probability over time."""

    times_months: list[float]
    probability: list[float]


class LabContribution(TypedDict, total=False):
    """One lab value's signed push on the explained class (in logits); the first five are required."""

    feature: str
    label: str
    value: str
    unit: str
    contribution: float
    missing: bool
    summary: str
    rank: int


LAB_CONTRIBUTION_COLUMNS = ("feature", "label", "value", "unit", "contribution")
"""The keys every lab contribution has (the columns of ``lab_contributions.tsv``)."""


class _RequiredPrediction(TypedDict):
    """The keys every ``prediction.json`` has."""

    case_id: str
    classes: list[str]
    probabilities: dict[str, float]
    predicted: str
    prediction_set: list[str]
    alpha: float
    risk_score: float
    risk_group: str
    survival: Survival
    warnings: list[str]
    risk_by_class: dict[str, float]


class Prediction(_RequiredPrediction, total=False):
    """``prediction.json`` of every predicted case (``predict`` without ``--explain``)."""

    quality: dict[str, object]  # preprocessing quality figures, for bundles that preprocess


class ExplainedPrediction(Prediction, total=False):
    """``prediction.json`` with ``--explain``: the keys above plus the explanation."""

    explanation: dict[str, object]
    regions: list[dict[str, object]]
    lab_contributions: list[LabContribution]
    modality_share: dict[str, float]


PREDICTION_KEYS: tuple[str, ...] = tuple(_RequiredPrediction.__annotations__)
"""Keys every ``prediction.json`` has."""
OPTIONAL_KEYS: tuple[str, ...] = tuple(
    k for k in Prediction.__annotations__ if k not in _RequiredPrediction.__annotations__
)
"""Keys a ``prediction.json`` may have without an explanation."""
EXPLANATION_KEYS: tuple[str, ...] = tuple(
    k for k in ExplainedPrediction.__annotations__ if k not in Prediction.__annotations__
)
"""Keys ``predict --explain`` adds."""

CASE_FILES: dict[str, str] = {
    "prediction": "prediction.json",
    "image": "image.nii.gz",
    "attribution": "attribution.nii.gz",
    "attribution_colors": "attribution_colors.ctbl",
    "segmentation": "evidence.seg.nrrd",
    "lab_contributions": "lab_contributions.tsv",
    "probabilities": "probabilities.tsv",
    "survival": "survival.tsv",
    "scene": "scene.mrml",
    "snapshot": "snapshot.png",
    # the clinical-scan stage's outputs (bundles with ``preprocess.pipeline.Preprocessor``)
    "brain_mask": "brain_mask.nii.gz",
    "image_mni": "image_mni.nii.gz",
}
"""File name of each role inside a case folder ``<out>/<case_id>/``."""

EXPLAIN_FILES: tuple[str, ...] = ("attribution", "segmentation", "scene")
"""Roles whose files every explained case has (``--resume`` redoes a case that lacks one)."""

PREDICTIONS_CSV = "predictions.csv"
ERRORS_CSV = "errors.csv"
ERRORS_CSV_COLUMNS: tuple[str, ...] = ("case_id", "row", "field", "reason")


def predictions_csv_columns(classes: list[str] | tuple[str, ...]) -> list[str]:
    """The columns of ``predictions.csv`` for a bundle with these classes, in file order."""
    return [
        "case_id",
        *[f"p_{c}" for c in classes],
        "predicted",
        "prediction_set",
        "risk_score",
        "risk_group",
        "warnings",
    ]


def check_matches_contract(cls: type, contract: type) -> None:
    """Raise ``TypeError`` unless class ``cls`` (e.g. a dataclass that writes the contract)
    declares exactly the keys of TypedDict ``contract``, each with the same type.

    Called at import by the writer, so a key added, renamed or retyped on one side only
    fails at once instead of writing a file the readers do not expect.
    """
    have, want = get_type_hints(cls), get_type_hints(contract)
    if have == want:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(k for k in set(want) & set(have) if have[k] != want[k])
    raise TypeError(
        f"{cls.__name__} does not match the contract {contract.__name__}: "
        f"missing {missing}, not in the contract {extra}, other types {differ}"
    )


def survival_of(prediction: Prediction) -> tuple[list[float], list[float]]:
    """The survival curve of a prediction as (months, probability), checked for equal length."""
    survival = prediction["survival"]
    times = [float(t) for t in survival["times_months"]]
    values = [float(p) for p in survival["probability"]]
    if len(times) != len(values):
        raise ValueError(
            f"survival: {len(times)} times_months but {len(values)} probability values"
        )
    return times, values
