r"""Training and evaluation bounds, in nats per image.

With :math:`q(z|x) = \mathcal N(m, L L^\top)` and prior :math:`p(z) = \mathcal N(0, I)`
the KL divergence has a closed form that needs no solve (Kingma & Welling 2019,
sec. 2.5):

.. math::
    \mathrm{KL}(q \,\|\, p) = \tfrac12 \left(\|L\|_F^2 + \|m\|^2 - D\right) - \sum_i \log L_{ii}.

The ELBO (Kingma & Welling 2014, eq. 10) is
:math:`\mathbb E_q[\log p(x|z)] - \mathrm{KL}`; the importance-weighted bound
(Burda et al. 2016, eq. 8) is
:math:`\log \frac1K \sum_k p(x, z_k) / q(z_k|x)`, with
:math:`\log q(z|x) = -\tfrac12\|\epsilon\|^2 - \sum_i \log L_{ii} - \tfrac D2 \log 2\pi`
for the model's own draws :math:`z = m + L\epsilon`.

Training differentiates a *surrogate* of the bound (:func:`training_loss`):
the KL warm-up weight :math:`\beta` scales :math:`\log p(z) - \log q(z|x)`
(inside the importance weights for the IWAE), and the gradient estimator
decides how the encoder's gradient is formed:

- ``reparam``: the plain reparameterized gradient of the bound.
- ``stl``, "sticking the landing" (Roeder et al. 2017): :math:`\log q` is
  evaluated with its parameters held fixed, so the encoder's gradient flows
  through the draws :math:`z` only; its score term, zero in expectation, is
  dropped. Unbiased for the ELBO at any ``k`` and for the IWAE at ``k = 1``.
- ``dreg`` (Tucker et al. 2019), for the IWAE: the encoder's gradient is
  :math:`\sum_k \tilde w_k^2 \,\partial \log w_k/\partial z_k \cdot \partial z_k/\partial\phi`
  with :math:`\tilde w` the normalized weights; the decoder's gradient is the
  IWAE's own, :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`. At ``k = 1`` it is ``stl``.

Every reported figure is the true bound at :math:`\beta = 1`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vae.cholesky import at_least_float32, log_diag
from vae.config import check_estimator
from vae.model import VAE

__all__ = [
    "Bound",
    "log_standard_normal",
    "log_posterior",
    "log_weights",
    "kl_standard_normal",
    "bernoulli_log_likelihood",
    "negative_elbo",
    "negative_iwae",
    "log_importance_weights",
    "log_posterior_stopped",
    "training_loss",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Bound(NamedTuple):
    """Per-image terms of a bound, each of shape ``(N,)``, in nats.

    ``loss`` is the negative bound; ``recon`` the expected negative
    log-likelihood of the pixels; ``kl`` the closed-form KL term.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def kl_standard_normal(loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, L Lᵀ) ‖ N(0, I)) in closed form: ``(N, D), (N, D, D)`` -> ``(N,)``."""
    frobenius = scale_tril.pow(2).sum((-2, -1))  # (N,)
    return 0.5 * (frobenius + loc.pow(2).sum(-1) - loc.shape[-1]) - log_diag(scale_tril).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) summed over pixels: logits ``(N, K, P)``, x ``(N, P)`` -> ``(N, K)``."""
    target = x.unsqueeze(1).expand_as(logits)
    return -F.binary_cross_entropy_with_logits(at_least_float32(logits), target, reduction="none").sum(-1)


def negative_elbo(model: VAE, x: torch.Tensor, k: int = 1) -> Bound:
    """The negative ELBO per image, its reconstruction term averaged over ``k`` draws.

    Args:
        model: the VAE.
        x: images ``(N, 784)`` with values in [0, 1] (binary under dynamic binarization).
        k: posterior samples per image.
    """
    posterior, logits = model(x, k)  # logits: (N, K, 784)
    recon = -bernoulli_log_likelihood(logits, x).mean(1)  # (N,)
    kl = kl_standard_normal(posterior.loc, posterior.scale_tril)  # (N,)
    return Bound(recon + kl, recon, kl)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): ``(..., D)`` -> ``(...)``."""
    return -0.5 * z.pow(2).sum(-1) - z.shape[-1] * _HALF_LOG_2PI


def log_posterior(eps: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """log q(z|x) of the model's own draws z = loc + L eps, with no solve.

    Args:
        eps: the standard-normal draws ``(N, K, D)``; scale_tril: ``L`` ``(N, D, D)``.

    Returns:
        ``(N, K)``.
    """
    return log_standard_normal(eps) - log_diag(scale_tril).sum(-1, keepdim=True)


def log_weights(log_px_z: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x) of draws z = loc + L eps.

    Args:
        log_px_z: ``(N, K)``; z, eps: ``(N, K, D)``; scale_tril: ``(N, D, D)``.

    Returns:
        ``(N, K)``.
    """
    return log_px_z + log_standard_normal(z) - log_posterior(eps, scale_tril)


def _log_weights(model: VAE, x: torch.Tensor, k: int):
    posterior, logits = model(x, k)
    log_px_z = bernoulli_log_likelihood(logits, x)  # (N, K)
    return posterior, log_px_z, log_weights(log_px_z, posterior.z, posterior.eps, posterior.scale_tril)


def log_importance_weights(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``k`` draws per image: ``(N, 784)`` -> ``(N, K)``."""
    return _log_weights(model, x, k)[2]


def negative_iwae(model: VAE, x: torch.Tensor, k: int) -> Bound:
    """The negative importance-weighted bound per image, with ELBO terms for reporting.

    ``loss`` is ``log k - logsumexp_k(log w_k)``; ``recon`` (averaged over the
    same ``k`` draws) and the closed-form ``kl`` are reported beside it. At
    ``k = 1``, ``loss`` is the single-draw ELBO whose KL is the Monte-Carlo term
    ``log q - log p``: its expectation is :func:`negative_elbo`'s loss.
    """
    posterior, log_px_z, log_w = _log_weights(model, x, k)  # (N, K) each
    loss = math.log(k) - torch.logsumexp(log_w, dim=1)  # (N,)
    return Bound(loss, -log_px_z.mean(1), kl_standard_normal(posterior.loc, posterior.scale_tril))


def log_posterior_stopped(z: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """log q(z|x) with q's parameters held fixed: gradients reach the encoder only through ``z``.

    One triangular solve per image for all its draws, no inverse.

    Args:
        z: draws ``(N, K, D)``; loc: ``(N, D)``; scale_tril: ``(N, D, D)``.

    Returns:
        ``(N, K)``; its value equals :func:`log_posterior` of the same draws.
    """
    scale_tril = scale_tril.detach()
    diff = (z - loc.detach().unsqueeze(1)).transpose(1, 2)  # (N, D, K)
    eps = torch.linalg.solve_triangular(scale_tril, diff, upper=False).transpose(1, 2)  # (N, K, D)
    return log_posterior(eps, scale_tril)


def training_loss(
    model: VAE, x: torch.Tensor, objective: str = "elbo", k: int = 1, estimator: str = "reparam",
    beta: float = 1.0,
) -> tuple[torch.Tensor, Bound]:
    """The per-image surrogate that training differentiates, and the true bound it stands for.

    Args:
        model: the VAE.
        x: images ``(N, 784)``.
        objective: ``elbo`` or ``iwae``; k: posterior samples per image.
        estimator: ``reparam``, ``stl`` or ``dreg`` (see the module docstring).
        beta: the KL warm-up weight on log p(z) - log q(z|x).

    Returns:
        the surrogate ``(N,)``, and the :class:`Bound` at beta = 1 (what is reported). With
        ``reparam`` and ``beta = 1`` the surrogate is the bound's own ``loss``.

    Raises:
        ValueError: an estimator that is biased for this objective (:func:`vae.config.check_estimator`).
    """
    check_estimator(objective, k, estimator)
    if estimator == "reparam" and objective == "elbo":
        bound = negative_elbo(model, x, k)
        return (bound.loss if beta == 1.0 else bound.recon + beta * bound.kl), bound
    posterior, logits = model(x, k)
    log_px_z = bernoulli_log_likelihood(logits, x)  # (N, K)
    log_pz = log_standard_normal(posterior.z)  # (N, K)
    if estimator == "reparam":
        log_qz = log_posterior(posterior.eps, posterior.scale_tril)
    else:
        log_qz = log_posterior_stopped(posterior.z, posterior.loc, posterior.scale_tril)
    log_w = log_px_z + beta * (log_pz - log_qz)  # (N, K), the annealed weights
    recon = -log_px_z.mean(1)
    kl = kl_standard_normal(posterior.loc, posterior.scale_tril)
    if objective == "elbo":  # stl: the Monte-Carlo ELBO, its score term dropped
        return -log_w.mean(1), Bound(recon + kl, recon, kl)
    if estimator == "dreg":  # the encoder's path gradient, reweighted once more by w~ (normalized weights)
        weights = torch.softmax(log_w.detach(), dim=1).unsqueeze(-1)  # (N, K, 1)
        if posterior.z.requires_grad:
            posterior.z.register_hook(lambda grad: grad * weights)
    surrogate = math.log(k) - torch.logsumexp(log_w, dim=1)  # (N,)
    if beta == 1.0:
        loss = surrogate.detach()
    else:
        with torch.no_grad():
            loss = math.log(k) - torch.logsumexp(log_px_z + log_pz - log_qz, dim=1)
    return surrogate, Bound(loss, recon, kl)
