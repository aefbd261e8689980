"""Checkpoints: one dict with model, optimizer, config, epoch, RNG states and metrics; the shipped models.

Writes go through :mod:`vae.run.files` (atomic). Reads use
``torch.load(weights_only=True)``: a checkpoint is data, and a file whose
pickle would run code is refused before anything runs.
"""
from __future__ import annotations

import errno
import io
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch

from vae.choices import PRETRAINED_DIR
from vae.config import TrainConfig, config_from_dict
from vae.devices import available
from vae.errors import ArgumentError, FullcovError, UsageError, first_line
from vae.model import VAE
from vae.run.files import write_bytes_atomic
from vae.run.schema import FORMAT, validate_state

__all__ = [
    "CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "MODEL_FIELDS", "model_fields", "build_model", "load_weights",
    "load_initial_weights", "load_run", "load_model", "PRETRAINED_DIR", "SHIPPED_MODELS", "PRETRAINED", "is_shipped",
    "check_not_shipped",
    "export_model",
]

SHIPPED_MODELS = ("vae-full.pt", "vae-diagonal.pt", "iwae-full.pt", "iwae-diagonal.pt", "conv-full.pt",
                  "conv-diagonal.pt")
"""The shipped MNIST models; ``<stem>-metrics.csv`` and an evaluation at K = 5000 lie beside each:
``<stem>-eval-test-k5000.json`` (all 10,000 test images) or, for the conv models, whose evaluation
costs 7.5 times as much, ``<stem>-eval-test-k5000-limit2000.json`` (the first 2,000)."""
PRETRAINED = PRETRAINED_DIR / "iwae-full.pt"
"""The shipped model with the lowest test NLL (K = 5000) on all 10,000 test images: the default of
``vae.evaluate`` and ``vae.visualize``."""
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer (no such flag on Windows)


class CheckpointError(FullcovError):
    """A file that is not a usable checkpoint of this project; the message says why."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (see :func:`vae.run.files.write_bytes_atomic`)."""
    buffer = io.BytesIO()  # torch.save would turn a full disk into RuntimeError("... unexpected pos ...")
    torch.save({"format": FORMAT, **state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` lies in the shipped folder :data:`PRETRAINED_DIR` (any file there, whatever its name)."""
    return Path(os.path.realpath(PRETRAINED_DIR)) in Path(os.path.realpath(path)).parents  # a link loop: no error


def check_not_shipped(path: str | Path, what: str) -> None:
    """Raise :class:`~vae.errors.UsageError` if ``path`` lies in the shipped folder, which no command writes; ``what`` names the output."""
    if is_shipped(path):
        raise UsageError(f"cannot write {what}: {PRETRAINED_DIR} holds the shipped models, which no command writes; "
                         "choose another `out` (or run from another folder)")


def _check_map_location(map_location: Any) -> None:
    """:class:`~vae.errors.ArgumentError` (a ``ValueError``) for a device this machine lacks (``torch.load`` would fail as on a damaged file)."""
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or a function: torch.load's own business
    try:
        device = torch.device(map_location)
    except RuntimeError:
        raise ArgumentError("map_location", f"={map_location!r} is not a device (try 'cpu' or 'cuda')") from None
    backend = getattr(torch, device.type, None)  # torch.xpu, torch.mtia, ...: each says if it is there
    present = device.type in ("cpu", "meta") or available(device.type) or bool(
        device.type not in ("cuda", "mps") and callable(getattr(backend, "is_available", None))
        and backend.is_available())
    if not present:
        raise ArgumentError("map_location", f"={map_location!r}: {device.type.upper()} is not available on this "
                         "machine (use 'cpu')")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ArgumentError("map_location", f"={map_location!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint without running any code from it.

    Raises:
        CheckpointError: missing, empty, truncated, foreign or unsafe file.
        ValueError: ``map_location`` is a device this machine does not have.
    """
    path = Path(path)
    _check_map_location(map_location)
    with _open_regular(path) as f:
        head = f.read(len(ZIP_MAGIC))
        if not head:
            raise CheckpointError(f"{path}: empty file, not a checkpoint")
        if head != ZIP_MAGIC:
            raise CheckpointError(f"{path}: not a checkpoint (not a torch.save archive)")
        f.seek(0)
        state = _torch_load(f, path, map_location)
    validate_state(state, path)
    return state


def _open_regular(path: Path):
    """``path`` opened for reading, once sure it is a regular file (a FIFO would block, a device never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: a loop of symbolic links, not a checkpoint file") from None
        if err.errno == errno.ENAMETOOLONG:
            raise CheckpointError(f"{path}: the path is too long for the file system") from None
        raise CheckpointError(f"{path}: cannot read it ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file (a folder, a FIFO or a device), not a checkpoint")
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _torch_load(f, path: Path, map_location) -> Any:
    """``torch.load(f, weights_only=True)``, every failure a :class:`CheckpointError` naming ``path``."""
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: its pickle would call {unsafe.group(1)}, and a checkpoint may hold "
                "only tensors and plain data; nothing in it was run"
            ) from None
        raise CheckpointError(f"{path}: corrupted checkpoint (unreadable pickle)") from None
    except MemoryError:
        raise CheckpointError(f"{path}: its tensors do not fit in memory") from None
    except Exception as err:  # torch.load fails on damaged archives with many exception types
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({type(err).__name__})") from None


MODEL_FIELDS = ("latent_dim", "hidden", "posterior", "diag_transform", "rank", "data_shape", "likelihood", "arch",
                "channels")
"""The config fields that shape the VAE."""


def model_fields(config: TrainConfig) -> dict[str, Any]:
    """The :data:`MODEL_FIELDS` of ``config`` as :class:`~vae.model.VAE` takes them (``rank`` only for the
    low-rank family, ``channels`` only for ``arch conv``). A config stored before runs recorded their data
    (an MNIST run) has MNIST's shape (:attr:`~vae.config.TrainConfig.shape`) and the Bernoulli likelihood."""
    unused = {"rank": config.posterior != "lowrank", "channels": config.arch != "conv"}
    fields = {name: getattr(config, name) for name in MODEL_FIELDS if not unused.get(name)}
    fields["data_shape"] = config.shape
    fields["likelihood"] = "bernoulli" if config.likelihood == "auto" else config.likelihood
    return fields


def build_model(config: TrainConfig) -> VAE:
    """The VAE that ``config`` describes, freshly initialized."""
    return VAE(**model_fields(config))


def load_weights(model: torch.nn.Module, weights: Any, path: str | Path) -> None:
    """``model.load_state_dict(weights)``, a mismatch raising :class:`CheckpointError`."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture ({first_line(err)})") from None


def load_initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights in ``config.init_from``, checked to fit the model ``config`` describes (a fine-tune's start).

    Raises:
        CheckpointError: the file is not a loadable checkpoint, or it holds another model.
    """
    path = config.init_from
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"`init_from` {err}") from None
    stored = config_from_dict(state["config"])
    theirs = model_fields(stored)
    differ = [f"`{name}` {theirs[name]} there, {value} here"
              for name, value in model_fields(config).items() if theirs.get(name) != value]
    if differ:
        raise CheckpointError(f"`init_from` {path}: another model ({'; '.join(differ)})")
    return state["model"]


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[VAE, TrainConfig, dict[str, Any]]:
    """Read a checkpoint once: the trained VAE (eval mode), its config and the whole state.

    Raises:
        CheckpointError: the file is not a loadable checkpoint of this project.
    """
    state = load_checkpoint(path, map_location)
    config = config_from_dict(state["config"])
    model = build_model(config)
    load_weights(model, state["model"], path)
    return model.to(map_location).eval(), config, state


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> VAE:
    """Load a trained VAE from a checkpoint, in eval mode.

    Args:
        path: a ``last.pt`` or ``best.pt`` written by training.
        map_location: device to load the weights onto.

    Raises:
        CheckpointError: the file is not a loadable checkpoint of this project.
        ValueError: ``map_location`` is a device this machine does not have (``"cuda"`` without CUDA).
    """
    return load_run(path, map_location)[0]


def export_model(source: str | Path, target: str | Path) -> None:
    """Write a slim copy of a checkpoint for sharing: weights, config, epoch and metrics.

    The optimizer and RNG states are dropped (it cannot be resumed), which
    makes it about a third of the size. :func:`load_model` reads it as usual.
    """
    state = load_checkpoint(source)
    keep = ("model", "config", "epoch", "step", "metrics", "best_test_neg_elbo")
    save_checkpoint({key: state[key] for key in keep if key in state}, target)
