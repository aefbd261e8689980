"""The run folder's files beside ``last.pt``: ``config.json``, ``metrics.csv``, and ``best.pt`` after a crash.

Each saved epoch (every ``eval_every``-th) writes ``last.pt``, then ``config.json`` (the config ``last.pt``
holds), then ``best.pt`` (if the test bound improved), then ``metrics.csv``;
a kill between two writes leaves the later files one epoch behind, and
:func:`repair_run_folder` rewrites them from ``last.pt`` (:mod:`vae.run.state`).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional

from vae.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae.run.files import write_text_atomic
from vae.run.state import RunProgress

__all__ = ["METRIC_COLUMNS", "write_config", "write_metrics", "repair_run_folder"]

METRIC_COLUMNS = (
    "epoch", "step", "train_loss", "train_neg_elbo", "train_recon", "train_kl",
    "test_neg_elbo", "test_recon", "test_kl", "images_per_s", "train_seconds", "lr", "kl_weight",
)
def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically: ``config`` as a checkpoint stores it (``dataclasses.asdict``)."""
    write_text_atomic(run_dir / "config.json", json.dumps(config, indent=2) + "\n")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Write ``metrics.csv`` (one row per completed epoch) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row.get(k, "") for k in METRIC_COLUMNS} for row in rows)  # older runs lack columns
    write_text_atomic(path, buf.getvalue())


def _epoch_of(path: Path) -> Optional[int]:
    try:
        return load_checkpoint(path)["epoch"]
    except CheckpointError:
        return None


def repair_run_folder(run_dir: Path, state: dict[str, Any], progress: RunProgress) -> None:
    """Bring ``config.json``, ``metrics.csv`` and ``best.pt`` in line with ``last.pt`` after a crash.

    ``config.json`` and ``metrics.csv`` are rewritten from the checkpoint's
    config and rows; ``best.pt`` is rewritten when the last completed epoch is
    the best one and a kill stopped its copy (only an epoch-boundary
    ``last.pt`` can stand in for it).
    """
    write_config(run_dir, state["config"])
    write_metrics(run_dir / "metrics.csv", progress.metrics)
    if not progress.metrics or progress.partial is not None:
        return
    tested = [row for row in progress.metrics if not math.isnan(row["test_neg_elbo"])]  # see --eval-every
    if not tested:
        return
    best_row = min(tested, key=lambda row: row["test_neg_elbo"])
    best_path = run_dir / "best.pt"
    if best_row["epoch"] == progress.epoch and _epoch_of(best_path) != progress.epoch:
        save_checkpoint({k: v for k, v in state.items() if k != "format"}, best_path)
