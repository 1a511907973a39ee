"""The built-in demo cohort: synthetic FLAIR + serology + outcomes on the MNI152 anatomy.

``generate_cohort(out_dir, n_cases, seed)`` writes images, lesion masks, ``manifest.csv``,
``truth.csv`` (the latent ground truth) and ``cohort.json``. Knobs live in ``SynthConfig``.
"""

from .cohort import MANIFEST_COLUMNS, TRUTH_COLUMNS, generate_cohort, sample_latent_cohort
from .config import SynthConfig

__all__ = [
    "MANIFEST_COLUMNS",
    "TRUTH_COLUMNS",
    "SynthConfig",
    "generate_cohort",
    "sample_latent_cohort",
]
