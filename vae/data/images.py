"""Folders of PNG and JPEG images, decoded by torchvision, all of one size and one channel count.

The layout, as torchvision's ``ImageFolder`` reads it:

- ``train/`` and ``test/`` subfolders give the split; without them (neither
  one) the test split is held out (:func:`vae.data.split.held_out`);
- within a split, class subfolders give the labels: the sorted class names are
  classes ``0..C-1``, and a class folder's images are found at any depth;
  images loose in the split folder have no labels. A folder holding both is
  refused, and so is a ``test/`` whose classes are not among ``train/``'s.

Files and folders whose names start with ``.`` (``.ipynb_checkpoints/``) and
files of other suffixes are skipped. Images are decoded unchanged (grey stays 1 channel, RGB 3, with
alpha 2 or 4); a folder whose images differ in size or channels is refused,
naming the first odd file and both sizes. The split and ``limit`` are applied
to the file list, so only the images kept are decoded.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from vae.data.dataset import DataError, Raw, Request
from vae.data.memory import check_fits, value_bytes
from vae.data.split import held_out, held_out_record
from vae.errors import first_line

__all__ = ["IMAGE_SUFFIXES", "read_folder", "decode"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"  # torchvision 0.29


def _visible(folder: Path) -> list:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")


def _listing(folder: Path) -> tuple[list, Optional[list], Optional[list]]:
    """``(files, labels, class names)`` of one split folder; labels and names are None without class folders."""
    entries = _visible(folder)
    subfolders = [entry for entry in entries if entry.is_dir()]
    loose = [entry for entry in entries if _is_image(entry)]
    if subfolders and loose:
        raise DataError(f"{folder}: holds both images ({loose[0].name}) and class folders ({subfolders[0].name}); "
                        "put every image in a class folder, or none")
    if not subfolders:
        if not loose:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}): an empty split")
        return loose, None, None
    files, labels = [], []
    for label, sub in enumerate(subfolders):
        found = sorted(path for path in sub.rglob("*")
                       if _is_image(path) and not any(part.startswith(".") for part in path.relative_to(sub).parts))
        if not found:
            raise DataError(f"{sub}: an empty class folder (no {', '.join(IMAGE_SUFFIXES)} images)")
        files += found
        labels += [label] * len(found)
    return files, labels, [sub.name for sub in subfolders]


def _test_labels(test_dir: Path, labels: Optional[list], names: Optional[list],
                 classes: Optional[list]) -> Optional[list]:
    """``test/``'s labels as train's class indices; :class:`DataError` if its classes are not among train's."""
    if (classes is None) != (names is None):
        raise DataError(f"{test_dir}: {'has' if names else 'has no'} class folders, unlike train/")
    if names is None:
        return None
    extra = [name for name in names if name not in classes]
    if extra:
        raise DataError(f"{test_dir / extra[0]}: class '{extra[0]}' is not among train/'s classes "
                        f"({', '.join(classes)})")
    as_train = [classes.index(name) for name in names]  # test/'s class index -> train/'s
    return [as_train[label] for label in labels]


def decode(path: Path) -> torch.Tensor:
    """One image file as ``(C, H, W)`` uint8, its channels unchanged; :class:`DataError` naming it otherwise."""
    try:
        with warnings.catch_warnings():  # once per image otherwise; the decoders still work
            warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
            image = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)  # (C, H, W)
    except (RuntimeError, ValueError, OSError) as err:
        raise DataError(f"{path}: cannot decode the image ({first_line(err)})") from None
    if image.dtype != torch.uint8:
        raise DataError(f"{path}: a {image.dtype} image; only 8-bit images are read")
    return image


def _size(shape: tuple) -> str:
    return "×".join(map(str, shape))


def _decode_all(files: list, first: Path, shape: tuple) -> torch.Tensor:
    """``files`` decoded into one ``(N, C, H, W)`` uint8 tensor; each must have ``first``'s ``shape``."""
    out = torch.empty((len(files), *shape), dtype=torch.uint8)  # (N, C, H, W)
    for i, path in enumerate(files):
        image = decode(path)
        if tuple(image.shape) != shape:
            raise DataError(f"{path}: {_size(tuple(image.shape))} where {first} is {_size(shape)}; "
                            "every image must have the same size and channels")
        out[i] = image
    return out


def read_folder(path: Path, name: str, request: Request) -> Raw:
    """A folder of images (see the module's docstring for its layout), decoded as 8-bit pixels.

    Args:
        path: the folder; name: how messages name it.
        request: the caller's kind, test fraction, limit and device.
    """
    train_dir, test_dir = path / "train", path / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        there, missing = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise DataError(f"{name}: has {there}/ but no {missing}/; give both, or neither (the test split is then "
                        "held out)")
    if train_dir.is_dir():
        train_files, train_labels, classes = _listing(train_dir)
        test_files, test_labels, test_names = _listing(test_dir)
        test_labels = _test_labels(test_dir, test_labels, test_names, classes)
        split = {"how": "given"}
    else:
        files, labels, classes = _listing(path)
        train_idx, test_idx = held_out(len(files), request.test_fraction, name)
        train_idx, test_idx = train_idx.tolist(), test_idx.tolist()
        train_files, test_files = [files[i] for i in train_idx], [files[i] for i in test_idx]
        train_labels = None if labels is None else [labels[i] for i in train_idx]
        test_labels = None if labels is None else [labels[i] for i in test_idx]
        split = held_out_record(len(files), request.test_fraction)
    if request.limit is not None:
        train_files = train_files[:request.limit]
        train_labels = None if train_labels is None else train_labels[:request.limit]
    first = train_files[0]
    shape = tuple(decode(first).shape)  # (C, H, W)
    row_bytes = math.prod(shape) * value_bytes(request.kind, True)
    check_fits(name, request, len(train_files) * row_bytes, len(test_files) * row_bytes)
    as_labels = (lambda values: None if values is None else torch.tensor(values, dtype=torch.long))
    return Raw(name=name, train=_decode_all(train_files, first, shape), test=_decode_all(test_files, first, shape),
               train_labels=as_labels(train_labels), test_labels=as_labels(test_labels),
               classes=len(classes) if classes else None, kind="8bit", pixels=True, split=split)
