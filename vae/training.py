"""The training loop: data on the device, Adam on the bound, per-epoch test, checkpoints.

A run lives in ``<out_dir>/<run_name>/``: ``config.json``, ``metrics.csv``,
``last.pt`` (every ``eval_every`` epochs, default 1), ``best.pt`` (lowest test -ELBO) and the pictures.
``resume`` continues from ``last.pt`` and, on the same device and seed, ends
exactly where an uninterrupted run would, even after a stop in mid-epoch
(see :mod:`vae.run.state`). SIGINT and SIGTERM stop the run after the current
step (see :mod:`vae.run.signals`); a NaN or Inf loss stops it before anything
is saved.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from vae.config import TrainConfig
from vae.data import ImageSplit
from vae.errors import ArgumentError
from vae.devices import check_amp, resolve_device, set_threads
from vae.epoch import epoch_row, evaluate, train_epoch
from vae.model import VAE
from vae.inputs import hot_splits, known_data, load_data, resolve_data
from vae.run.agreement import Agreement, StopVote
from vae.run.checkpoint import build_model, load_initial_weights, load_weights
from vae.run.distributed import Ranks, current, rank_seed
from vae.run.folder import RunFolder
from vae.run.lock import holding
from vae.run.signals import GracefulStop, TrainingInterrupted
from vae.run.state import RunProgress, checkpoint_state, rng_state
from vae.step import TrainStep, check_step_memory

__all__ = ["DATA_SEED_OFFSET", "make_optimizer", "make_generators", "init_output_bias", "check_batch_split", "train",
           "run_training"]

DATA_SEED_OFFSET = 0x5EED  # the data generator's seed is the run's seed plus this


def make_optimizer(model: VAE, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at ``config.lr`` and ``config.adam_eps``; the fused kernel on CPU and CUDA (one pass over each tensor).

    A schedule other than ``constant`` sets the rate before every step (:mod:`vae.schedules`). Under
    ``compile`` the update is the multi-tensor one, which inductor compiles (it does not trace the fused
    kernel), and on CUDA it is ``capturable``: its step counts live on the GPU, inside the CUDA graph.
    """
    fused = device.type in ("cpu", "cuda") and not config.compile
    capturable = config.compile and device.type == "cuda"
    return torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps, fused=fused, capturable=capturable)


@torch.no_grad()
def init_output_bias(model: VAE, x: torch.Tensor) -> None:
    """Start the decoder's output at the training data's mean, as its likelihood defines it.

    Args:
        model: the VAE; x: the training split ``(N, P)`` in the data's own units.
    """
    model.likelihood.init_bias(model.decoder.output_bias, x)


def train(config: TrainConfig, log=print, explicit: Optional[Iterable[str]] = None) -> Path:
    """Train (or resume) the run ``config`` describes and return its folder: the library's entry.

    ``config`` is validated here, where it enters; then :func:`run_training`.

    Args:
        config: the run; log: where progress lines go.
        explicit: with ``config.resume``, the fields given now, which may override the stored run's
            (:meth:`vae.run.folder.RunFolder.resume_config`); None: every field of ``config``.

    Raises:
        vae.errors.ArgumentError: an impossible configuration, an output folder that cannot be
            written, or a run folder that resume cannot use.
        vae.run.lock.RunFolderBusy: another process is training in the run folder.
        vae.data.DataError: the dataset cannot be loaded.
        vae.run.checkpoint.CheckpointError: ``last.pt`` cannot be resumed from.
        NonFiniteLossError: the loss diverged; nothing was saved for that epoch.
        TrainingInterrupted: SIGINT or SIGTERM; ``last.pt`` holds the state after the last step.
    """
    config.validate()
    return run_training(config, log, explicit)


def run_training(config: TrainConfig, log=print, explicit: Optional[Iterable[str]] = None) -> Path:
    """:func:`train` for a ``config`` already validated where it entered (the command line).

    The run folder is locked (:mod:`vae.run.lock`) from before the first read or write until this
    returns, or until the end of an enclosing ``vae.run.lock.holding()``.
    """
    ranks = current()
    log = log if ranks.is_main else _quiet
    with holding():
        folder = _open(config, explicit, ranks)
        run = _start(folder, log, ranks)
        _run_epochs(run, log)
        return folder.path


def _quiet(*_) -> None:
    """The log of ranks other than 0."""


@dataclass
class _Run:
    """Everything one training run holds while it runs."""

    config: TrainConfig
    folder: RunFolder
    device: torch.device
    model: VAE
    optimizer: torch.optim.Optimizer
    train_step: TrainStep  # eager or compiled; under torchrun it holds the DDP wrapper
    data_gen: torch.Generator
    noise_gen: torch.Generator  # binarization: data_gen on one process, a per-rank stream under torchrun
    ranks: Ranks
    train_data: ImageSplit
    test_x: torch.Tensor
    progress: RunProgress

    def state(self) -> dict[str, Any]:
        """The checkpoint of the run as it stands (on rank 0; None on the others).

        Every rank takes part: rank 0 gathers their RNG states.
        """
        rank_rng = self.ranks.gather(rng_state(self.device, self.data_gen, self.noise_gen))
        return checkpoint_state(self.model, self.optimizer, self.config, self.progress, self.device, self.data_gen,
                                rank_rng) if self.ranks.is_main else None


def _open(config: TrainConfig, explicit: Optional[Iterable[str]], ranks: Ranks) -> RunFolder:
    """The run folder; for a resume, rank 0 locks it, reads ``last.pt`` once, and every rank gets the
    resumed config and the state."""
    with Agreement(ranks):
        folder = RunFolder(config, ranks.is_main)
        if config.resume and ranks.is_main:
            folder.resume_config(explicit, ranks.world_size)
    if config.resume:  # the same on every rank
        folder.config, folder.state = ranks.broadcast((folder.config, folder.state))
    return folder


def _start(folder: RunFolder, log, ranks: Ranks) -> _Run:
    """Check the run's device and memory, load the data, build the model, then open or resume the folder.

    Under torchrun rank 0 alone loads the data first (it may download it) and opens the run folder;
    each stage ends in an :class:`~vae.run.agreement.Agreement`, so a failure on any rank stops them all.
    """
    config = folder.config
    with Agreement(ranks):
        check_batch_split(config.batch_size, ranks.world_size)
        device = ranks.device(resolve_device(config.device))
        known = known_data(config)  # a registered dataset's or a resumed run's shape: the step sized first
        if known is not None:
            _check_step_memory(known, device, ranks)
        precision = check_amp(device, config.amp)
        log(set_threads(config.threads))
        log(precision)
        dataset = load_data(config, device) if ranks.is_main else None
    with Agreement(ranks):
        dataset = dataset or load_data(config, device)
        config = folder.config = resolve_data(config, dataset)  # what `auto` picked, now part of the run
        log(dataset.describe(config.likelihood))
        if known is None:
            _check_step_memory(config, device, ranks)
        initial = load_initial_weights(config) if config.init_from and not config.resume else None
        train_data, test_x = hot_splits(config, dataset)
        model, data_gen, noise_gen = _build_model(config, train_data, initial, device, ranks)
        optimizer = make_optimizer(model, config, device)
        folder.open()
    progress = RunProgress()
    if config.resume:
        with Agreement(ranks):
            progress = folder.restore(model, optimizer, device, data_gen, noise_gen, ranks.rank,
                                      math.ceil(len(train_data) / config.batch_size))
        at = progress.partial
        log(f"resuming {folder.path} " + (f"in epoch {at.epoch} after batch {at.batch}" if at
                                          else f"after epoch {progress.epoch}"))
        if progress.epoch >= config.epochs and not at:
            log(f"note: {folder.path} already has {progress.epoch} epochs; pass `epochs` above that to extend it")
    # after the resume: a compiled step keeps the learning rate in a tensor, a checkpoint holds a float
    train_step = TrainStep(model, optimizer, config, device, ranks, ranks.wrap(model))  # DDP under torchrun
    return _Run(config, folder, device, model, optimizer, train_step, data_gen, noise_gen, ranks, train_data, test_x,
                progress)


def check_batch_split(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that the ``world_size`` processes cannot share evenly."""
    if batch_size % world_size:
        raise ArgumentError("batch_size", f"{batch_size} is the global batch, shared by the {world_size} processes; "
                                          f"pass a multiple of {world_size}")


def _check_step_memory(config: TrainConfig, device: torch.device, ranks: Ranks) -> None:
    """:func:`vae.step.check_step_memory` of one process's step (on CUDA, its share of the batch)."""
    per_process = dataclasses.replace(config, batch_size=config.batch_size // ranks.world_size)
    check_step_memory(per_process if device.type == "cuda" else config, device)


def _build_model(config: TrainConfig, train_data: ImageSplit, initial: Optional[dict], device: torch.device,
                 ranks: Ranks) -> tuple[VAE, torch.Generator, torch.Generator]:
    """The seeded model on ``device`` (a fine-tune's start loaded), the data generator and the binarization one.

    See :func:`make_generators`; under torchrun the posterior noise (the global RNG) is a per-rank stream.
    """
    torch.manual_seed(config.seed)
    data_gen, noise_gen = make_generators(config, device, ranks)
    model = build_model(config)
    if initial is None and not config.resume:  # else the weights, standardization included, are loaded
        model.likelihood.fit_data(train_data.images)  # a Gaussian's standardization
        if config.output_bias == "mean":
            init_output_bias(model, train_data.images)
    if initial is not None:
        load_weights(model, initial, config.init_from)
    if ranks.distributed:
        torch.manual_seed(rank_seed(config.seed, ranks.rank, "posterior"))
    return model.to(device), data_gen, noise_gen


def make_generators(config: TrainConfig, device: torch.device, ranks: Ranks) -> tuple[torch.Generator, torch.Generator]:
    """The data generator (the epochs' permutations) and the binarization one.

    The permutations come from a CPU generator on every device: the same stream on every rank, and on
    any GPU model (a CUDA generator's output may depend on the device). On the CPU one process
    binarizes from the data generator, and under torchrun each rank from its own stream
    (:func:`vae.run.distributed.rank_seed`); on CUDA the step binarizes from the global CUDA generator
    (:func:`vae.step.binarizes_from_global`); on another device from a stream of that device.
    """
    # its own stream: seeded like the global RNG, its draws would replay the weight init
    data_gen = torch.Generator().manual_seed(config.seed + DATA_SEED_OFFSET)
    if device.type == "cuda" or (device.type == "cpu" and not ranks.distributed):
        return data_gen, data_gen
    seed = rank_seed(config.seed, ranks.rank, "binarize") if ranks.distributed else config.seed + DATA_SEED_OFFSET
    return data_gen, torch.Generator(device=device).manual_seed(seed)


def _run_epochs(run: _Run, log) -> None:
    """Train the remaining epochs; every ``eval_every``-th and the last end with the test bound and the files.

    The files are ``last.pt``, ``best.pt`` (if the test bound improved) and ``metrics.csv``; a stop after
    an epoch without them writes ``last.pt`` and ``metrics.csv`` too. Skipping the test bound changes no
    training draw (it forks the RNG), so the epochs train alike with any ``eval_every``.
    """
    config, progress, model, ranks, folder = run.config, run.progress, run.model, run.ranks, run.folder
    with GracefulStop() as stop:
        processes = f" in {ranks.world_size} processes" if ranks.distributed else ""
        log(f"training {folder.path} on {run.device.type}{processes} to epoch {config.epochs}; "
            "Ctrl-C stops after the current step")
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            model.train()
            # a function of the epoch (resume needs no state); a fine-tune's start is already trained
            model.offdiag_enabled = epoch > config.diag_warmup or config.init_from is not None
            partial, progress.partial = progress.partial, None
            done_before = partial.batch if partial else 0
            result = train_epoch(run.train_step, run.train_data, config, run.device, run.data_gen, epoch,
                                 progress.step - done_before, partial, stop, run.noise_gen, ranks)
            progress.step += result.batch - done_before
            if result.batch < result.n_batches:  # stopped by a signal in mid-epoch
                progress.partial = result.partial(epoch)
                folder.save("last.pt", run.state())
                raise TrainingInterrupted(stop.signum, folder.path, f"in epoch {epoch} at step {progress.step} "
                                          f"(batch {result.batch} of {result.n_batches})")
            model.offdiag_enabled = True  # the off-diagonal entries are exactly zero during the warm-up
            tested = epoch % config.eval_every == 0 or epoch == config.epochs
            test = ranks.from_main(lambda: evaluate(model, run.test_x, config.eval_batch_size, config.amp)) \
                if tested else None
            row = epoch_row(epoch, progress.step, result, len(run.train_data), test)
            improved = progress.complete(row)
            if tested:
                folder.save_epoch(run.state(), improved, progress.metrics)
            log(f"epoch {epoch:3d}  train {row['train_loss']:8.3f}  " + (
                f"test -ELBO {row['test_neg_elbo']:8.3f}  (recon {row['test_recon']:.2f}, KL {row['test_kl']:.2f})  "
                if tested else "") + f"{row['images_per_s']:,.0f} img/s  {result.seconds:.1f}s")
            if StopVote(ranks, stop).now():
                if not tested:  # the epoch is saved (without its test bound), so the stop loses nothing
                    folder.save_epoch(run.state(), improved, progress.metrics)
                raise TrainingInterrupted(stop.signum, folder.path, f"after epoch {epoch}")
