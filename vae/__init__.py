"""fullcov-vae: a full-covariance Gaussian VAE and a Cholesky covariance learner.

``vae.load_model(path)`` returns a trained :class:`vae.model.VAE` in eval mode.
"""
from vae.checkpoint import load_model

__all__ = ["load_model"]
