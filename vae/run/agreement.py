"""What the ranks decide together: when to stop after a signal, and whether every rank started.

On one process both are the plain local answer, at once. See :mod:`vae.run.distributed`.
"""
from __future__ import annotations

from typing import Optional

from vae.run.distributed import DistributedError, PeerFailed, Ranks, _dist, _first_line, _flag

__all__ = ["StopVote", "Agreement"]


class StopVote:
    """The ranks' agreement to stop after a signal (:class:`vae.run.signals.GracefulStop`), checked every step.

    After each step every rank starts an exchange of its signal (an all-reduce
    of one number, in the background) and reads the outcome of the previous
    step's exchange, so the exchange costs no waiting. All ranks read the same
    outcomes after the same steps, so they stop after the same step: the one
    after the step at which the first rank had the signal. On one process it
    is the signal itself, at once. The agreed signal becomes every rank's
    ``stop.signum``.
    """

    def __init__(self, ranks: Ranks, stop) -> None:
        self.ranks, self.stop = ranks, stop
        self._pending = None  # (work, flag) of the exchange in flight

    def after_step(self) -> bool:
        """Whether to stop now (agreed); starts this step's exchange unless stopping."""
        if self.stop is None:
            return False
        if not self.ranks.distributed:
            return self.stop.signum is not None
        if self._adopt(self._finish()):
            return True
        flag = _flag(self.stop.signum)
        self._pending = (self.ranks._call("all_reduce", flag, op=_dist().ReduceOp.MAX, async_op=True), flag)
        return False

    def now(self) -> bool:
        """Whether any rank has had a signal by now (agreed, waiting for the exchange): between epochs."""
        if self.stop is None:
            return False
        if not self.ranks.distributed:
            return self.stop.signum is not None
        self._finish()
        flag = _flag(self.stop.signum)
        self.ranks._call("all_reduce", flag, op=_dist().ReduceOp.MAX)
        return self._adopt(int(flag) or None)

    def close(self) -> None:
        """Wait for the exchange in flight (its outcome is left to the next :meth:`now`)."""
        self._finish()

    def _finish(self) -> Optional[int]:
        if self._pending is None:
            return None
        (work, flag), self._pending = self._pending, None
        with self.ranks.communicating():
            work.wait()
        return int(flag) or None

    def _adopt(self, agreed: Optional[int]) -> bool:
        if agreed is not None:
            self.stop.signum = agreed
        return agreed is not None


class Agreement:
    """``with Agreement(ranks):`` runs its block on every rank, then all learn whether any rank failed.

    A failing rank 0 raises its own error; a failing other rank raises it as
    :class:`DistributedError` (``rank R: ...``) unless rank 0 failed too (it
    would be the same message twice); a rank that did not fail raises
    :class:`PeerFailed`. So a bad start is reported once, and no rank goes on
    to wait for the others in a collective they will never join.
    """

    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def __enter__(self) -> "Agreement":
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        if not self.ranks.distributed or (err is not None and not isinstance(err, Exception)):
            return False  # one process, or SystemExit / KeyboardInterrupt: as they are
        failed = self.ranks.all_gather(err is not None)
        if err is not None and (self.ranks.is_main or not failed[0]):
            if self.ranks.is_main or isinstance(err, DistributedError):
                return False
            raise DistributedError(f"rank {self.ranks.rank}: {_first_line(err)}") from None
        if any(failed):
            raise PeerFailed(f"rank {self.ranks.rank}: another process failed to start") from None
        return False
