"""fullcov-vae: a full-covariance Gaussian VAE and a Cholesky covariance learner.

The package root is the Python API, the top of the layers (``docs/architecture.md``):
``vae.load_model(path)`` returns a trained :class:`vae.model.VAE` in eval mode;
``vae.fit(data, **knobs)`` trains one on a tensor, an array or a path.
Its parts are imported on first use, so ``import vae.config`` (the command
lines' flags) does not pay for importing torch; no module of the package
imports the root.
"""
__all__ = ["fit", "load_model", "PRETRAINED_DIR"]

_API = {"fit": "vae.api", "load_model": "vae.run.checkpoint", "PRETRAINED_DIR": "vae.choices"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
