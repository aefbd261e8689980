"""Datasets as tensors on the device: loading, the data root, binarization.

:func:`load_dataset` reads any supported source into a :class:`Dataset`: two
splits, each one tensor on the device, with the data's kind, its shape and
how the test split was made. Sources: the names ``mnist``,
``fashion-mnist`` (:mod:`vae.data.mnist`) and ``cifar10``
(:mod:`vae.data.cifar`); or a path: a ``.npz``, ``.npy``, ``.pt``
(:mod:`vae.data.arrays`), a ``.csv`` (:mod:`vae.data.tables`) or a folder of
images (:mod:`vae.data.images`). A source without a test split has one held
out (:mod:`vae.data.split`); the kind is inferred or checked
(:mod:`vae.data.kinds`); data too large for the device is refused before it
is read (:mod:`vae.data.memory`). Every bad input is one :class:`DataError`
line naming the file. :func:`load_split` is the original MNIST loader, kept
as it was; batches are rows picked by a per-epoch permutation
(:mod:`vae.data.batches`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from vae.choices import DATASETS, check_choice
from vae.data.arrays import read_npy, read_npz, read_pt
from vae.data.batches import TEST_BINARIZATION_SEED, batch_indices, binarize, binarize_fixed, evaluation_images
from vae.data.cifar import CIFAR10, read_cifar10
from vae.data.dataset import DATA_KINDS, DataError, Dataset, Raw, Request, Split
from vae.data.images import read_folder
from vae.data.kinds import as_tensor, check_finite, check_labels, check_rows, convert, resolve_kind
from vae.data.memory import check_fits
from vae.data.mnist import IMAGE_PIXELS, MNISTS, ImageSplit, load_split, read_mnist, resolve_data_dir
from vae.data.split import SPLIT_SEED, check_test_fraction, held_out, held_out_record
from vae.data.tables import read_csv
from vae.errors import ArgumentError, first_line

__all__ = [
    "DataError",
    "ImageSplit",
    "resolve_data_dir",
    "load_split",
    "binarize",
    "TEST_BINARIZATION_SEED",
    "binarize_fixed",
    "evaluation_images",
    "batch_indices",
    "IMAGE_PIXELS",
    "DATA_KINDS",
    "SPLIT_SEED",
    "Split",
    "Dataset",
    "held_out",
    "load_dataset",
    "run_split",
    "check_recorded",
    "evaluation_rows",
]

_FILE_READERS = {".npz": read_npz, ".npy": read_npy, ".pt": read_pt, ".csv": read_csv}
"""A data file's suffix (lower case) -> its reader."""


def load_dataset(
    dataset: Union[str, os.PathLike], data_dir: Optional[str] = None, *, kind: str = "auto",
    test_fraction: float = 0.1, limit: Optional[int] = None, device: Union[torch.device, str] = "cpu",
) -> Dataset:
    """Load ``dataset`` as two splits on ``device``.

    Args:
        dataset: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or a path: a ``.npz`` holding ``train`` and
            ``test`` (and optional ``train_labels``, ``test_labels``); a ``.npy`` or ``.pt`` array of rows, or a
            ``.csv`` table (header optional), whose test split is held out; a folder of PNG / JPEG images
            (``train/`` and ``test/`` give the split, class subfolders the labels).
        data_dir: the data root of the named datasets (see :func:`resolve_data_dir`); a path is read as given.
        kind: one of :data:`DATA_KINDS`: ``auto`` infers it (binary: values in [0, 1]; 8bit: integers 0..255,
            and images; else continuous); another is checked against the values. MNIST is binary (its pixels
            divided by 255) unless ``kind="8bit"``.
        test_fraction: the share of rows held out as the test split when the source has none, in (0, 1).
        limit: keep the first ``limit`` training rows (after the split).
        device: where the splits live.

    Returns:
        The :class:`Dataset`: ``train.data`` ``(N, *shape)`` (uint8 for 8bit data, float32 otherwise),
        ``shape`` ``(C, H, W)`` or ``(F,)``; ``(N, H, W)`` arrays become one channel; 1-D arrays are refused.

    Raises:
        ArgumentError: a bad ``kind``, ``test_fraction`` or ``limit``.
        DataError: a missing, unreadable or bad source, or one too large for the device (one line naming it).
    """
    check_choice("kind", kind, DATA_KINDS)
    check_test_fraction(test_fraction)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ArgumentError("limit", f"must be a positive integer, got {limit!r}")
    request = Request(kind=kind, test_fraction=float(test_fraction), limit=limit, device=torch.device(device))
    return _assemble(_read(dataset, data_dir, request), request)


def _read(dataset: Union[str, os.PathLike], data_dir: Optional[str], request: Request) -> Raw:
    """What the source named by ``dataset`` holds, read on the CPU."""
    name = os.fspath(dataset)
    if name == CIFAR10:
        return read_cifar10(data_dir, request)
    if name in MNISTS:
        (train, train_labels), (test, test_labels) = (read_mnist(name, data_dir, split) for split in (True, False))
        return Raw(name=name, train=train, test=test, train_labels=train_labels, test_labels=test_labels,
                   classes=10, kind="binary", pixels=True)
    path = Path(name).expanduser()
    names = ", ".join(DATASETS)
    try:
        if path.is_dir():
            return read_folder(path, name, request)
        if not path.exists():
            raise DataError(f"`dataset` {name}: no such file or folder, and not a dataset name ({names})")
        reader = _FILE_READERS.get(path.suffix.lower())
        if reader is None or not path.is_file():
            raise DataError(f"{name}: an unknown kind of data ({path.suffix or 'no suffix'}); give a .npz, .npy, "
                            f".pt or .csv file, a folder of PNG / JPEG images, or a dataset name ({names})")
        return reader(path, name, request)
    except OSError as err:  # unreadable: permissions, a vanished file
        raise DataError(f"{name}: cannot read it ({first_line(err)})") from None


def _assemble(raw: Raw, request: Request) -> Dataset:
    """Check what a source read, split and trim it, settle its kind, and put it on the device."""
    where = (lambda split: f"{raw.name} (array '{split}')") if raw.arrays else (lambda split: raw.name)
    train = check_rows(where("train"), as_tensor(where("train"), raw.train))  # (N, *shape)
    check_finite(where("train"), train)
    train_labels = None if raw.train_labels is None else check_labels(where("train_labels"), raw.train_labels,
                                                                      len(train))
    if raw.test is None:
        train_idx, test_idx = held_out(len(train), request.test_fraction, raw.name)
        test, train = train[test_idx], train[train_idx]
        test_labels, train_labels = (None, None) if train_labels is None else (train_labels[test_idx],
                                                                               train_labels[train_idx])
        split = held_out_record(len(train_idx) + len(test_idx), request.test_fraction)
    else:
        test = check_rows(where("test"), as_tensor(where("test"), raw.test))  # (M, *shape)
        check_finite(where("test"), test)
        test_labels = None if raw.test_labels is None else check_labels(where("test_labels"), raw.test_labels,
                                                                        len(test))
        split = raw.split or {"how": "given"}
        if test.shape[1:] != train.shape[1:]:
            raise DataError(f"{raw.name}: test rows of shape {tuple(test.shape[1:])} where train rows are "
                            f"{tuple(train.shape[1:])}")
    if request.limit is not None:
        train = train[:request.limit]
        train_labels = None if train_labels is None else train_labels[:request.limit]
    kind = resolve_kind(raw.name, request.kind, (train, test), raw.kind, raw.pixels)
    per_value = 1 if kind == "8bit" else 4
    check_fits(raw.name, request, train.numel() * per_value, test.numel() * per_value)
    given = [labels for labels in (train_labels, test_labels) if labels is not None and len(labels)]
    classes = raw.classes or (max(int(labels.max()) for labels in given) + 1 if given else None)
    device = request.device
    to_device = (lambda labels: None if labels is None else labels.to(device))
    return Dataset(
        name=raw.name, kind=kind, shape=tuple(train.shape[1:]),
        train=Split(convert(raw.name, train, kind, raw.pixels, device), to_device(train_labels)),
        test=Split(convert(raw.name, test, kind, raw.pixels, device), to_device(test_labels)),
        classes=classes, split=split,
    )


def run_split(config, data_dir: Optional[str] = None, *, train: bool = False, limit: Optional[int] = None,
              device: Union[torch.device, str] = "cpu") -> tuple[torch.Tensor, Optional[torch.Tensor], Dataset]:
    """The rows a trained run is evaluated on: its dataset read and split as its training read and split it.

    Args:
        config: the run's :class:`vae.config.TrainConfig` (as its checkpoint stores it).
        data_dir: the data root given now; else ``$VAE_DATA_DIR``, else the run's (:func:`resolve_data_dir`).
        train: the training split, else the test split; limit: keep its first ``limit`` rows.
        device: where the rows live.

    Returns:
        ``(rows, labels, dataset)``: the split flattened ``(N, P)`` in the data's own units (binarized once
        with the fixed seed under dynamic binarization, :func:`evaluation_images`), its labels ``(N,)`` or
        None, and the whole :class:`Dataset`.

    Raises:
        DataError: the data cannot be read, or no longer has the shape the run was trained on.
    """
    dataset = load_dataset(config.dataset, resolve_data_dir(data_dir, config.data_dir),
                           kind=config.data_kind, test_fraction=config.test_fraction, device=device)
    check_recorded(config, dataset)
    split = dataset.train if train else dataset.test
    labels = None if split.labels is None else split.labels[:limit]
    return evaluation_rows(config, split.data[:limit]), labels, dataset


def check_recorded(config, dataset: Dataset) -> None:
    """Refuse ``dataset`` unless it is what the run ``config`` recorded: its examples' shape and, for a
    held-out split (a function of the rows), its number of rows. Nothing recorded (a new run): nothing to check.

    Raises:
        DataError: one line naming the data, what it holds and what the run was trained on.
    """
    hint = "point `data_dir` (or the file) at the data it was trained on"
    if config.data_shape is not None and tuple(config.data_shape) != dataset.shape:
        raise DataError(f"{config.dataset}: holds examples of shape {dataset.shape}; the run was trained on "
                        f"{tuple(config.data_shape)}; {hint}")
    rows = dataset.split.get("rows")
    if config.data_rows is not None and rows != config.data_rows:
        raise DataError(f"{config.dataset}: holds {rows} rows; the run was trained on {config.data_rows}, and its "
                        f"test split was held out from them; {hint}")


def evaluation_rows(config, data: torch.Tensor) -> torch.Tensor:
    """A split ``(N, *shape)`` as the run ``config`` is scored on it: rows ``(N, P)``, in the fixed
    binarization under dynamic binarization (:func:`evaluation_images`), else as they are."""
    return evaluation_images(data.reshape(len(data), -1), "dynamic" if config.binarizes else "none")
