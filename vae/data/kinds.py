"""The values of a source: numbers, rows, finiteness, labels, and the kind they are.

A kind names what the values are, and so which likelihood fits them:
``binary`` (values in [0, 1], stored float32), ``8bit`` (whole numbers
0..255, stored uint8 and converted per batch by the model) or ``continuous``
(any finite number, stored float32). :func:`resolve_kind` infers it, or checks
the one asked for against the values.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from vae.data.dataset import DataError

__all__ = ["as_tensor", "check_rows", "check_finite", "check_labels", "resolve_kind", "convert"]

Array = Union[np.ndarray, torch.Tensor]
_NUMPY_WIDER = {np.dtype(np.uint16): np.int64, np.dtype(np.uint32): np.int64, np.dtype(np.uint64): np.float64}
_TORCH_PLAIN = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64)
_TORCH_WIDER = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.bool: torch.uint8,
                torch.uint16: torch.int64, torch.uint32: torch.int64, torch.uint64: torch.float64}
PIXEL_MAX = 255.0


def as_tensor(name: str, array: Array) -> torch.Tensor:
    """``array`` as a CPU tensor of a plain numeric type (bool -> uint8, wide unsigned -> int64 or float64,
    half floats -> float32); :class:`DataError` if it does not hold numbers."""
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "biuf":
            raise DataError(f"{name}: holds {array.dtype} values, not numbers")
        native = array.dtype.newbyteorder("=")
        target = np.uint8 if native.kind == "b" else _NUMPY_WIDER.get(native, native)
        return torch.from_numpy(np.ascontiguousarray(array.astype(target, copy=False)))
    if not isinstance(array, torch.Tensor):
        raise DataError(f"{name}: holds a {type(array).__name__}, not an array of numbers")
    tensor = array.detach().cpu()
    if tensor.dtype not in _TORCH_PLAIN and tensor.dtype not in _TORCH_WIDER:
        raise DataError(f"{name}: holds {tensor.dtype} values, not real numbers")
    return tensor.to(_TORCH_WIDER.get(tensor.dtype, tensor.dtype))


def check_rows(name: str, data: torch.Tensor) -> torch.Tensor:
    """Rows of one example each: ``(N, F)`` table rows or ``(N, C, H, W)`` images; ``(N, H, W)`` becomes one channel.

    Raises:
        DataError: fewer than 2 dimensions (a 1-D array is refused: reshape it to ``(N, 1)``), more than 4,
            no rows, rows of no values, or images that look channels-last.
    """
    shape = tuple(data.shape)
    if data.dim() < 2:
        what = "a single number" if data.dim() == 0 else f"a 1-D array of {shape[0]} values"
        raise DataError(f"{name}: {what}, not rows; store rows as (N, F), e.g. array.reshape(-1, 1) for one column")
    if data.dim() > 4:
        raise DataError(f"{name}: a {data.dim()}-D array {shape}; give (N, F) rows or (N, C, H, W) images")
    if shape[0] == 0:
        raise DataError(f"{name}: no rows (an empty split)")
    if 0 in shape[1:]:
        raise DataError(f"{name}: rows of no values, shape {shape}")
    if data.dim() == 4 and shape[1] > 4 and shape[3] <= 4:  # a channel count of 1 to 4 is last
        raise DataError(f"{name}: images {shape} look channels-last (N, H, W, C); store them as (N, C, H, W), "
                        "e.g. array.transpose(0, 3, 1, 2)")
    return data.unsqueeze(1) if data.dim() == 3 else data  # (N, F) or (N, C, H, W)


def check_finite(name: str, data: torch.Tensor, first_row: int = 0, row_word: str = "row") -> None:
    """Raise :class:`DataError` naming the first row (counted from ``first_row``) that holds a NaN or an Inf."""
    if not data.is_floating_point():
        return
    bad = ~torch.isfinite(data.reshape(len(data), -1)).all(1)  # (N,)
    if bad.any():
        row = int(bad.nonzero()[0]) + first_row
        raise DataError(f"{name}: NaN or Inf in {row_word} {row}; remove or replace those values")


def check_labels(name: str, labels: Array, rows: int) -> torch.Tensor:
    """``labels`` as ``(N,)`` int64: one whole number >= 0 per row of the data."""
    labels = as_tensor(name, labels)
    if labels.dim() != 1:
        raise DataError(f"{name}: labels of shape {tuple(labels.shape)}; give one label per row, shape (N,)")
    if len(labels) != rows:
        raise DataError(f"{name}: {len(labels)} labels for {rows} rows of data; give one label per row")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):  # NaN fails too
        raise DataError(f"{name}: labels must be whole numbers (class indices 0..C-1)")
    if rows and labels.min() < 0:
        raise DataError(f"{name}: a negative label ({int(labels.min())}); labels are class indices 0..C-1")
    return labels.long()


def _range(splits: Sequence[torch.Tensor]) -> tuple[float, float]:
    return min(float(s.min()) for s in splits), max(float(s.max()) for s in splits)


def resolve_kind(name: str, kind: str, splits: Sequence[torch.Tensor], nature: Optional[str] = None,
                 pixels: bool = False) -> str:
    """The kind of ``splits``' values: inferred under ``kind="auto"``, else ``kind`` once the values allow it.

    Args:
        name: how an error names the data (its file).
        kind: one of ``vae.data.DATA_KINDS``.
        splits: the values of both splits, non-empty.
        nature: the kind of a source by its nature (MNIST: binary, image files: 8bit), which ``auto`` takes.
        pixels: the values are 0..255 intensities, which every kind allows (a float kind divides them by 255).

    Inference: ``binary`` if every value is in [0, 1]; else ``8bit`` for integers 0..255; else ``continuous``.

    Raises:
        DataError: ``binary`` for values outside [0, 1], ``8bit`` for values that are not whole numbers 0..255.
    """
    if kind == "auto" and nature is not None:
        return nature
    if pixels and kind != "auto":
        return kind
    low, high = _range(splits)
    integer = not any(s.is_floating_point() for s in splits)
    if kind == "auto":
        if low >= 0 and high <= 1:
            return "binary"
        return "8bit" if integer and low >= 0 and high <= PIXEL_MAX else "continuous"
    if kind == "binary" and not (low >= 0 and high <= 1):
        raise DataError(f"{name}: kind binary needs values in [0, 1], found values from {low:g} to {high:g}; "
                        "scale the data, or use kind continuous")
    if kind == "8bit":
        whole = integer or all(bool((s == s.round()).all()) for s in splits)
        if not (whole and low >= 0 and high <= PIXEL_MAX):
            found = f"values from {low:g} to {high:g}" if whole else "values with fractions"
            raise DataError(f"{name}: kind 8bit needs whole numbers 0..255, found {found}; "
                            "use kind continuous (or binary for values in [0, 1])")
    return kind


def convert(name: str, data: torch.Tensor, kind: str, pixels: bool, device: torch.device) -> torch.Tensor:
    """``data`` as it is stored on ``device``: uint8 for ``8bit``, float32 otherwise (pixels divided by 255).

    Raises:
        DataError: a value beyond float32's range.
    """
    if kind == "8bit":
        return data.to(torch.uint8).to(device)
    if pixels:
        return data.to(device).float().div_(PIXEL_MAX)  # exactly as vae.data.load_split scales MNIST
    values = data.to(torch.float32)
    if data.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise DataError(f"{name}: values beyond float32's range (largest magnitude {float(data.abs().max()):g}); "
                        "rescale the data")
    return values.to(device)
