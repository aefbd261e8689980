r"""Fit a :class:`~vae.toy.learner.CovarianceLearner` to data: :func:`fit_covariance`.

Objectives, with their closed-form optima (:func:`~vae.toy.moments.closed_form`):

* ``"mse"``: mean squared error between :math:`L L^\top` and ``torch.cov`` of
  the data (the unbiased sample covariance); only :math:`L` is learned.
* ``"nll"``: mean negative log-likelihood by :func:`vae.cholesky.mvn_log_prob`;
  optimum: the sample mean and the 1/N covariance.

Nothing runs on import.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vae.cli import FIT_OBJECTIVES, check_choice
from vae.toy.learner import CovarianceLearner
from vae.toy.moments import DataOrLoader, data_moments, iter_batches, sigma_points

__all__ = ["FitHistory", "fit_covariance"]


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
    :func:`~vae.toy.moments.sigma_points` of the data's moments (exactly the data's mean NLL).
    With ``"nll"`` and a loader, Adam steps once per batch, and L-BFGS
    accumulates the exact full-data gradient over the batches.
    """
    check_choice("objective", objective, FIT_OBJECTIVES)
    check_choice("optimizer", optimizer, ("adam", "lbfgs"))
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
    n, mean, scatter = data_moments(data_or_loader)
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
        points = sigma_points(mean, scatter / n).to(**as_learner)  # (2D, D)

        def terms():
            yield -learner(points).mean(), 1
    else:
        def terms():
            for x in iter_batches(data_or_loader, dim):
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
