r"""The diagonal family: :math:`\Sigma = \operatorname{diag}(s)^2`."""
from __future__ import annotations

import torch

from vae.cholesky import at_least_float32, positive, positive_inverse
from vae.model.posteriors.base import GaussianPosterior, log_standard_normal

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, \operatorname{diag}(\text{scale})^2)` with ``scale`` ``(N, D)``."""

    family = "diagonal"
    factors = ("scale",)  # (N, D)

    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        return dim

    @classmethod
    def from_raw(cls, loc, raw, diag_transform="softplus", offdiag_scale=1.0, rank=0):
        return cls(at_least_float32(loc), positive(at_least_float32(raw), diag_transform))

    def raw(self, diag_transform="softplus"):
        return positive_inverse(self.scale, diag_transform)

    @classmethod
    def project(cls, other, rank=0):
        return cls(other.loc, other.conditional_variance().sqrt())

    def transform(self, eps):
        return torch.addcmul(self.loc.unsqueeze(1), eps, self.scale.unsqueeze(1))  # (N, K, D)

    def log_prob_draws(self, eps, z):
        return log_standard_normal(eps) - self.scale.log().sum(-1, keepdim=True)

    def log_prob(self, z):
        return self.log_prob_draws((z - self.loc.unsqueeze(1)) / self.scale.unsqueeze(1), z)

    def log_det(self):
        return 2.0 * self.scale.log().sum(-1)

    def trace(self):
        return self.scale.pow(2).sum(-1)

    @property
    def scale_tril(self):
        return torch.diag_embed(self.scale)
