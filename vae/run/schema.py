"""What a checkpoint may hold: its stored state checked once, where it is read, field by field.

:func:`validate_state` runs inside :func:`vae.run.checkpoint.load_checkpoint`, so every reader
(``--resume``, ``vae.evaluate``, ``vae.visualize``, ``vae.gaps``, ``init_from``) gets the same
answer: a :class:`~vae.run.checkpoint.CheckpointError` of one line naming the file and the
field (``runs/r/last.pt: field 'epoch' must be a non-negative integer, got 'x'``). The weights'
shapes are checked against the stored config on the ``meta`` device, before any model is
built, so a config that names a huge model cannot make a reader allocate it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from vae.config import config_from_dict
from vae.errors import first_line

__all__ = ["FORMAT", "REQUIRED_KEYS", "METRIC_KEYS", "StateError", "validate_state", "expected_shapes"]

FORMAT = "fullcov-vae/1"
REQUIRED_KEYS = ("format", "model", "config", "epoch", "metrics")
METRIC_KEYS = ("epoch", "train_neg_elbo", "test_neg_elbo", "test_recon", "test_kl")
"""The columns of a metrics row that resume, the folder repair and the curves read."""
TEST_KEYS = ("test_neg_elbo", "test_recon", "test_kl")
"""The test columns: all NaN in the row of an epoch that ``--eval-every`` did not test, else all finite."""
PARTIAL_KEYS = ("epoch", "batch", "data_rng", "sums", "seconds")


class StateError(ValueError):
    """One field of a stored state is wrong; ``str()`` names it (the caller adds the file)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}' {message}")  # quotes, not backticks: a CLI would show a flag


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(field: str, value: Any, low: int = 0) -> None:
    if not _int(value) or value < low:
        kind = "a non-negative integer" if low == 0 else f"an integer of at least {low}"
        raise StateError(field, f"must be {kind}, got {value!r}")


def _check_metrics(metrics: Any, epoch: int) -> None:
    if not isinstance(metrics, list):
        raise StateError("metrics", f"must be a list of rows, got {type(metrics).__name__}")
    if len(metrics) != epoch:
        raise StateError("metrics", f"holds {len(metrics)} rows for {epoch} completed epochs")
    for i, row in enumerate(metrics):
        if not isinstance(row, dict):
            raise StateError(f"metrics[{i}]", f"must be a row (a dict), got {type(row).__name__}")
        untested = all(_number(row.get(key)) and math.isnan(row[key]) for key in TEST_KEYS)
        for key in METRIC_KEYS:
            if untested and key in TEST_KEYS:
                continue
            if not _number(row.get(key)) or not math.isfinite(row[key]):
                raise StateError(f"metrics[{i}].{key}", f"must be a finite number, got {row.get(key)!r}")
        if row["epoch"] != i + 1:
            raise StateError(f"metrics[{i}].epoch", f"must be {i + 1}, got {row['epoch']!r}")


def _check_partial(partial: Any, epoch: int) -> None:
    if partial is None:
        return
    if not isinstance(partial, dict) or any(key not in partial for key in PARTIAL_KEYS):
        raise StateError("partial", f"must be None or a dict with {', '.join(PARTIAL_KEYS)}, got {partial!r:.80}")
    if partial["epoch"] != epoch + 1 or not _int(partial["epoch"]):
        raise StateError("partial.epoch", f"must be {epoch + 1} (the epoch after the completed ones), "
                                          f"got {partial['epoch']!r}")
    _check_int("partial.batch", partial["batch"], 1)
    if not (isinstance(partial["data_rng"], torch.Tensor) and partial["data_rng"].dtype == torch.uint8):
        raise StateError("partial.data_rng", "must be a generator state (a uint8 tensor)")
    sums = partial["sums"]
    if not (isinstance(sums, torch.Tensor) and sums.shape == (4,) and sums.is_floating_point()
            and bool(sums.isfinite().all())):
        raise StateError("partial.sums", "must be 4 finite running sums")
    if not _number(partial["seconds"]) or not partial["seconds"] >= 0:
        raise StateError("partial.seconds", f"must be a non-negative number, got {partial['seconds']!r}")


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the VAE that ``config`` describes, built on the ``meta`` device (nothing allocated)."""
    from vae.run.checkpoint import build_model  # the one place that maps a config to a model

    with torch.device("meta"):
        model = build_model(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _check_model(weights: Any, config) -> None:
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise StateError("model", "must map parameter names to tensors")
    try:
        expected = expected_shapes(config)
    except (RuntimeError, ValueError, OverflowError, MemoryError) as err:  # sizes past what a tensor can be
        raise StateError("config", f"describes a model no machine can build ({first_line(err):.80})") from None
    unfit = "(the weights do not fit the stored architecture)"
    for name, shape in expected.items():
        if name not in weights:
            raise StateError("model", f"lacks {name}, which the stored config's model has {unfit}")
        if tuple(weights[name].shape) != shape:
            raise StateError(f"model.{name}", f"has shape {tuple(weights[name].shape)}, the stored config's model "
                                              f"{shape} {unfit}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise StateError("model", f"holds {extra[0]}, which the stored config's model lacks {unfit}")
    for name, tensor in weights.items():
        if not tensor.is_floating_point() or not bool(tensor.isfinite().all()):
            raise StateError(f"model.{name}", "must hold finite floating-point weights (NaN or Inf found)")


def validate_state(state: Any, path: str | Path) -> None:
    """Check a loaded checkpoint against the schema; raise ``CheckpointError`` naming ``path`` and the field.

    Checked: the required keys and the format; the config (every value, as a flag would be); the
    weights' names, shapes (against the config, before any model is built) and finiteness; ``epoch``,
    ``step``, ``world_size``, ``best_test_neg_elbo``; ``metrics`` (one row per completed epoch, with
    finite numbers); ``partial`` (the interrupted epoch after the completed ones).
    """
    from vae.run.checkpoint import CheckpointError

    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: a torch file, but not a fullcov-vae checkpoint")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r:.60}, expected {FORMAT!r}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: field 'config' must be a dict, got {type(state['config']).__name__}")
    try:  # a run name stored before names were checked may be a path; it says nothing about the weights
        config = dataclasses.replace(config_from_dict(state["config"]), run_name=None)
        config.validate()
    except (AttributeError, TypeError, ValueError) as err:  # impossible values
        raise CheckpointError(f"{path}: its stored config is invalid ({first_line(err)})") from None
    try:
        _check_int("epoch", state["epoch"])
        for key in ("step",):
            if key in state:
                _check_int(key, state[key])
        if "world_size" in state:
            _check_int("world_size", state["world_size"], 1)
        if "best_test_neg_elbo" in state:
            best = state["best_test_neg_elbo"]
            if not _number(best) or math.isnan(best):
                raise StateError("best_test_neg_elbo", f"must be a number, got {best!r}")
        _check_metrics(state["metrics"], state["epoch"])
        _check_partial(state.get("partial"), state["epoch"])
        _check_model(state["model"], config)
    except StateError as err:
        raise CheckpointError(f"{path}: {err}") from None
