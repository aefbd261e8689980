"""Passes over the data: validated batches, moments, the closed-form optima, sigma points.

Everything here is in float64 and needs no learner: :func:`closed_form` is the
answer a fit is measured against, and :func:`sigma_points` summarize a data
set's mean and covariance in ``2D`` points. Nothing runs on import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Tuple, Union

import torch

from vae.choices import FIT_OBJECTIVES, check_choice
from vae.errors import ArgumentError

__all__ = ["DataOrLoader", "Moments", "iter_batches", "data_moments", "closed_form", "relative_error",
           "sigma_points"]

DataOrLoader = Union[torch.Tensor, Iterable]
DATA = "data_or_loader"  # the argument every data error names


@dataclass(frozen=True)
class Moments:
    """What one pass over the data tells: ``n``, ``mean (D,)`` and ``scatter (D, D)`` in float64.

    ``scatter`` is :math:`\\sum_i (x_i - \\bar x)(x_i - \\bar x)^\\top`; ``dtype`` is
    the data's (the first batch's) and ``device`` the data's device (``None``
    for a loader).
    """

    n: int
    mean: torch.Tensor
    scatter: torch.Tensor
    dtype: torch.dtype
    device: Optional[torch.device]

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def covariance(self, objective: str) -> torch.Tensor:
        """``objective``'s optimum ``(D, D)``: 1/(N-1) (``torch.cov``) for ``"mse"``, the 1/N MLE for ``"nll"``."""
        return self.scatter / (self.n - 1 if objective == "mse" else self.n)


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative Frobenius error ``||estimate - reference|| / ||reference||`` (in float64)."""
    estimate, reference = (torch.as_tensor(t).detach().cpu().double() for t in (estimate, reference))
    return (torch.linalg.norm(estimate - reference) / torch.linalg.norm(reference).clamp_min(1e-300)).item()


def iter_batches(data_or_loader: DataOrLoader, dim: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield the data as validated ``(B, D)`` tensors, each checked as it arrives.

    A tensor is one batch; 1-tuples/lists (as ``TensorDataset`` yields) are
    unwrapped. Raises :class:`~vae.errors.ArgumentError` (a ``ValueError``) for a
    batch that is not a 2-D tensor, has another ``D`` than ``dim`` (or than the
    first batch), or holds NaN/Inf.
    """
    for x in [data_or_loader] if isinstance(data_or_loader, torch.Tensor) else data_or_loader:
        if isinstance(x, (tuple, list)):
            if len(x) != 1:
                raise ArgumentError(DATA, f"must yield (B, D) tensors or 1-tuples of them, got a {len(x)}-tuple")
            x = x[0]
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(DATA, f"must be a torch.Tensor or a DataLoader of tensors, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] < 1:
            raise ArgumentError(DATA, f"must be 2-D (N, D) with D >= 1, got shape {tuple(x.shape)}")
        if dim is not None and x.shape[1] != dim:
            raise ArgumentError(DATA, f"has a batch with D={x.shape[1]}, expected D={dim}")
        if not bool(torch.isfinite(x).all()):
            raise ArgumentError(DATA, "contains NaN or Inf")
        dim = x.shape[1]
        yield x


def data_moments(data_or_loader: DataOrLoader) -> Moments:
    """Count ``N``, mean ``(D,)`` and scatter ``sum (x - mean)(x - mean)^T`` ``(D, D)`` in float64.

    One validating pass; batches are merged by Chan's parallel update. Raises
    ``ValueError`` for bad batches or ``N < 2``.
    """
    n, mean, scatter, dtype = 0, None, None, None
    for x in iter_batches(data_or_loader):
        dtype = dtype or x.dtype
        x = x.detach().double()  # (B, D)
        b = x.shape[0]
        if b == 0:
            continue
        b_mean = x.mean(0)  # (D,)
        centred = x - b_mean  # (B, D)
        b_scatter = centred.mT @ centred  # (D, D)
        if n == 0:
            n, mean, scatter = b, b_mean, b_scatter
            continue
        delta = b_mean - mean  # (D,)
        scatter = scatter + b_scatter + torch.outer(delta, delta) * (n * b / (n + b))
        mean = mean + delta * (b / (n + b))
        n += b
    if n < 2:
        raise ArgumentError(DATA, f"needs at least N=2 samples, got N={n}")
    device = data_or_loader.device if isinstance(data_or_loader, torch.Tensor) else None
    return Moments(n, mean, scatter, dtype, device)


def closed_form(data_or_loader: DataOrLoader, objective: str = "nll") -> Tuple[torch.Tensor, torch.Tensor]:
    """The optimum of ``objective``: ``(mean (D,), covariance (D, D))`` in float64.

    ``"mse"``: ``torch.cov`` (unbiased, 1/(N-1)); ``"nll"``: the 1/N MLE. The
    mean is the sample mean in both cases.
    """
    check_choice("objective", objective, FIT_OBJECTIVES)
    moments = data_moments(data_or_loader)
    return moments.mean, moments.covariance(objective)


def sigma_points(mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``2D`` points, ``mean ± sqrt(D) c_j`` with ``C C^T = covariance``: shape ``(2D, D)``.

    They share the data's mean and 1/N covariance, and the mean log-density is
    quadratic in x, so their mean NLL equals the data's, value and gradient,
    at O(D^3) per step instead of O(N D^2).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # (D,), (D, D)
    columns = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # (D, D), C C^T = covariance
    offsets = math.sqrt(mean.shape[0]) * columns.mT  # (D, D), one point per row
    return torch.cat([mean + offsets, mean - offsets])  # (2D, D)
