"""Where the commands that read a trained checkpoint write, and the checks on it before they compute.

:mod:`vae.evaluate`, :mod:`vae.gaps` and :mod:`vae.visualize` follow one rule:
by default their output goes beside the checkpoint, named by everything that
changes it (``eval-test-k5000.json``); for a shipped model (any file in
:data:`~vae.choices.PRETRAINED_DIR`, which no command writes) it goes into the
current folder, the model's stem first (``iwae-full-eval-test-k5000.json``,
``iwae-full-pictures/``), so two shipped models do not collide. An output path,
given or not, is checked before the long computation whose result it is to
hold, so that the result is not lost; the write itself is atomic
(:mod:`vae.run.files`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from vae.choices import check_path
from vae.errors import ArgumentError, UsageError
from vae.run.checkpoint import check_not_shipped, is_shipped

__all__ = ["result_path", "pictures_folder", "check_output_path", "check_output_folder", "make_output_folder"]


def result_path(checkpoint: Path, split: str, k: int, limit: Optional[int] = None, seed: int = 0,
                kind: str = "eval") -> Path:
    """The default JSON path: beside the checkpoint, or in the current folder for a shipped one.

    The name holds everything that changes the result: ``eval-test-k5000.json``,
    ``eval-test-k10-limit20.json``; a shipped checkpoint's stem comes first
    (``model-eval-test-k5000.json``), so two shipped models do not collide.

    Args:
        checkpoint: the checkpoint the result is of.
        split: ``test`` or ``train``; k: importance samples per image; limit: the first N images, or None (all).
        seed: the seed of the draws (named when not 0).
        kind: the tool (``eval`` for :mod:`vae.evaluate`, ``gaps`` for :mod:`vae.gaps`).
    """
    name = f"{kind}-{split}-k{k}" + (f"-limit{limit}" if limit else "") + (f"-seed{seed}" if seed else "") + ".json"
    return Path(f"{checkpoint.stem}-{name}") if is_shipped(checkpoint) else checkpoint.parent / name


def pictures_folder(checkpoint: Path) -> Path:
    """The default folder of a checkpoint's pictures: its own folder, or ``<stem>-pictures`` in the current
    folder for a shipped one."""
    return Path(f"{checkpoint.stem}-pictures") if is_shipped(checkpoint) else checkpoint.parent


def check_output_path(out: Path, argument: str = "out") -> None:
    """Raise a :class:`~vae.errors.UsageError` unless the file ``out`` can be written: a name the OS takes, not a
    folder, not in the shipped folder, a writable parent.

    Args:
        out: the file to write.
        argument: the flag that gave it (``out``, ``plot``), named in the message.
    """
    check_path(argument, out)
    check_not_shipped(out, str(out))
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ArgumentError(argument, f"{out}: cannot write there")


def check_output_folder(folder: Path, longest: str, what: str, argument: str = "out") -> None:
    """Raise a :class:`~vae.errors.UsageError` unless files up to the name ``longest`` may be written into
    ``folder``: names the OS takes, not in the shipped folder. The folder itself is made when written.

    Args:
        folder: the folder to write into.
        longest: the longest file name to be written there (``reconstructions.png``).
        what: what is written, for the message (``pictures``).
        argument: the flag that gave it, named in the message.
    """
    check_path(argument, folder / longest)
    check_not_shipped(folder / longest, f"{what} to {folder}")


def make_output_folder(folder: Path, what: str) -> Path:
    """Make ``folder`` and its parents for ``what`` is written there (``pictures``); return it.

    Raises:
        vae.errors.UsageError: it cannot be made (a file stands in its place, say).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write {what} to {folder}: {err.strerror or err}") from None
    return folder
