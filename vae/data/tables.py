"""CSV tables of numbers: header detection, sizing, parsing, and the first bad cell named.

A ``.csv`` is comma-separated, UTF-8 (a byte-order mark is allowed), with
one row of numbers per line; empty lines are skipped. Its first row is a
header when any of its cells is not a number (so a header of numbers only
reads as data). numpy's parser reads the table; when it refuses, or a value
is NaN or Inf, a second, slow pass finds the first bad cell and names its
line and its column (by header name and number).
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from vae.data.dataset import DataError, Raw, Request
from vae.data.memory import check_fits, planned_bytes, value_bytes
from vae.errors import first_line

__all__ = ["CSV_ENCODING", "read_csv"]

CSV_ENCODING = "utf-8-sig"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _rows(path: Path) -> Iterator[tuple[int, list]]:
    """``(line number, cells)`` of each non-empty row, numbered from 1."""
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        reader = csv.reader(f)
        for cells in reader:
            if cells:
                yield reader.line_num, cells


def _first_row(path: Path, name: str) -> tuple[int, list]:
    """The line number and cells of the first non-empty row; :class:`DataError` if there is none."""
    try:
        for line, cells in _rows(path):
            return line, cells
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{name}: not a text table ({first_line(err)})") from None
    raise DataError(f"{name}: no rows (an empty file)")


def _count_rows(path: Path) -> int:
    """The file's non-empty lines (a fast first pass; a quoted field over several lines counts more)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip(b"\r\n"))


def _column(j: int, header: Optional[list]) -> str:
    return f"column {j + 1} ('{header[j].strip()}')" if header else f"column {j + 1}"


def _first_problem(path: Path, name: str, header: Optional[list], columns: int) -> Optional[DataError]:
    """The error naming the first cell that is not a finite number, or the first row of the wrong length."""
    try:
        return _scan(path, name, header, columns)
    except (UnicodeDecodeError, csv.Error) as err:
        return DataError(f"{name}: not a text table ({first_line(err)})")


def _scan(path: Path, name: str, header: Optional[list], columns: int) -> Optional[DataError]:
    rows = _rows(path)
    if header is not None:
        next(rows)
    for line, cells in rows:
        if len(cells) != columns:
            return DataError(f"{name}: line {line} has {len(cells)} column{'s' if len(cells) != 1 else ''} "
                             f"where the first row has {columns}")
        for j, cell in enumerate(cells):
            if not _is_number(cell):
                return DataError(f"{name}: {_column(j, header)} is not numeric: line {line} holds {cell.strip()!r}; "
                                 "a table must hold numbers only")
            if not math.isfinite(float(cell)):
                return DataError(f"{name}: NaN or Inf in {_column(j, header)} at line {line}; "
                                 "remove or replace those values")
    return None


def read_csv(path: Path, name: str, request: Request) -> Raw:
    """A CSV table of numeric columns, as float64 rows ``(N, F)``; its test split is held out.

    Args:
        path: the file; name: how messages name it.
        request: the caller's kind, test fraction, limit and device.

    Raises:
        DataError: no rows, a non-numeric cell (its column and line named), a row of another length,
            NaN or Inf, or data too large for the device.
    """
    first_line_number, first = _first_row(path, name)
    header = None if all(_is_number(cell) for cell in first) else first
    rows = _count_rows(path) - (header is not None)
    if rows < 1:
        raise DataError(f"{name}: a header and no rows (an empty table)")
    check_fits(name, request, *planned_bytes(request, rows, None, len(first), value_bytes(request.kind, False)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": refused below
            table = np.loadtxt(path, delimiter=",", skiprows=first_line_number if header else 0, ndmin=2,
                               dtype=np.float64, comments=None, quotechar='"', encoding=CSV_ENCODING)
    except MemoryError:
        raise DataError(f"{name}: too large to read into memory; use a smaller file") from None
    except ValueError as err:
        problem = _first_problem(path, name, header, len(first))
        raise (problem or DataError(f"{name}: not a table of numbers ({first_line(err)})")) from None
    if not np.isfinite(table).all():
        raise _first_problem(path, name, header, len(first)) or DataError(f"{name}: NaN or Inf in the table")
    return Raw(name=name, train=table, test=None)
