"""Where a run stands, as a checkpoint: what ``last.pt`` holds and how a resume reads it.

``last.pt`` is the source of truth of a run. Besides the weights it holds the
optimizer, the RNG states (under torchrun every rank's, and the number of
processes), every epoch's metrics and, after a graceful stop in
the middle of an epoch, ``partial``: the epoch in progress, how many of its
batches are done, the data generator's state at the epoch's start (to redraw
the same permutation) and the running sums of its losses. A resume therefore
ends exactly where an uninterrupted run would (same device, same seed).

The other files of the run folder follow ``last.pt`` (:mod:`vae.run.folder`).
A resume may
extend a run (``--epochs``), never shorten it, and may change the device
only where the results stay the same (:func:`check_resume`); the number of
processes may not change (each rank's data slices and random streams would).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from vae.run.checkpoint import CheckpointError, load_checkpoint, load_weights
from vae.errors import ArgumentError
from vae.config import TrainConfig, config_from_dict

__all__ = [
    "RESUMABLE_OVERRIDES", "EpochResult", "PartialEpoch", "RunProgress", "resume_config", "rng_state",
    "set_rng_state", "checkpoint_state", "restore_run", "checked_last", "check_resume",
]

RESUMABLE_OVERRIDES = ("epochs", "data_dir", "out_dir", "run_name", "resume", "eval_batch_size", "eval_every", "amp",
                       "compile", "plots", "progress", "grad_clip", "device", "dist_timeout", "threads")
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


def resume_config(config: TrainConfig, explicit: set[str],
                  world_size: Optional[int] = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The stored config of the run to resume, with the flags given now applied, and ``last.pt`` itself.

    ``last.pt`` is read once, here; pass it on as ``train(config, resume_state=state)``. Read it
    under the run folder's lock (:func:`vae.run.lock.lock_run_folder`) so that no other writer moves it on.

    Only flags that leave the model and the data stream unchanged may differ
    from the stored run: ``epochs`` among them, to extend a run at a constant
    learning rate (a schedule is scaled to the run's epochs), and ``device``,
    to name the device it was trained on (``--device cpu`` for a run stored as
    ``auto``; another device is refused, see :func:`check_resume`). ``world_size`` (the processes
    that would continue it) is checked first: a new count explains any flag it would make wrong.
    The data folder: ``data_dir`` if given now, else ``$VAE_DATA_DIR`` (dropping the stored one).

    Raises:
        ValueError: no run to resume, a flag that contradicts the stored run, or
            ``--epochs`` below the epochs it already has.
        vae.run.checkpoint.CheckpointError: ``last.pt`` is not a loadable checkpoint.
    """
    last = Path(config.out_dir) / config.name / "last.pt"
    if not last.is_file():
        raise ArgumentError("resume", f": no {last} to resume from")
    state = load_checkpoint(last)
    stored = config_from_dict(state["config"])
    if world_size is not None:
        _check_world_size(state, last, world_size)
    for name in sorted(explicit - set(RESUMABLE_OVERRIDES)):
        if getattr(config, name) != getattr(stored, name):
            raise ArgumentError("resume", f": {last} was trained with `{name}` {getattr(stored, name)!r}; "
                                          "drop that value or start a new run")
    resumed = dataclasses.replace(stored, **{name: getattr(config, name) for name in explicit
                                             if name in RESUMABLE_OVERRIDES})
    if "data_dir" not in explicit and os.environ.get("VAE_DATA_DIR"):  # the environment before the stored path
        resumed = dataclasses.replace(resumed, data_dir=None)
    check_resume(resumed, state, last)
    return resumed, state


def checked_last(config: TrainConfig, run_dir: Path) -> Path:
    """``run_dir/last.pt``, once sure that a resume has one and a new run does not.

    Raises:
        ValueError: no ``last.pt`` to resume, or one that a new run would overwrite.
    """
    last = run_dir / "last.pt"
    if config.resume and not last.is_file():
        raise ArgumentError("resume", f": no {last} to resume from")
    if not config.resume and last.is_file():
        raise ArgumentError("run_name", f": {run_dir} already holds a run; pass `resume` to continue it or choose "
                                        "another `run_name`")
    return last


def check_resume(config: TrainConfig, state: dict[str, Any], path: Path, device: Optional[torch.device] = None,
                 world_size: Optional[int] = None) -> None:
    """Refuse a resume that would make ``config.json`` disagree with ``last.pt``, or change the results.

    Args:
        config: the resumed run's config; state: ``last.pt`` (at ``path``), read on the CPU;
        device: where it would continue; world_size: by how many processes (each checked when given).

    Raises:
        ValueError: ``config.epochs`` is below the epochs ``last.pt`` holds (a run
            is extended, never cut short), or differs from them under a learning-rate
            schedule (which is scaled to the run's epochs), or ``device`` is not the kind
            it was trained on, or ``world_size`` is not the number of processes that trained it.
    """
    stored = config_from_dict(state["config"])
    if config.epochs != stored.epochs and stored.lr_schedule != "constant":
        raise ArgumentError(
            "resume", f": {path} runs the {stored.lr_schedule} learning-rate schedule, scaled to its "
            f"{stored.epochs} epochs; `epochs` {config.epochs} would change the rate of the steps already taken"
        )
    partial = state.get("partial")
    needed = partial["epoch"] if partial else state["epoch"]
    if config.epochs < needed:
        held = f"{state['epoch']} epoch{'s' * (state['epoch'] != 1)}" + (
            f" and part of epoch {partial['epoch']}" if partial else "")
        raise ArgumentError("resume", f": {path} already has {held}; `epochs` {config.epochs} would not match it "
                                      f"(pass `epochs` {needed} or more, or leave it out)")
    rng = state.get("rng") if isinstance(state.get("rng"), dict) else {}
    trained_on = next((kind for kind in ("cuda", "mps") if kind in rng), "cpu")  # rng_state saves that device's
    if device is not None and device.type != trained_on:
        raise ArgumentError("resume", f": {path} was trained on {trained_on}; continued on {device.type}, its "
                                      f"results would differ from an uninterrupted run (pass `device` {trained_on}, "
                                      "or start a new run with `init_from`)")
    if world_size is not None:
        _check_world_size(state, path, world_size)


def _check_world_size(state: dict[str, Any], path: Path, world_size: int) -> None:
    """Refuse to continue a run by another number of processes than trained it."""
    trained_by = state.get("world_size", 1)
    if world_size != trained_by:
        raise ArgumentError("resume", f": {path} was trained by {_processes(trained_by)}; continued by "
                                      f"{_processes(world_size)}, each one's data slices and random streams would "
                                      f"differ from an uninterrupted run (resume it with {_launch(trained_by)}, or "
                                      "start a new run with `init_from`)")


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _launch(n: int) -> str:
    return "no torchrun" if n == 1 else f"torchrun and {n} processes in all"


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
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise CheckpointError(f"{path}: cannot resume from its training state ({first})") from None
    return RunProgress(state["epoch"], state["step"], list(state["metrics"]),
                       state["best_test_neg_elbo"], PartialEpoch.from_state(state.get("partial")))
