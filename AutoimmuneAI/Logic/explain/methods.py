"""The names of the attribution methods, importable without torch or Captum.

One list for the explanation code (``explain.attribution``), the command line and the Slicer
module's settings, which must load before the module has installed its dependencies.
"""

METHODS: tuple[str, ...] = ("integrated_gradients", "gradient_shap", "occlusion", "layer_gradcam")
"""Attribution methods ``explain`` accepts; the first is the default."""

DEFAULT_METHOD: str = METHODS[0]
