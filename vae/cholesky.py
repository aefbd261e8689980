r"""The one map between unconstrained entries and a Cholesky factor.

A covariance :math:`\Sigma = L L^\top` is parameterized by the
:math:`D(D+1)/2` free entries of its lower-triangular factor :math:`L`, filled
row by row (the order of :func:`torch.tril_indices`). Off-diagonal entries are
taken as they are; the diagonal goes through a positive map plus a small
floor, so :math:`L` is never singular:

.. math::
    L_{ii} = \operatorname{softplus}(u_{ii}) + \epsilon
    \quad\text{or}\quad L_{ii} = \exp(u_{ii}) + \epsilon.

``softplus`` (the default, as TFP's ``FillScaleTriL``) grows linearly, so a
large raw value cannot overflow; ``exp`` matches the classic recipe and
``torch.distributions.transforms.LowerCholeskyTransform``. Its input is clamped
at :data:`EXP_MAX` so that the factor stays finite in float32.

Every function here runs in at least float32, whatever the input dtype or an
enclosing autocast region, and none forms an inverse. Both the VAE's encoder
and the toy :class:`~vae.toy.learner.CovarianceLearner` use this module, and
:func:`mvn_log_prob` is the one Gaussian log-density of both (the full
family's :meth:`~vae.model.posteriors.FullGaussian.log_prob`).
"""
from __future__ import annotations

import functools
import math

import torch

from vae.choices import DIAG_TRANSFORMS, check_choice

__all__ = [
    "DIAG_TRANSFORMS",
    "at_least_float32",
    "DIAG_FLOOR",
    "EXP_MAX",
    "positive",
    "positive_inverse",
    "tril_size",
    "dim_from_tril_size",
    "entries_to_scale_tril",
    "scale_tril_to_entries",
    "log_diag",
    "mvn_log_prob",
]

DIAG_FLOOR = 1e-5  # added to every diagonal entry: L is never singular
EXP_MAX = 40.0  # exp(40)^2 ~ 5.5e34 < float32 max: L, L L^T and the KL stay finite


def tril_size(dim: int) -> int:
    """Number of free entries of a ``dim x dim`` lower-triangular matrix."""
    _check_dim(dim)
    return dim * (dim + 1) // 2


def dim_from_tril_size(size: int) -> int:
    """Inverse of :func:`tril_size`; raises ``ValueError`` if ``size`` is not triangular."""
    dim = (math.isqrt(8 * size + 1) - 1) // 2
    if size < 1 or dim * (dim + 1) // 2 != size:
        raise ValueError(f"{size} entries do not fill a lower triangle (need D(D+1)/2)")
    return dim


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")


def _check_transform(diag_transform: str) -> None:
    check_choice("diag_transform", diag_transform)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, unless it is already float64 (the dtype of all covariance maths)."""
    return x if x.dtype == torch.float64 else x.float()


def _tril_layout(dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions in a (D*D) row-major matrix, and the positions of the diagonal entries among them.

    Cached per (D, device); traced afresh under ``torch.compile``, whose graphs hold them as constants.
    """
    return (_layout if torch.compiler.is_compiling() else _cached_layout)(dim, device)


def _layout(dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.tril_indices(dim, dim, device=device)
    i = torch.arange(dim, device=device)
    return rows * dim + cols, i * (i + 3) // 2  # (n,), (D,): entry (i, i) is the i(i+3)/2-th


_cached_layout = functools.lru_cache(maxsize=None)(_layout)


class _Softplus(torch.autograd.Function):
    r""":math:`\log(1 + e^u) = \max(u, 0) + \operatorname{log1p}(e^{-|u|})` by vectorized ``exp`` and ``log``.

    Backward: :math:`\sigma(u)`.
    ``F.softplus`` and ``log1p`` are not vectorized on the CPU (~10 ns an element, ~100 us a
    training step at D = 64). Here ``log1p(e)`` is Kahan's ``log(y) * e / (y - 1)`` with
    ``y = 1 + e``, accurate to a few ulps even where ``e`` is below float32's epsilon, so a
    tiny scale keeps its relative precision.
    """

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        e = u.abs().neg_().exp_()  # e^{-|u|}, in (0, 1]
        y = e + 1.0
        step = y - 1.0  # e as rounded into y; 0 where e < 2^-24 and log1p(e) = e
        log1p = torch.where(step == 0, e, y.log_().mul_(e).div_(step))
        return log1p.add_(u.clamp(min=0))

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return torch.sigmoid(u).mul_(grad)


def positive(u: torch.Tensor, diag_transform: str = "softplus") -> torch.Tensor:
    """The positive map of a factor's diagonal, ``softplus(u) + floor`` or ``exp(u) + floor``, elementwise.

    The posterior families' scales (:mod:`vae.model.posteriors`) go through it too. No dtype change.
    """
    if diag_transform == "softplus":
        return _Softplus.apply(u) + DIAG_FLOOR
    return torch.exp(u.clamp(max=EXP_MAX)) + DIAG_FLOOR


def positive_inverse(d: torch.Tensor, diag_transform: str = "softplus") -> torch.Tensor:
    """Inverse of :func:`positive`; ``ValueError`` unless every entry exceeds the floor :data:`DIAG_FLOOR`."""
    y = d - DIAG_FLOOR
    if not bool((y > 0).all()):  # also catches NaN
        raise ValueError(f"diagonal entries must exceed the floor {DIAG_FLOOR:g}")
    if diag_transform == "softplus":
        return y + torch.log(-torch.expm1(-y))  # log(exp(y) - 1), stable for all y > 0
    return torch.log(y)


def entries_to_scale_tril(
    raw: torch.Tensor, diag_transform: str = "softplus", offdiag_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    r"""Fill a lower-triangular factor with a positive diagonal from free entries.

    Args:
        raw: unconstrained entries, shape ``(..., D(D+1)/2)``, row-major order.
        diag_transform: ``"softplus"`` or ``"exp"``.
        offdiag_scale: a constant :math:`c` (a number or a 0-dim tensor) with :math:`L_{ij} = c\,u_{ij}` below the
            diagonal. The VAE's encoder uses :math:`c < 1`: under Adam, whose steps
            have a fixed size in parameter space, it slows the off-diagonal entries
            relative to the diagonal (see :class:`vae.model.Encoder`).

    Returns:
        ``scale_tril`` of shape ``(..., D, D)`` in at least float32.
    """
    _check_transform(diag_transform)
    dim = dim_from_tril_size(raw.shape[-1])
    raw = at_least_float32(raw)
    flat_index, diag_position = _tril_layout(dim, raw.device)
    off_diagonal = raw * offdiag_scale if torch.is_tensor(offdiag_scale) or offdiag_scale != 1.0 else raw
    diagonal = positive(raw.index_select(-1, diag_position), diag_transform)  # (..., D): D, not n, positive maps
    values = off_diagonal.index_copy(-1, diag_position, diagonal)  # (..., n)
    flat = raw.new_zeros(*raw.shape[:-1], dim * dim)  # (..., D*D)
    flat = flat.index_copy(-1, flat_index, values)
    return flat.view(*raw.shape[:-1], dim, dim)  # (..., D, D)


def scale_tril_to_entries(
    scale_tril: torch.Tensor, diag_transform: str = "softplus", offdiag_scale: float = 1.0,
) -> torch.Tensor:
    """Inverse of :func:`entries_to_scale_tril`: ``(..., D, D)`` -> ``(..., D(D+1)/2)``.

    Entries above the diagonal are ignored. Raises ``ValueError`` if a diagonal
    entry is not above the floor :data:`DIAG_FLOOR`.
    """
    _check_transform(diag_transform)
    if scale_tril.dim() < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]:
        raise ValueError(f"expected square matrices (..., D, D), got shape {tuple(scale_tril.shape)}")
    dim = scale_tril.shape[-1]
    scale_tril = at_least_float32(scale_tril)
    flat_index, diag_position = _tril_layout(dim, scale_tril.device)
    values = scale_tril.reshape(*scale_tril.shape[:-2], dim * dim)[..., flat_index]  # (..., n)
    diagonal = positive_inverse(values.index_select(-1, diag_position), diag_transform)  # (..., D)
    values = values if offdiag_scale == 1.0 else values / offdiag_scale
    return values.index_copy(-1, diag_position, diagonal)


def log_diag(scale_tril: torch.Tensor) -> torch.Tensor:
    """``log L_ii``, shape ``(..., D, D)`` -> ``(..., D)``."""
    return torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1))


def mvn_log_prob(x: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    r"""Log-density of :math:`\mathcal N(\text{loc}, L L^\top)` by triangular solves, the project's one formula.

    Each factor is solved once for all the points it serves, so one ``(D, D)`` factor
    for many points, or a posterior's ``(N, 1, D, D)`` factors for its ``(N, K, D)`` draws
    (:meth:`vae.model.posteriors.FullGaussian.log_prob`), costs one solve with many right-hand sides.

    Args:
        x: points, shape ``(..., D)``.
        loc: mean, shape broadcastable to ``(..., D)``.
        scale_tril: ``L``, shape broadcastable to ``(..., D, D)``.

    Returns:
        log p(x), shape ``(...)``, in at least float32.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, loc.dtype), scale_tril.dtype)
    scale_tril = at_least_float32(scale_tril.to(dtype))
    diff = at_least_float32(x.to(dtype)) - loc.to(scale_tril.dtype)  # (..., D)
    eps = _whiten(diff, scale_tril)  # L^{-1} (x - loc)
    dim = scale_tril.shape[-1]
    return -0.5 * eps.pow(2).sum(-1) - log_diag(scale_tril).sum(-1) - 0.5 * dim * math.log(2 * math.pi)


def _whiten(diff: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """:math:`L^{-1}` ``diff`` by forward substitution; no inverse is ever formed.

    The batch dimensions along which ``scale_tril`` is broadcast (size 1, or absent) become the
    columns of one right-hand side per factor, so each distinct factor is solved once.

    Args:
        diff: ``(..., D)``.
        scale_tril: lower-triangular ``L``, broadcastable to ``(..., D, D)``, of ``diff``'s dtype.

    Returns:
        ``(*batch, D)``, ``batch`` the broadcast of the two batch shapes.
    """
    dim = scale_tril.shape[-1]
    batch = torch.broadcast_shapes(diff.shape[:-1], scale_tril.shape[:-2])
    factor_batch = (1,) * (len(batch) - scale_tril.dim() + 2) + tuple(scale_tril.shape[:-2])
    shared = [i for i, size in enumerate(factor_batch) if size == 1 and batch[i] != 1]  # one factor, many points
    own = [i for i in range(len(batch)) if i not in shared]
    order = own + shared
    moved = order != sorted(order)  # a shared dimension before one of the factors' own
    own_shape, shared_shape = [batch[i] for i in own], [batch[i] for i in shared]
    columns = diff if diff.shape[:-1] == batch else diff.expand(*batch, dim)
    columns = columns.permute(*order, len(batch)) if moved else columns  # (*own, *shared, D)
    columns = columns.reshape(*own_shape, math.prod(shared_shape), dim).mT  # (*own, D, M)
    factor = scale_tril.reshape(*[factor_batch[i] for i in own], dim, dim)  # the shared dimensions are 1 there
    eps = torch.linalg.solve_triangular(factor, columns, upper=False).mT  # (*own, M, D)
    eps = eps.reshape(*own_shape, *shared_shape, dim)
    return eps.permute(*[order.index(i) for i in range(len(batch))], len(batch)) if moved else eps  # (*batch, D)
