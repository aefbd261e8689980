"""Test hooks: environment variables that slow down or break a run on purpose.

They exist so that the reliability tests can inject a fault at an exact point
of a real ``python train.py`` process. Nothing reads them unless they are set,
and no user needs them.

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

import errno
import fnmatch
import os
import signal
import time
from typing import Optional

import torch

from vae.run.distributed import current

__all__ = ["SLOW_WRITE_ENV", "DISK_FULL_ENV", "FAULT_AT_STEP_ENV", "LAUNCHER", "pause_before_replace", "disk_full",
           "NoFault", "StepFault", "step_fault"]

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


def pause_before_replace(name: str) -> None:
    """Sleep as ``VAE_TEST_SLOW_WRITE`` asks for the file called ``name`` (usually no-op)."""
    seconds = _pairs(SLOW_WRITE_ENV).get(name)
    if seconds:
        time.sleep(float(seconds))


def disk_full(name: str) -> None:
    """Raise ``OSError(ENOSPC)`` if ``VAE_TEST_DISK_FULL`` names the file ``name`` (usually a no-op)."""
    patterns = os.environ.get(DISK_FULL_ENV, "")
    if patterns and any(fnmatch.fnmatchcase(name, pattern.strip()) for pattern in patterns.split(",")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class NoFault:
    """No fault: what training gets unless ``VAE_TEST_FAULT_AT_STEP`` is set; both hooks do nothing."""

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def after_step(self, step: int, stop=None) -> None:
        pass


def step_fault() -> "NoFault | StepFault":
    """The fault ``VAE_TEST_FAULT_AT_STEP`` asks for, or a :class:`NoFault` (read once per epoch)."""
    return StepFault() if os.environ.get(FAULT_AT_STEP_ENV, "").strip() else NoFault()


class StepFault:
    """The fault ``VAE_TEST_FAULT_AT_STEP`` asks for; read once per epoch.

    Attributes:
        step: the global step it hits, or None (none, or another rank's); action: ``nan``, ``inf`` or a
        signal name; target: a rank, :data:`LAUNCHER`, or empty (every rank).
    """

    def __init__(self) -> None:
        items = list(_pairs(FAULT_AT_STEP_ENV).items())
        if len(items) > 1:
            raise ValueError(f"{FAULT_AT_STEP_ENV}: one STEP=ACTION only")
        self.step: Optional[int] = int(items[0][0]) if items else None
        self.action, _, self.target = (items[0][1].strip() if items else "").partition("@")
        if self.target and self.target != LAUNCHER and not self.target.isdigit():
            raise ValueError(f"{FAULT_AT_STEP_ENV}: unknown target {self.target!r} (a rank, or {LAUNCHER})")
        if self.target and current().rank != (0 if self.target == LAUNCHER else int(self.target)):
            self.step = None  # another rank's fault
        if self.action and self.action not in ("nan", "inf") and not hasattr(signal, self.action):
            raise ValueError(f"{FAULT_AT_STEP_ENV}: unknown action {self.action!r} (nan, inf or a signal name)")

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of global ``step``, replaced by NaN or Inf when asked."""
        if step == self.step and self.action in ("nan", "inf"):
            return loss + float(self.action)  # float("nan") or float("inf")
        return loss

    def after_step(self, step: int, stop=None) -> None:
        """Send the asked-for signal once global ``step`` is done: to this process, or to torchrun.

        ``stop``: the :class:`vae.run.signals.GracefulStop` whose ``signum`` shows that torchrun passed it on.
        """
        if step != self.step or self.action in ("nan", "inf"):
            return
        if self.target != LAUNCHER:
            os.kill(os.getpid(), getattr(signal, self.action))
            return
        os.kill(os.getppid(), getattr(signal, self.action))
        deadline = time.monotonic() + LAUNCHER_WAIT
        while stop is not None and stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
