"""AutoimmuneAI: MRI + serology differential diagnosis and progression risk, with evidence.

The package is plain Python (NumPy, PyTorch, MONAI, Captum, lifelines); only
``output.mrml`` and ``output.snapshot`` touch Slicer's MRML libraries, and nothing imports Qt.
Sub-packages follow the data flow: ``data`` (panel, lab values, manifests, images) ->
``preprocess`` -> ``model`` -> ``training`` -> ``stats`` -> ``inference`` -> ``explain`` ->
``output`` -> ``workflows`` (validate, evaluate, demo), with ``cli``, ``contracts`` (the
output contract), ``errors``, ``atomic`` and the demo generator ``synth``.
"""

__version__ = "0.1.0"
