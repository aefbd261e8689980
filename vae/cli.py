"""The command lines' kit: one parser whose errors are one line, one way to report a failure.

Importable without torch, so that every command answers a bad flag before
torch loads. Library code raises the errors of :mod:`vae.errors`; a command
line catches their base, :class:`~vae.errors.FullcovError`, once, and
:meth:`ArgumentParser.report` prints it: a usage error under the *flag's* name
(``--latent-dim must be ...``) with exit code 2, a runtime failure (a broken
checkpoint, a full disk) in one line with exit code 1. The lower layers never
import this module.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import typing
from pathlib import Path

from vae.choices import DEVICES
from vae.config import THREADS_HELP
from vae.errors import ArgumentError, FullcovError, UsageError, as_flags, first_line
from vae.streams import say

__all__ = ["command_name", "ArgumentParser", "require_positive", "add_checkpoint_args", "test_hooks"]


def command_name(module: str) -> str:
    """How this process was started, for messages: ``fullcov-train``, ``train.py``, or ``python -m <module>``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set by python -m
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if (spec is not None and spec.name in (module, f"{module}.__main__")) or name in ("", "-c", "__main__.py"):
        return f"python -m {module}"
    return name


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit code 2.

    With ``quiet`` set it prints nothing (help, usage errors, :meth:`fail`) and exits the same
    way: another process of the same job prints it (the ranks other than 0 under torchrun).
    """

    quiet = False

    def _print_message(self, message: str, file=None) -> None:
        if not self.quiet and message:
            say(message.rstrip("\n"), file=file or sys.stderr)

    def error(self, message: typing.Union[str, Exception]) -> typing.NoReturn:
        """A usage error: one line, exit code 2. An :class:`~vae.errors.ArgumentError` is shown with its flag."""
        text = message.as_flag() if isinstance(message, ArgumentError) else as_flags(str(message))
        self.exit(2, f"{self.prog}: error: {first_line(text) if text.strip() else ''}\n")

    def fail(self, message: object, own: bool = False) -> int:
        """A runtime failure (a broken checkpoint, a full disk): one line on stderr; returns exit code 1.

        ``own``: news only this process has (it lost the others), printed even when ``quiet``.
        """
        if own or not self.quiet:
            say(f"{self.prog}: error: {first_line(as_flags(str(message)))}", file=sys.stderr)
        return 1

    def run(self, command: typing.Callable[[], int]) -> int:
        """Run a command's body, once its flags are parsed: the test hooks installed if a ``VAE_TEST_*``
        variable asks for them (:func:`test_hooks`), and any :class:`~vae.errors.FullcovError` reported in
        one line (:meth:`report`); return the exit code."""
        try:
            with test_hooks():
                return command()
        except FullcovError as err:
            return self.report(err)

    def report(self, err: FullcovError, own: bool = False) -> int:
        """Print ``err`` in one line as its kind asks and return its exit code (2 for a usage error).

        ``own``: see :meth:`fail`.
        """
        if isinstance(err, UsageError):
            try:
                self.error(err)
            except SystemExit as exit_:
                return exit_.code
        self.fail(err, own)
        return err.exit_code


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Usage error (one line, exit 2) unless each named flag, or each of its values, is at least 1."""
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and v < 1 for v in values):
            parser.error(ArgumentError(name, f"must be positive, got {value}"))


def test_hooks() -> typing.ContextManager:
    """At a command's entry: the reliability tests' fault hooks (:mod:`vae.run.faults`) if a ``VAE_TEST_*``
    variable asks for one, else nothing (and the fault module is not even imported)."""
    if not any(name.startswith("VAE_TEST_") and value.strip() for name, value in os.environ.items()):
        return contextlib.nullcontext()
    from vae.run.faults import installed

    return installed()


def add_checkpoint_args(parser: argparse.ArgumentParser, default: Path, checkpoint_help: str, *,
                        seed_help: typing.Optional[str] = None, compute: bool = True) -> None:
    """Declare the flags that every command reading a trained checkpoint shares, once.

    ``checkpoint`` (positional; ``args.checkpoint`` is a ``Path``, ``default`` when none or an empty one
    is given) and ``--data-dir``; with ``seed_help``, ``--seed`` (default 0); with ``compute``, the
    flags of a command that computes with the model: ``--device`` (default ``cpu``), ``--threads``
    (default 0) and ``--no-progress`` (``args.progress``).

    Args:
        parser: the command's parser.
        default: the checkpoint read when none is given, the best shipped model
            (:data:`vae.run.checkpoint.PRETRAINED`; passed in, as this module does not import torch).
        checkpoint_help: what the command takes the checkpoint for; the help adds the default.
        seed_help: what the seed seeds; None: no ``--seed``.
        compute: whether to declare ``--device``, ``--threads`` and ``--no-progress``.
    """
    def checkpoint(text: str) -> Path:
        return Path(text) if text else default

    parser.add_argument("checkpoint", nargs="?", default=default, type=checkpoint,
                        help=f"{checkpoint_help} (default: the best shipped model, vae/pretrained/{default.name})")
    if seed_help is not None:
        parser.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: 0)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset root (default: $VAE_DATA_DIR, else the run's, else ./data)")
    if compute:
        parser.add_argument("--device", default="cpu", choices=DEVICES)
        parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP + " (default: 0)")
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
