"""One writer per run folder: an OS advisory lock on ``<run folder>/.fullcov.lock``.

Training takes an exclusive ``fcntl.flock`` on the lock file of its run
folder before it writes anything there, and holds it while it trains and
draws the run's pictures. The operating system drops the lock when the
process ends, however it ends (``kill -9`` included), so a stale lock cannot
outlive its holder and nothing ever has to be cleaned up. A second writer (a
second ``train.py`` into the same folder, or ``--resume`` of a run that is
still training) gets :class:`RunFolderBusy`, whose message names the folder
and the PID of the holder, written into the lock file.

Only writers lock: ``python -m vae.evaluate`` and ``python -m vae.visualize``
read checkpoints, which are replaced atomically, and never wait for the lock.

Inside ``with holding():`` the locks that :func:`lock_run_folder` takes last
until the outermost such block ends (``train()`` holds one around a run,
``train.py`` one around the run and its pictures). Taking a lock this process
already holds is a no-op. Where ``fcntl`` is missing (Windows) or the file
system cannot lock (some network mounts), training runs without the lock.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Iterator, Optional

from vae.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, training runs unlocked
    fcntl = None

__all__ = ["LOCK_NAME", "RunFolderBusy", "UnsafeLockFile", "RunLock", "lock_run_folder", "holding"]

LOCK_NAME = ".fullcov.lock"
PID_WAIT = 1.0  # seconds to wait for a fresh holder to write its PID into the lock file
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}  # the file system cannot lock


class RunFolderBusy(UsageError):
    """Another process holds the run folder's lock.

    Attributes:
        folder: the run folder; pid: the holder's process id, or None if it could not be read.
    """

    def __init__(self, folder: Path, pid: Optional[int]):
        self.folder, self.pid = Path(folder), pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(f"{self.folder} is in use by another training process ({holder}); "
                         "wait for it to finish (or stop it), or choose another --run-name")


class UnsafeLockFile(UsageError):
    """The lock file is a symbolic link or not a regular file: never opened for writing, it may be anyone's."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path} is {what}, not the lock file training writes; nothing was written through it "
                         "(remove it if the run folder is yours)")


class RunLock:
    """The exclusive lock of one run folder, held from :meth:`acquire` to :meth:`release`.

    Args:
        folder: the run folder; it must exist.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock at once, or raise :class:`RunFolderBusy`; write this PID into the lock file.

        The lock file is opened without following a symbolic link and without blocking on a FIFO, and
        must be a regular file: a link planted in a run folder never truncates (or creates) its target.

        Raises:
            RunFolderBusy: another process holds it.
            UnsafeLockFile: it is a symbolic link, a FIFO, a device or a folder.
            OSError: the lock file cannot be opened.
        """
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
        if os.path.islink(self.path):  # also where O_NOFOLLOW is missing
            raise UnsafeLockFile(self.path, "a symbolic link")
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link made after the check
                raise UnsafeLockFile(self.path, "a symbolic link") from None
            if err.errno == errno.EISDIR:
                raise UnsafeLockFile(self.path, "a folder") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeLockFile(self.path, "a FIFO, a device or a socket")
        if fcntl is None:
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            raise RunFolderBusy(self.folder, pid) from None
        except OSError as err:
            if err.errno not in UNSUPPORTED:
                os.close(fd)
                raise
        self._fd = fd
        try:  # informational only: a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with the next writer)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_pid(fd: int) -> Optional[int]:
    """The PID in the lock file; a holder that has just locked may not have written it yet."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


_held: dict[str, RunLock] = {}  # real path of a run folder -> the lock this process holds on it
_depth = 0  # nesting of holding() blocks


def lock_run_folder(folder: str | Path) -> RunLock:
    """Lock ``folder`` for this process, until the outermost :func:`holding` block ends.

    Outside any such block the lock lasts until the process exits.

    Raises:
        RunFolderBusy: another process holds it.
    """
    key = os.path.realpath(folder)
    if key not in _held:
        _held[key] = RunLock(folder).acquire()
    return _held[key]


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Release the locks taken inside once the outermost ``with holding():`` ends."""
    global _depth
    outermost, before = _depth == 0, set(_held)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if outermost:
            for key in set(_held) - before:
                _held.pop(key).release()
