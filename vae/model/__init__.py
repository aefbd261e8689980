"""The model: posterior families, networks, the likelihood, the VAE, and the bounds it is trained on.

Layers, each importing only those above it: :mod:`~vae.model.posteriors` and
:mod:`~vae.model.likelihood` -> :mod:`~vae.model.networks` ->
:mod:`~vae.model.vae` -> :mod:`~vae.model.objectives`.
"""
from vae.model.posteriors import FAMILIES, DiagonalGaussian, FullGaussian, GaussianPosterior, LowRankGaussian
from vae.model.vae import VAE, Draw

__all__ = ["VAE", "Draw", "FAMILIES", "GaussianPosterior", "FullGaussian", "DiagonalGaussian", "LowRankGaussian"]
