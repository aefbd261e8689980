"""The optimizer loops of :func:`~vae.toy.fit.fit_covariance`, Adam and L-BFGS, and what they report.

Both step a :class:`~vae.toy.objective.Framed` learner on an
:class:`~vae.toy.objective.Objective` and hand every epoch's loss to an
:class:`EpochLoop`, which records it in the :class:`FitHistory`, calls the
callback and decides when to stop; :func:`verdict` words a fit that did not
converge. Nothing runs on import.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from vae.cholesky import DIAG_FLOOR
from vae.toy.objective import Framed, Objective

__all__ = ["Settings", "FitHistory", "EpochLoop", "run_adam", "run_lbfgs", "verdict", "OPTIMIZERS"]

GUARD = 1e30  # a normalized loss above this is outside the basin: the line search is told so, finitely


@dataclass(frozen=True)
class Settings:
    """The resolved optimizer knobs of one fit (see :func:`~vae.toy.fit.fit_covariance`)."""

    optimizer: str  # "adam" or "lbfgs"
    lr: float
    epochs: int
    max_iter: int  # L-BFGS iterations per epoch
    tol: float  # stop once an epoch changes the loss by at most tol * max(1, |loss|); < 0: never
    gtol: float  # converged once the check's gradient is at most this
    recentre: bool  # L-BFGS: move the frame onto the estimate after every epoch


class FitHistory(list):
    """Per-epoch losses (a plain ``list`` of floats, in the objective's own units) plus facts about the run.

    Attributes:
        optimizer: the optimizer that ran, ``"adam"`` or ``"lbfgs"`` (``"auto"`` resolved).
        converged: whether the fit met its tolerance: at the returned estimate,
            the gradient check (:attr:`gradient`) is at most :attr:`gtol` (and
            the estimate could be represented; see
            :func:`~vae.toy.fit.fit_covariance` for what that guarantees).
        gradient: the gradient check at the end, unit-free, zero at the optimum
            (:meth:`vae.toy.objective.Objective.check`): for the nll the largest
            entry of the loss's gradient in coordinates re-centred on the
            estimate; for the mse ``2 max |Sigma - T| / ||T||``.
        gtol: the tolerance it was held to.
        stop_reason: why the run ended: ``"gtol"`` (the gradient check held),
            ``"stalled"`` (the loss stopped changing, by ``tol``, before it held),
            ``"callback"``, ``"epochs"`` (the epoch budget ran out), or ``"overflow"`` (the
            estimate overflowed the result's float type: never converged).
        stopped_early: the run ended before its epoch budget, for any of the
            first three reasons; not a verdict (a stalled run stops early too).
        iterations: optimizer iterations (Adam steps; L-BFGS inner iterations).
        evaluations: loss-and-gradient evaluations.
        seconds: wall time of the optimization loop.
    """

    def __init__(self, optimizer: str = "adam"):
        super().__init__()
        self.optimizer = optimizer
        self.iterations = self.evaluations = 0
        self.converged, self.gradient, self.gtol = False, math.inf, 0.0
        self.stop_reason, self.stopped_early = "epochs", False
        self.seconds = 0.0


class EpochLoop:
    """Iterate over the epochs; :meth:`end_epoch` records one and says whether to stop.

    Sets ``history.stop_reason`` to ``"gtol"`` (the gradient check held),
    ``"callback"`` or ``"stalled"`` (the loss stopped changing, by ``tol``)
    when it stops the run.
    """

    def __init__(self, settings: Settings, history, *, desc: str, progress: bool,
                 callback: Optional[Callable] = None, publish: Optional[Callable] = None):
        self.settings, self.history = settings, history
        self.callback, self.publish = callback, publish
        self.bar = tqdm(range(settings.epochs), desc=desc, disable=not progress, leave=False)
        self.previous, self.start = math.inf, time.perf_counter()
        self.gradient: Optional[float] = None  # the check's gradient at the current estimate, if known

    def __iter__(self):
        self.start = time.perf_counter()  # after the optimizer's construction (a one-off import on first use)
        return iter(self.bar)

    def close(self) -> None:
        """Close the bar and record the loop's wall time in ``history.seconds``."""
        self.bar.close()
        self.history.seconds = time.perf_counter() - self.start

    def end_epoch(self, epoch: int, loss: float, gradient: Optional[float] = None, unit: float = 1.0) -> bool:
        """Record ``loss`` (and the check's ``gradient``, if measured); True to stop.

        ``tol`` is held against ``loss / unit``, the loss the optimizer sees.
        """
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at epoch {epoch}; lower the learning rate")
        self.history.append(loss)
        self.gradient = gradient
        self.bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        reason = None
        if self.callback is not None:
            learner = self.publish()
            if self.callback(epoch, learner, loss):
                reason = "callback"
        if reason is None and gradient is not None and gradient <= self.settings.gtol:
            reason = "gtol"
        if reason is None and abs(self.previous - loss) / unit <= self.settings.tol * max(1.0, abs(loss) / unit):
            reason = "stalled"
        self.previous = loss
        if reason is not None:
            self.history.stop_reason = reason
        return reason is not None


def run_adam(framed: Framed, objective: Objective, settings: Settings, loop: EpochLoop) -> None:
    """Adam: one step per loss term (per batch on a loader, per epoch otherwise)."""
    opt = torch.optim.Adam(framed.params, lr=settings.lr)
    history = loop.history
    for epoch in loop:
        loss, seen = 0.0, 0
        for value, count in objective.terms(framed):
            opt.zero_grad()
            (value / count if objective.unit == 1.0 else value / (count * objective.unit)).backward()
            opt.step()
            loss, seen = loss + value.item(), seen + count
            history.iterations += 1
        history.evaluations = history.iterations
        if loop.end_epoch(epoch, loss / seen, unit=objective.unit):
            break


def run_lbfgs(framed: Framed, objective: Objective, settings: Settings, loop: EpochLoop) -> None:
    """L-BFGS with a strong-Wolfe line search on the exact full-data loss, ``max_iter`` iterations an epoch.

    On a loader each evaluation accumulates the gradient over all the batches.
    With ``settings.recentre`` the frame moves onto the estimate after every
    epoch (and the L-BFGS memory starts afresh, in the new coordinates).
    """
    history, opt, done = loop.history, None, 0

    def closure():  # the full loss; its gradient is accumulated term by term
        opt.zero_grad()
        history.evaluations += 1
        loss = 0.0
        for value, _ in objective.terms(framed):
            (value / objective.total if objective.unit == 1.0 else value / (objective.total * objective.unit)
             ).backward()
            loss += value.item() / objective.total
        loss /= objective.unit
        if not math.isfinite(loss) or loss > GUARD:  # e.g. a trial step that made L nearly singular
            for p in framed.params:
                p.grad.zero_()
            loss = GUARD
        return torch.tensor(loss, dtype=torch.float64)  # a float32 tensor would blur the line search

    for epoch in loop:
        if opt is None or settings.recentre:
            done = history.iterations
            opt = torch.optim.LBFGS(framed.params, lr=settings.lr, max_iter=settings.max_iter,
                                    line_search_fn="strong_wolfe", tolerance_grad=0.0,
                                    tolerance_change=0.0)  # our own tests decide when to stop
        opt.step(closure)
        history.iterations = done + opt.state[framed.params[0]]["n_iter"]
        if settings.recentre:
            framed.recentre()
        loss, gradient = objective.check(framed.loc, framed.scale_tril)
        if loop.end_epoch(epoch, loss, gradient, unit=objective.unit):
            break


def verdict(history: FitHistory, settings: Settings, *, streamed: bool, standardize: bool,
            clamped: bool) -> Optional[str]:
    """Why the fit did not converge and what to change, in one sentence; ``None`` if it converged."""
    if history.converged:
        return None
    adam = settings.optimizer == "adam"
    epochs = f"{len(history)} {'Adam' if adam else 'L-BFGS'} epoch{'' if len(history) == 1 else 's'}"
    state = f"the gradient check reads {history.gradient:.2g} (gtol {history.gtol:g})"
    if clamped:
        return (f"fit_covariance did not converge: a diagonal entry of the fitted L (a conditional standard "
                f"deviation) fell below the floor {DIAG_FLOOR:g} of vae.cholesky's map and was raised to it; the "
                f"data are too small in scale or nearly singular: multiply them by a constant c (Sigma then "
                f"scales by c**2)")
    if history.stop_reason == "stalled":
        why = f"the loss stopped changing after {epochs} while {state}"
        fix = ("fit in float64 with standardize=True" if not standardize else
               "the data may be nearly singular (a condition number near 1/eps); lower tol to keep going")
    else:
        why = f"after {epochs} {state}"
        fix = f"raise epochs (now {settings.epochs})" + ("" if adam else f" or max_iter (now {settings.max_iter})")
    if adam:
        noise = "mini-batch Adam at a constant lr keeps a noise floor; " if streamed else ""
        fix = (f"{noise}use optimizer='auto' (L-BFGS on the exact full-data gradient), or {fix} or lower lr"
               + ("" if standardize else ", with standardize=True"))
    return f"fit_covariance did not converge: {why}; {fix}"


OPTIMIZERS = {"adam": run_adam, "lbfgs": run_lbfgs}
