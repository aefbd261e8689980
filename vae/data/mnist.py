"""MNIST and Fashion-MNIST through torchvision: the data root, the IDX checks, :func:`load_split`.

:func:`load_split` is the original loader: a split as one ``(N, 784)`` float
tensor in [0, 1] on the device. :func:`read_mnist` gives the raw uint8 images
to :func:`vae.data.load_dataset`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torchvision

from vae.choices import DATASETS, check_choice
from vae.data.dataset import DataError
from vae.errors import first_line

__all__ = ["MNISTS", "IMAGE_PIXELS", "ImageSplit", "resolve_data_dir", "read_mnist", "load_split", "remove_empty"]

MNISTS = ("mnist", "fashion-mnist")  # the registry's datasets this module reads (vae.choices.DATASETS)
IMAGE_PIXELS = 28 * 28


@dataclass
class ImageSplit:
    """One split of a dataset, resident on a device.

    Attributes:
        images: pixel intensities in [0, 1], shape ``(N, 784)``, float32.
        labels: class labels, shape ``(N,)``, int64.
    """

    images: torch.Tensor  # (N, 784)
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.images.shape[0]


def resolve_data_dir(data_dir: Optional[str] = None, stored: Optional[str] = None) -> Path:
    """The data root, in this order: ``data_dir`` (a flag given now), ``$VAE_DATA_DIR``, ``stored``
    (the folder a checkpoint recorded), ``./data``."""
    return Path(data_dir or os.environ.get("VAE_DATA_DIR") or stored or "data")


def _torchvision_split(dataset: str, root: Path, train: bool):
    cls = getattr(torchvision.datasets, DATASETS[dataset].torchvision)
    folder = root / cls.__name__
    created = [path for path in (folder / "raw", folder, root) if not path.exists()]
    missing = [name for name in _raw_names(cls) if not (folder / "raw" / name).is_file()]
    if not missing:
        for name in _raw_names(cls):
            if name.startswith("train" if train else "t10k"):
                _check_idx(folder / "raw" / name)
        return cls(str(root), train=train, download=False)
    if len(missing) < len(_raw_names(cls)):  # a partial copy: a download would overwrite the files that are there
        raise DataError(f"{dataset} files missing from {folder / 'raw'}: {', '.join(missing)}; "
                        "copy them there, or point `data_dir` (or VAE_DATA_DIR) at a complete copy")
    hint = (
        f"{dataset} not found under {folder / 'raw'} and it could not be downloaded; "
        f"point `data_dir` (or VAE_DATA_DIR) at a folder holding {cls.__name__}/raw/*-ubyte"
    )
    try:
        return cls(str(root), train=train, download=True)
    except (RuntimeError, OSError) as err:  # offline, unwritable root, incomplete download
        remove_empty(created)
        raise DataError(f"{hint} ({first_line(err)})") from None


def _raw_names(cls) -> list:
    return [name.rsplit(".", 1)[0] for name, _ in cls.resources]  # files without ".gz"


IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses


def _check_idx(path: Path) -> None:
    """Raise :class:`DataError` naming ``path`` if its IDX header or length is wrong.

    An IDX file is a big-endian magic ``0x0000TTNN`` (type, number of
    dimensions), one 4-byte size per dimension, then the bytes themselves.
    """
    ndim = 3 if "-idx3-" in path.name else 1
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"corrupted {path}: {size} bytes, too short for an IDX header; replace the file")
    magic = int.from_bytes(header[:4], "big")
    if magic != (IDX_UBYTE << 8 | ndim):
        raise DataError(
            f"corrupted {path}: bad magic number 0x{magic:08x} (expected 0x{IDX_UBYTE << 8 | ndim:08x}); replace the file"
        )
    expected = len(header) + math.prod(int.from_bytes(header[i:i + 4], "big") for i in range(4, len(header), 4))
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes"
        raise DataError(f"corrupted {path}: {what}, {size} bytes where its header promises {expected}; replace the file")


def remove_empty(created: list) -> None:
    """Undo the folders a failed download created, deepest first, if they are still empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return


def read_mnist(dataset: str, data_dir: Optional[str] = None, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw images and labels of a split of ``dataset``, on the CPU.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: data root (see :func:`resolve_data_dir`).
        train: the training split, else the test split.

    Returns:
        ``(images, labels)``: ``(N, 28, 28)`` uint8 and ``(N,)`` integers.

    Raises:
        DataError: the files are missing and cannot be downloaded, or are corrupted.
    """
    check_choice("dataset", dataset, MNISTS)
    root = resolve_data_dir(data_dir)
    try:
        split = _torchvision_split(dataset, root, train)
        images, labels = split.data, split.targets
    except (AssertionError, ValueError, KeyError, IndexError, RuntimeError) as err:
        detail = first_line(err) if str(err).strip() else "bad header"
        raise DataError(
            f"corrupted {dataset} files under {root / DATASETS[dataset].torchvision / 'raw'}: "
            f"not valid IDX data ({type(err).__name__}: {detail}); "
            "replace them or point `data_dir` at a good copy"
        ) from None
    except OSError as err:
        raise DataError(f"cannot read {dataset} under {root}: {err}") from None
    if images.dim() != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DataError(
            f"corrupted {dataset} files under {root}: images {tuple(images.shape)} "
            f"do not match labels {tuple(labels.shape)} of 28x28 digits"
        )
    return images, labels  # (N, 28, 28) uint8, (N,)


def load_split(
    dataset: str, data_dir: Optional[str] = None, train: bool = True,
    limit: Optional[int] = None, device: torch.device | str = "cpu",
) -> ImageSplit:
    """Load a split of ``dataset`` as tensors on ``device``.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: data root (see :func:`resolve_data_dir`).
        train: the training split, else the test split.
        limit: keep only the first ``limit`` images.
        device: where the tensors live.

    Raises:
        DataError: the files are missing and cannot be downloaded, or are corrupted.
    """
    images, labels = read_mnist(dataset, data_dir, train)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    images = images.to(device).reshape(-1, IMAGE_PIXELS).float().div_(255.0)  # (N, 784)
    return ImageSplit(images=images, labels=labels.to(device=device, dtype=torch.long))
