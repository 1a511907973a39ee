"""Training the fusion network and everything a bundle needs."""
