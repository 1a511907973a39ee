"""The interface both preprocessing stages offer the rest of the package (a typing Protocol).

A bundle records either the plain ``model_grid.ModelGrid`` (bundles from before the
clinical-scan stage) or ``pipeline.Preprocessor``; training, prediction and explanation use
them through these members only, so neither needs to know which one it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..data.imaging import Volume
    from .model_grid import GridSample
    from .pipeline import PreprocessedSample


class Preprocessing(Protocol):
    """A patient's volume -> the model grid, and model-grid maps -> the patient's voxels."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def spacing(self) -> float: ...

    def to_model(self, volume: Volume) -> GridSample | PreprocessedSample:
        """The volume on the model grid, with what maps results back."""
        ...

    def to_input(
        self,
        model_map: np.ndarray | torch.Tensor,
        sample: Any,  # the sample this stage's ``to_model`` made
        *,
        mode: Literal["linear", "nearest"] = "linear",
    ) -> np.ndarray:
        """A model-grid map on the voxels of the volume ``sample`` came from."""
        ...

    def to_dict(self) -> dict:
        """JSON-ready description, stored in model bundles as the preprocessing."""
        ...
