"""Checkpoints: one dict with model, optimizer, config, epoch, RNG states and metrics.

Writes are atomic (a temporary file in the same folder, fsynced, then
``os.replace``d), so a crash never leaves a half-written checkpoint. Reads use
``torch.load(weights_only=True)``: a checkpoint is data, and a file whose
pickle would run code is refused.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from vae.config import TrainConfig, config_from_dict
from vae.model import VAE

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "build_model", "load_model"]

FORMAT = "fullcov-vae/1"
REQUIRED_KEYS = ("format", "model", "config", "epoch")


class CheckpointError(Exception):
    """A file that is not a usable checkpoint of this project; the message says why."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: temp file, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint without running any code from it.

    Raises:
        CheckpointError: missing, empty, truncated, foreign or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        raise CheckpointError(f"{path}: refused, not a plain-data checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: a torch file, but not a fullcov-vae checkpoint")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, expected {FORMAT!r}")
    return state


def build_model(config: TrainConfig) -> VAE:
    """The VAE that ``config`` describes, freshly initialized."""
    return VAE(config.latent_dim, config.hidden, config.posterior, config.diag_transform)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> VAE:
    """Load a trained VAE from a checkpoint, in eval mode.

    Args:
        path: a ``last.pt`` or ``best.pt`` written by training.
        map_location: device to load the weights onto.

    Raises:
        CheckpointError: the file is not a loadable checkpoint of this project.
    """
    state = load_checkpoint(path, map_location)
    try:
        model = build_model(config_from_dict(state["config"]))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the stored architecture ({first})") from None
    return model.to(map_location).eval()
