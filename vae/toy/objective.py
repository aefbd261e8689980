r"""What the optimizer of :func:`~vae.toy.fit.fit_covariance` sees: a framed learner and its loss.

:class:`Framed` shows a :class:`~vae.toy.learner.CovarianceLearner` through a
fixed affine frame :math:`(m, B)`: :math:`\text{loc} = m + B\mu` and
:math:`L = B L'`, with :math:`(\mu, L')` the learner's own parameters. The
frame is an exact change of coordinates (:math:`B L'` is lower-triangular with
a positive diagonal whenever both factors are), so the loss is the data's loss
in the data's units, while the optimizer steps in coordinates where the frame
is the identity. With no frame the learner is used as it is.

:class:`Objective` yields the loss terms on the data and checks convergence
(:meth:`Objective.check`). Nothing runs on import.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from vae.cholesky import DIAG_FLOOR, mvn_log_prob
from vae.toy.learner import CovarianceLearner
from vae.toy.moments import DataOrLoader, Moments, iter_batches, sigma_points

__all__ = ["Framed", "Objective"]


class Framed:
    """``learner`` seen through the frame ``(loc (D,), factor (D, D))``; ``None`` is the identity frame."""

    def __init__(self, learner: CovarianceLearner, loc: Optional[torch.Tensor] = None,
                 factor: Optional[torch.Tensor] = None):
        self.learner, self.frame_loc, self.frame_factor = learner, loc, factor
        self._identity = learner.raw_tril.detach().clone()  # (D(D+1)/2,), the entries of L' = I
        self.params = [p for p in learner.parameters() if p.requires_grad]

    @property
    def loc(self) -> torch.Tensor:
        """:math:`m + B\\mu`, shape ``(D,)``."""
        if self.frame_factor is None:
            return self.learner.loc
        return self.frame_loc + self.frame_factor @ self.learner.loc

    @property
    def scale_tril(self) -> torch.Tensor:
        """:math:`B L'`, shape ``(D, D)``."""
        if self.frame_factor is None:
            return self.learner.scale_tril
        return self.frame_factor @ self.learner.scale_tril

    @torch.no_grad()
    def publish(self, output: CovarianceLearner) -> bool:
        """Write the estimate into ``output`` (in its dtype; nothing to do if it is the learner itself).

        Returns whether a diagonal entry of :math:`B L'` fell to the floor of
        :mod:`vae.cholesky`'s map, below which ``output`` cannot go, and was
        raised to just above it.
        """
        if output is self.learner:
            return False
        scale_tril = self.scale_tril.to(torch.float64)  # (D, D)
        diagonal = scale_tril.diagonal()  # (D,)
        lowest = DIAG_FLOOR * 1.001
        output.initialize(self.loc, scale_tril + torch.diag(diagonal.clamp_min(lowest) - diagonal))
        return bool((diagonal <= lowest).any())

    @torch.no_grad()
    def recentre(self) -> None:
        """Move the frame onto the current estimate and the learner back to :math:`\\mu = 0, L' = I`."""
        self.frame_loc, self.frame_factor = self.loc.detach().clone(), self.scale_tril.detach().clone()
        self.learner.raw_tril.copy_(self._identity)
        self.learner.mean.zero_()


class Objective:
    """The loss ``name`` (``"mse"`` or ``"nll"``) of a model with ``.loc`` and ``.scale_tril``.

    Args:
        name: the objective.
        data_or_loader: the data, streamed batch by batch for ``"nll"`` on a loader.
        moments: the data's :class:`~vae.toy.moments.Moments`.
        dtype, device: of the loss terms (the learner's).
        diag_transform: the learner's, for :meth:`check`.
        whiten: for the mse of a recentred fit, compare :math:`L' L'^\\top` with the
            target seen through the frame, :math:`B^{-1} T B^{-\\top}`: the same
            minimizer (:math:`L L^\\top = T`), without the squared condition
            number that the factor's map puts into the plain mse.
        normalized: divide the optimized loss by :attr:`unit` (the mean square of
            the mse target; 1 for the nll), so that its gradient has no units.

    ``"mse"`` compares :math:`L L^\\top` with ``torch.cov`` of the data. ``"nll"``
    on a tensor is evaluated on the data's :func:`~vae.toy.moments.sigma_points`
    (the same mean loss and gradient, at O(D^3)); on a loader, on its batches.
    """

    def __init__(self, name: str, data_or_loader: DataOrLoader, moments: Moments, *, dtype: torch.dtype,
                 device, normalized: bool, diag_transform: str, whiten: bool = False):
        self.name, self.dim, self.diag_transform, self.whiten = name, moments.dim, diag_transform, whiten
        self.dtype, self.device = dtype, device
        as_fit = dict(dtype=dtype, device=device)
        covariance = moments.covariance(name)  # (D, D) float64: the mse target, or the data's 1/N covariance
        self.streamed = name == "nll" and not isinstance(data_or_loader, torch.Tensor)
        self._data = data_or_loader if self.streamed else None
        self.total = moments.n if self.streamed else 1  # the terms' counts add up to this
        # float64 summaries for the check: the mse target, or the nll's sigma points
        check_device = torch.device("cpu") if torch.device(device).type == "mps" else device  # no float64 on MPS
        summary = covariance if name == "mse" else sigma_points(moments.mean, covariance)  # (D, D) or (2D, D)
        self._exact = summary.to(check_device)
        self._summary = summary.to(**as_fit)
        self.unit = covariance.square().mean().item() if name == "mse" and normalized else 1.0

    def terms(self, model) -> Iterator[Tuple[torch.Tensor, int]]:
        """Yield ``(loss term, its sample count)``: a mean over 1, or a batch's sum over its B samples."""
        if self.name == "mse" and self.whiten:
            factor = model.frame_factor  # (D, D), B
            target = torch.linalg.solve_triangular(  # (D, D), B^-1 T B^-T
                factor, torch.linalg.solve_triangular(factor, self._summary, upper=False).mT, upper=False)
            inner = model.learner.scale_tril  # (D, D), L'
            # scaled so that dividing by `unit` leaves the whitened mse over its target's mean square
            yield F.mse_loss(inner @ inner.mT, target) * (self.unit / target.square().mean()), 1
        elif self.name == "mse":
            scale_tril = model.scale_tril
            yield F.mse_loss(scale_tril @ scale_tril.mT, self._summary), 1
        elif not self.streamed:
            yield -mvn_log_prob(self._summary, model.loc, model.scale_tril).mean(), 1
        else:
            for x in iter_batches(self._data, self.dim):  # x: (B, D)
                yield -mvn_log_prob(x.to(dtype=self.dtype, device=self.device), model.loc, model.scale_tril).sum(), \
                    x.shape[0]

    def check(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> Tuple[float, float]:
        """``(loss, gradient)`` at the estimate ``(loc (D,), scale_tril (D, D))``, in float64.

        ``loss`` is the exact mean loss on all the data. ``gradient`` is
        unit-free and vanishes at the optimum:

        * nll: the largest absolute entry of the loss's gradient with respect to
          a learner's free entries and mean in the frame of the estimate itself
          (at :math:`\\mu = 0, L' = I`, with :math:`\\text{loc} = m + L\\mu`,
          :math:`L_\\text{new} = L L'`). Up to the diagonal map's slope that is
          the largest entry of :math:`L^{-1} S L^{-\\top} - I` and of
          :math:`L^{-1}(\\bar x - m)`: how far the data's moments, seen through
          the estimate, are from the identity and zero. It does not change when
          the data are shifted, scaled or rotated.
        * mse: the largest absolute entry of the gradient of the normalized loss
          :math:`\\|\\Sigma - T\\|^2 / \\|T\\|^2` with respect to
          :math:`\\Sigma / \\|T\\|`, i.e. :math:`2 \\max_{ij} |\\Sigma - T|_{ij} / \\|T\\|`
          (Frobenius norms, :math:`T` the target): the loss is quadratic in
          :math:`\\Sigma`, so this is its exact distance to the optimum.
        """
        device, float64 = self._exact.device, torch.float64
        scale_tril = scale_tril.detach().to(device, float64)  # (D, D)
        if self.name == "mse":
            error = scale_tril @ scale_tril.mT - self._exact  # (D, D)
            return error.square().mean().item(), 2 * (error.abs().max() / self._exact.norm()).item()
        learner = CovarianceLearner(self.dim, diag_transform=self.diag_transform, dtype=float64, device=device)
        framed = Framed(learner, loc.detach().to(device, float64), scale_tril)
        loss = -mvn_log_prob(self._exact, framed.loc, framed.scale_tril).mean()
        loss.backward()
        gradient = max(p.grad.abs().max().item() for p in framed.params)
        return loss.item(), gradient
