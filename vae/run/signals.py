"""A graceful stop on SIGINT or SIGTERM: finish the step, save, then leave.

Inside ``with GracefulStop() as stop:`` the first SIGINT (Ctrl-C) or SIGTERM
only sets ``stop.signum``; the training loop looks at it after every step,
writes ``last.pt`` and raises :class:`TrainingInterrupted`. A second signal
aborts at once with exit code 128 + signal number (checkpoint writes are
atomic, so the last complete ``last.pt`` survives). On leaving the block the
previous handlers are restored. A signal the process was started with ignored
(``train.py ... &`` from a script ignores SIGINT) stays ignored.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

from vae.errors import FullcovError

__all__ = ["STOP_SIGNALS", "GracefulStop", "TrainingInterrupted"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(FullcovError):
    """Training stopped on a signal after saving ``last.pt``.

    Attributes:
        signum: the signal; exit_code: 128 + signum (130 for SIGINT, 143 for SIGTERM);
        run_dir: the run folder to resume.
    """

    def __init__(self, signum: int, run_dir: Path, where: str):
        self.signum, self.run_dir = signum, Path(run_dir)
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}; saved {self.run_dir / 'last.pt'}")


class GracefulStop:
    """Context manager that turns SIGINT and SIGTERM into a request to stop.

    Outside the main thread (where Python cannot install handlers) it does
    nothing and ``signum`` stays None. A signal whose disposition is "ignore" is left ignored.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: abort now
            raise SystemExit(128 + signum)
        self.signum = signum  # no printing here: the handler may interrupt a print
