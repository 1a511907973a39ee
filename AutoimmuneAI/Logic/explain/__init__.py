"""Why the model decided: Captum attributions, evidence regions, per-case outputs, and explanation quality."""
