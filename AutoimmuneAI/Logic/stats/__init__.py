"""Statistics of the predictions: calibration, conformal sets, survival, metrics, and the baselines."""
