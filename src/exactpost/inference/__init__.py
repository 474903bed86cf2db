"""Restoring with trained networks: EPS and Palette restoration, the baselines on a prior, the bundled models, the public API."""
