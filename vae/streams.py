"""Output streams that a lost terminal cannot break, and native stderr held while it would only add noise.

Torch-free; used by every command and by the process group (:mod:`vae.run.distributed`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import typing

__all__ = ["say", "silence", "native_stderr_held"]


def say(text: str = "", file: typing.Optional[typing.TextIO] = None) -> None:
    """``print(text, file=file)`` (default stdout) that a lost terminal cannot stop.

    A closed pipe (``| head``), a full device (``>/dev/full``) or a stream that cannot encode the text
    (``PYTHONIOENCODING=ascii``) never raises: unencodable characters are escaped, and a stream that
    fails is pointed at the null device, so later lines and the interpreter's last flush are dropped
    silently. Printing is never mistaken for writing a run.
    """
    stream = sys.stdout if file is None else file
    if stream is None:
        return
    try:
        try:
            print(text, file=stream, flush=True)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "ascii"
            print(text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True)
    except (OSError, ValueError):  # EPIPE, ENOSPC, EIO; ValueError: a closed file
        silence(stream)


def silence(stream: typing.TextIO) -> None:
    """Point a failed output stream at the null device, so that nothing more it is given can fail."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):  # no file descriptor: nothing to redirect
        pass


@contextlib.contextmanager
def native_stderr_held() -> typing.Iterator[None]:
    """Hold what native code writes to file descriptor 2 inside the block: replayed if the block succeeds,
    dropped if it raises (its one-line error says what happened; a C++ library's log would come first)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2: nothing to hold
        yield
        return
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    ok = False
    try:
        yield
        ok = True
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        with held:
            held.seek(0)
            text = held.read()
            if ok and text:
                with contextlib.suppress(OSError):
                    os.write(2, text)
