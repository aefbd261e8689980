"""What a dataset is once loaded: two splits on the device, its kind, its shape, how it was split.

:class:`Dataset` and :class:`Split` are the public result of
:func:`vae.data.load_dataset`. :class:`Request` (what the caller asked for) and
:class:`Raw` (what a source read, before the split, the kind and the device)
pass between the package's modules only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from vae.choices import DATA_KINDS
from vae.errors import UsageError

__all__ = ["DataError", "DATA_KINDS", "KIND_WORDS", "Split", "Dataset", "Request", "Raw"]

KIND_WORDS = {"binary": "binary", "8bit": "8-bit", "continuous": "continuous"}
"""How :meth:`Dataset.describe` writes each kind."""


class DataError(UsageError):
    """The dataset is missing, unreadable or corrupted; the message says what to do."""


@dataclass
class Split:
    """One split of a dataset, resident on a device.

    Attributes:
        data: the examples, shape ``(N, *shape)``: uint8 for 8-bit data, float32 otherwise.
        labels: class labels, shape ``(N,)``, int64; None when the data has none.
    """

    data: torch.Tensor  # (N, *shape)
    labels: Optional[torch.Tensor]  # (N,) or None

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class Dataset:
    """A dataset on the device, as :func:`vae.data.load_dataset` returns it.

    Attributes:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or the path as given.
        kind: ``"binary"`` (values in [0, 1]), ``"8bit"`` (integers 0..255, stored uint8) or ``"continuous"``.
        shape: one example's shape: ``(C, H, W)`` for images, ``(F,)`` for table rows.
        train, test: the two splits.
        classes: the number of classes when there are labels, else None.
        split: how the test split was made, for a checkpoint: ``{"how": "given"}`` or
            ``{"how": "held-out", "test_fraction": f, "seed": SPLIT_SEED, "rows": N}``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    train: Split
    test: Split
    classes: Optional[int]
    split: dict

    @property
    def is_image(self) -> bool:
        """True for images ``(C, H, W)``, False for table rows ``(F,)``."""
        return len(self.shape) == 3

    def describe(self, likelihood: str) -> str:
        """One line for the run's log, e.g.
        ``data: images 3×32×32, 8-bit, 50,000 train / 10,000 test, 10 classes; likelihood logistic``.

        Args:
            likelihood: the name of the decoder's likelihood, written at the end.
        """
        if self.is_image:
            what = "images " + "×".join(map(str, self.shape))
        else:
            columns = self.shape[0]
            what = f"table of {columns} column{'s' if columns != 1 else ''}"
        classes = f", {self.classes} classes" if self.classes is not None else ""
        return (f"data: {what}, {KIND_WORDS[self.kind]}, {len(self.train):,} train / {len(self.test):,} test"
                f"{classes}; likelihood {likelihood}")


@dataclass(frozen=True)
class Request:
    """What the caller of :func:`vae.data.load_dataset` asked for, handed to each source.

    Attributes:
        kind: one of :data:`DATA_KINDS`.
        test_fraction: the share of rows held out as the test split when the source has none.
        limit: keep the first ``limit`` training rows (after the split); None keeps all.
        device: where the splits will live.
    """

    kind: str = "auto"
    test_fraction: float = 0.1
    limit: Optional[int] = None
    device: torch.device = torch.device("cpu")


@dataclass
class Raw:
    """What a source read, on the CPU, before the split, the kind and the device.

    Attributes:
        name: how messages name the source (the file, or the dataset's name).
        train: ``(N, *dims)`` numbers (a numpy array or a tensor); every row of the source when ``test`` is None.
        test: ``(M, *dims)``, or None: held out of ``train`` by :func:`vae.data.split.held_out`.
        train_labels, test_labels: ``(N,)`` / ``(M,)`` integers (array or tensor), or None.
        classes: the number of classes a source knows (class folders, CIFAR-10's names); None: from the labels.
        kind: the kind the source has by nature (MNIST: binary; image files: 8bit) when ``kind`` is auto;
            None: inferred from the values.
        pixels: the values are 0..255 intensities, and a float kind means them divided by 255.
        split: how the source split it already (an image folder splits before decoding); None: not yet.
        arrays: the splits are arrays a file names (a ``.npz``'s ``train`` and ``test``): messages name them.
    """

    name: str
    train: Any  # numpy array or tensor
    test: Any = None
    train_labels: Any = None
    test_labels: Any = None
    classes: Optional[int] = None
    kind: Optional[str] = None
    pixels: bool = False
    split: Optional[dict] = field(default=None)
    arrays: bool = False
