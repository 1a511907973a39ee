"""Prediction with a trained bundle: batch outputs, one case, a whole cohort, out-of-distribution warnings."""
