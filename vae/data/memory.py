"""Whether a dataset fits on its device, asked before its values are read.

Each split sits on the device as one tensor, so a source estimates the two
tensors' sizes from what is cheap to read (an array's header, a file's size,
one image) and :func:`check_fits` refuses a dataset over :func:`memory_limit`
(half the device's memory) in one line, before reading it.
"""
from __future__ import annotations

from typing import Optional

import torch

from vae.data.dataset import DataError, Request
from vae.data.split import held_out_count
from vae.devices import device_memory

__all__ = ["MEMORY_LIMIT", "memory_limit", "format_bytes", "value_bytes", "planned_bytes", "check_fits"]

MEMORY_LIMIT: Optional[int] = None
"""Bytes a dataset may take on its device; None: half the device's memory. A test sets a tiny one."""


def memory_limit(device: torch.device) -> Optional[int]:
    """The bytes a dataset may take on ``device``: :data:`MEMORY_LIMIT`, else half its memory; None if unknown."""
    if MEMORY_LIMIT is not None:
        return MEMORY_LIMIT
    total = device_memory(device)
    return None if total is None else total // 2


def format_bytes(n: int) -> str:
    """``512`` -> ``512 bytes``, ``3_500_000`` -> ``3.3 MiB``."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def value_bytes(kind: str, integer: bool) -> int:
    """Bytes one value takes on the device: 1 for 8-bit data (uint8), 4 for floats (float32).

    Under ``kind="auto"`` the least it may take: integers may turn out 8-bit.
    """
    if kind == "8bit" or (kind == "auto" and integer):
        return 1
    return 4


def planned_bytes(request: Request, rows: int, test_rows: Optional[int], row_values: int,
                  bytes_per_value: int) -> tuple[int, int]:
    """The bytes each split will take on the device: ``(train, test)``.

    Args:
        request: the caller's ``test_fraction`` and ``limit``.
        rows: the training rows, or every row when ``test_rows`` is None.
        test_rows: the test split's rows when the source gives one; None: held out of ``rows``.
        row_values: the values in one row (``C * H * W``, or ``F``).
        bytes_per_value: :func:`value_bytes`.
    """
    if test_rows is None:
        test_rows = min(rows, held_out_count(rows, request.test_fraction))
        rows -= test_rows
    if request.limit is not None:
        rows = min(rows, request.limit)
    return rows * row_values * bytes_per_value, test_rows * row_values * bytes_per_value


def check_fits(name: str, request: Request, train_bytes: int, test_bytes: int) -> None:
    """Raise :class:`DataError` if splits of these sizes would not fit on ``request.device``.

    Args:
        name: how the message names the data (its file).
        request: the device, through ``request.device``.
        train_bytes, test_bytes: each split's size on the device (:func:`planned_bytes`).
    """
    limit = memory_limit(request.device)
    total = train_bytes + test_bytes
    if limit is None or total <= limit:
        return
    where = "the limit" if MEMORY_LIMIT is not None else f"half of the {request.device.type} memory"
    raise DataError(
        f"{name}: too large for {request.device.type}: its splits would take {format_bytes(total)} "
        f"({format_bytes(train_bytes)} train + {format_bytes(test_bytes)} test), over {format_bytes(limit)} "
        f"({where}); keep fewer training rows with `limit`, or use a smaller file"
    )
