"""Data in: panels, lab-value parsing, cohort manifests, image volumes, and the arrays a network trains on."""
