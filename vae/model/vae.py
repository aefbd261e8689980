r"""The VAE: encoder -> a posterior family's q(z|x) -> z = loc + factor(eps) -> decoder -> likelihood.

Data of any shape, rows ``(N, F)`` or images ``(N, C, H, W)``, through MLPs or (images)
convolutional networks (:mod:`vae.model.networks`); the public methods take and give the data's
own shape.

The encoder's scale head emits a family's raw entries (:mod:`vae.model.posteriors`:
``full``, ``diagonal`` or ``lowrank``); the family turns them into its factors,
through the one map of :mod:`vae.cholesky`. Everything after that (draws, KL,
log-densities) is the family's own code, so nothing here branches on it.

The covariance maths runs in float32 even inside an autocast region; only the
networks run in reduced precision.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import math

import torch
from torch import nn

from vae.cholesky import at_least_float32
from vae.choices import check_choice
from vae.model.likelihood import make_likelihood
from vae.model.networks import NETWORKS
from vae.model.posteriors import FAMILIES, GaussianPosterior

__all__ = ["OFFDIAG_SCALE", "VAE", "Draw"]

# The off-diagonal part of a factor (L below its diagonal, a low-rank W) is
# OFFDIAG_SCALE times the raw entries. The reparameterization gradient of an
# off-diagonal entry, g_i eps_j, is mostly noise, and Adam turns noise into
# steps of about lr each, so undamped off-diagonal entries random-walk and swamp
# the small posterior scales of active latents. Measured (D=32, hidden 300-300,
# 20k images, test -ELBO): undamped, the full posterior trails the diagonal one
# by 10 nats after 4 epochs; with 0.1 it is level there, and trails by about 4
# nats after 12 (0.01: 3). The rest of the gap comes from the first epochs, when
# the posterior settles which latents are active: training holds the
# off-diagonal entries at zero for a few epochs (``VAE.offdiag_enabled``, the
# ``--diag-warmup`` flag). With it the full posterior leads the diagonal one
# early and draws level by 400 epochs, where it trailed by 2.3 nats of NLL
# without it (docs/results.md).
OFFDIAG_SCALE = 0.1


class Draw(NamedTuple):
    """A reparameterized draw from q(z|x): the posterior, its noise ``eps (N, K, E)`` and ``z (N, K, D)``."""

    q: GaussianPosterior
    eps: torch.Tensor
    z: torch.Tensor


class VAE(nn.Module):
    r"""Variational autoencoder with a Gaussian posterior family and a likelihood owned by the decoder.

    Args:
        latent_dim: D.
        hidden: hidden widths of the encoder; the decoder mirrors them.
        posterior: the family, ``"full"`` (:math:`LL^\top`), ``"diagonal"`` or ``"lowrank"``
            (:math:`WW^\top + \operatorname{diag}(d)`); kept as :attr:`family`.
        diag_transform: positive map of the factor's diagonal, ``"softplus"`` or ``"exp"``.
        data_shape: one example's shape, ``(C, H, W)`` for images (``(1, 28, 28)`` for MNIST) or ``(F,)``
            for table rows.
        rank: R, the columns of the low-rank family's W (ignored by the others).
        likelihood: p(x|z), ``"bernoulli"``, ``"gaussian"`` or ``"logistic"`` (:mod:`vae.model.likelihood`).
        in_dim: the old spelling of ``data_shape=(in_dim,)``, for rows.
        arch: the networks (:mod:`vae.model.networks`), ``"mlp"`` or ``"conv"`` (images only).
        channels: ``conv``: the channels of the encoder's stride-2 convolutions, one per layer (the
            decoder mirrors them); ``hidden`` are then the dense widths between them and the heads.
    """

    def __init__(
        self, latent_dim: int = 20, hidden: Sequence[int] = (400,), posterior: str = "full",
        diag_transform: str = "softplus", data_shape: Sequence[int] = (1, 28, 28), rank: int = 2,
        likelihood: str = "bernoulli", in_dim: Optional[int] = None, arch: str = "mlp",
        channels: Sequence[int] = (32, 64),
    ):
        super().__init__()
        check_choice("posterior", posterior)
        check_choice("likelihood", likelihood)
        check_choice("arch", arch)
        self.family = posterior
        self.rank = rank
        self._family = FAMILIES[posterior]
        self.diag_transform = diag_transform
        # the off-diagonal part's factor, OFFDIAG_SCALE or 0 (training's diagonal warm-up, see offdiag_enabled):
        # a tensor, not a Python number, so that a compiled step reads it and never recompiles when it changes
        self.register_buffer("offdiag_scale", torch.tensor(OFFDIAG_SCALE), persistent=False)
        self.data_shape = (in_dim,) if in_dim is not None else tuple(int(n) for n in data_shape)
        self.in_dim = math.prod(self.data_shape)
        self.arch = arch
        self.encoder, self.decoder = NETWORKS[arch].build(
            self.data_shape, tuple(hidden), tuple(channels), latent_dim, self._family.head_size(latent_dim, rank),
            make_likelihood(likelihood, self.in_dim))
        self._family.init_head(self.encoder.scale_head, latent_dim, rank)

    @property
    def latent_dim(self) -> int:
        """D, the dimension of the latent space."""
        return self.encoder.loc_head.out_features

    @property
    def offdiag_enabled(self) -> bool:
        """False holds the factor's off-diagonal part at zero, and its gradients with it; not saved, on by default."""
        return bool(self.offdiag_scale != 0)

    @offdiag_enabled.setter
    def offdiag_enabled(self, enabled: bool) -> None:
        self.offdiag_scale.fill_(OFFDIAG_SCALE if enabled else 0.0)

    @property
    def likelihood(self):
        """The decoder's likelihood, p(x|z) from :meth:`decode`'s output."""
        return self.decoder.likelihood

    def q(self, x: torch.Tensor) -> GaussianPosterior:
        """q(z|x) of data ``x`` as the family's own object (the hot path's closed forms).

        ``x``: ``(N, *data_shape)``, ``(N, P)`` flattened, or one example (``data_shape`` or ``(P,)``),
        in the data's own units (for MNIST, intensities in [0, 1]; 8-bit images as 0..255, uint8 or
        float; table rows as they are), of any dtype. In eval mode, the mode :func:`vae.load_model`
        returns, they are checked first: values the likelihood cannot take (0-255 pixels for a Bernoulli,
        NaNs) or a wrong size raise ``ValueError``. Training mode skips that check (a min/max and a host
        sync per batch in the training loop's hot path).
        """
        if x.dim() <= len(self.data_shape) and (x.dim() == 1 or tuple(x.shape) == self.data_shape):  # one example
            x = x.unsqueeze(0)
        if not self.training:
            self._check_data(x)
        x = self.likelihood.prepare(x.reshape(x.shape[0], self.in_dim))  # (N, P), the encoder's input
        if x.dtype != self.encoder.loc_head.weight.dtype:
            x = x.to(self.encoder.loc_head.weight.dtype)
        loc, raw = self.encoder(x)  # (N, D), (N, n_raw)
        with torch.autocast(device_type=loc.device.type, enabled=False):
            return self._family.from_raw(at_least_float32(loc), raw, self.diag_transform, self.offdiag_scale,
                                         self.rank)

    def posterior(self, x: torch.Tensor) -> torch.distributions.Distribution:
        """q(z|x) as a ``torch.distributions`` object, batch shape ``(N,)``, event shape ``(D,)``.

        ``MultivariateNormal(loc, scale_tril=...)`` for the full and diagonal
        families, ``LowRankMultivariateNormal`` for the low-rank one: ``log_prob``,
        ``rsample``, ``covariance_matrix`` and ``kl_divergence`` work as usual. An empty batch
        gives batch shape ``(0,)``, as :meth:`encode` gives empty tensors.
        """
        q = self.q(x)
        if q.loc.shape[0] == 0:  # torch.distributions cannot build an empty batch: expand one to none
            one = self.q(torch.zeros(1, self.in_dim, device=q.loc.device))
            empty = one.distribution().expand(torch.Size([0]))
            empty._validate_args = False  # torch's support check reshapes by -1, which an empty batch cannot
            return empty
        return q.distribution()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``loc (N, D)`` and ``scale_tril (N, D, D)``, both float32 (see :meth:`q`).

        For the low-rank family ``scale_tril`` is the Cholesky factor of
        :math:`WW^\\top + \\operatorname{diag}(d)` (an O(D³) factorization, outside the hot path).
        """
        q = self.q(x)
        return q.loc, q.scale_tril

    def _check_data(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` holds ``N`` examples of ``in_dim`` values that the likelihood can take."""
        if x.numel() != x.shape[0] * self.in_dim:
            shape = ", ".join(map(str, self.data_shape))
            raise ValueError(f"encode: expected examples of shape ({shape}) or {self.in_dim} values, shaped "
                             f"(N, {shape}) or (N, {self.in_dim}), got shape {tuple(x.shape)}")
        if x.numel():
            self.likelihood.check(x, "encode")

    def params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters, flat: ``(..., P * params_per_pixel)`` for latents ``(..., D)``.

        What :meth:`likelihood`'s ``log_prob``, ``mean`` and ``sample`` take.
        """
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters in the data's shape, for latents ``z`` of shape ``(..., D)``.

        ``(..., params_per_pixel * C, H, W)`` for images (MNIST's Bernoulli: logits ``(..., 1, 28, 28)``),
        ``(..., params_per_pixel * F)`` for rows; a likelihood with two parameters per value stacks them
        on the channel (or feature) axis, means first.
        """
        params = self.decoder(z)  # (..., P * ppp)
        ppp = self.likelihood.params_per_pixel
        return params.reshape(*params.shape[:-1], self.data_shape[0] * ppp, *self.data_shape[1:])

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean in the data's units and shape, ``(..., *data_shape)``, for latents ``(..., D)``."""
        return self.likelihood.mean(self.decoder(z)).reshape(*z.shape[:-1], *self.data_shape)

    def forward(self, x: torch.Tensor, k: int = 1, generator: Optional[torch.Generator] = None,
                ) -> tuple[Draw, torch.Tensor]:
        """Encode, draw ``k`` latents per example, decode.

        Returns:
            the :class:`Draw` and the likelihood's parameters, flat, shape ``(N, K, P * params_per_pixel)``.
        """
        q = self.q(x)
        eps, z = q.rsample(k, generator)
        return Draw(q, eps, z), self.decoder(z)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The means ``(n, *data_shape)`` of ``n`` examples decoded from the prior N(0, I) (MNIST: pixel probabilities)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, device=device, generator=generator)  # (n, D)
        return self.mean(z)
