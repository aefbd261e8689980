r"""The likelihood :math:`p(x|z)`, an object owned by the decoder.

The decoder maps a latent to the *parameters* of a distribution over images;
the likelihood turns them into log-densities, means and samples. A second
likelihood (a discretized logistic, a Gaussian) is one new class with the
same three methods, and a decoder head of the size it names.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from vae.cholesky import at_least_float32

__all__ = ["BernoulliLikelihood"]


class BernoulliLikelihood:
    r"""Independent pixels, :math:`p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(\ell_i))`, from logits :math:`\ell`.

    Attributes:
        params_per_pixel: decoder outputs per pixel (1: the logit).
    """

    params_per_pixel = 1

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, in float32: logits ``(N, K, P)``, images ``(N, P)`` -> ``(N, K)``.

        ``x`` may hold intensities in [0, 1] (the cross-entropy, as with ``--binarize none``).
        """
        target = x.unsqueeze(1).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(at_least_float32(logits), target, reduction="none").sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities, float32, the shape of ``logits``."""
        return torch.sigmoid(at_least_float32(logits))

    def sample(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Binary images drawn from the pixels' Bernoullis, the shape of ``logits``."""
        return torch.bernoulli(self.mean(logits), generator=generator)
