r"""Posterior families: a batch of Gaussians :math:`q(z|x) = \mathcal N(\text{loc}, \Sigma)`, one class each.

- ``full``: :math:`\Sigma = L L^\top` with L lower-triangular; :math:`D(D+1)/2` raw entries
  per image; log q of its own draws costs :math:`O(D)` each, a draw :math:`O(D^2)`.
- ``diagonal``: :math:`\Sigma = \operatorname{diag}(s)^2`; D raw entries; everything :math:`O(D)`.
- ``lowrank``: :math:`\Sigma = W W^\top + \operatorname{diag}(d)` with W of shape D x R;
  :math:`D R + D` raw entries; log-det, log q and KL in :math:`O(D R^2 + R^3)`.

Each class owns its raw-parameter layout (:meth:`~GaussianPosterior.head_size`,
:meth:`~GaussianPosterior.from_raw`), its initialization of the encoder's scale
head (:meth:`~GaussianPosterior.init_head`: near zero, so every family starts
as the same isotropic Gaussian, and a factor's off-diagonal part starts at
exactly zero), its reparameterized draws, the log-density of its own draws,
and its closed-form KL to :math:`\mathcal N(0, I)`. The model, objectives,
evaluator and pictures call these methods and never branch on the family.

The hot path uses these closed forms, never ``torch.distributions``, and no
inverse is formed: the full family solves with L, the low-rank family with
the Cholesky factor of its :math:`R \times R` capacitance
:math:`C = I_R + W^\top \operatorname{diag}(d)^{-1} W` (matrix determinant
lemma and Woodbury identity, ``docs/references.md``).
:meth:`~GaussianPosterior.distribution` hands the same parameters to
``torch.distributions`` for users. All of it runs in float32 (or float64)
with autocast disabled.
"""
from __future__ import annotations

from vae.choices import FAMILIES as FAMILY_CLASSES
from vae.model.posteriors.base import SCALE_HEAD_INIT, GaussianPosterior, log_standard_normal
from vae.model.posteriors.diagonal import DiagonalGaussian
from vae.model.posteriors.full import FullGaussian
from vae.model.posteriors.lowrank import LowRankGaussian

__all__ = ["GaussianPosterior", "FullGaussian", "DiagonalGaussian", "LowRankGaussian", "FAMILIES",
           "SCALE_HEAD_INIT", "log_standard_normal"]

FAMILIES: dict[str, type[GaussianPosterior]] = {name: globals()[cls] for name, cls in FAMILY_CLASSES.items()}
"""Family name -> its class: the registry :data:`vae.choices.FAMILIES`, resolved."""
