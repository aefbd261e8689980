"""Learn a Gaussian's mean and full covariance, and the toy problems that show it: ``python -m vae.toy``.

Modules:

* :mod:`vae.toy.learner`: :class:`CovarianceLearner`, a learnable
  :math:`\\mathcal N(\\text{loc}, L L^\\top)` built on :mod:`vae.cholesky`;
* :mod:`vae.toy.fit`: :func:`fit_covariance` and its :class:`FitHistory`;
* :mod:`vae.toy.moments`: passes over the data, :func:`closed_form`,
  :func:`relative_error`;
* :mod:`vae.toy.problems`: the classic toy problems (``ToyConfig``, ``make_problem``);
* :mod:`vae.toy.cli` and :mod:`vae.toy.plots`: the command line and its picture.

The public API below is imported on first use, so ``python -m vae.toy
--bad-flag`` answers before torch loads.
"""
from __future__ import annotations

import importlib

__all__ = ["CovarianceLearner", "FitHistory", "fit_covariance", "closed_form", "relative_error"]

_HOMES = {"CovarianceLearner": "learner", "FitHistory": "fit", "fit_covariance": "fit",
          "closed_form": "moments", "relative_error": "moments"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
