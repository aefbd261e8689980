r"""A learnable multivariate normal :math:`\mathcal N(\text{loc}, L L^\top)`.

Its factor comes from :func:`vae.cholesky.entries_to_scale_tril`, so the
reported covariance is the one that was trained (triangular mask and positive
diagonal included), and :meth:`CovarianceLearner.distribution` hands
``scale_tril`` to ``MultivariateNormal`` instead of refactorizing
:math:`L L^\top`. Nothing runs on import.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vae.cholesky import DIAG_FLOOR, entries_to_scale_tril, mvn_log_prob, scale_tril_to_entries, tril_size
from vae.errors import ArgumentError

__all__ = ["CovarianceLearner", "check_loc", "check_scale_tril"]


def check_loc(loc, dim: int, argument: str = "loc") -> torch.Tensor:
    """``loc`` as a finite ``(D,)`` tensor; :class:`~vae.errors.ArgumentError` (a ``ValueError``) otherwise."""
    loc = torch.as_tensor(loc)
    if loc.shape != (dim,):
        raise ArgumentError(argument, f"must have shape ({dim},), got {tuple(loc.shape)}")
    if not bool(torch.isfinite(loc).all()):
        raise ArgumentError(argument, "must be finite, got NaN or Inf")
    return loc


def check_scale_tril(scale_tril, dim: int, argument: str = "scale_tril") -> torch.Tensor:
    """``scale_tril`` as a finite lower-triangular ``(D, D)`` tensor with a diagonal above the floor.

    Such a factor gives a positive-definite :math:`L L^\\top`. Raises
    :class:`~vae.errors.ArgumentError` (a ``ValueError``) with one line otherwise.
    """
    scale_tril = torch.as_tensor(scale_tril)
    if scale_tril.shape != (dim, dim):
        raise ArgumentError(argument, f"must have shape ({dim}, {dim}), got {tuple(scale_tril.shape)}")
    if not bool(torch.isfinite(scale_tril).all()):
        raise ArgumentError(argument, "must be finite, got NaN or Inf")
    if bool((torch.triu(scale_tril, diagonal=1) != 0).any()):
        raise ArgumentError(argument, "must be lower-triangular (a Cholesky factor), got entries above the diagonal")
    diagonal = torch.diagonal(scale_tril)  # (D,)
    if not bool((diagonal > DIAG_FLOOR).all()):
        raise ArgumentError(argument, f"must have a positive diagonal above {DIAG_FLOOR:g} (else L L^T is not "
                            f"positive definite), got a smallest diagonal entry of {diagonal.min().item():.3g}")
    return scale_tril


class CovarianceLearner(nn.Module):
    """A learnable :math:`\\mathcal N(\\text{loc}, L L^\\top)` in ``dim`` dimensions.

    Starts at zero mean and :math:`L = I`. Parameters: ``raw_tril``, the
    ``D(D+1)/2`` free entries of :math:`L`, and ``mean`` (a buffer of zeros
    when ``learn_mean=False``).

    Args:
        dim: dimension ``D >= 1``.
        learn_mean: whether the mean is a parameter.
        diag_transform: ``"softplus"`` or ``"exp"``, the positive map of ``L_ii``.
        dtype, device: of the parameters (default: torch's default dtype, CPU).
    """

    def __init__(self, dim: int, learn_mean: bool = True, diag_transform: str = "softplus",
                 *, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        n_entries = tril_size(dim)  # raises ValueError for dim < 1
        self.dim, self.diag_transform = dim, diag_transform
        dtype = dtype or torch.get_default_dtype()
        self.raw_tril = nn.Parameter(torch.zeros(n_entries, dtype=dtype, device=device))  # (D(D+1)/2,)
        mean = torch.zeros(dim, dtype=dtype, device=device)  # (D,)
        if learn_mean:
            self.mean = nn.Parameter(mean)
        else:
            self.register_buffer("mean", mean)
        self.initialize(scale_tril=torch.eye(dim))  # raises ValueError for an unknown diag_transform

    @property
    def loc(self) -> torch.Tensor:
        """The mean, shape ``(D,)``."""
        return self.mean

    @property
    def scale_tril(self) -> torch.Tensor:
        """:math:`L`, lower-triangular with a positive diagonal, shape ``(D, D)``."""
        return entries_to_scale_tril(self.raw_tril, self.diag_transform)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r""":math:`\Sigma = L L^\top`, shape ``(D, D)``."""
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.mT

    def distribution(self) -> torch.distributions.MultivariateNormal:
        """The learned distribution, built from ``scale_tril`` (no refactorization)."""
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of points ``x`` of shape ``(..., D)``; returns ``(...)``."""
        return mvn_log_prob(x, self.loc, self.scale_tril)

    @torch.no_grad()
    def initialize(self, loc: Optional[torch.Tensor] = None, scale_tril: Optional[torch.Tensor] = None) -> None:
        """Set the mean ``(D,)`` and/or the factor ``(D, D)`` (through the inverse map).

        Raises ``ValueError`` (one line) for a wrong shape, NaN or Inf, entries
        above the diagonal, or a diagonal entry not above the floor.
        """
        loc = None if loc is None else check_loc(loc, self.dim)  # both checked before either is set
        if scale_tril is not None:
            scale_tril = check_scale_tril(scale_tril, self.dim).to(torch.float64)
            self.raw_tril.copy_(scale_tril_to_entries(scale_tril, self.diag_transform))
        if loc is not None:
            self.mean.copy_(loc)

    def extra_repr(self) -> str:
        learn = isinstance(self.mean, nn.Parameter)
        return f"dim={self.dim}, learn_mean={learn}, diag_transform={self.diag_transform!r}"
