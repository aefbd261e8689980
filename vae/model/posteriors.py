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
lemma and Woodbury identity, ``../shared/REFERENCES.md``).
:meth:`~GaussianPosterior.distribution` hands the same parameters to
``torch.distributions`` for users. All of it runs in float32 (or float64)
with autocast disabled.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import nn

from vae.cholesky import at_least_float32, entries_to_scale_tril, log_diag, positive, tril_size

__all__ = ["GaussianPosterior", "FullGaussian", "DiagonalGaussian", "LowRankGaussian", "FAMILIES",
           "SCALE_HEAD_INIT", "log_standard_normal"]

SCALE_HEAD_INIT = 0.01  # shrinks the scale head's initial weights: every family starts near softplus(0)^2 I
_LOG_2PI = math.log(2 * math.pi)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): ``(..., D)`` -> ``(...)``."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class GaussianPosterior:
    """N Gaussians in D dimensions; ``loc`` is ``(N, D)``. Subclasses add their factors.

    Class attributes: ``family`` (its name, :data:`vae.cli.FAMILIES`).
    """

    family: ClassVar[str]

    def __init__(self, loc: torch.Tensor):
        self.loc = loc  # (N, D)

    # --- the encoder's raw head -----------------------------------------------------------------------
    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        """Raw entries per image that :meth:`from_raw` takes."""
        raise NotImplementedError

    @staticmethod
    def init_head(head: nn.Linear, dim: int, rank: int) -> None:
        """Initialize the encoder's scale head in place (weights near zero, biases zero)."""
        with torch.no_grad():
            head.weight.mul_(SCALE_HEAD_INIT)
            head.bias.zero_()

    @classmethod
    def from_raw(cls, loc: torch.Tensor, raw: torch.Tensor, diag_transform: str = "softplus",
                 offdiag_scale: float = 1.0, rank: int = 0) -> "GaussianPosterior":
        """The posterior whose factors the raw entries ``(N, head_size)`` encode.

        ``offdiag_scale`` multiplies the off-diagonal part of the factor (0 holds it at zero).
        """
        raise NotImplementedError

    # --- draws and densities --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """D."""
        return self.loc.shape[-1]

    def noise_dim(self) -> int:
        """Standard-normal numbers per draw."""
        return self.dim

    def rsample(self, k: int = 1, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` reparameterized draws per Gaussian: noise ``eps (N, K, E)`` and ``z = loc + factor(eps)`` ``(N, K, D)``."""
        loc = self.loc
        with _no_autocast(loc.device):
            eps = torch.randn(loc.shape[0], k, self.noise_dim(), device=loc.device, dtype=loc.dtype,
                              generator=generator)
            return eps, self._transform(eps)

    def _transform(self, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob_draws(self, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log q of this posterior's own draws ``(eps, z)`` from :meth:`rsample`: ``(N, K)``.

        Uses the noise where that saves a solve; equal to :meth:`log_prob` of ``z``.
        """
        return self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of any points ``z (N, K, D)``: ``(N, K)``."""
        raise NotImplementedError

    def log_det(self) -> torch.Tensor:
        r""":math:`\log|\Sigma|`, ``(N,)``."""
        raise NotImplementedError

    def trace(self) -> torch.Tensor:
        r""":math:`\operatorname{tr}\Sigma`, ``(N,)``."""
        raise NotImplementedError

    def kl_standard_normal(self) -> torch.Tensor:
        r""":math:`\mathrm{KL}(q \,\|\, \mathcal N(0, I)) = \tfrac12(\operatorname{tr}\Sigma + \|m\|^2 - D - \log|\Sigma|)`, ``(N,)``."""
        return 0.5 * (self.trace() + self.loc.pow(2).sum(-1) - self.dim - self.log_det())

    def detach(self) -> "GaussianPosterior":
        """The same Gaussians with every tensor detached (log q with its parameters held fixed)."""
        return type(self)(*(t.detach() for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    # --- for users and pictures (not the hot path) ----------------------------------------------------
    @property
    def scale_tril(self) -> torch.Tensor:
        r"""A lower-triangular L with :math:`L L^\top = \Sigma`, ``(N, D, D)``."""
        raise NotImplementedError

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r""":math:`\Sigma`, ``(N, D, D)``."""
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.mT

    def distribution(self) -> torch.distributions.Distribution:
        """The same Gaussians as a ``torch.distributions`` object (``log_prob``, ``rsample``, ``kl_divergence``)."""
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)


class FullGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, L L^\top)` with a lower-triangular ``scale_tril`` L ``(N, D, D)``."""

    family = "full"

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor):
        super().__init__(loc)
        self._scale_tril = scale_tril  # (N, D, D)

    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        return tril_size(dim)

    @staticmethod
    def init_head(head: nn.Linear, dim: int, rank: int) -> None:
        GaussianPosterior.init_head(head, dim, rank)
        rows, cols = torch.tril_indices(dim, dim)
        with torch.no_grad():
            head.weight[rows != cols] = 0.0  # starts diagonal

    @classmethod
    def from_raw(cls, loc, raw, diag_transform="softplus", offdiag_scale=1.0, rank=0):
        return cls(at_least_float32(loc), entries_to_scale_tril(raw, diag_transform, offdiag_scale))

    def _transform(self, eps):
        return torch.baddbmm(self.loc.unsqueeze(1), eps, self._scale_tril.mT)  # (N, K, D)

    def log_prob_draws(self, eps, z):
        return log_standard_normal(eps) - log_diag(self._scale_tril).sum(-1, keepdim=True)  # no solve

    def log_prob(self, z):
        diff = (z - self.loc.unsqueeze(1)).mT  # (N, D, K)
        eps = torch.linalg.solve_triangular(self._scale_tril, diff, upper=False).mT  # (N, K, D)
        return self.log_prob_draws(eps, z)

    def log_det(self):
        return 2.0 * log_diag(self._scale_tril).sum(-1)

    def trace(self):
        return self._scale_tril.pow(2).sum((-2, -1))

    def _tensors(self):
        return self.loc, self._scale_tril

    @property
    def scale_tril(self):
        return self._scale_tril


class DiagonalGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, \operatorname{diag}(\text{scale})^2)` with ``scale`` ``(N, D)``."""

    family = "diagonal"

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__(loc)
        self.scale = scale  # (N, D)

    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        return dim

    @classmethod
    def from_raw(cls, loc, raw, diag_transform="softplus", offdiag_scale=1.0, rank=0):
        return cls(at_least_float32(loc), positive(at_least_float32(raw), diag_transform))

    def _transform(self, eps):
        return torch.addcmul(self.loc.unsqueeze(1), eps, self.scale.unsqueeze(1))  # (N, K, D)

    def log_prob_draws(self, eps, z):
        return log_standard_normal(eps) - self.scale.log().sum(-1, keepdim=True)

    def log_prob(self, z):
        return self.log_prob_draws((z - self.loc.unsqueeze(1)) / self.scale.unsqueeze(1), z)

    def log_det(self):
        return 2.0 * self.scale.log().sum(-1)

    def trace(self):
        return self.scale.pow(2).sum(-1)

    def _tensors(self):
        return self.loc, self.scale

    @property
    def scale_tril(self):
        return torch.diag_embed(self.scale)


class LowRankGaussian(GaussianPosterior):
    r""":math:`\mathcal N(\text{loc}, W W^\top + \operatorname{diag}(d))`: ``cov_factor`` W ``(N, D, R)``, ``cov_diag`` d ``(N, D)``.

    Raw layout per image: the D x R entries of W row by row, then D entries
    whose positive map is :math:`\sqrt{d}`. Draws are
    :math:`z = m + W \epsilon_1 + \sqrt d \odot \epsilon_2` with noise
    :math:`(\epsilon_1, \epsilon_2)` of size R + D.
    """

    family = "lowrank"

    def __init__(self, loc: torch.Tensor, cov_factor: torch.Tensor, cov_diag: torch.Tensor):
        super().__init__(loc)
        self.cov_factor, self.cov_diag = cov_factor, cov_diag  # (N, D, R), (N, D)
        self._capacitance = None  # (scaled factor (N, D, R), Cholesky of C (N, R, R)), built once

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
        if offdiag_scale != 1.0:
            factor = factor * offdiag_scale
        return cls(at_least_float32(loc), factor, positive(raw[..., dim * rank:], diag_transform).pow(2))

    @property
    def rank(self) -> int:
        """R."""
        return self.cov_factor.shape[-1]

    def noise_dim(self):
        return self.rank + self.dim

    def _transform(self, eps):
        low, diag = eps[..., : self.rank], eps[..., self.rank:]  # (N, K, R), (N, K, D)
        z = torch.baddbmm(self.loc.unsqueeze(1), low, self.cov_factor.mT)  # (N, K, D)
        return torch.addcmul(z, diag, self.cov_diag.sqrt().unsqueeze(1))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W / sqrt(d)`` ``(N, D, R)`` and the Cholesky factor of C = I + (W/√d)ᵀ(W/√d) ``(N, R, R)``."""
        if self._capacitance is None:
            scaled = self.cov_factor / self.cov_diag.sqrt().unsqueeze(-1)  # (N, D, R)
            eye = torch.eye(self.rank, dtype=scaled.dtype, device=scaled.device)
            self._capacitance = scaled, torch.linalg.cholesky(eye + scaled.mT @ scaled)
        return self._capacitance

    def log_prob(self, z):
        scaled, chol = self._factors()
        y = (z - self.loc.unsqueeze(1)) / self.cov_diag.sqrt().unsqueeze(1)  # (N, K, D), D^{-1/2}(z - m)
        u = torch.linalg.solve_triangular(chol, scaled.mT @ y.mT, upper=False)  # (N, R, K)
        mahalanobis = y.pow(2).sum(-1) - u.pow(2).sum(1)  # (N, K), Woodbury
        return -0.5 * (mahalanobis + self.log_det().unsqueeze(-1) + self.dim * _LOG_2PI)

    def log_det(self):
        return 2.0 * log_diag(self._factors()[1]).sum(-1) + self.cov_diag.log().sum(-1)  # determinant lemma

    def trace(self):
        return self.cov_factor.pow(2).sum((-2, -1)) + self.cov_diag.sum(-1)

    def _tensors(self):
        return self.loc, self.cov_factor, self.cov_diag

    @property
    def covariance_matrix(self):
        return self.cov_factor @ self.cov_factor.mT + torch.diag_embed(self.cov_diag)

    @property
    def scale_tril(self):  # O(D^3): for users and pictures only
        return torch.linalg.cholesky(self.covariance_matrix)

    def distribution(self):
        return torch.distributions.LowRankMultivariateNormal(self.loc, self.cov_factor, self.cov_diag)


FAMILIES: dict[str, type[GaussianPosterior]] = {cls.family: cls for cls in (FullGaussian, DiagonalGaussian,
                                                                            LowRankGaussian)}
"""Family name (:data:`vae.cli.FAMILIES`) -> its class."""
