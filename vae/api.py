"""The Python API for notebooks: ``vae.fit(data)``, on the same training path as ``train.py``.

    import numpy as np, vae
    x = np.load("rows.npy")                          # (N, F) floats, or (N, C, H, W) images
    model, run_dir = vae.fit(x, epochs=50, latent_dim=8)
    q = model.posterior(x[:5])                       # MultivariateNormal(loc, scale_tril=...)

An array or tensor is saved once into the run folder as ``data.npy`` and the run
names it as its dataset, so that ``--resume``, ``python -m vae.evaluate``,
``vae.visualize`` and ``vae.gaps`` read the same numbers later. A path (or a
dataset name) is used as it is. Everything else is the training of :func:`vae.training.train`:
the same run folder, checkpoints, resume, lock and signals.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch

from vae.config import TrainConfig
from vae.errors import ArgumentError
from vae.run.checkpoint import load_model
from vae.run.files import write_bytes_atomic
from vae.run.folder import RunFolder
from vae.run.lock import holding
from vae.training import run_training

__all__ = ["DATA_FILE", "fit"]

DATA_FILE = "data.npy"
"""Where :func:`fit` keeps an in-memory array, inside the run folder."""


def fit(data: Union[torch.Tensor, np.ndarray, str, Path], log: Callable[[str], Any] = print,
        **knobs: Any) -> tuple[torch.nn.Module, Path]:
    """Train a VAE on ``data`` and return the model (eval mode, the best epoch's weights) and its run folder.

    Args:
        data: a tensor or array of rows ``(N, F)`` or images ``(N, C, H, W)``; or a path (a .npz, .npy, .pt
            or .csv file, or a folder of images) or a dataset name (``"mnist"``).
        log: where progress lines go (``print``; ``lambda *_: None`` for silence).
        knobs: any field of :class:`vae.config.TrainConfig` (``epochs=50``, ``latent_dim=8``,
            ``posterior="diagonal"``, ``out_dir="runs"``, ``resume=True``, ...); ``progress`` defaults
            to False here.

    Raises:
        vae.errors.FullcovError: a bad knob or data (:class:`~vae.errors.UsageError`), or a failure while
            training; see :func:`vae.training.train`.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(knobs) - names - {"dataset"})
    if unknown:
        raise ArgumentError(unknown[0], "is not a knob of TrainConfig (see python train.py --help)")
    if "dataset" in knobs:
        raise ArgumentError("dataset", ": pass the data as fit's first argument")
    knobs.setdefault("progress", False)
    in_memory = isinstance(data, (torch.Tensor, np.ndarray))
    config = TrainConfig(**knobs, dataset=str(data) if not in_memory else Path(DATA_FILE).stem)
    config.validate()  # where the knobs enter; the training below does not validate again
    with holding():
        if in_memory:
            config = _keep(data, config)
        run_dir = run_training(config, log=log, explicit=set(knobs) | {"dataset"})
    return load_model(run_dir / "best.pt"), run_dir


def _keep(data: Union[torch.Tensor, np.ndarray], config: TrainConfig) -> TrainConfig:
    """``config`` naming the run folder's ``data.npy`` as its dataset, once ``data`` is saved there (a new
    run: the folder opened as training opens it, :meth:`vae.run.folder.RunFolder.open`) or found equal to
    it (a resume)."""
    array = (data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data))
    path = config.check_run_dir() / DATA_FILE  # the run's name is the same with the file as its dataset
    config = dataclasses.replace(config, dataset=str(path.resolve()))
    run_dir = path.parent
    if config.resume:
        if not path.is_file():
            raise ArgumentError("resume", f": no {path}; resume with the data the run was trained on")
        kept = np.load(path, allow_pickle=False)
        if kept.shape != array.shape or kept.dtype != array.dtype or not np.array_equal(kept, array, equal_nan=True):
            raise ArgumentError("resume", f": {run_dir} was trained on other data (kept in {path}, "
                                          f"{kept.dtype} {kept.shape}; given {array.dtype} {array.shape})")
        return config
    RunFolder(config).open()  # created and locked; refused if it already holds a run
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
    return config
