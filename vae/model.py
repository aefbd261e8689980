r"""The full-covariance VAE: encoder -> (loc, scale_tril) -> z = loc + L eps -> decoder.

The encoder's second head emits the :math:`D(D+1)/2` free entries of the
Cholesky factor (or :math:`D` of them with ``posterior="diagonal"``); the one
map of :mod:`vae.cholesky` turns them into ``scale_tril``. Everything after
that — sampling, KL, log-densities — is the same code for both posteriors.

The covariance maths runs in float32 even inside an autocast region; only the
MLPs run in reduced precision.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from vae.cholesky import at_least_float32, diag_entries_to_scale_tril, entries_to_scale_tril, tril_size

__all__ = ["POSTERIORS", "OFFDIAG_SCALE", "Encoder", "Decoder", "VAE", "Posterior", "mlp"]

POSTERIORS = ("full", "diagonal")
SCALE_HEAD_INIT = 0.01  # shrinks the scale head's initial weights
# L_ij = OFFDIAG_SCALE * u_ij below the diagonal. The reparameterization
# gradient of an off-diagonal entry, g_i eps_j, is mostly noise, and Adam turns
# noise into steps of about lr each, so undamped off-diagonal entries random-walk
# and swamp the small posterior scales of active latents. Measured (D=32, hidden
# 300-300, 20k images, test -ELBO): undamped, the full posterior trails the
# diagonal one by 10 nats after 4 epochs; with 0.1 it is level there, and trails
# by about 4 nats after 12 (0.01: 3). The rest of the gap comes from the first
# epochs, when the posterior settles which latents are active: training holds
# the off-diagonal entries at zero for a few epochs (``VAE.offdiag_enabled``,
# the ``--diag-warmup`` flag). With it the full posterior leads the diagonal
# one early and draws level by 400 epochs, where it trailed by 2.3 nats of NLL
# without it (docs/RESULTS.md).
OFFDIAG_SCALE = 0.1


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and after the last)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class Posterior(NamedTuple):
    """A reparameterized draw from q(z|x) and the quantities that made it.

    Shapes: ``loc (N, D)``, ``scale_tril (N, D, D)``, ``eps`` and ``z`` ``(N, K, D)``.
    """

    loc: torch.Tensor
    scale_tril: torch.Tensor
    eps: torch.Tensor
    z: torch.Tensor


class Encoder(nn.Module):
    """x ``(N, in_dim)`` -> ``loc (N, D)`` and raw factor entries ``(N, D(D+1)/2)`` or ``(N, D)``.

    The scale head starts near zero, so every posterior starts as the same
    isotropic N(loc, softplus(0)² I), full or diagonal alike. Its off-diagonal
    rows start at exactly zero: a full posterior starts diagonal, and stays
    exactly diagonal while those entries are switched off.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], latent_dim: int, posterior: str = "full"):
        super().__init__()
        self.body = mlp([in_dim, *hidden])
        self.loc_head = nn.Linear(hidden[-1], latent_dim)
        n_raw = tril_size(latent_dim) if posterior == "full" else latent_dim
        self.scale_head = nn.Linear(hidden[-1], n_raw)
        with torch.no_grad():
            self.scale_head.weight.mul_(SCALE_HEAD_INIT)
            self.scale_head.bias.zero_()
            if posterior == "full":
                rows, cols = torch.tril_indices(latent_dim, latent_dim)
                self.scale_head.weight[rows != cols] = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (N, H)
        return self.loc_head(h), self.scale_head(h)


class Decoder(nn.Module):
    """z ``(..., D)`` -> Bernoulli logits ``(..., out_dim)``."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        self.body = mlp([latent_dim, *hidden])
        self.head = nn.Linear(hidden[-1], out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


class VAE(nn.Module):
    r"""Variational autoencoder with a Gaussian posterior :math:`\mathcal N(\text{loc}, L L^\top)`.

    Args:
        latent_dim: D.
        hidden: hidden widths of the encoder; the decoder mirrors them.
        posterior: ``"full"`` (lower-triangular L) or ``"diagonal"``.
        diag_transform: positive map of L's diagonal, ``"softplus"`` or ``"exp"``.
        in_dim: pixels per image (784 for MNIST).
    """

    def __init__(
        self, latent_dim: int = 20, hidden: Sequence[int] = (400,), posterior: str = "full",
        diag_transform: str = "softplus", in_dim: int = 784,
    ):
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {posterior!r}; choose one of {', '.join(POSTERIORS)}")
        self.posterior = posterior
        self.diag_transform = diag_transform
        # False holds a full posterior's off-diagonal entries at zero, and their
        # gradients with them (training's diagonal warm-up); not saved, on by default
        self.offdiag_enabled = True
        self.in_dim = in_dim
        self.encoder = Encoder(in_dim, hidden, latent_dim, posterior)
        self.decoder = Decoder(latent_dim, tuple(reversed(hidden)), in_dim)

    @property
    def latent_dim(self) -> int:
        """D, the dimension of the latent space."""
        return self.encoder.loc_head.out_features

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters for images ``x``: ``(N, 784)``, ``(N, 1, 28, 28)``, or one image ``(784,)``.

        Pixels are intensities in [0, 1], of any dtype (cast to the model's).
        In eval mode, the mode :func:`vae.load_model` returns, they are checked
        first: 0-255 pixels, NaNs or a wrong image size raise ``ValueError``.
        Training mode skips that check (a min/max and a host sync per batch in
        the training loop's hot path, whose images are the loader's, in [0, 1]).

        Returns:
            ``loc (N, D)`` and ``scale_tril (N, D, D)``, both float32; N = 1 for one image.
        """
        if x.dim() == 1:  # one image
            x = x.unsqueeze(0)
        if x.dtype != self.encoder.loc_head.weight.dtype:
            x = x.to(self.encoder.loc_head.weight.dtype)
        if not self.training:
            self._check_images(x)
        loc, raw = self.encoder(x.reshape(x.shape[0], self.in_dim))  # (N, D), (N, n_raw)
        with torch.autocast(device_type=loc.device.type, enabled=False):
            if self.posterior == "full":
                offdiag_scale = OFFDIAG_SCALE if self.offdiag_enabled else 0.0
                return at_least_float32(loc), entries_to_scale_tril(raw, self.diag_transform, offdiag_scale)
            return at_least_float32(loc), diag_entries_to_scale_tril(raw, self.diag_transform)

    def _check_images(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` holds ``N`` images of ``in_dim`` pixels in [0, 1]."""
        if x.numel() != x.shape[0] * self.in_dim:
            raise ValueError(f"encode: expected images of {self.in_dim} pixels, shaped (N, {self.in_dim}), "
                             f"(N, 1, 28, 28) or ({self.in_dim},), got shape {tuple(x.shape)}")
        if x.numel():
            low, high = torch.aminmax(x)
            if not (low >= 0 and high <= 1):  # False for NaN too
                hint = "; for 0-255 images, divide by 255" if high > 1 else ""
                raise ValueError(f"encode: pixels must be intensities in [0, 1], got values from "
                                 f"{low.item():.4g} to {high.item():.4g}{hint}")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``(..., 784)`` for latents ``z`` of shape ``(..., D)``."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(
        loc: torch.Tensor, scale_tril: torch.Tensor, k: int = 1, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``k`` samples per input as z = loc + L eps, in one batched matmul.

        Args:
            loc: ``(N, D)``; scale_tril: ``(N, D, D)``; k: samples per input;
            generator: the source of eps (default: the global RNG).

        Returns:
            ``eps`` and ``z``, each ``(N, K, D)``.
        """
        with torch.autocast(device_type=loc.device.type, enabled=False):
            eps = torch.randn(loc.shape[0], k, loc.shape[1], device=loc.device, dtype=loc.dtype, generator=generator)
            z = torch.baddbmm(loc.unsqueeze(1), eps, scale_tril.transpose(-1, -2))  # (N, K, D)
        return eps, z

    def forward(self, x: torch.Tensor, k: int = 1) -> tuple[Posterior, torch.Tensor]:
        """Encode, draw ``k`` latents per image, decode.

        Returns:
            the :class:`Posterior` draw and the logits, shape ``(N, K, 784)``.
        """
        loc, scale_tril = self.encode(x)
        eps, z = self.reparameterize(loc, scale_tril, k)
        return Posterior(loc, scale_tril, eps, z), self.decode(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel probabilities ``(n, 784)`` of images decoded from the prior N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, device=device, generator=generator)  # (n, D)
        return torch.sigmoid(self.decode(z).float())
