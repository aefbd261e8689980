"""A run folder's life on disk, owned by one object: open, resume, save.

``<out_dir>/<run_name>/`` holds ``last.pt`` (the run's source of truth, see
:mod:`vae.run.state`), ``config.json`` (the config ``last.pt`` holds),
``best.pt`` (the epoch with the lowest test bound), ``metrics.csv`` and the
pictures. :class:`RunFolder` is the one place that

- opens the folder: checks it, locks it (:mod:`vae.run.lock`), removes the
  temporaries a killed writer left (:mod:`vae.run.files`);
- reads ``last.pt`` once, and turns it and the flags given now into the
  resumed run's config, checking every fact a resume depends on;
- restores the run from it, and repairs the files a kill left behind;
- saves an epoch: ``last.pt``, ``config.json``, ``best.pt`` (if the test bound
  improved), ``metrics.csv``, in this order. A kill between two writes leaves
  the later files one epoch behind, which the next resume repairs.

Under torchrun every rank holds a ``RunFolder`` (each restores its own random
streams from ``last.pt``); only rank 0 locks, reads and writes.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from vae.config import TrainConfig, config_from_dict
from vae.devices import resolve_device
from vae.errors import ArgumentError
from vae.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae.run.files import remove_stale_temporaries, write_text_atomic
from vae.run.lock import lock_run_folder
from vae.run.state import RunProgress, restore_run

__all__ = ["METRIC_COLUMNS", "RESUMABLE_OVERRIDES", "RunFolder", "write_metrics"]

METRIC_COLUMNS = (
    "epoch", "step", "train_loss", "train_neg_elbo", "train_recon", "train_kl",
    "test_neg_elbo", "test_recon", "test_kl", "images_per_s", "train_seconds", "lr", "kl_weight",
)
RESUMABLE_OVERRIDES = ("epochs", "data_dir", "out_dir", "run_name", "resume", "eval_batch_size", "eval_every", "amp",
                       "compile", "plots", "progress", "grad_clip", "device", "dist_timeout", "threads")
"""The flags a resume may change: none changes the model, the data stream or the steps already taken."""
UNRESOLVED = {"data_kind": "auto", "likelihood": "auto", "data_shape": None, "data_rows": None}
"""The values a run resolves when it starts (from its data); given so, they leave the stored choice as it is."""


class RunFolder:
    """The folder of the run ``config`` describes, from opening it to its last saved epoch.

    Args:
        config: the run (already validated where it entered); is_main: whether this process
            writes the folder (rank 0 under torchrun).

    Attributes:
        path: ``<out_dir>/<run_name>``; last: its ``last.pt``; state: ``last.pt`` as read for a
            resume (read once, by :meth:`resume_config`), else None.
    """

    def __init__(self, config: TrainConfig, is_main: bool = True):
        self.config, self.is_main = config, is_main
        self.path = config.check_run_dir()
        self.last = self.path / "last.pt"
        self.state: Optional[dict[str, Any]] = None

    # ---------------------------------------------------------------- opening

    def resume_config(self, explicit: Optional[Iterable[str]] = None, world_size: int = 1,
                      device: Optional[torch.device] = None) -> TrainConfig:
        """Lock the folder, read ``last.pt`` once, and return the config the resumed run trains with.

        That is the stored config with the flags given now applied; only :data:`RESUMABLE_OVERRIDES` may
        differ from the stored run. ``epochs`` may extend a run at a constant learning rate (a schedule
        is scaled to the run's epochs), never shorten it; ``device`` may name the kind it was trained on
        (``cpu`` for a run stored as ``auto``), no other. The data folder: ``data_dir`` if given now,
        else ``$VAE_DATA_DIR``, else the stored one.

        Args:
            explicit: the names of the fields given now (the flags on a command line); None: every field
                of ``config`` (a library call). world_size: the processes that would continue it, checked
                first (a new count explains any flag it would make wrong). device: where it would continue
                (default: the resumed config's device, resolved).

        Raises:
            ArgumentError: no run to resume, or a value that contradicts the stored run.
            vae.run.checkpoint.CheckpointError: ``last.pt`` is not a loadable checkpoint.
        """
        if self.path.is_dir():
            lock_run_folder(self.path)  # before reading: no other writer moves last.pt on meanwhile
        if not self.last.is_file():
            raise ArgumentError("resume", f": no {self.last} to resume from")
        state = self.state = load_checkpoint(self.last)  # on the CPU: the RNG states must stay there
        stored = config_from_dict(state["config"])
        trained_by = state.get("world_size", 1)
        if world_size != trained_by:
            raise ArgumentError("resume", f": {self.last} was trained by {_processes(trained_by)}; continued by "
                                          f"{_processes(world_size)}, each one's data slices and random streams "
                                          f"would differ from an uninterrupted run (resume it with "
                                          f"{_launch(trained_by)}, or start a new run with `init_from`)")
        given = {f.name for f in dataclasses.fields(TrainConfig)} if explicit is None else set(explicit)
        for name in sorted(given - set(RESUMABLE_OVERRIDES)):
            if getattr(self.config, name) == UNRESOLVED.get(name, ...):  # auto: the run's choice stands
                continue
            if name == "dataset" and self.config.data_path and self.config.data_path == stored.data_path:
                continue  # the same file, named relative to another folder
            if getattr(self.config, name) != getattr(stored, name):
                raise ArgumentError("resume", f": {self.last} was trained with `{name}` {getattr(stored, name)!r}; "
                                              "drop that value or start a new run")
        config = dataclasses.replace(stored, **{name: getattr(self.config, name) for name in given
                                                if name in RESUMABLE_OVERRIDES})
        if "data_dir" not in given and os.environ.get("VAE_DATA_DIR"):  # the environment before the stored path
            config = dataclasses.replace(config, data_dir=None)
        self._check_continuation(config, stored, device or resolve_device(config.device))
        self.config = config
        return config

    def _check_continuation(self, config: TrainConfig, stored: TrainConfig, device: torch.device) -> None:
        """Refuse ``epochs`` that would cut the run short or rescale its schedule, and another kind of device."""
        state = self.state
        if config.epochs != stored.epochs and stored.lr_schedule != "constant":
            raise ArgumentError(
                "resume", f": {self.last} runs the {stored.lr_schedule} learning-rate schedule, scaled to its "
                f"{stored.epochs} epochs; `epochs` {config.epochs} would change the rate of the steps already taken")
        partial = state.get("partial")
        needed = partial["epoch"] if partial else state["epoch"]
        if config.epochs < needed:
            held = f"{state['epoch']} epoch{'s' * (state['epoch'] != 1)}" + (
                f" and part of epoch {partial['epoch']}" if partial else "")
            raise ArgumentError("resume", f": {self.last} already has {held}; `epochs` {config.epochs} would not "
                                          f"match it (pass `epochs` {needed} or more, or leave it out)")
        rng = state.get("rng") if isinstance(state.get("rng"), dict) else {}
        trained_on = next((kind for kind in ("cuda", "mps") if kind in rng), "cpu")  # rng_state saves that device's
        if device.type != trained_on:
            raise ArgumentError("resume", f": {self.last} was trained on {trained_on}; continued on {device.type}, "
                                          "its results would differ from an uninterrupted run (pass `device` "
                                          f"{trained_on}, or start a new run with `init_from`)")

    def open(self) -> None:
        """Create and lock the folder (rank 0), make sure a new run overwrites none, clear stale temporaries."""
        if not self.is_main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ArgumentError("out_dir", f"{self.config.out_dir}: cannot create the run folder {self.path} "
                                           f"({err.strerror})") from None
        lock_run_folder(self.path)  # one writer per run folder, until train() returns (vae.run.lock)
        if not self.config.resume and self.last.is_file():
            raise ArgumentError("run_name", f": {self.path} already holds a run; pass `resume` to continue it or "
                                            "choose another `run_name`")
        remove_stale_temporaries(self.path)  # left by a killed writer; the files they were to replace are intact
        if not self.config.resume:
            self._write_config(dataclasses.asdict(self.config))

    # ---------------------------------------------------------------- resuming

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                data_gen: torch.Generator, noise_gen: torch.Generator, rank: int, n_batches: int) -> RunProgress:
        """Restore :attr:`state` into the run (rank ``rank``'s random streams), and repair the folder (rank 0).

        ``n_batches``: batches in one epoch of this run, which an interrupted epoch's position must be below.

        Raises:
            vae.run.checkpoint.CheckpointError: the checkpoint lacks the training state or does not fit.
        """
        partial = self.state.get("partial")
        if partial and partial["batch"] >= n_batches:
            raise CheckpointError(f"{self.last}: field 'partial.batch' is {partial['batch']}, but an epoch of this "
                                  f"run has {n_batches} batches")
        progress = restore_run(self.state, self.last, model, optimizer, device, data_gen, noise_gen, rank)
        if self.is_main:
            self._repair(progress)
        return progress

    def _repair(self, progress: RunProgress) -> None:
        """Bring ``config.json``, ``metrics.csv`` and ``best.pt`` in line with ``last.pt`` after a kill.

        ``config.json`` and ``metrics.csv`` are rewritten from the checkpoint; ``best.pt`` is rewritten
        when the last completed epoch is the best one and a kill stopped its copy (only an
        epoch-boundary ``last.pt`` can stand in for it).
        """
        self._write_config(self.state["config"])
        write_metrics(self.path / "metrics.csv", progress.metrics)
        if not progress.metrics or progress.partial is not None:
            return
        tested = [row for row in progress.metrics if not math.isnan(row["test_neg_elbo"])]  # see --eval-every
        if not tested:
            return
        best_row = min(tested, key=lambda row: row["test_neg_elbo"])
        best = self.path / "best.pt"
        if best_row["epoch"] == progress.epoch and _epoch_of(best) != progress.epoch:
            save_checkpoint({k: v for k, v in self.state.items() if k != "format"}, best)

    # ---------------------------------------------------------------- saving

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write the checkpoint ``name`` (rank 0); with ``last.pt``, ``config.json`` too, from the same config."""
        if not self.is_main:
            return
        save_checkpoint(state, self.path / name)
        if name == "last.pt":
            self._write_config(state["config"])

    def save_epoch(self, state: dict[str, Any], improved: bool, metrics: list[dict]) -> None:
        """The end of an epoch on disk (rank 0): ``last.pt``, ``best.pt`` if ``improved``, ``metrics.csv``.

        In this order, which :meth:`_repair` relies on after a kill.
        """
        self.save("last.pt", state)
        if improved:
            self.save("best.pt", state)
        if self.is_main:
            write_metrics(self.path / "metrics.csv", metrics)

    def _write_config(self, config: dict[str, Any]) -> None:
        """``config.json``: the config as a checkpoint stores it (``dataclasses.asdict``)."""
        write_text_atomic(self.path / "config.json", json.dumps(config, indent=2) + "\n")


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


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _launch(n: int) -> str:
    return "no torchrun" if n == 1 else f"torchrun and {n} processes in all"
