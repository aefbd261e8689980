"""The base of every posterior family: a batch of N Gaussians and the methods the model calls.

See :mod:`vae.model.posteriors` for the families and what each owns.
"""
from __future__ import annotations

import functools
import math
from typing import ClassVar, Optional

import torch
from torch import nn

__all__ = ["GaussianPosterior", "SCALE_HEAD_INIT", "LOG_2PI", "FLOAT32_METHODS", "log_standard_normal"]

SCALE_HEAD_INIT = 0.01  # shrinks the scale head's initial weights: every family starts near softplus(0)^2 I
LOG_2PI = math.log(2 * math.pi)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): ``(..., D)`` -> ``(...)``."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


FLOAT32_METHODS = ("transform", "log_prob_draws", "log_prob", "log_det", "trace", "kl_standard_normal",
                   "conditional_variance", "distribution", "scale_tril", "covariance_matrix")
"""The methods and properties of every family that run with autocast disabled: its covariance maths stays
in the factors' own dtype (float32 or float64), whatever region the caller is in."""


def _without_autocast(method):
    """``method`` (a function of a posterior) run with autocast disabled on the posterior's device."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with no_autocast(self.loc.device):
            return method(self, *args, **kwargs)
    run.without_autocast = True
    return run


def _guard(cls: type, name: str) -> None:
    """Wrap ``cls``'s own ``name`` (a method or a property) in :func:`_without_autocast`, once."""
    member = cls.__dict__.get(name)
    if isinstance(member, property) and not getattr(member.fget, "without_autocast", False):
        setattr(cls, name, property(_without_autocast(member.fget), doc=member.__doc__))
    elif callable(member) and not getattr(member, "without_autocast", False):
        setattr(cls, name, _without_autocast(member))


class GaussianPosterior:
    """N Gaussians in D dimensions: ``loc`` ``(N, D)`` and the family's factors, in the order of ``factors``.

    Class attributes: ``family`` (its name, :data:`vae.choices.FAMILIES`); ``factors``, the
    names of the tensors after ``loc`` that the constructor takes and stores.
    """

    family: ClassVar[str]
    factors: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs):
        """Every family's covariance maths (:data:`FLOAT32_METHODS`) runs outside autocast, inherited or its own."""
        super().__init_subclass__(**kwargs)
        for name in FLOAT32_METHODS:
            _guard(cls, name)

    def __init__(self, loc: torch.Tensor, *factors: torch.Tensor):
        if len(factors) != len(self.factors):
            raise TypeError(f"{type(self).__name__} takes loc and {', '.join(self.factors)}")
        self.loc = loc  # (N, D)
        for name, value in zip(self.factors, factors):
            setattr(self, name, value)

    # --- the encoder's raw head -----------------------------------------------------------------------
    @staticmethod
    def head_size(dim: int, rank: int) -> int:
        """Raw entries per image that :meth:`from_raw` takes."""
        raise NotImplementedError

    @classmethod
    def factor_size(cls, dim: int, rank: int) -> int:
        """Values per image of the factor the family computes with (its raw entries, unless denser)."""
        return cls.head_size(dim, rank)

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

    def raw(self, diag_transform: str = "softplus") -> torch.Tensor:
        """The raw entries ``(N, head_size)`` that :meth:`from_raw` (at ``offdiag_scale = 1``) maps back to these."""
        raise NotImplementedError

    @classmethod
    def project(cls, other: "GaussianPosterior", rank: int = 0) -> "GaussianPosterior":
        r"""The member of this family nearest ``other``: the same means, a covariance of this family's form.

        Full: ``other``'s covariance itself. Diagonal: its conditional variances
        :math:`1/(\Sigma^{-1})_{ii}`, the diagonal Gaussian nearest in :math:`\mathrm{KL}(q \| \text{other})`
        (marginal variances would be wider, and far worse as a variational posterior). Low rank: its top
        ``rank`` principal directions above the average of the others, plus the conditional variances.
        O(D³) per Gaussian: for starting points, never in the hot path.
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
        eps = torch.randn(loc.shape[0], k, self.noise_dim(), device=loc.device, dtype=loc.dtype,
                          generator=generator)
        return eps, self.transform(eps)

    def transform(self, eps: torch.Tensor) -> torch.Tensor:
        """The reparameterization of given noise ``eps (N, K, E)``: ``z = loc + factor(eps)`` ``(N, K, D)``."""
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

    def __getitem__(self, index) -> "GaussianPosterior":
        """The Gaussians at ``index`` (an int list, a slice or a mask over the N): the same family."""
        return type(self)(*(t[index] for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.loc, *(getattr(self, name) for name in self.factors))

    # --- for users and pictures (not the hot path) ----------------------------------------------------
    @property
    def scale_tril(self) -> torch.Tensor:
        r"""A lower-triangular L with :math:`L L^\top = \Sigma`, ``(N, D, D)``."""
        raise NotImplementedError

    def distribution(self) -> torch.distributions.Distribution:
        """The same Gaussians as a ``torch.distributions`` object (``log_prob``, ``rsample``, ``kl_divergence``)."""
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)

    def conditional_variance(self) -> torch.Tensor:
        r""":math:`1 / (\Sigma^{-1})_{ii}`, the variance of each coordinate given the others, ``(N, D)``."""
        scale_tril = self.scale_tril
        eye = torch.eye(self.dim, dtype=scale_tril.dtype, device=scale_tril.device).expand_as(scale_tril)
        inverse_factor = torch.linalg.solve_triangular(scale_tril, eye, upper=False)  # L^{-1}, outside the hot path
        return 1.0 / inverse_factor.pow(2).sum(-2)  # diag(L^{-T} L^{-1}) = diag(Sigma^{-1})

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r""":math:`\Sigma = L L^\top`, ``(N, D, D)``."""
        return self.scale_tril @ self.scale_tril.mT


for _name in FLOAT32_METHODS:  # the base's own methods (the KL, the conditional variance, ...) too
    _guard(GaussianPosterior, _name)
