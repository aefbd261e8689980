r"""Learn a multivariate normal's mean and full covariance :math:`\Sigma = L L^\top`.

The standalone learner of the three toy problems (see :mod:`vae.toy`). Its
factor comes from :func:`vae.cholesky.entries_to_scale_tril`, so the printed
covariance is the one that was trained (triangular mask and positive diagonal
included), and :meth:`CovarianceLearner.distribution` hands ``scale_tril`` to
``MultivariateNormal`` instead of refactorizing :math:`L L^\top`.

Objectives, with their closed-form optima (:func:`closed_form`):

* ``"mse"``: mean squared error between :math:`L L^\top` and ``torch.cov`` of
  the data (the unbiased sample covariance); only :math:`L` is learned.
* ``"nll"``: mean negative log-likelihood by :func:`vae.cholesky.mvn_log_prob`;
  optimum: the sample mean and the 1/N covariance.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vae.cholesky import entries_to_scale_tril, mvn_log_prob, scale_tril_to_entries, tril_size

__all__ = ["OBJECTIVES", "OPTIMIZERS", "CovarianceLearner", "FitHistory", "fit_covariance", "closed_form",
           "relative_error"]

OBJECTIVES = ("mse", "nll")
OPTIMIZERS = ("adam", "lbfgs")
DataOrLoader = Union[torch.Tensor, Iterable]


class CovarianceLearner(nn.Module):
    """A learnable :math:`\\mathcal N(\\text{loc}, L L^\\top)` in ``dim`` dimensions.

    Starts at zero mean and :math:`L = I`. Parameters: ``raw_tril``, the
    ``D(D+1)/2`` free entries of :math:`L`, and ``mean`` (a buffer of zeros
    when ``learn_mean=False``).

    Args:
        dim: dimension ``D >= 1``.
        learn_mean: whether the mean is a parameter.
        diag_transform: ``"softplus"`` or ``"exp"``, the positive map of ``L_ii``.
        dtype, device: of the parameters (default: torch's default dtype, CPU).
    """

    def __init__(self, dim: int, learn_mean: bool = True, diag_transform: str = "softplus",
                 *, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        n_entries = tril_size(dim)  # raises ValueError for dim < 1
        self.dim, self.diag_transform = dim, diag_transform
        dtype = dtype or torch.get_default_dtype()
        self.raw_tril = nn.Parameter(torch.zeros(n_entries, dtype=dtype, device=device))  # (D(D+1)/2,)
        mean = torch.zeros(dim, dtype=dtype, device=device)  # (D,)
        if learn_mean:
            self.mean = nn.Parameter(mean)
        else:
            self.register_buffer("mean", mean)
        self.initialize(scale_tril=torch.eye(dim))  # raises ValueError for an unknown diag_transform

    @property
    def loc(self) -> torch.Tensor:
        """The mean, shape ``(D,)``."""
        return self.mean

    @property
    def scale_tril(self) -> torch.Tensor:
        """:math:`L`, lower-triangular with a positive diagonal, shape ``(D, D)``."""
        return entries_to_scale_tril(self.raw_tril, self.diag_transform)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        r""":math:`\Sigma = L L^\top`, shape ``(D, D)``."""
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.mT

    def distribution(self) -> torch.distributions.MultivariateNormal:
        """The learned distribution, built from ``scale_tril`` (no refactorization)."""
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of points ``x`` of shape ``(..., D)``; returns ``(...)``."""
        return mvn_log_prob(x, self.loc, self.scale_tril)

    @torch.no_grad()
    def initialize(self, loc: Optional[torch.Tensor] = None, scale_tril: Optional[torch.Tensor] = None) -> None:
        """Set the mean ``(D,)`` and/or the factor ``(D, D)`` (through the inverse map)."""
        if loc is not None:
            self.mean.copy_(torch.as_tensor(loc).reshape(self.dim))
        if scale_tril is not None:
            scale_tril = torch.as_tensor(scale_tril, dtype=torch.float64)
            self.raw_tril.copy_(scale_tril_to_entries(scale_tril, self.diag_transform))

    def extra_repr(self) -> str:
        learn = isinstance(self.mean, nn.Parameter)
        return f"dim={self.dim}, learn_mean={learn}, diag_transform={self.diag_transform!r}"


class FitHistory(list):
    """Per-epoch losses (a plain ``list`` of floats) plus facts about the run.

    Attributes:
        iterations: optimizer iterations (Adam steps; L-BFGS inner iterations).
        evaluations: loss-and-gradient evaluations.
        stopped_early: the tolerance or the callback ended the run before ``epochs``.
        seconds: wall time of the optimization loop.
    """

    def __init__(self):
        super().__init__()
        self.iterations = self.evaluations = 0
        self.stopped_early = False
        self.seconds = 0.0


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative Frobenius error ``||estimate - reference|| / ||reference||`` (in float64)."""
    estimate, reference = (torch.as_tensor(t).detach().cpu().double() for t in (estimate, reference))
    return (torch.linalg.norm(estimate - reference) / torch.linalg.norm(reference).clamp_min(1e-300)).item()


def _batches(data_or_loader: DataOrLoader, dim: Optional[int] = None) -> Iterable[torch.Tensor]:
    """Yield the data as validated ``(B, D)`` tensors, each checked as it arrives.

    A tensor is one batch; 1-tuples/lists (as ``TensorDataset`` yields) are
    unwrapped. Raises ``ValueError`` for a batch that is not a 2-D tensor, has
    another ``D`` than ``dim`` (or than the first batch), or holds NaN/Inf.
    """
    for x in [data_or_loader] if isinstance(data_or_loader, torch.Tensor) else data_or_loader:
        if isinstance(x, (tuple, list)):
            if len(x) != 1:
                raise ValueError(f"expected batches of (B, D) tensors or 1-tuples, got a {len(x)}-tuple")
            x = x[0]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"data must be a torch.Tensor or a DataLoader of tensors, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] < 1:
            raise ValueError(f"data must be 2-D (N, D) with D >= 1, got shape {tuple(x.shape)}")
        if dim is not None and x.shape[1] != dim:
            raise ValueError(f"data has D={x.shape[1]}, expected D={dim}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("data contains NaN or Inf")
        dim = x.shape[1]
        yield x


def _moments(data_or_loader: DataOrLoader) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Count ``N``, mean ``(D,)`` and scatter ``sum (x - mean)(x - mean)^T`` ``(D, D)`` in float64.

    One validating pass; batches are merged by Chan's parallel update. Raises
    ``ValueError`` for bad batches or ``N < 2``.
    """
    n, mean, scatter = 0, None, None
    for x in _batches(data_or_loader):
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
        raise ValueError(f"need at least N=2 samples, got N={n}")
    return n, mean, scatter


def closed_form(data_or_loader: DataOrLoader, objective: str = "nll") -> Tuple[torch.Tensor, torch.Tensor]:
    """The optimum of ``objective``: ``(mean (D,), covariance (D, D))`` in float64.

    ``"mse"``: ``torch.cov`` (unbiased, 1/(N-1)); ``"nll"``: the 1/N MLE. The
    mean is the sample mean in both cases.
    """
    _check_choice("objective", objective, OBJECTIVES)
    n, mean, scatter = _moments(data_or_loader)
    return mean, scatter / (n - 1 if objective == "mse" else n)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _sigma_points(mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``2D`` points, ``mean ± sqrt(D) c_j`` with ``C C^T = covariance``: shape ``(2D, D)``.

    They share the data's mean and 1/N covariance, and the mean log-density is
    quadratic in x, so their mean NLL equals the data's, value and gradient,
    at O(D^3) per step instead of O(N D^2).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # (D,), (D, D)
    columns = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # (D, D), C C^T = covariance
    offsets = math.sqrt(mean.shape[0]) * columns.mT  # (D, D), one point per row
    return torch.cat([mean + offsets, mean - offsets])  # (2D, D)


def fit_covariance(data_or_loader: DataOrLoader, objective: str = "mse", *, optimizer: str = "adam",
                   lr: Optional[float] = None, epochs: Optional[int] = None, diag_transform: str = "softplus",
                   init: Union[str, Tuple[torch.Tensor, torch.Tensor]] = "identity", tol: Optional[float] = None,
                   max_iter: int = 20, device=None, seed: Optional[int] = None, progress: bool = False,
                   callback: Optional[Callable[[int, CovarianceLearner, float], Optional[bool]]] = None,
                   ) -> Tuple[CovarianceLearner, FitHistory]:
    """Fit a :class:`CovarianceLearner` to data; returns ``(learner, history)``.

    Args:
        data_or_loader: an ``(N, D)`` tensor, or an iterable (``DataLoader``) of
            ``(B, D)`` batches or 1-tuples of them. Every batch is validated as it
            arrives (shape, NaN/Inf); a first pass also checks ``N >= 2``.
        objective: ``"mse"`` (target ``torch.cov``; the mean is not learned) or
            ``"nll"`` (mean and covariance).
        optimizer: ``"adam"`` or ``"lbfgs"`` (strong-Wolfe line search).
        lr: learning rate; default 0.01 for Adam, 1.0 for L-BFGS.
        epochs: passes, default 1000 for Adam, 100 for L-BFGS. One L-BFGS epoch
            is one ``step`` of up to ``max_iter`` iterations over the full data.
        diag_transform: ``"softplus"`` or ``"exp"``.
        init: ``"identity"`` (zero mean, ``L = I``), ``"diagonal"`` (zero mean,
            ``L = diag`` of the per-dimension standard deviations), or a
            ``(loc (D,), scale_tril (D, D))`` pair.
        tol: stop once an epoch changes the loss by at most ``tol * max(1, |loss|)``.
            Default: the dtype's epsilon for L-BFGS (stop once the loss stalls;
            float32 stalls near 1e-4 relative error, float64 data fits in float64
            and goes further), never for Adam (whose loss can stall for a step
            while the parameters still move).
        max_iter: L-BFGS iterations per epoch.
        device: where to fit (default: the data's device, or CPU for a loader).
        seed: if given, ``torch.manual_seed(seed)`` first (fixes loader shuffling).
        progress: show a tqdm bar with the live loss.
        callback: ``callback(epoch, learner, loss)`` after each epoch; a true
            return value stops the run.

    How the data is used: with ``"mse"`` only the target is needed, streamed in
    the first pass. With ``"nll"`` and a tensor, the loss is evaluated on
    :func:`_sigma_points` of the data's moments (exactly the data's mean NLL).
    With ``"nll"`` and a loader, Adam steps once per batch, and L-BFGS
    accumulates the exact full-data gradient over the batches.
    """
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    lbfgs = optimizer == "lbfgs"
    lr = lr if lr is not None else (1.0 if lbfgs else 0.01)
    epochs = epochs if epochs is not None else (100 if lbfgs else 1000)
    if not (lr > 0 and math.isfinite(lr)) or epochs < 1 or max_iter < 1:
        raise ValueError(f"need lr > 0, epochs >= 1 and max_iter >= 1; got {lr}, {epochs}, {max_iter}")
    if seed is not None:
        torch.manual_seed(seed)

    is_tensor = isinstance(data_or_loader, torch.Tensor)
    if not is_tensor and iter(data_or_loader) is data_or_loader:
        raise ValueError("data must be an (N, D) tensor or a re-iterable loader, not a one-shot iterator")
    if device is None:
        device = data_or_loader.device if is_tensor else "cpu"
    dtype = data_or_loader.dtype if is_tensor and data_or_loader.dtype == torch.float64 else torch.get_default_dtype()
    tol = tol if tol is not None else (torch.finfo(dtype).eps if lbfgs else -1.0)  # -1: never stop on the loss
    n, mean, scatter = _moments(data_or_loader)
    dim = mean.shape[0]
    learner = CovarianceLearner(dim, learn_mean=objective == "nll", diag_transform=diag_transform,
                                dtype=dtype, device=device)
    if init == "diagonal":
        learner.initialize(scale_tril=torch.diag((torch.diagonal(scatter) / n).sqrt()))
    elif isinstance(init, (tuple, list)):
        learner.initialize(*init)
    elif init != "identity":
        raise ValueError(f"unknown init {init!r}; use 'identity', 'diagonal' or a (loc, scale_tril) pair")

    as_learner = dict(dtype=dtype, device=device)
    per_batch = objective == "nll" and not is_tensor
    if objective == "mse":
        target = (scatter / (n - 1)).to(**as_learner)  # (D, D), torch.cov of the data

        def terms():  # yields (loss term, its sample count)
            yield F.mse_loss(learner.covariance_matrix, target), 1
    elif is_tensor:
        points = _sigma_points(mean, scatter / n).to(**as_learner)  # (2D, D)

        def terms():
            yield -learner(points).mean(), 1
    else:
        def terms():
            for x in _batches(data_or_loader, dim):
                yield -learner(x.to(**as_learner)).sum(), x.shape[0]  # x: (B, D)

    total = n if per_batch else 1
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = (torch.optim.LBFGS(params, lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe",
                             tolerance_grad=0.0, tolerance_change=0.0) if lbfgs  # `tol` decides when to stop
           else torch.optim.Adam(params, lr=lr))
    history = FitHistory()

    def closure():  # the full loss; its gradient is accumulated term by term
        opt.zero_grad()
        history.evaluations += 1
        loss = 0.0
        for value, _ in terms():
            (value / total).backward()
            loss += value.item() / total
        return torch.tensor(loss, dtype=torch.float64)  # a float32 tensor would blur the line search

    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{objective}/{optimizer}", disable=not progress, leave=False)
    previous = math.inf
    for epoch in bar:
        if lbfgs:
            opt.step(closure)
            with torch.no_grad():
                loss = sum(value.item() for value, _ in terms()) / total
            history.iterations = opt.state[params[0]]["n_iter"]
        else:  # Adam: one step per term, i.e. per batch, or per epoch for a full tensor
            loss, seen = 0.0, 0
            for value, count in terms():
                opt.zero_grad()
                (value / count).backward()
                opt.step()
                loss, seen = loss + value.item(), seen + count
                history.iterations += 1
            history.evaluations = history.iterations
            loss /= seen
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at epoch {epoch}; lower the learning rate")
        history.append(loss)
        bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        stop = callback is not None and callback(epoch, learner, loss)
        if stop or abs(previous - loss) <= tol * max(1.0, abs(loss)):
            history.stopped_early = epoch + 1 < epochs
            break
        previous = loss
    bar.close()
    history.seconds = time.perf_counter() - start
    return learner, history
