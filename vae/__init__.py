"""fullcov-vae: a full-covariance Gaussian VAE and a Cholesky covariance learner.

``vae.load_model(path)`` returns a trained :class:`vae.model.VAE` in eval mode.
It is imported on first use, so ``import vae.config`` (the command lines'
flags) does not pay for importing torch.
"""
from pathlib import Path

__all__ = ["load_model", "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
"""The shipped models, package data (``vae/pretrained/``); no command writes into it."""


def __getattr__(name: str):
    if name == "load_model":
        from vae.run.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
