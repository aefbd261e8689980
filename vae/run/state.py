"""Where a run stands, as a checkpoint: what ``last.pt`` holds and how a resume reads it.

``last.pt`` is the source of truth of a run. Besides the weights it holds the
optimizer, the RNG states (under torchrun every rank's, and the number of
processes), every epoch's metrics and, after a graceful stop in
the middle of an epoch, ``partial``: the epoch in progress, how many of its
batches are done, the data generator's state at the epoch's start (to redraw
the same permutation) and the running sums of its losses. A resume therefore
ends exactly where an uninterrupted run would (same device, same seed).

The run folder (:class:`vae.run.folder.RunFolder`) reads it, decides whether a
resume may go on, and writes the other files after it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from vae.config import TrainConfig
from vae.errors import first_line
from vae.run.checkpoint import CheckpointError, load_weights

__all__ = ["EpochResult", "PartialEpoch", "RunProgress", "rng_state", "set_rng_state", "checkpoint_state",
           "restore_run"]

RESUME_KEYS = ("optimizer", "step", "rng", "best_test_neg_elbo")


class EpochResult(NamedTuple):
    """What :func:`train_epoch` did.

    Attributes:
        sums: totals over the images seen of loss, -ELBO, reconstruction, KL ``(4,)`` float64;
        batch: batches done (``n_batches`` unless stopped early); n_batches: batches in the epoch;
        seconds: training wall time of the epoch so far; data_rng: the data generator's
        state at the start of the epoch (it redraws the epoch's permutation); lr, kl_weight:
        the learning rate and KL weight of the last step.
    """

    sums: torch.Tensor
    batch: int
    n_batches: int
    seconds: float
    data_rng: torch.Tensor
    lr: float = math.nan
    kl_weight: float = 1.0

    def partial(self, epoch: int) -> "PartialEpoch":
        """The interrupted epoch ``epoch``, to store in a checkpoint."""
        return PartialEpoch(epoch, self.batch, self.data_rng, self.sums.cpu(), self.seconds)


@dataclass
class PartialEpoch:
    """An epoch stopped by a signal after ``batch`` of its batches.

    Attributes:
        epoch: its number; batch: batches done; data_rng: the data generator's state at
        the epoch's start (it redraws the epoch's permutation); sums: running totals of
        loss, -ELBO, reconstruction, KL ``(4,)`` float64; seconds: its training time so far.
    """

    epoch: int
    batch: int
    data_rng: torch.Tensor
    sums: torch.Tensor
    seconds: float

    def as_state(self) -> dict[str, Any]:
        """As a checkpoint stores it: a plain dict (``torch.load(weights_only=True)`` reads no classes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: Optional[dict[str, Any]]) -> Optional["PartialEpoch"]:
        """Read :meth:`as_state`'s dict back; None stays None (a checkpoint at an epoch boundary)."""
        return None if state is None else cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


@dataclass
class RunProgress:
    """How far a run got.

    Attributes:
        epoch: completed epochs; step: optimizer steps done (partial epoch included);
        metrics: one row per completed epoch; best: lowest test -ELBO so far;
        partial: the interrupted epoch, or None at an epoch boundary.
    """

    epoch: int = 0
    step: int = 0
    metrics: list = field(default_factory=list)
    best: float = math.inf
    partial: Optional[PartialEpoch] = None

    def complete(self, row: dict) -> bool:
        """Record the metrics row of a finished epoch; return whether its test -ELBO is the best yet.

        An epoch without a test bound (``--eval-every``) holds NaN there, and is never the best.
        """
        self.metrics.append(row)
        self.epoch, self.partial = row["epoch"], None
        improved = row["test_neg_elbo"] < self.best  # False for NaN
        if improved:
            self.best = row["test_neg_elbo"]
        return improved


def rng_state(device: torch.device, data_gen: torch.Generator, noise_gen: Optional[torch.Generator] = None) -> dict:
    """The global RNG states and the data generator's (and a rank's binarization generator), as CPU tensors."""
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if noise_gen is not None and noise_gen is not data_gen:
        state["noise"] = noise_gen.get_state()
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device, data_gen: torch.Generator,
                  noise_gen: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if "noise" in state and noise_gen is not None:
        noise_gen.set_state(state["noise"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def checkpoint_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
    progress: RunProgress, device: torch.device, data_gen: torch.Generator, rank_rng: Optional[list] = None,
) -> dict[str, Any]:
    """The dict :func:`vae.run.checkpoint.save_checkpoint` writes: plain data and tensors only.

    ``rank_rng``: every rank's :func:`rng_state` under torchrun (stored as ``rank_rng``, rank 0's also as ``rng``).
    """
    rngs = rank_rng or [rng_state(device, data_gen)]
    optimizer_state = optimizer.state_dict()
    for group in optimizer_state["param_groups"]:  # a compiled step's tensor learning rate, saved as a float
        group["lr"] = float(group["lr"])
    state = {"model": model.state_dict(), "optimizer": optimizer_state,
             "config": dataclasses.asdict(config), "epoch": progress.epoch, "step": progress.step,
             "rng": rngs[0], "world_size": len(rngs), "metrics": progress.metrics,
             "best_test_neg_elbo": progress.best,
             "partial": progress.partial.as_state() if progress.partial else None}
    if len(rngs) > 1:
        state["rank_rng"] = rngs
    return state


def restore_run(
    state: dict[str, Any], path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    device: torch.device, data_gen: torch.Generator, noise_gen: Optional[torch.Generator] = None, rank: int = 0,
) -> RunProgress:
    """Load a checkpoint read on the CPU into the model, optimizer and generators (rank ``rank``'s, under torchrun).

    Raises:
        vae.run.checkpoint.CheckpointError: the checkpoint lacks the training state or does not fit.
    """
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)}")
    load_weights(model, state["model"], path)
    # how to step (fused, multi-tensor, capturable) is this run's choice, which --compile may have changed
    implementation = {name: optimizer.defaults[name] for name in ("fused", "foreach", "capturable")
                      if name in optimizer.defaults}
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group.update(implementation)
        rng = state["rank_rng"][rank] if "rank_rng" in state else state["rng"]
        set_rng_state(rng, device, data_gen, noise_gen)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot resume from its training state ({first_line(err)})") from None
    return RunProgress(state["epoch"], state["step"], list(state["metrics"]),
                       state["best_test_neg_elbo"], PartialEpoch.from_state(state.get("partial")))
