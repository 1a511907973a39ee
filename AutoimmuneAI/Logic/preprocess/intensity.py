"""Intensity standardisation inside the brain mask, blind to the scanner's scale and offset.

After bias correction the scanner's remaining effect on intensities is an affine map (scale
and offset). Percentiles commute with it, so a z-score built from them is invariant: the
median of the brain mask (parenchyma is most of it, so the median is tissue whatever the
contrast) and the 10th-90th percentile spread (divided by 2.563, the spread of a standard
normal, so the units stay those of a z-score), which neither the dark CSF nor lesions and
hot voxels move much. Thick slices and blur change the spread less than they change an Otsu
split. Outside the mask every voxel is ``BACKGROUND_Z``, below the model's tissue threshold
(``model.fusion.FOREGROUND_Z``), so the network sees a brain on an empty background, as it
did on the skull-stripped images.
"""

from __future__ import annotations

import numpy as np

BACKGROUND_Z = -5.0
_SPREAD = 2.5631  # 90th - 10th percentile of a standard normal


def standardise(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """``values`` z-scored on the mask by its median and 10-90 spread; ``BACKGROUND_Z`` outside."""
    inside = np.asarray(values, np.float64)[mask]
    if inside.size < 10:
        raise ValueError("the brain mask is empty")
    p10, median, p90 = np.percentile(inside, [10, 50, 90])
    scale = (p90 - p10) / _SPREAD
    if not scale > 1e-6 * max(1.0, abs(median)):
        raise ValueError("the brain mask holds no contrast")
    out = np.full(values.shape, BACKGROUND_Z, np.float32)
    out[mask] = np.maximum((inside - median) / scale, BACKGROUND_Z + 1.0)
    return out, {"median": float(median), "scale": float(scale)}
