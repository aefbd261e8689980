"""Atomic output files: every file a run, the evaluator or the pictures write goes through here.

A write goes to a temporary file in the same folder, is fsynced, then
``os.replace``d onto its name, so a crash never leaves a half-written file,
only perhaps a stale ``.fullcov-<name>.<random>.tmp`` that
:func:`remove_stale_temporaries` clears; no other file is ever deleted. What
is written is serialized in memory first, so a full disk is a
:class:`WriteError` naming the file, and the file it was to replace is intact.
"""
from __future__ import annotations

import io
import os
import re
import stat
import tempfile
from pathlib import Path

from typing import Optional, Protocol

from vae.errors import FullcovError

__all__ = ["TEMP_PREFIX", "WriteHook", "WriteError", "write_bytes_atomic", "write_text_atomic", "save_figure",
           "remove_stale_temporaries"]

TEMP_PREFIX = ".fullcov-"  # the temporaries of atomic writes: .fullcov-<name>.<8 random characters>.tmp
_TEMPORARY = re.compile(re.escape(TEMP_PREFIX) + r".+\.[a-z0-9_]{8}\.tmp")  # mkstemp's random part


class WriteHook(Protocol):
    """A reliability test's hook into :func:`write_bytes_atomic` (:mod:`vae.run.faults`)."""

    def written(self, name: str) -> None:
        """The temporary of the file called ``name`` is written, not yet fsynced (may raise ``OSError``)."""

    def replacing(self, name: str) -> None:
        """The temporary is fsynced; ``os.replace`` comes next (may wait)."""


TEST_HOOK: Optional[WriteHook] = None
"""Set only by :func:`vae.run.faults.installed`, at a command's entry, when a ``VAE_TEST_*`` variable asks for a
fault; None otherwise, and no write consults anything else."""


class WriteError(FullcovError, OSError):
    """An output file could not be written (a full disk, say); the file it was to replace is intact.

    ``str()`` is one line naming the path, e.g. ``cannot write runs/r/last.pt: no space left on device``.
    """

    def __init__(self, path: Path, err: OSError):
        reason = err.strerror or str(err) or type(err).__name__
        super().__init__(err.errno, f"cannot write {path}: {reason[:1].lower()}{reason[1:]}", str(path))

    def __str__(self) -> str:
        return self.strerror


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, ``os.replace``.

    The project's one writer of output files. Callers serialize into memory
    first, so that a full disk surfaces here as an ``OSError`` whatever the format.

    The temporary is created exclusively (``O_EXCL``: never through a link), and ``os.replace``
    swaps a symbolic link at ``path`` for the new file: a link's target is never written.

    Raises:
        WriteError: the write failed; ``path`` is as it was and no temporary is left.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            f.write(data)
            if TEST_HOOK is not None:
                TEST_HOOK.written(path.name)
            f.flush()
            os.fsync(f.fileno())
        if TEST_HOOK is not None:
            TEST_HOOK.replacing(path.name)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from None
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries a killed atomic write left in ``folder``, and nothing else; return them.

    Only names this project writes match (``.fullcov-<name>.<random>.tmp``): a
    user's ``.notes.tmp`` stays.
    """
    stale = [p for p in Path(folder).glob(f"{TEMP_PREFIX}*.tmp") if _TEMPORARY.fullmatch(p.name) and _regular(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _regular(path: Path) -> bool:
    """Whether ``path`` itself (not a link's target) is a regular file: the only kind we ever write."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Render a matplotlib ``Figure`` as a PNG in memory, then write it to ``path`` atomically; return the path.

    Raises:
        WriteError: it could not be written (a full disk, say); an older file there is intact.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
