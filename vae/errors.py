"""The project's errors: one base class that carries its exit code, and the argument error.

Every failure a user can cause or meet is a :class:`FullcovError`; each command
line catches that base once and prints ``str(err)``'s first line (exit code 2
for a :class:`UsageError`, 1 for a runtime failure). Anything else, an internal
``ValueError`` included, is a bug and shows as one, with its traceback.

Library code names arguments as Python does (``latent_dim must be a positive
integer, got 0``); a command line shows them as flags (``--latent-dim must be
...``, :meth:`ArgumentError.as_flag`). Torch-free: a bad flag is answered
before torch loads.
"""
from __future__ import annotations

import re
import typing

__all__ = ["FullcovError", "UsageError", "ArgumentError", "flag", "as_flags", "first_line"]


class FullcovError(Exception):
    """A failure the user can act on; ``str()``'s first line says what and what to do.

    Attributes:
        exit_code: the command line's exit code for it (1: a runtime failure).
    """

    exit_code: int = 1


class UsageError(FullcovError):
    """A bad flag, path, dataset or output folder, or a run folder another process is training in (exit code 2)."""

    exit_code = 2


class ArgumentError(UsageError, ValueError):
    """A bad argument value. ``str()`` names the argument; a CLI shows it as ``--flag``.

    Also a ``ValueError``, as a bad argument is in Python.

    Args:
        argument: the argument's name as the library spells it (``latent_dim``).
        message: the rest of the sentence (``must be a positive integer, got 0``, or
            ``: <why>``, or ``=<value>: <why>``). Other arguments it mentions are written in backticks
            (```epochs``` ), which a CLI shows as flags too (``--epochs``).
    """

    def __init__(self, argument: str, message: str):
        self.argument, self.message = argument, message
        super().__init__(self._render(str))

    def as_flag(self) -> str:
        """The same sentence with the arguments as command-line flags: ``--latent-dim must be ...``."""
        return self._render(flag)

    def _render(self, name: typing.Callable[[str], str]) -> str:
        sep = "" if self.message.startswith((":", "=")) else " "
        return name(self.argument) + sep + _mentions(self.message, name)


def flag(argument: str) -> str:
    """``latent_dim`` -> ``--latent-dim``."""
    return "--" + argument.replace("_", "-")


def _mentions(text: str, name: typing.Callable[[str], str]) -> str:
    """``text`` with each argument mentioned in backticks (```epochs```) rendered by ``name``."""
    return re.sub(r"`(\w+)`", lambda m: name(m.group(1)), text)


def as_flags(text: str) -> str:
    """A library message as a command line shows it: ```batch_size``` -> ``--batch-size``."""
    return _mentions(text, flag)


def first_line(err: object) -> str:
    """The first line of ``str(err)``, or the exception's class name when it says nothing."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return "" if isinstance(err, str) else type(err).__name__
