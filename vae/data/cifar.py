"""CIFAR-10: downloaded by torchvision when it is missing, read here from torchvision's layout.

The layout is ``<data root>/cifar-10-batches-py/`` holding ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``: pickled dicts, each
batch with ``data`` (``(n, 3072)`` uint8, channel-major 3×32×32 rows) and
``labels`` (n class indices), the meta with ``label_names``. torchvision's own
class checks the official files' md5 sums; this module reads any copy in that
layout, through an unpickler that rebuilds numpy arrays and nothing else (a
pickle is code: any other global it names is refused in one line).
"""
from __future__ import annotations

import codecs
import functools
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision

from vae.data.dataset import DataError, Raw, Request
from vae.data.memory import check_fits, value_bytes
from vae.data.mnist import remove_empty, resolve_data_dir
from vae.errors import first_line

__all__ = ["CIFAR10", "CIFAR_FOLDER", "TRAIN_BATCHES", "TEST_BATCH", "META", "CIFAR_SHAPE", "read_cifar10"]

CIFAR10 = "cifar10"
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CIFAR_SHAPE = (3, 32, 32)
_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    OverflowError, MemoryError)


class _Refused(pickle.UnpicklingError):
    """A pickle named a global that a CIFAR-10 batch never needs."""


@functools.lru_cache(maxsize=None)
def _numpy_globals() -> dict:
    """The globals numpy's pickles of arrays name (numpy 1 and 2 spell the module differently)."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # protocol 2 spells bytes as _codecs.encode(text, "latin1")
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, numbers, strings and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        found = _numpy_globals().get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def _unpickle(path: Path) -> dict:
    """The dict pickled in ``path``, its keys as text (Python 2's pickles and bytes keys both read)."""
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise DataError(f"{path}: refused: the pickle asks for {err}, which a CIFAR-10 batch never needs; "
                        "replace the file") from None
    except _UNPICKLE_ERRORS as err:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (holds a {type(content).__name__}, not a dict)")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: ``(n, 3, 32, 32)`` uint8 images and ``(n,)`` int64 labels."""
    content = _unpickle(path)
    data, labels = content.get("data"), content.get("labels")
    row = int(np.prod(CIFAR_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: not a CIFAR-10 batch: 'data' is {what}, not uint8 (n, {row})")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__
        raise DataError(f"{path}: not a CIFAR-10 batch: {count} labels for {len(data)} images")
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (n,)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: not a CIFAR-10 batch: its labels are not integers") from None
    return torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, *CIFAR_SHAPE), labels  # (n, 3, 32, 32)


def _classes(path: Path) -> int:
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: not CIFAR-10's batches.meta: no list of 'label_names'")
    return len(names)


def _locate(root: Path) -> Path:
    """The batches' folder under ``root``, downloaded by torchvision when it is not there at all."""
    folder = root / CIFAR_FOLDER
    names = (*TRAIN_BATCHES, TEST_BATCH, META)
    missing = [name for name in names if not (folder / name).is_file()]
    if not missing:
        return folder
    if folder.exists():  # a partial copy: a download would overwrite the files that are there
        raise DataError(f"cifar10 files missing from {folder}: {', '.join(missing)}; copy them there, or point "
                        "`data_dir` (or VAE_DATA_DIR) at a complete copy")
    created = [path for path in (root,) if not path.exists()]
    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except (RuntimeError, OSError) as err:  # offline, unwritable root, incomplete download
        remove_empty(created)
        raise DataError(f"cifar10 not found under {folder} and it could not be downloaded; point `data_dir` (or "
                        f"VAE_DATA_DIR) at a folder holding {CIFAR_FOLDER}/ ({first_line(err)})") from None
    return folder


def read_cifar10(data_dir: Optional[str], request: Request) -> Raw:
    """CIFAR-10's 50,000 training and 10,000 test images, 8-bit 3×32×32, with their 10 classes.

    Args:
        data_dir: the data root (see :func:`vae.data.resolve_data_dir`).
        request: the caller's kind, limit and device (the split is CIFAR-10's own).

    Raises:
        DataError: missing and not downloadable, a batch that is not one, or too large for the device.
    """
    folder = _locate(resolve_data_dir(data_dir))
    per_byte = value_bytes(request.kind, True)
    train_bytes = sum((folder / name).stat().st_size for name in TRAIN_BATCHES) * per_byte  # the pickles' sizes
    if request.limit is not None:
        train_bytes = min(train_bytes, request.limit * int(np.prod(CIFAR_SHAPE)) * per_byte)
    check_fits(CIFAR10, request, train_bytes, (folder / TEST_BATCH).stat().st_size * per_byte)
    train = [_batch(folder / name) for name in TRAIN_BATCHES]
    test_data, test_labels = _batch(folder / TEST_BATCH)
    return Raw(name=CIFAR10, train=torch.cat([data for data, _ in train]), test=test_data,
               train_labels=torch.cat([labels for _, labels in train]), test_labels=test_labels,
               classes=_classes(folder / META), kind="8bit", pixels=True)
