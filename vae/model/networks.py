"""The encoder and decoder networks: MLPs with a location head, a scale head, and a likelihood.

The encoder's scale head emits the raw entries of a posterior family
(:mod:`vae.model.posteriors` sizes and initializes it); the decoder's head
emits the parameters of its likelihood (:mod:`vae.model.likelihood`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vae.model.likelihood import BernoulliLikelihood


__all__ = ["mlp", "Encoder", "Decoder"]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and after the last)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x ``(N, in_dim)`` -> ``loc (N, D)`` and the family's raw entries ``(N, n_raw)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], latent_dim: int, n_raw: int):
        super().__init__()
        self.body = mlp([in_dim, *hidden])
        self.loc_head = nn.Linear(hidden[-1], latent_dim)
        self.scale_head = nn.Linear(hidden[-1], n_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (N, H)
        return self.loc_head(h), self.scale_head(h)


class Decoder(nn.Module):
    """z ``(..., D)`` -> the likelihood's parameters ``(..., out_dim * params_per_pixel)``.

    Attributes:
        likelihood: the likelihood its outputs parameterize (:mod:`vae.model.likelihood`), which it owns:
            its parameters and buffers (a Gaussian's variance and standardization) are the decoder's.
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_dim: int, likelihood: Optional[nn.Module] = None):
        super().__init__()
        self.likelihood = BernoulliLikelihood() if likelihood is None else likelihood
        self.body = mlp([latent_dim, *hidden])
        self.head = nn.Linear(hidden[-1], out_dim * self.likelihood.params_per_pixel)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))
