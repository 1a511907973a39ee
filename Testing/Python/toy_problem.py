"""A tiny learnable problem for model tests: the class needs the image AND a lab value.

Class = 2 * (blob in the front or back half of a 16^3 image) + (lab value high or low), so
an image-only model can reach at most 50% accuracy, a serology-only model 50%, and a fused
model 100% (chance: 25%). Follow-up times depend on the blob side (hazard ratio e^0.8).
The blob side is along axis 1 (anterior-posterior) because training flips axis 0 (left-right).
"""

from __future__ import annotations

import numpy as np

from autoimmuneai.data.dataset import CaseArrays

N_SEROLOGY = 6
N_CLASSES = 4


def toy_problem(n: int, seed: int = 0, size: int = 16) -> CaseArrays:
    rng = np.random.default_rng(seed)
    side = rng.integers(0, 2, n)
    lab = rng.integers(0, 2, n)
    labels = 2 * side + lab
    images = rng.normal(0.0, 0.3, (n, 1, size, size, size)).astype(np.float32)
    for i in range(n):
        centre = (
            rng.integers(5, size - 5),
            4 if side[i] == 0 else size - 5,
            rng.integers(5, size - 5),
        )
        images[i, 0][tuple(slice(c - 2, c + 2) for c in centre)] += 2.0
    serology = rng.normal(0.0, 1.0, (n, N_SEROLOGY)).astype(np.float32)
    serology[:, 0] = 2.0 * lab - 1.0 + rng.normal(0.0, 0.3, n)
    t_event = rng.exponential(24.0 / np.exp(0.8 * side))
    t_censor = rng.uniform(0.0, 48.0, n)
    times = np.minimum(t_event, t_censor)
    events = (t_event <= t_censor).astype(float)
    return CaseArrays.from_numpy(images, serology, labels, times, events)
