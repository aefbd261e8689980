r"""Training and evaluation bounds, in nats per image.

With prior :math:`p(z) = \mathcal N(0, I)`, the posterior family
(:mod:`vae.model.posteriors`) gives the closed-form KL and the log-density of
its own draws; the decoder's likelihood (:mod:`vae.model.likelihood`) gives
:math:`\log p(x|z)`. Nothing here depends on which family or likelihood it is.

The ELBO (Kingma & Welling 2014, eq. 10) is
:math:`\mathbb E_q[\log p(x|z)] - \mathrm{KL}`; the importance-weighted bound
(Burda et al. 2016, eq. 8) is
:math:`\log \frac1K \sum_k p(x, z_k) / q(z_k|x)`. For evaluation at a large
``K`` (:mod:`vae.evaluate`, :mod:`vae.gaps`), :func:`importance_weighted_bounds`
streams both over chunks of draws, so that memory stays bounded for any ``K``.

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
from typing import Callable, NamedTuple, Optional

import torch

from vae.choices import check_estimator
from vae.model.posteriors import GaussianPosterior, log_standard_normal
from vae.model.vae import VAE, Draw

__all__ = ["Bound", "log_weights", "negative_elbo", "training_loss", "MAX_ROWS", "sample_chunk",
           "importance_weighted_bounds"]

MAX_ROWS = 20_000
"""Images x draws decoded at once by :func:`importance_weighted_bounds`: bounds memory (~63 MB of 784 logits)."""


class Bound(NamedTuple):
    """Per-image terms of a bound, each of shape ``(N,)``, in nats.

    ``loss`` is the negative bound; ``recon`` the expected negative
    log-likelihood of the pixels; ``kl`` the closed-form KL term.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def log_weights(log_px_z: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x) of a posterior's own draws.

    Args:
        log_px_z: ``(N, K)``; draw: the :class:`~vae.model.vae.Draw` of ``z (N, K, D)``.

    Returns:
        ``(N, K)``.
    """
    return log_px_z + log_standard_normal(draw.z) - draw.q.log_prob_draws(draw.eps, draw.z)


def negative_elbo(model: VAE, x: torch.Tensor, k: int = 1) -> Bound:
    """The negative ELBO per image, its reconstruction term averaged over ``k`` draws.

    Args:
        model: the VAE.
        x: images ``(N, 784)`` with values in [0, 1] (binary under dynamic binarization).
        k: posterior samples per image.
    """
    draw, logits = model(x, k)  # logits: (N, K, 784)
    recon = -model.likelihood.log_prob(logits, x).mean(1)  # (N,)
    kl = draw.q.kl_standard_normal()  # (N,)
    return Bound(recon + kl, recon, kl)


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
        beta: the KL warm-up weight on log p(z) - log q(z|x), a float or a 0-dim tensor.

    Returns:
        the surrogate ``(N,)``, and the :class:`Bound` at beta = 1 (what is reported). With
        ``reparam`` and ``beta = 1`` the surrogate is the bound's own ``loss``.

    Raises:
        ValueError: an estimator that is biased for this objective (:func:`vae.choices.check_estimator`).
    """
    check_estimator(objective, k, estimator)
    unweighted = not torch.is_tensor(beta) and beta == 1.0  # a tensor beta (a compiled step's) is never branched on
    if estimator == "reparam" and objective == "elbo":
        bound = negative_elbo(model, x, k)
        return (bound.loss if unweighted else bound.recon + beta * bound.kl), bound
    draw, logits = model(x, k)
    log_px_z = model.likelihood.log_prob(logits, x)  # (N, K)
    log_pz = log_standard_normal(draw.z)  # (N, K)
    if estimator == "reparam":
        log_qz = draw.q.log_prob_draws(draw.eps, draw.z)
    else:  # q's parameters held fixed: the encoder's gradient flows through z only
        log_qz = draw.q.detach().log_prob(draw.z)
    log_w = log_px_z + beta * (log_pz - log_qz)  # (N, K), the annealed weights
    recon = -log_px_z.mean(1)
    kl = draw.q.kl_standard_normal()
    if objective == "elbo":  # stl: the Monte-Carlo ELBO, its score term dropped
        return -log_w.mean(1), Bound(recon + kl, recon, kl)
    if estimator == "dreg":  # the encoder's path gradient, reweighted once more by w~ (normalized weights)
        weights = torch.softmax(log_w.detach(), dim=1).unsqueeze(-1)  # (N, K, 1)
        if draw.z.requires_grad:
            draw.z.register_hook(lambda grad: grad * weights)
    surrogate = math.log(k) - torch.logsumexp(log_w, dim=1)  # (N,)
    if unweighted:
        loss = surrogate.detach()
    else:
        with torch.no_grad():
            loss = math.log(k) - torch.logsumexp(log_px_z + log_pz - log_qz, dim=1)
    return surrogate, Bound(loss, recon, kl)


def sample_chunk(k: int, images: int) -> int:
    """Draws per image per pass, of ``k`` in all, for ``images`` images at once: at most :data:`MAX_ROWS` rows."""
    return max(1, min(k, MAX_ROWS // max(1, images)))


def importance_weighted_bounds(
    log_likelihood: Callable[[torch.Tensor], torch.Tensor], q: GaussianPosterior,
    k: int, chunk: Optional[int] = None, generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ELBO and importance-weighted estimates of log p(x), streamed over sample chunks.

    Args:
        log_likelihood: maps latents ``(N, C, D)`` to log p(x|z) ``(N, C)``.
        q: the posteriors of N images (any family, :mod:`vae.model.posteriors`).
        k: samples per image; chunk: samples drawn per pass (default: :func:`sample_chunk` of N).
        generator: source of the posterior noise.

    Returns:
        ``elbo`` and ``log_px``, each ``(N,)``: the mean log-weight and
        ``logsumexp_k log w_k - log k``.
    """
    chunk = sample_chunk(k, q.loc.shape[0]) if chunk is None else chunk
    running_lse = torch.full(q.loc.shape[:1], -math.inf, device=q.loc.device, dtype=q.loc.dtype)  # (N,)
    running_sum = torch.zeros_like(running_lse)
    for start in range(0, k, chunk):
        eps, z = q.rsample(min(chunk, k - start), generator)  # (N, C, E), (N, C, D)
        log_w = log_weights(log_likelihood(z), Draw(q, eps, z))  # (N, C)
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=1))
        running_sum += log_w.sum(1)
    return running_sum / k, running_lse - math.log(k)
