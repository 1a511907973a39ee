"""The fusion network, its losses and risk head, and the bundle that stores a trained model."""
