r"""Fit a :class:`~vae.toy.learner.CovarianceLearner` to data: :func:`fit_covariance`.

Objectives, with their closed-form optima (:func:`~vae.toy.moments.closed_form`):

* ``"nll"`` (the default): mean negative log-likelihood by
  :func:`vae.cholesky.mvn_log_prob`; optimum: the sample mean and the 1/N
  covariance. Needs N > D samples that span all D dimensions.
* ``"mse"``: mean squared error between :math:`L L^\top` and ``torch.cov`` of
  the data (the unbiased sample covariance); only :math:`L` is learned and
  ``loc`` stays at zero (or at the ``init`` loc).

The steps: check the arguments, one validating pass over the data for its
moments (:mod:`vae.toy.moments`), the starting point, the loss
(:mod:`vae.toy.objective`), the optimizer loop (:mod:`vae.toy.optimize`), and
the verdict (:class:`FitHistory`, a warning when it did not converge). Nothing
runs on import.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Tuple, Union

import torch

from vae.choices import FIT_OBJECTIVES, FIT_OPTIMIZERS, check_choice
from vae.errors import ArgumentError
from vae.toy.learner import CovarianceLearner, check_loc, check_scale_tril
from vae.toy.moments import DATA, DataOrLoader, Moments, data_moments
from vae.toy.objective import Framed, Objective
from vae.toy.optimize import OPTIMIZERS, EpochLoop, FitHistory, Settings, verdict

__all__ = ["FitHistory", "fit_covariance", "INITS"]

INITS = ("moments", "identity", "diagonal")
"""The named starting points; ``init`` may also be a ``(loc, scale_tril)`` pair."""
GTOL = {torch.float64: 1e-6, torch.float32: 1e-4}
"""Default ``gtol`` by the dtype the fit computes in (float32 cannot resolve the check much further)."""


def _check_arguments(data_or_loader, objective, optimizer, lr, epochs, diag_transform, init, standardize, tol,
                     gtol, max_iter) -> None:
    """Raise :class:`~vae.errors.ArgumentError` (one line) for a bad argument, before any pass over the data."""
    check_choice("objective", objective, FIT_OBJECTIVES)
    check_choice("optimizer", optimizer, FIT_OPTIMIZERS)
    check_choice("diag_transform", diag_transform)
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise ArgumentError("lr", f"must be positive and finite, got {lr!r}")
    for name, value in (("epochs", epochs), ("max_iter", max_iter)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ArgumentError(name, f"must be a positive integer, got {value!r}")
    for name, value, low in (("tol", tol, -math.inf), ("gtol", gtol, 0.0)):
        if value is not None and not (isinstance(value, (int, float)) and low <= value < math.inf):
            raise ArgumentError(name, f"must be a finite number{' >= 0' if low == 0 else ''}, got {value!r}")
    if isinstance(init, str) and init not in INITS or not isinstance(init, (str, tuple, list)) or (
            isinstance(init, (tuple, list)) and len(init) != 2):
        got = repr(init) if isinstance(init, str) else (
            f"a {len(init)}-{type(init).__name__}" if isinstance(init, (tuple, list)) else type(init).__name__)
        raise ArgumentError("init", f"must be one of {', '.join(INITS)} or a (loc, scale_tril) pair, got {got}")
    if not isinstance(standardize, bool):
        raise ArgumentError("standardize", f"must be True or False, got {standardize!r}")
    if not isinstance(data_or_loader, torch.Tensor) and iter(data_or_loader) is data_or_loader:
        raise ArgumentError(DATA, "must be an (N, D) tensor or a re-iterable loader, not a one-shot iterator")


def _check_defined(objective: str, moments: Moments) -> None:
    """The nll has a minimum only if the 1/N sample covariance is positive definite: raise otherwise."""
    if objective != "nll":
        return
    n, dim = moments.n, moments.dim
    if n <= dim:
        raise ArgumentError(DATA, f"has N={n} samples in D={dim} dimensions: their covariance is singular, so the "
                            f"nll has no minimum (it falls without bound as Sigma shrinks onto the data); "
                            f"need N > D, or use objective='mse'")
    scale = moments.covariance("nll").diagonal().sqrt()  # (D,)
    correlation = moments.covariance("nll") / torch.outer(scale, scale)  # (D, D); NaN where a scale is 0
    if not bool((scale > 0).all()) or torch.linalg.cholesky_ex(correlation).info.item() != 0:
        raise ArgumentError(DATA, f"spans fewer than D={dim} dimensions (a constant column, or columns that are "
                            f"combinations of others): its covariance is singular, so the nll has no minimum")


def _dtypes(moments: Moments, standardize: bool, device: torch.device) -> Tuple[torch.dtype, torch.dtype]:
    """``(dtype of the returned learner, dtype the fit computes in)``."""
    floating = (torch.float32, torch.float64)
    result = moments.dtype if moments.dtype in floating else torch.get_default_dtype()
    return result, (torch.float64 if standardize and device.type != "mps" else result)


def _start(init, objective: str, moments: Moments) -> Tuple[torch.Tensor, torch.Tensor]:
    """The validated starting point ``(loc (D,), scale_tril (D, D))`` named by ``init``."""
    dim = moments.dim
    zeros, eye = torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)
    if isinstance(init, (tuple, list)):
        loc, scale_tril = init
        loc = zeros if loc is None else check_loc(loc, dim, "init loc").detach().cpu().to(torch.float64)
        scale_tril = eye if scale_tril is None else check_scale_tril(scale_tril, dim, "init scale_tril")
        return loc, scale_tril.detach().cpu().to(torch.float64)
    if init == "identity":
        return zeros, eye
    std = moments.covariance("nll" if init == "diagonal" else objective).diagonal().sqrt().cpu()  # (D,)
    scale_tril = torch.diag(torch.where(std > 0, std, torch.ones_like(std)))  # a constant column keeps L_ii = 1
    return (moments.mean.cpu() if init == "moments" and objective == "nll" else zeros), scale_tril


def _settings(optimizer: str, lr, epochs, max_iter: int, tol, gtol, standardize: bool,
              fit_dtype: torch.dtype) -> Settings:
    """The optimizer knobs with their defaults filled in ("auto" is L-BFGS)."""
    lbfgs = optimizer in ("auto", "lbfgs")
    return Settings(optimizer="lbfgs" if lbfgs else "adam", lr=lr if lr is not None else (1.0 if lbfgs else 0.01),
                    epochs=epochs if epochs is not None else (100 if lbfgs else 1000), max_iter=max_iter,
                    tol=tol if tol is not None else (torch.finfo(fit_dtype).eps if lbfgs else -1.0),
                    gtol=gtol if gtol is not None else GTOL[fit_dtype], recentre=lbfgs and standardize)


def _learners(objective: str, moments: Moments, start, diag_transform: str, standardize: bool, device,
              fit_dtype: torch.dtype, result_dtype: torch.dtype) -> Tuple[Framed, CovarianceLearner]:
    """``(the framed learner the optimizer steps, the learner to return)`` at the ``start`` ``(loc, L)``."""
    def learner(dtype):
        return CovarianceLearner(moments.dim, learn_mean=objective == "nll", diag_transform=diag_transform,
                                 dtype=dtype, device=device)

    loc, scale_tril = start
    if standardize:  # the start is the frame; the learner starts at its identity
        return Framed(learner(fit_dtype), loc.to(device, fit_dtype), scale_tril.to(device, fit_dtype)), \
            learner(result_dtype)
    fitted = learner(fit_dtype)
    fitted.initialize(loc, scale_tril)
    return Framed(fitted), fitted


def _conclude(history: FitHistory, loop: EpochLoop, loss: Objective, framed: Framed, output: CovarianceLearner,
              settings: Settings, standardize: bool) -> None:
    """Publish the estimate, fill in the verdict, and warn (once) if the fit did not converge."""
    if loop.gradient is None:  # Adam: check the final estimate
        loop.gradient = loss.check(framed.loc, framed.scale_tril)[1]
    clamped = framed.publish(output)
    history.gradient, history.gtol = loop.gradient, settings.gtol
    overflowed = not all(bool(t.isfinite().all()) for t in (output.loc, output.scale_tril, output.covariance_matrix))
    history.converged = loop.gradient <= settings.gtol and not clamped and not overflowed
    history.stopped_early = len(history) < settings.epochs
    message = verdict(history, settings, streamed=loss.streamed, standardize=standardize, clamped=clamped)
    if overflowed:  # the fit itself may have held; its answer does not fit the result's float type
        history.stop_reason = "overflow"
        message = (f"fit_covariance did not converge: the fitted mean or covariance overflows {output.loc.dtype} "
                   "(Inf); the data are too large in scale: pass them as float64, or divide them by a constant c "
                   "(Sigma then scales by 1/c**2)")
    if message is not None and history.stop_reason != "callback":
        warnings.warn(message, UserWarning, stacklevel=3)  # at the caller of fit_covariance


def fit_covariance(data_or_loader: DataOrLoader, objective: str = "nll", *, optimizer: str = "auto",
                   lr: Optional[float] = None, epochs: Optional[int] = None, diag_transform: str = "softplus",
                   init: Union[str, Tuple[torch.Tensor, torch.Tensor]] = "moments", standardize: bool = True,
                   tol: Optional[float] = None, gtol: Optional[float] = None, max_iter: int = 20, device=None,
                   seed: Optional[int] = None, progress: bool = False,
                   callback: Optional[Callable[[int, CovarianceLearner, float], Optional[bool]]] = None,
                   ) -> Tuple[CovarianceLearner, FitHistory]:
    """Fit a :class:`CovarianceLearner` to data; returns ``(learner, history)``.

    With the defaults the result is the closed-form optimum within 1e-3
    relative Frobenius error, mean and covariance, whatever the data's scale:
    tested on variances 1e-6 to 1e6, means up to 1e4, condition numbers up to
    1e6, D up to 100, float32 and float64 data, a tensor or a loader (the
    errors measured there stay below 2e-6). A fit that ends without
    converging says so: ``history.converged`` is False and one ``UserWarning``
    names what to change.

    Args:
        data_or_loader: an ``(N, D)`` tensor, or a re-iterable loader
            (``DataLoader``) of ``(B, D)`` batches or 1-tuples of them. Every
            batch is validated as it arrives (shape, NaN/Inf); a first pass
            also checks ``N >= 2``, and for ``"nll"`` that the sample
            covariance is not singular (N > D, no constant or dependent
            column): there the nll has no minimum, and the fit raises
            ``ValueError`` instead of returning a meaningless answer.
        objective: ``"nll"`` (mean and covariance) or ``"mse"`` (``L L^T`` to
            ``torch.cov``; the mean is not learned).
        optimizer: ``"auto"`` (L-BFGS, on a tensor and on a loader alike: its
            every evaluation is the exact full-data loss and gradient), ``"adam"``
            (one step per epoch on a tensor, per batch on a loader) or ``"lbfgs"``
            (strong-Wolfe line search).
        lr: default 1.0 for L-BFGS, 0.01 for Adam.
        epochs: passes; default 100 L-BFGS steps of up to ``max_iter``
            iterations each, or 1000 Adam epochs.
        diag_transform: ``"softplus"`` or ``"exp"``.
        init: ``"moments"`` (the sample mean for ``"nll"``, zero for ``"mse"``,
            and ``L = diag`` of the per-dimension standard deviations),
            ``"identity"`` (zero mean, ``L = I``), ``"diagonal"`` (zero mean,
            ``L`` as for ``"moments"``), or a ``(loc (D,), scale_tril (D, D))``
            pair (``None`` for either: zero, ``I``), checked like
            :meth:`CovarianceLearner.initialize`.
        standardize: ``True``: fit in float64 (the data's dtype on MPS) in
            coordinates whose origin and axes are the starting point (loc,
            L): the optimizer steps on ``(mu, L')`` with ``loc = m + L0 mu`` and
            ``L = L0 L'``, an exact change of coordinates. L-BFGS moves that
            frame onto its estimate after every epoch, so each epoch starts from
            the identity in a frame that whitens the data ever better (for the
            mse it then compares ``L' L'^T`` with the target seen through the
            frame: the same minimizer, without the squared condition number of
            the plain mse); the mse is divided by the mean square of its
            target. ``False``: step on the learner's own parameters in the
            data's dtype and units (the classic recipe; ``python -m vae.toy``
            runs this way).
        tol: stop once an epoch changes the loss by at most
            ``tol * max(1, |loss|)``; default the dtype's epsilon for L-BFGS,
            never for Adam (whose loss can stall for a step while it moves).
        gtol: converged once the gradient check (:attr:`FitHistory.gradient`)
            is at most ``gtol``: default 1e-6 when the fit computes in float64,
            1e-4 in float32. L-BFGS checks after every epoch and stops there;
            Adam runs its epochs and is checked at the end. The check bounds the
            relative error of Sigma by about ``2 D gtol`` (nll) or ``D gtol / 2``
            (mse).
        max_iter: L-BFGS iterations per epoch.
        device: where to fit (default: the data's device, or CPU for a loader).
        seed: if given, ``torch.manual_seed(seed)`` first (fixes loader shuffling).
        progress: show a tqdm bar with the live loss.
        callback: ``callback(epoch, learner, loss)`` after each epoch, with the
            learner as it would be returned; a true return value stops the run
            (and no warning is given for stopping there).

    Returns:
        ``(learner, history)``: a :class:`CovarianceLearner` in the data's dtype
        (float32 or float64; other dtypes: torch's default) on ``device``, and a
        :class:`FitHistory`.

    On a loader, L-BFGS accumulates the exact gradient over the batches, so the
    tolerance is the same as on a tensor (the batches' order only changes the
    rounding). Mini-batch Adam (``optimizer="adam"``) at a constant lr keeps a
    noise floor (on the batched toy problem, batch 32 at lr 0.01: 1e-2 to 3e-2
    relative error) and is reported as not converged. The returned parameters
    are rounded to the data's dtype: in float32 that adds about 1e-7 relative
    error.
    """
    _check_arguments(data_or_loader, objective, optimizer, lr, epochs, diag_transform, init, standardize, tol,
                     gtol, max_iter)
    if seed is not None:
        torch.manual_seed(seed)
    moments = data_moments(data_or_loader)  # the one validating pass before the fit
    _check_defined(objective, moments)
    device = torch.device(device if device is not None else (moments.device or "cpu"))
    result_dtype, fit_dtype = _dtypes(moments, standardize, device)
    settings = _settings(optimizer, lr, epochs, max_iter, tol, gtol, standardize, fit_dtype)
    framed, output = _learners(objective, moments, _start(init, objective, moments), diag_transform, standardize,
                               device, fit_dtype, result_dtype)
    loss = Objective(objective, data_or_loader, moments, dtype=fit_dtype, device=device, normalized=standardize,
                     diag_transform=diag_transform, whiten=settings.recentre)

    def publish() -> CovarianceLearner:  # what the callback sees: the learner as it would be returned
        framed.publish(output)
        return output

    history = FitHistory(settings.optimizer)
    loop = EpochLoop(settings, history, desc=f"{objective}/{settings.optimizer}", progress=progress,
                     callback=callback, publish=publish)
    try:
        OPTIMIZERS[settings.optimizer](framed, loss, settings, loop)
    finally:
        loop.close()  # and history.seconds
    _conclude(history, loop, loss, framed, output, settings, standardize)
    return output, history
