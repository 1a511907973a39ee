"""From a patient's image to the model grid: every step invertible, so results map back."""
