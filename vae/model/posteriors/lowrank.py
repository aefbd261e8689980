r"""The low-rank family: :math:`\Sigma = W W^\top + \operatorname{diag}(d)`, in :math:`O(D R^2 + R^3)` per image."""
from __future__ import annotations

import torch
from torch import nn

from vae.cholesky import DIAG_FLOOR, at_least_float32, log_diag, positive, positive_inverse
from vae.model.posteriors.base import LOG_2PI, GaussianPosterior

__all__ = ["LowRankGaussian"]


class LowRankGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, W W^\top + \operatorname{diag}(d))`: ``cov_factor`` W ``(N, D, R)``, ``cov_diag`` d ``(N, D)``.

    Raw layout per image: the D x R entries of W row by row, then D entries
    whose positive map is :math:`\sqrt{d}`. Draws are
    :math:`z = m + W \epsilon_1 + \sqrt d \odot \epsilon_2` with noise
    :math:`(\epsilon_1, \epsilon_2)` of size R + D.
    """

    family = "lowrank"

    factors = ("cov_factor", "cov_diag")  # (N, D, R), (N, D)
    _capacitance = None  # (scaled factor (N, D, R), Cholesky of C (N, R, R)), built once per object

    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        return dim * rank + dim

    @staticmethod
    def init_head(head: nn.Linear, dim: int, rank: int) -> None:
        GaussianPosterior.init_head(head, dim, rank)
        with torch.no_grad():
            head.weight[: dim * rank] = 0.0  # W starts at zero: the posterior starts diagonal

    @classmethod
    def from_raw(cls, loc, raw, diag_transform="softplus", offdiag_scale=1.0, rank=0):
        raw = at_least_float32(raw)
        dim = loc.shape[-1]
        factor = raw[..., : dim * rank].unflatten(-1, (dim, rank))  # (N, D, R)
        if torch.is_tensor(offdiag_scale) or offdiag_scale != 1.0:
            factor = factor * offdiag_scale
        return cls(at_least_float32(loc), factor, positive(raw[..., dim * rank:], diag_transform).pow(2))

    def raw(self, diag_transform="softplus"):
        return torch.cat([self.cov_factor.flatten(-2), positive_inverse(self.cov_diag.sqrt(), diag_transform)], -1)

    @classmethod
    def project(cls, other, rank=0):
        covariance = other.covariance_matrix  # (N, D, D)
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        dim = covariance.shape[-1]
        rest = values[..., : dim - rank].mean(-1, keepdim=True) if rank < dim else torch.zeros_like(values[..., :1])
        top = (values[..., dim - rank:] - rest).clamp_min(0)  # (N, R)
        factor = vectors[..., dim - rank:] * top.sqrt().unsqueeze(-2)  # (N, D, R)
        floor = (2 * DIAG_FLOOR) ** 2  # the positive map's floor, squared, with room
        diag = torch.minimum(other.conditional_variance(), rest)  # rest = 0 at full rank: W W^T alone is exact
        return cls(other.loc, factor, diag.clamp_min(floor))

    @property
    def rank(self) -> int:
        """R."""
        return self.cov_factor.shape[-1]

    def noise_dim(self):
        return self.rank + self.dim

    def transform(self, eps):
        low, diag = eps[..., : self.rank], eps[..., self.rank:]  # (N, K, R), (N, K, D)
        z = torch.baddbmm(self.loc.unsqueeze(1), low, self.cov_factor.mT)  # (N, K, D)
        return torch.addcmul(z, diag, self.cov_diag.sqrt().unsqueeze(1))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W / sqrt(d)`` ``(N, D, R)`` and the Cholesky factor of C = I + (W/√d)ᵀ(W/√d) ``(N, R, R)``."""
        if self._capacitance is None:
            scaled = self.cov_factor / self.cov_diag.sqrt().unsqueeze(-1)  # (N, D, R)
            eye = torch.eye(self.rank, dtype=scaled.dtype, device=scaled.device)
            # C >= I is positive definite by construction: no error check, which would read the result back
            # to the host (a sync every step on a GPU, and forbidden inside a CUDA graph)
            self._capacitance = scaled, torch.linalg.cholesky_ex(eye + scaled.mT @ scaled, check_errors=False).L
        return self._capacitance

    def log_prob(self, z):
        scaled, chol = self._factors()
        y = (z - self.loc.unsqueeze(1)) / self.cov_diag.sqrt().unsqueeze(1)  # (N, K, D), D^{-1/2}(z - m)
        u = torch.linalg.solve_triangular(chol, scaled.mT @ y.mT, upper=False)  # (N, R, K)
        mahalanobis = y.pow(2).sum(-1) - u.pow(2).sum(1)  # (N, K), Woodbury
        return -0.5 * (mahalanobis + self.log_det().unsqueeze(-1) + self.dim * LOG_2PI)

    def log_det(self):
        return 2.0 * log_diag(self._factors()[1]).sum(-1) + self.cov_diag.log().sum(-1)  # determinant lemma

    def trace(self):
        return self.cov_factor.pow(2).sum((-2, -1)) + self.cov_diag.sum(-1)

    @property
    def covariance_matrix(self):
        return self.cov_factor @ self.cov_factor.mT + torch.diag_embed(self.cov_diag)

    @property
    def scale_tril(self):  # O(D^3): for users and pictures only
        return torch.linalg.cholesky(self.covariance_matrix)

    def distribution(self):
        return torch.distributions.LowRankMultivariateNormal(self.loc, self.cov_factor, self.cov_diag)
