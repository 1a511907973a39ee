"""AutoimmuneAI: MRI + serology differential diagnosis and progression risk, with evidence.

The package is plain Python (NumPy, PyTorch, MONAI, Captum, lifelines); only ``mrml`` and
``snapshot`` touch Slicer's MRML libraries, and nothing imports Qt. Modules follow the data
flow: cohort -> imaging -> model -> train/evaluate -> bundle -> predict -> explain ->
overlay -> mrml -> report.
"""

__version__ = "0.1.0"
