"""Closed-form priors: Gaussian mixtures and Gaussians (exact posteriors for tests and benchmarks)."""
