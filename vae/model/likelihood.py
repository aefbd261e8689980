r"""The likelihood :math:`p(x|z)`, a module owned by the decoder (its state: ``decoder.likelihood.*``).

The decoder maps a latent to the *parameters* of a distribution over data; the
likelihood turns them into log-densities, means and samples, and says how data
enter the encoder. Each one has the same methods (:class:`Likelihood`):

- ``name``, ``params_per_pixel``: its choice name, and the decoder's outputs per data dimension;
- ``prepare(x)``: the encoder's input, from data in their own units;
- ``log_prob(params, x)``: :math:`\log p(x|z)` summed over dimensions, *in the data's own units*, float32;
- ``mean(params)``, ``sample(params, generator)``: in the data's units;
- ``check(x, where)``: :class:`~vae.errors.ArgumentError` if it cannot fit the data.

All the maths runs in at least float32, under autocast too (the decoder's outputs
go through :func:`~vae.cholesky.at_least_float32` first). The three:
``bernoulli`` (binary or [0, 1] pixels), ``gaussian`` (continuous columns,
standardized by the training split, a learned variance per dimension) and
``logistic`` (8-bit pixels, the discretized logistic of PixelCNN++).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vae.choices import LIKELIHOODS as LIKELIHOOD_CLASSES, check_choice
from vae.cholesky import at_least_float32
from vae.errors import ArgumentError

__all__ = [
    "Likelihood", "BernoulliLikelihood", "GaussianLikelihood", "DiscretizedLogisticLikelihood", "LIKELIHOODS",
    "make_likelihood", "bernoulli_log_prob", "LOG_SIGMA_MIN", "LOG_SCALE_MIN",
]

LOG_SIGMA_MIN = math.log(1e-3)  # the Gaussian's floor on log sigma, in standardized units
LOG_SCALE_MIN = -7.0  # the discretized logistic's floor on log s (PixelCNN++'s), in [-1, 1] units


class _BernoulliLogProb(torch.autograd.Function):
    r"""Forward :math:`\sum_i x_i\ell_i - \max(\ell_i, 0) - \log(1 + e^{-|\ell_i|})`; backward :math:`x - \sigma(\ell)`.

    The same value as ``-binary_cross_entropy_with_logits(...).sum(-1)`` (to float rounding: the
    last term is at most 2^-24 from ``log1p``'s), about 4x faster on the CPU, where ``log1p``
    and ``softplus`` are not vectorized and cost ~5 ns per element against ~0.5 for ``log``.
    It was the training step's largest operator after the matmuls (measured in docs/performance.md).
    """

    @staticmethod
    def forward(ctx, logits, x):  # (N, K, P), (N, 1, P) -> (N, K)
        ctx.save_for_backward(logits, x)
        terms = logits.abs().neg_().exp_().add_(1.0).log_()  # log(1 + exp(-|l|)), (N, K, P)
        terms.add_(torch.addcmul(logits.clamp(min=0), logits, x, value=-1.0))  # + max(l, 0) - x l
        return terms.sum(-1).neg_()

    @staticmethod
    def backward(ctx, grad):  # (N, K)
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)  # (N, K, 1)
        grad_logits = (x - torch.sigmoid(logits)).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = (logits * grad).sum(1, keepdim=True) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) summed over pixels, in at least float32: logits ``(N, K, P)``, ``x`` ``(N, P)`` -> ``(N, K)``.

    ``x`` may hold intensities in [0, 1] (the cross-entropy, as with ``--binarize none``).
    """
    logits = at_least_float32(logits)
    return _BernoulliLogProb.apply(logits, x.to(logits.dtype).unsqueeze(1))


def _span(x: torch.Tensor) -> str:
    low, high = torch.aminmax(at_least_float32(x))
    return f"values from {low.item():.4g} to {high.item():.4g}"


PIXEL_MEAN_CLAMP = 1e-3  # the Bernoulli's initial output bias: mean intensities clamped to [c, 1 - c]


class Likelihood(nn.Module):
    """The interface: a likelihood for data of ``dim`` dimensions (``None``: any).

    Attributes:
        name: its choice name; params_per_pixel: the decoder's outputs per data dimension;
        discrete: whether :meth:`log_prob` is a probability mass (the evaluator then reports bits per
        dimension), not a density; pixel_scale: the value of a white pixel, or None for data that are not
        pictures.
    """

    name: str = ""
    params_per_pixel: int = 1
    discrete: bool = True  # a probability mass (bits per dimension mean something), else a density
    pixel_scale: Optional[float] = None  # the value of a white pixel, for pictures; None: not images

    def __init__(self, dim: Optional[int] = None):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ArgumentError("dim", f"must be a positive integer, got {dim!r}")
        self.dim = dim

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input from data ``x`` in their own units: at least float32, the shape of ``x``."""
        return at_least_float32(x)

    def fit_data(self, x_train: torch.Tensor) -> None:
        """Learn from the training split ``(N, P)`` what the likelihood needs before training (nothing, here)."""

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, x_train: torch.Tensor) -> None:
        """Start the decoder's output ``bias (P * params_per_pixel,)`` at the training data's mean, in place.

        ``x_train``: ``(N, P)`` in the data's own units. The base class starts the means at the mean of
        :meth:`prepare`'s values and leaves any other parameter's bias as it is.
        """
        bias[: x_train.shape[1]] = self.prepare(x_train).mean(0).to(bias)

    def _refuse(self, where: str, why: str) -> ArgumentError:
        return ArgumentError("likelihood", f"={self.name} cannot fit {where}: {why}")


class BernoulliLikelihood(Likelihood):
    r"""Independent pixels, :math:`p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(\ell_i))`, from logits :math:`\ell`.

    No parameters or buffers: a model's state dict has no ``decoder.likelihood`` entry.
    ``x`` may hold intensities in [0, 1] (the cross-entropy, as with ``--binarize none``).
    """

    name, params_per_pixel, pixel_scale = "bernoulli", 1, 1.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself when floating (bit for bit what the encoder always saw), else ``x`` in float32."""
        return x if x.is_floating_point() else x.float()

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, x_train: torch.Tensor) -> None:
        """Start the logits at the logit of each pixel's mean intensity, clamped to [c, 1 - c] (finite logits)."""
        mean = self.prepare(x_train).mean(0).clamp(PIXEL_MEAN_CLAMP, 1 - PIXEL_MEAN_CLAMP)  # (P,)
        bias.copy_(torch.logit(mean).to(bias))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, float32: logits ``(N, K, P)``, ``x (N, P)`` -> ``(N, K)``."""
        return bernoulli_log_prob(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities, float32, the shape of the logits."""
        return torch.sigmoid(at_least_float32(params))

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Binary images (0./1.) drawn from the pixels' Bernoullis, the shape of the logits."""
        return torch.bernoulli(self.mean(params), generator=generator)

    def check(self, x: torch.Tensor, where: str) -> None:
        """Refuse values outside [0, 1] (or NaN)."""
        if x.numel() and x.dtype != torch.bool:
            low, high = torch.aminmax(x)
            if not (low >= 0 and high <= 1):  # False for NaN too
                hint = "; 0-255 pixels: divide by 255, or use `likelihood` logistic" if high > 1 else ""
                raise self._refuse(where, f"{_span(x)}, outside [0, 1]{hint}")


class GaussianLikelihood(Likelihood):
    r"""Continuous data, each dimension :math:`x_j = \text{shift}_j + \text{scale}_j\, y_j` with
    :math:`y_j \sim \mathcal N(\mu_j, \sigma_j^2)`: the decoder emits the standardized means :math:`\mu`.

    The shift and scale (buffers ``shift``, ``scale``, shape ``(P,)``, saved) standardize each
    column by the training split's mean and standard deviation (:meth:`fit_standardization`).
    The noise :math:`\sigma_j = e^{\texttt{log\_sigma}_j}` is one learned parameter per dimension
    (standardized units, starting at 1), floored at :data:`LOG_SIGMA_MIN` (:math:`10^{-3}`) in the density.
    A variance the decoder emitted per example would let the likelihood grow without bound on
    continuous data as :math:`\sigma \to 0` at a training point (Mattei & Frellsen 2018); one per
    dimension is bounded below by the model's reconstruction error, trains stably, and tied over
    dimensions is probabilistic PCA's noise model. Per-example variances are a later option.

    Args:
        dim: P, the number of columns.
    """

    name, params_per_pixel, discrete = "gaussian", 1, False

    def __init__(self, dim: int):
        super().__init__(dim)
        if dim is None:
            raise ArgumentError("dim", "must be a positive integer, got None")
        self.register_buffer("shift", torch.zeros(dim))  # (P,)
        self.register_buffer("scale", torch.ones(dim))  # (P,)
        self.log_sigma = nn.Parameter(torch.zeros(dim))  # (P,)

    @torch.no_grad()
    def fit_standardization(self, x_train: torch.Tensor, where: str = "x_train") -> None:
        """Set ``shift`` and ``scale`` to each column's mean and standard deviation over ``x_train (N, P)``.

        A constant column gets scale 1. Raises :class:`~vae.errors.ArgumentError` for a non-finite value.
        """
        if x_train.dim() != 2 or x_train.shape[1] != self.dim or not len(x_train):
            raise self._refuse(where, f"shape {tuple(x_train.shape)}, expected (N, {self.dim}) with N >= 1")
        self.check(x_train, where)
        x = x_train.double()  # (N, P)
        std = x.std(0, correction=0)  # (P,)
        constant = (x.amax(0) == x.amin(0)) | (std < torch.finfo(self.scale.dtype).tiny)
        self.shift.copy_(x.mean(0))
        self.scale.copy_(torch.where(constant, 1.0, std))

    def fit_data(self, x_train: torch.Tensor) -> None:
        """The standardization of the training split (:meth:`fit_standardization`)."""
        self.fit_standardization(x_train, "the training split")

    def _standardize(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (x.to(dtype) - self.shift.to(dtype)) / self.scale.to(dtype)

    def _log_sigma(self, dtype: torch.dtype) -> torch.Tensor:
        return self.log_sigma.to(dtype).clamp(min=LOG_SIGMA_MIN)  # (P,)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The standardized ``(x - shift) / scale``, at least float32."""
        x = at_least_float32(x)
        return self._standardize(x, x.dtype)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""log-density of the raw numbers ``x (N, P)`` under means ``params (N, K, P)`` -> ``(N, K)``, float32.

        The standardized data's Normal log-density minus :math:`\sum_j \log \text{scale}_j`, the
        standardization's log-Jacobian: a column in other units changes it by its log-factor only.
        """
        mu = at_least_float32(params)  # (N, K, P)
        log_sigma = self._log_sigma(mu.dtype)  # (P,)
        u = (self._standardize(x, mu.dtype).unsqueeze(1) - mu) * torch.exp(-log_sigma)  # (N, K, P)
        norm = (log_sigma + torch.log(self.scale.to(mu.dtype))).sum() + 0.5 * mu.shape[-1] * math.log(2 * math.pi)
        return -0.5 * u.square().sum(-1) - norm

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The means in raw units, ``params * scale + shift``, float32, the shape of ``params``."""
        mu = at_least_float32(params)
        return mu * self.scale.to(mu.dtype) + self.shift.to(mu.dtype)

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A draw in raw units, the shape of ``params``."""
        mu = at_least_float32(params)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.mean(mu + torch.exp(self._log_sigma(mu.dtype)) * noise)

    def check(self, x: torch.Tensor, where: str) -> None:
        """Refuse a NaN or infinite value, naming its first column."""
        bad = ~torch.isfinite(x.reshape(-1, x.shape[-1]))  # (N, P)
        if bad.any():
            column = int(bad.any(0).nonzero()[0])
            raise self._refuse(where, f"column {column} holds a NaN or infinite value")


class DiscretizedLogisticLikelihood(Likelihood):
    r"""8-bit pixels, the discretized logistic of PixelCNN++ (Salimans et al. 2017) and IAF (Kingma et al. 2016).

    A pixel :math:`v \in \{0, \dots, 255\}` is rescaled to :math:`x = v/127.5 - 1 \in [-1, 1]`, its bin
    :math:`[x - 1/255, x + 1/255]`; the decoder emits a mean :math:`\mu` and a log-scale :math:`\log s`
    per pixel (``params.chunk(2, -1)``: the first P outputs are means, the next P log-scales), with
    :math:`\log s` clamped at :data:`LOG_SCALE_MIN` as PixelCNN++ does. With :math:`\sigma` the logistic CDF,

    .. math::
        P(v) = \sigma\big(\tfrac{x + 1/255 - \mu}{s}\big) - \sigma\big(\tfrac{x - 1/255 - \mu}{s}\big),

    and the edge bins take the tails: :math:`v = 0` has no lower term, :math:`v = 255` no upper one
    (its :math:`1 - \sigma(\cdot)`). Interior bins are computed in log space as
    :math:`\log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-(a-b)})`, the identity
    :math:`\sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,(1 - e^{b-a})`: no difference of CDFs
    ever cancels, so PixelCNN++'s fallback to the density at the bin centre (off by up to
    2 nats at :math:`s = e^{-7}`, where a bin is 8.6 s wide) is never needed.

    :meth:`log_prob` is the log-probability *mass* of the 8-bit values, in nats per image;
    bits per dimension are ``-log_prob / (P * ln 2)``.
    """

    name, params_per_pixel, pixel_scale = "logistic", 2, 255.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """8-bit values 0..255 (uint8 or float) to ``x / 127.5 - 1`` in [-1, 1], at least float32."""
        return at_least_float32(x) / 127.5 - 1

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_s = at_least_float32(params).chunk(2, -1)  # (..., P) each
        return mu, log_s.clamp(min=LOG_SCALE_MIN)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(x|z) summed over pixels, float32: ``params (N, K, 2P)``, ``x (N, P)`` in 0..255 -> ``(N, K)``."""
        mu, log_s = self._split(params)  # (N, K, P) each
        v = x.to(mu.dtype).unsqueeze(1)  # (N, 1, P), 0..255
        inv_s = torch.exp(-log_s)
        centred = (v - 127.5) / 127.5 - mu  # (N, K, P), x - mu with x rounded once
        log_cdf_plus = F.logsigmoid((centred + 1 / 255) * inv_s)  # log sigma(a)
        log_sf_min = F.logsigmoid((1 / 255 - centred) * inv_s)  # log(1 - sigma(b)) = log sigma(-b)
        width = (2 / 255 * inv_s).clamp(min=torch.finfo(mu.dtype).tiny)  # a - b, floored only for log s > ~83
        interior = log_cdf_plus + log_sf_min + torch.log(-torch.expm1(-width))
        log_p = torch.where(v <= 0, log_cdf_plus, torch.where(v >= 255, log_sf_min, interior))
        return log_p.sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """``(mu + 1) * 127.5`` clamped to [0, 255], float32, shape ``params.shape[:-1] + (P,)``.

        The continuous logistic's mean, not the 8-bit values' expectation: the two differ only
        within a few ``s`` of the range's ends, where the clamp piles the tails.
        """
        mu, _ = self._split(params)
        return ((mu + 1) * 127.5).clamp(0, 255)

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """8-bit values (integers 0..255, as float32), shape ``params.shape[:-1] + (P,)``."""
        mu, log_s = self._split(params)
        u = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = u.clamp(1e-6, 1 - 1e-6)
        y = mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))  # a logistic draw, [-1, 1] units
        return ((y + 1) * 127.5).round().clamp(0, 255)

    def check(self, x: torch.Tensor, where: str) -> None:
        """Refuse anything but 8-bit values: fractions, NaN, negatives, over 255."""
        if not x.numel() or x.dtype in (torch.uint8, torch.bool):
            return
        low, high = torch.aminmax(x)
        fractions = x.is_floating_point() and bool((x != x.round()).any())  # NaN too
        if fractions or not (low >= 0 and high <= 255):
            hint = "; intensities in [0, 1]: multiply by 255 and round" if high <= 1 else ""
            why = "non-integer " if fractions else ""
            raise self._refuse(where, f"{why}{_span(x)}, not 8-bit integers 0 to 255{hint}")


LIKELIHOODS: dict[str, type[Likelihood]] = {name: globals()[cls] for name, cls in LIKELIHOOD_CLASSES.items()}
"""Likelihood name -> its class: the registry :data:`vae.choices.LIKELIHOODS`, resolved."""


def make_likelihood(name: str, dim: int) -> Likelihood:
    """The likelihood ``name`` (a key of :data:`LIKELIHOODS`) for data of ``dim`` dimensions."""
    check_choice("likelihood", name)
    return LIKELIHOODS[name](dim)
