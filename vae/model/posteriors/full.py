r"""The full family: :math:`\Sigma = L L^\top` with L lower-triangular, through the one map of :mod:`vae.cholesky`."""
from __future__ import annotations

import torch
from torch import nn

from vae.cholesky import (
    at_least_float32, entries_to_scale_tril, log_diag, mvn_log_prob, scale_tril_to_entries, tril_size,
)
from vae.model.posteriors.base import GaussianPosterior, log_standard_normal

__all__ = ["FullGaussian"]


class FullGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, L L^\top)` with a lower-triangular ``scale_tril`` L ``(N, D, D)``."""

    family = "full"
    factors = ("_scale_tril",)  # (N, D, D)

    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        return tril_size(dim)

    @staticmethod
    def factor_size(dim: int, rank: int) -> int:
        return dim * dim  # the dense (D, D) L

    @staticmethod
    def init_head(head: nn.Linear, dim: int, rank: int) -> None:
        GaussianPosterior.init_head(head, dim, rank)
        rows, cols = torch.tril_indices(dim, dim)
        with torch.no_grad():
            head.weight[rows != cols] = 0.0  # starts diagonal

    @classmethod
    def from_raw(cls, loc, raw, diag_transform="softplus", offdiag_scale=1.0, rank=0):
        return cls(at_least_float32(loc), entries_to_scale_tril(raw, diag_transform, offdiag_scale))

    def raw(self, diag_transform="softplus"):
        return scale_tril_to_entries(self._scale_tril, diag_transform)

    @classmethod
    def project(cls, other, rank=0):
        return cls(other.loc, other.scale_tril)

    def transform(self, eps):
        return torch.baddbmm(self.loc.unsqueeze(1), eps, self._scale_tril.mT)  # (N, K, D)

    def log_prob_draws(self, eps, z):
        return log_standard_normal(eps) - log_diag(self._scale_tril).sum(-1, keepdim=True)  # no solve

    def log_prob(self, z):
        return mvn_log_prob(z, self.loc.unsqueeze(1), self._scale_tril.unsqueeze(1))  # one solve per Gaussian

    def log_det(self):
        return 2.0 * log_diag(self._scale_tril).sum(-1)

    def trace(self):
        return self._scale_tril.pow(2).sum((-2, -1))

    @property
    def scale_tril(self):
        return self._scale_tril
