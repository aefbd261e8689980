"""Test hooks: environment variables that slow down or break a run on purpose.

They exist so that the reliability tests can inject a fault at an exact point
of a real ``python train.py`` process. They are off the production path: a
command installs them at its entry (:func:`installed`) only when one of the
variables is set, into two slots that are None otherwise
(:data:`vae.run.files.TEST_HOOK`, :data:`vae.epoch.TEST_HOOK`). No user needs them.

``VAE_TEST_SLOW_WRITE="last.pt=1.5,metrics.csv=1.5"``
    Sleep that many seconds between writing (and fsyncing) the temporary file
    of an atomic write and ``os.replace``-ing it onto the named file: a window
    in which to kill the process in the middle of a checkpoint write.

``VAE_TEST_DISK_FULL="last.pt,*.png"``
    An atomic write of a file whose name matches one of these patterns
    (``fnmatch``) fails with ``ENOSPC`` after its temporary file is written,
    as on a full disk: the one line, the exit code and the cleanup that
    follow are the real ones.

``VAE_TEST_FAULT_AT_STEP="9=nan"``
    At global optimizer step 9 (counted from 1 over the whole run): ``nan`` or
    ``inf`` replaces the loss before the backward pass; a signal name
    (``SIGTERM``, ``SIGINT``, ``SIGKILL``) is sent by the process to itself
    once the step is done. Under torchrun every rank does so, unless a target
    follows: ``9=nan@1`` (rank 1 only), or ``9=SIGTERM@launcher``: rank 0
    sends the signal to its parent, the torchrun process, and waits until
    torchrun has passed it on to rank 0 too (as a user's ``kill`` of torchrun
    would, at a known step).
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import signal
import time
from typing import Iterator

import vae.epoch
import vae.run.files
from vae.run.distributed import current

__all__ = ["SLOW_WRITE_ENV", "DISK_FULL_ENV", "FAULT_AT_STEP_ENV", "LAUNCHER", "WriteFault", "StepFault", "installed"]

SLOW_WRITE_ENV = "VAE_TEST_SLOW_WRITE"
DISK_FULL_ENV = "VAE_TEST_DISK_FULL"
FAULT_AT_STEP_ENV = "VAE_TEST_FAULT_AT_STEP"
LAUNCHER = "launcher"  # the target of a signal meant for torchrun
LAUNCHER_WAIT = 10.0  # seconds rank 0 waits for torchrun to pass the signal back


def _pairs(variable: str) -> dict[str, str]:
    """``"a=1,b=2"`` in the environment variable -> ``{"a": "1", "b": "2"}``."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return {}
    try:
        return dict(item.strip().split("=", 1) for item in text.split(","))
    except ValueError:
        raise ValueError(f"{variable}={text!r}: expected NAME=VALUE[,NAME=VALUE...]") from None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Install the hooks the ``VAE_TEST_*`` variables ask for, inside the block; with none set, nothing."""
    write = WriteFault() if os.environ.get(SLOW_WRITE_ENV, "").strip() or os.environ.get(DISK_FULL_ENV, "").strip() \
        else None
    step = StepFault() if os.environ.get(FAULT_AT_STEP_ENV, "").strip() else None
    saved = vae.run.files.TEST_HOOK, vae.epoch.TEST_HOOK
    vae.run.files.TEST_HOOK, vae.epoch.TEST_HOOK = write or saved[0], step or saved[1]
    try:
        yield
    finally:
        vae.run.files.TEST_HOOK, vae.epoch.TEST_HOOK = saved


class WriteFault:
    """``VAE_TEST_DISK_FULL`` and ``VAE_TEST_SLOW_WRITE``, as a :class:`vae.run.files.WriteHook`."""

    def __init__(self) -> None:
        self.slow = {name: float(seconds) for name, seconds in _pairs(SLOW_WRITE_ENV).items()}
        self.full = [p.strip() for p in os.environ.get(DISK_FULL_ENV, "").split(",") if p.strip()]

    def written(self, name: str) -> None:
        """Raise ``OSError(ENOSPC)`` if ``VAE_TEST_DISK_FULL`` names the file ``name``."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.full):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def replacing(self, name: str) -> None:
        """Sleep as ``VAE_TEST_SLOW_WRITE`` asks for the file called ``name``."""
        if self.slow.get(name):
            time.sleep(self.slow[name])


class StepFault:
    """The fault ``VAE_TEST_FAULT_AT_STEP`` asks for.

    Attributes:
        step: the global step it hits; action: ``nan``, ``inf`` or a signal name; target: a rank,
        :data:`LAUNCHER`, or empty (every rank). The rank is read when the fault is due (the process
        group is joined after the command's entry).
    """

    def __init__(self) -> None:
        items = list(_pairs(FAULT_AT_STEP_ENV).items())
        if len(items) != 1:
            raise ValueError(f"{FAULT_AT_STEP_ENV}: one STEP=ACTION only")
        self.step: int = int(items[0][0])
        self.action, _, self.target = items[0][1].strip().partition("@")
        if self.target and self.target != LAUNCHER and not self.target.isdigit():
            raise ValueError(f"{FAULT_AT_STEP_ENV}: unknown target {self.target!r} (a rank, or {LAUNCHER})")
        if self.action not in ("nan", "inf") and not hasattr(signal, self.action):
            raise ValueError(f"{FAULT_AT_STEP_ENV}: unknown action {self.action!r} (nan, inf or a signal name)")

    def hits(self, step: int, *actions: str) -> bool:
        """Whether the fault, one of ``actions``, is due at global ``step`` on this rank."""
        if step != self.step or self.action not in actions:
            return False
        return not self.target or current().rank == (0 if self.target == LAUNCHER else int(self.target))

    def after_step(self, step: int, stop=None) -> None:
        """Send the asked-for signal once global ``step`` is done: to this process, or to torchrun.

        ``stop``: the :class:`vae.run.signals.GracefulStop` whose ``signum`` shows that torchrun passed it on.
        """
        if self.action in ("nan", "inf") or not self.hits(step, self.action):
            return
        if self.target != LAUNCHER:
            os.kill(os.getpid(), getattr(signal, self.action))
            return
        os.kill(os.getppid(), getattr(signal, self.action))
        deadline = time.monotonic() + LAUNCHER_WAIT
        while stop is not None and stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
