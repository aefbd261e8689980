"""The held-out test split: which rows of a source without one become its test split.

The choice depends on the number of rows, ``test_fraction`` and
:data:`SPLIT_SEED` only, never on the run's seed, the torch or numpy version
or the device, so a resumed or evaluated run rebuilds the very same split from
what ``Dataset.split`` records. Each row's place is a hash of its index
(SplitMix64's finalizer, in wrapping unsigned 64-bit arithmetic); sorting by
it is the permutation, whose last ``round(test_fraction * N)`` rows (at least
1) are the test split.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from vae.data.dataset import DataError
from vae.errors import ArgumentError

__all__ = ["SPLIT_SEED", "check_test_fraction", "held_out_count", "held_out", "held_out_record"]

SPLIT_SEED = 0x5EED5
"""The seed of every held-out split (not the run's seed: a split must not change with it)."""


def check_test_fraction(test_fraction: object) -> None:
    """Raise :class:`~vae.errors.ArgumentError` unless ``test_fraction`` is a number strictly between 0 and 1."""
    ok = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)
    if not ok or not math.isfinite(test_fraction) or not 0 < test_fraction < 1:
        raise ArgumentError("test_fraction", f"must be a number between 0 and 1 (exclusive), got {test_fraction!r}")


def held_out_count(n: int, test_fraction: float) -> int:
    """How many of ``n`` rows are held out: ``round(test_fraction * n)``, at least 1."""
    return max(1, round(test_fraction * n))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, element-wise on a uint64 array (arrays wrap silently)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def held_out(n: int, test_fraction: float, name: str = "the data") -> tuple[torch.Tensor, torch.Tensor]:
    """The one definition of a held-out split: the training rows and the test rows of ``n`` rows.

    Args:
        n: the number of rows.
        test_fraction: the share held out, in (0, 1).
        name: how an error names the data (its file).

    Returns:
        ``(train_idx, test_idx)``: int64 row indices, each ascending (the rows keep their order);
        together every row once.

    Raises:
        ArgumentError: ``test_fraction`` is not in (0, 1).
        DataError: too few rows to leave one on each side.
    """
    check_test_fraction(test_fraction)
    n_test = held_out_count(n, test_fraction)
    if n - n_test < 1:
        raise DataError(f"{name}: {n} row{'s' if n != 1 else ''} cannot be split with test_fraction {test_fraction}: "
                        "the training split would be empty; give more rows or a smaller `test_fraction`")
    seed = _mix(np.array([SPLIT_SEED], dtype=np.uint64))
    order = np.argsort(_mix(np.arange(n, dtype=np.uint64) ^ seed), kind="stable")  # (n,) the permutation
    train_idx, test_idx = np.sort(order[: n - n_test]), np.sort(order[n - n_test:])
    return torch.from_numpy(train_idx).long(), torch.from_numpy(test_idx).long()


def held_out_record(n: int, test_fraction: float) -> dict:
    """What ``Dataset.split`` records of a held-out split, enough to rebuild it."""
    return {"how": "held-out", "test_fraction": float(test_fraction), "seed": SPLIT_SEED, "rows": int(n)}
