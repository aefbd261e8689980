"""Array files: a ``.npz`` with its own test split, a single ``.npy`` or ``.pt`` array to split.

Each reader sizes the data from what is cheap to read (a ``.npy`` header, the
headers of a ``.npz``'s members, a ``.pt`` file's size), refuses data too
large for the device, and only then reads the values. Nothing is unpickled:
``numpy.load`` runs with ``allow_pickle=False`` and ``torch.load`` with
``weights_only=True``.
"""
from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch

from vae.data.dataset import DataError, Raw, Request
from vae.data.memory import check_fits, planned_bytes, value_bytes
from vae.errors import first_line

__all__ = ["NPZ_ARRAYS", "read_npz", "read_npy", "read_pt"]

NPZ_ARRAYS = ("train", "test", "train_labels", "test_labels")
"""What a ``.npz`` may hold: the first two are required, the labels optional; other arrays are ignored."""

_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError)


def _npy_header(fp: BinaryIO, name: str) -> tuple[tuple, np.dtype]:
    """The shape and dtype in a ``.npy`` header, read without the values."""
    try:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
    except _READ_ERRORS as err:
        raise DataError(f"{name}: not a NumPy array ({first_line(err)})") from None
    return shape, dtype


def _estimate(shape: tuple, dtype: np.dtype, kind: str) -> tuple[int, int, int]:
    """``(rows, values per row, bytes per value)`` of an array with this header."""
    rows = shape[0] if shape else 1
    return rows, math.prod(shape[1:]), value_bytes(kind, dtype.kind in "biu")


def _too_big(name: str) -> DataError:
    return DataError(f"{name}: too large to read into memory; use a smaller file")


def read_npy(path: Path, name: str, request: Request) -> Raw:
    """A ``.npy`` array of rows; its test split is held out.

    Args:
        path: the file; name: how messages name it.
        request: the caller's kind, test fraction, limit and device.
    """
    with open(path, "rb") as fp:
        shape, dtype = _npy_header(fp, name)
    rows, row_values, size = _estimate(shape, dtype, request.kind)
    check_fits(name, request, *planned_bytes(request, rows, None, row_values, size))
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise _too_big(name) from None
    except _READ_ERRORS as err:
        raise DataError(f"{name}: cannot read the array ({first_line(err)})") from None
    return Raw(name=name, train=array, test=None)


def read_npz(path: Path, name: str, request: Request) -> Raw:
    """A ``.npz`` holding ``train`` and ``test`` arrays and, optionally, ``train_labels`` and ``test_labels``.

    Args:
        path: the file; name: how messages name it.
        request: the caller's kind, test fraction, limit and device.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {member[:-4]: member for member in archive.namelist() if member.endswith(".npy")}
            for needed in NPZ_ARRAYS[:2]:
                if needed not in members:
                    held = ", ".join(sorted(members)) or "no arrays"
                    raise DataError(f"{name}: no '{needed}' array (it holds {held}); a .npz needs 'train' and "
                                    "'test', with optional 'train_labels' and 'test_labels'")
            headers = {}
            for split in NPZ_ARRAYS[:2]:
                with archive.open(members[split]) as fp:
                    headers[split] = _npy_header(fp, f"{name} (array '{split}')")
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{name}: not a .npz archive ({first_line(err)})") from None
    (train_rows, row_values, size), (test_rows, _, _) = (_estimate(*headers[s], request.kind) for s in NPZ_ARRAYS[:2])
    check_fits(name, request, *planned_bytes(request, train_rows, test_rows, row_values, size))
    arrays: dict[str, Optional[np.ndarray]] = {}
    key = NPZ_ARRAYS[0]
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in NPZ_ARRAYS:
                arrays[key] = archive[key] if key in members else None
    except MemoryError:
        raise _too_big(name) from None
    except _READ_ERRORS as err:
        detail = "it holds Python objects, not numbers" if "allow_pickle" in str(err) else first_line(err)
        raise DataError(f"{name}: cannot read array '{key}' ({detail})") from None
    return Raw(name=name, train=arrays["train"], test=arrays["test"], train_labels=arrays["train_labels"],
               test_labels=arrays["test_labels"], arrays=True)


def read_pt(path: Path, name: str, request: Request) -> Raw:
    """A ``.pt`` file holding one tensor of rows, read with ``torch.load(weights_only=True)``; its test split
    is held out. The file's size stands for the data's size.

    Args:
        path: the file; name: how messages name it.
        request: the caller's kind, test fraction, limit and device.
    """
    size = path.stat().st_size
    test_bytes = round(size * request.test_fraction)
    check_fits(name, request, size - test_bytes, test_bytes)
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise _too_big(name) from None
    except pickle.UnpicklingError as err:
        refusal = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]  # weights_only's refusal
        if refusal:
            raise DataError(f"{name}: holds Python objects that a safe load refuses ({refusal[0]}); save one "
                            "tensor, torch.save(tensor, path)") from None
        raise DataError(f"{name}: not a file torch.load can read (not a saved tensor)") from None
    except (RuntimeError, ValueError, OSError, EOFError, AttributeError, ImportError) as err:
        raise DataError(f"{name}: not a file torch.load can read ({first_line(err)})") from None
    if not isinstance(tensor, torch.Tensor):
        raise DataError(f"{name}: holds a {type(tensor).__name__}, not one tensor; save one tensor, "
                        "torch.save(tensor, path)")
    return Raw(name=name, train=tensor, test=None)
