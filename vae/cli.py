"""The command lines' kit: one choices registry, one argument error, one parser, one error printer.

Importable without torch, so that every command answers a bad flag before
torch loads. Library code raises :class:`ArgumentError`, which speaks of the
*argument* (``latent_dim must be a positive integer, got 0``); a command
line's :class:`ArgumentParser` prints it under the *flag's* name
(``--latent-dim must be ...``) with exit code 2. Runtime failures (a broken
checkpoint, a full disk) go through :meth:`ArgumentParser.fail`: one line,
exit code 1.

Every list of choices is written once, here:
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import typing

__all__ = [
    "CHOICES", "DATASETS", "FAMILIES", "DIAG_TRANSFORMS", "DEVICES", "OBJECTIVES", "ESTIMATORS", "LR_SCHEDULES",
    "BINARIZATIONS", "OUTPUT_BIASES", "FIT_OBJECTIVES", "FIT_OPTIMIZERS", "THREADS_HELP", "ArgumentError",
    "check_choice", "flag", "as_flags", "command_name", "ArgumentParser", "require_positive", "NAME_MAX",
    "PATH_MAX", "check_path", "say", "silence", "native_stderr_held",
]

NAME_MAX, PATH_MAX = 255, 4095  # bytes in one file name and in a whole path (Linux, macOS: 1023)

DATASETS = ("mnist", "fashion-mnist")
FAMILIES = ("full", "diagonal", "lowrank")  # posterior families, vae.model.posteriors
DIAG_TRANSFORMS = ("softplus", "exp")  # positive maps of a factor's diagonal, vae.cholesky
DEVICES = ("auto", "cpu", "cuda", "mps")
THREADS_HELP = "CPU threads for torch; 0: the cores no other job is busy on, unless OMP_NUM_THREADS sets them"
OBJECTIVES = ("elbo", "iwae")
ESTIMATORS = ("reparam", "stl", "dreg")
LR_SCHEDULES = ("constant", "burda", "cosine")
BINARIZATIONS = ("dynamic", "none")
OUTPUT_BIASES = ("mean", "default")
FIT_OBJECTIVES = ("mse", "nll")  # the covariance learner's, vae.toy
FIT_OPTIMIZERS = ("auto", "adam", "lbfgs")

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "posterior": FAMILIES, "family": FAMILIES, "diag_transform": DIAG_TRANSFORMS,
    "device": DEVICES, "objective": OBJECTIVES, "estimator": ESTIMATORS, "lr_schedule": LR_SCHEDULES,
    "binarize": BINARIZATIONS, "output_bias": OUTPUT_BIASES,
}
"""Argument name -> its choices, for the arguments whose choices are the same wherever they appear."""


class ArgumentError(ValueError):
    """A bad argument value. ``str()`` names the argument; a CLI shows it as ``--flag``.

    Args:
        argument: the argument's name as the library spells it (``latent_dim``).
        message: the rest of the sentence (``must be a positive integer, got 0``, or
            ``: <why>``). Other arguments it mentions are written in backticks
            (```epochs``` ), which a CLI shows as flags too (``--epochs``).
    """

    def __init__(self, argument: str, message: str):
        self.argument, self.message = argument, message
        super().__init__(self._render(str))

    def as_flag(self) -> str:
        """The same sentence with the arguments as command-line flags: ``--latent-dim must be ...``."""
        return self._render(flag)

    def _render(self, name: typing.Callable[[str], str]) -> str:
        sep = "" if self.message.startswith(":") else " "
        return name(self.argument) + sep + _mentions(self.message, name)


def _mentions(text: str, name: typing.Callable[[str], str]) -> str:
    """``text`` with each argument mentioned in backticks (```epochs```) rendered by ``name``."""
    return re.sub(r"`(\w+)`", lambda m: name(m.group(1)), text)


def as_flags(text: str) -> str:
    """A library message as a command line shows it: ```batch_size``` -> ``--batch-size``."""
    return _mentions(text, flag)


def check_choice(argument: str, value: object, choices: typing.Optional[typing.Sequence[str]] = None) -> None:
    """Raise :class:`ArgumentError` unless ``value`` is one of ``choices`` (default: ``CHOICES[argument]``)."""
    choices = CHOICES[argument] if choices is None else choices
    if value not in choices:
        raise ArgumentError(argument, f"must be one of {', '.join(choices)}, got {value!r}")


def flag(argument: str) -> str:
    """``latent_dim`` -> ``--latent-dim``."""
    return "--" + argument.replace("_", "-")


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
        """A usage error: one line, exit code 2. An :class:`ArgumentError` is shown with its flag."""
        text = message.as_flag() if isinstance(message, ArgumentError) else as_flags(str(message))
        self.exit(2, f"{self.prog}: error: {text.splitlines()[0] if text else text}\n")

    def fail(self, message: object, own: bool = False) -> int:
        """A runtime failure (a broken checkpoint, a full disk): one line on stderr; returns exit code 1.

        ``own``: news only this process has (it lost the others), printed even when ``quiet``.
        """
        lines = as_flags(str(message)).splitlines() or [""]
        if own or not self.quiet:
            say(f"{self.prog}: error: {lines[0]}", file=sys.stderr)
        return 1


def check_path(argument: str, path: object) -> None:
    """Raise :class:`ArgumentError` for a path the OS cannot name: a file name over :data:`NAME_MAX` bytes,
    or the whole over :data:`PATH_MAX` (``ENAMETOOLONG`` otherwise, at the first ``stat``)."""
    raw = os.fsencode(os.fspath(path))
    longest = max(raw.split(b"/"), key=len, default=b"")
    if len(longest) > NAME_MAX:
        raise ArgumentError(argument, f": a name of {len(longest)} bytes ({os.fsdecode(longest[:24])}...), over the "
                                      f"{NAME_MAX} bytes a file name may have")
    if len(raw) > PATH_MAX:
        raise ArgumentError(argument, f": a path of {len(raw)} bytes ({os.fsdecode(raw[:24])}...), over the "
                                      f"{PATH_MAX} bytes a path may have")


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


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Usage error (one line, exit 2) unless each named flag, or each of its values, is at least 1."""
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and v < 1 for v in values):
            parser.error(ArgumentError(name, f"must be positive, got {value}"))
