"""The training loop: data on the device, Adam on the bound, per-epoch test, checkpoints.

A run lives in ``<out_dir>/<run_name>/``: ``config.json``, ``metrics.csv``,
``last.pt`` (every epoch), ``best.pt`` (lowest test -ELBO) and the pictures.
``resume`` continues from ``last.pt`` and, on the same device and seed, ends
exactly where an uninterrupted run would, even after a stop in mid-epoch
(see :mod:`vae.run.state`). SIGINT and SIGTERM stop the run after the current
step (see :mod:`vae.run.signals`); a NaN or Inf loss stops it before anything
is saved.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from vae.run.checkpoint import build_model, load_checkpoint, load_initial_weights, load_weights, save_checkpoint
from vae.run.files import remove_stale_temporaries
from vae.config import TrainConfig
from vae.data import ImageSplit, batch_indices, binarize, evaluation_images, load_split
from vae.devices import accumulator_dtype, autocast, check_step_memory, resolve_device
from vae.run.faults import StepFault
from vae.run.signals import GracefulStop, TrainingInterrupted
from vae.model import VAE
from vae.model.objectives import negative_elbo, training_loss
from vae.run.lock import holding, lock_run_folder
from vae.schedules import kl_weight, learning_rate
from vae.run.state import (
    METRIC_COLUMNS, EpochResult, RunProgress, check_resume, checked_last, checkpoint_state, repair_run_folder, restore_run,
    resume_config, write_config, write_metrics,
)

__all__ = [
    "METRIC_COLUMNS", "NonFiniteLossError", "TrainingInterrupted", "EpochResult", "resolve_device",
    "accumulator_dtype", "autocast", "evaluate", "make_optimizer", "init_output_bias", "train_epoch",
    "resume_config", "train",
]

DATA_SEED_OFFSET = 0x5EED  # the data generator's seed is the run's seed plus this
EVAL_NOISE_SEED = 0  # the per-epoch test bound uses the same posterior noise every epoch
PROGRESS_EVERY = 50  # steps between host syncs for the progress bar and the finiteness check
PIXEL_MEAN_CLAMP = 1e-3  # the output bias's mean intensities are clamped to [c, 1 - c]: finite logits


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last checkpoint on disk is the last good one."""


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, batch_size: int = 1000, amp: bool = False) -> dict[str, float]:
    """Mean test -ELBO, reconstruction and KL (nats per image) with fixed posterior noise.

    Args:
        model: the VAE.
        images: already-binarized images ``(N, 784)`` on the model's device.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=images.device, dtype=accumulator_dtype(images.device))  # loss, recon, kl
    device = images.device
    devices = [device.index or 0] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(EVAL_NOISE_SEED)
        for x in images.split(batch_size):
            with autocast(images.device, amp):
                bound = negative_elbo(model, x)
            sums += torch.stack([bound.loss.sum(), bound.recon.sum(), bound.kl.sum()]).to(sums.dtype)
    model.train(was_training)
    loss, recon, kl = (sums / images.shape[0]).tolist()
    return {"test_neg_elbo": loss, "test_recon": recon, "test_kl": kl}


def make_optimizer(model: VAE, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at ``config.lr`` and ``config.adam_eps``; the fused kernel on CPU and CUDA (one pass over each tensor).

    A schedule other than ``constant`` sets the rate before every step (:mod:`vae.schedules`).
    """
    return torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def init_output_bias(model: VAE, images: torch.Tensor) -> None:
    """Start the decoder's output bias at the logit of each pixel's mean training intensity.

    Args:
        model: the VAE; images: the training images ``(N, 784)`` in [0, 1].
    """
    mean = images.mean(0).clamp(PIXEL_MEAN_CLAMP, 1 - PIXEL_MEAN_CLAMP)  # (784,)
    model.decoder.head.bias.copy_(torch.logit(mean).to(model.decoder.head.bias))


def train_epoch(
    model: VAE, step_model, optimizer: torch.optim.Optimizer, data: ImageSplit, config: TrainConfig,
    device: torch.device, data_gen: torch.Generator, epoch: int = 1, step: int = 0,
    partial: Optional[dict] = None, stop: Optional[GracefulStop] = None,
) -> EpochResult:
    """One pass over the training set in shuffled batches, or the rest of an interrupted one.

    Args:
        model: the VAE whose parameters are clipped; step_model: it, or its compiled twin.
        data: the training split on ``device``; data_gen: the generator of permutations
            and binarization draws; epoch: for messages; step: optimizer steps done
            before this epoch began.
        partial: the interrupted epoch to finish (its permutation is redrawn from
            ``partial["data_rng"]``, its first ``partial["batch"]`` batches skipped).
        stop: once ``stop.signum`` is set, return after the current step.

    Raises:
        NonFiniteLossError: a step's loss was NaN or Inf.
    """
    fault = StepFault()
    if partial is None:
        start_rng = data_gen.get_state()
        batches = list(batch_indices(len(data), config.batch_size, data_gen, device))  # the epoch's permutation
    else:  # redraw the interrupted epoch's permutation, then continue its draws where they stopped
        start_rng, resume_rng = partial["data_rng"], data_gen.get_state()
        data_gen.set_state(start_rng)
        batches = list(batch_indices(len(data), config.batch_size, data_gen, device))
        data_gen.set_state(resume_rng)
    first = partial["batch"] if partial else 0
    acc = accumulator_dtype(device)
    sums = partial["sums"].to(device, acc) if partial else torch.zeros(4, device=device, dtype=acc)
    window = []  # per-step sums since the last host sync, on the device
    done_images = min(first * config.batch_size, len(data))
    bar = tqdm(total=len(data), initial=done_images, desc=f"epoch {epoch}/{config.epochs}", unit="img",
               disable=not config.progress, leave=False, dynamic_ncols=True)
    seen, start, done = 0, time.perf_counter(), first
    total_steps = config.epochs * len(batches)
    beta = 1.0
    for i in range(first, len(batches)):
        rows = batches[i]
        x = data.images[rows]  # (B, 784)
        if config.binarize == "dynamic":
            x = binarize(x, data_gen)
        beta = kl_weight(step + i, config.kl_warmup, len(batches))
        if config.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config.lr_schedule, config.lr, step + i, total_steps)
        with autocast(device, config.amp):
            surrogate, bound = training_loss(step_model, x, config.objective, config.k, config.estimator, beta)
        loss = fault.loss(step + i + 1, surrogate.mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():  # kept on the device: no host sync inside the step
            window.append(torch.stack([bound.loss.sum(), bound.recon.sum(), bound.kl.sum(), loss.detach()]))
        seen, done = seen + rows.numel(), i + 1
        fault.after_step(step + done)  # test hook, see vae.run.faults
        stopping = stop is not None and stop.signum is not None and done < len(batches)
        if done % PROGRESS_EVERY == 0 or done == len(batches) or stopping:
            steps = torch.stack(window).to(sums.dtype)  # (W, 4): the bound at beta = 1, recon, KL, the surrogate
            window.clear()
            bad = (~torch.isfinite(steps[:, [0, 3]]).all(1)).nonzero()
            if len(bad):
                bar.close()
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {step + done - len(steps) + int(bad[0]) + 1}; "
                    "stopped without saving, the last checkpoint is the last good one (try a lower --lr or --grad-clip)"
                )
            loss_sum, recon_sum, kl_sum, _ = steps.sum(0)
            sums += torch.stack([loss_sum, recon_sum + kl_sum, recon_sum, kl_sum])
            bar.update(done_images + seen - bar.n)
            bar.set_postfix(loss=f"{sums[0].item() / (done_images + seen):.2f}",
                            img_s=f"{seen / (time.perf_counter() - start):,.0f}")
        if stopping:
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (partial["seconds"] if partial else 0.0) + time.perf_counter() - start
    return EpochResult(sums, done, len(batches), seconds, start_rng, optimizer.param_groups[0]["lr"], beta)


def train(config: TrainConfig, log=print) -> Path:
    """Train (or resume) the run ``config`` describes and return its folder.

    The run folder is locked (:mod:`vae.run.lock`) from before the first write
    until this returns, or until the end of an enclosing ``vae.run.lock.holding()``.

    Raises:
        ValueError: an impossible configuration, an output folder that cannot be
            written, or a run folder that resume cannot use.
        vae.run.lock.RunFolderBusy: another process is training in the run folder.
        vae.data.DataError: the dataset cannot be loaded.
        vae.run.checkpoint.CheckpointError: ``last.pt`` cannot be resumed from.
        NonFiniteLossError: the loss diverged; nothing was saved for that epoch.
        TrainingInterrupted: SIGINT or SIGTERM; ``last.pt`` holds the state after the last step.
    """
    with holding():
        return _train(config, log)


def _train(config: TrainConfig, log) -> Path:
    config.validate()
    device = resolve_device(config.device)
    check_step_memory(config, device)  # before the data: a --k or --batch-size far too large
    run_dir = config.check_run_dir()
    last = checked_last(config, run_dir)
    if config.amp and device.type != "cuda":
        log(f"note: --amp applies to CUDA only; training in float32 on {device.type}")

    initial = load_initial_weights(config) if config.init_from and not config.resume else None  # before the data
    train_data = load_split(config.dataset, config.data_dir, True, config.limit, device)
    test_data = load_split(config.dataset, config.data_dir, False, None, device)
    test_x = evaluation_images(test_data.images, config.binarize)

    torch.manual_seed(config.seed)
    # its own stream: seeded like the global RNG, its draws would replay the weight init
    data_gen = torch.Generator(device=device).manual_seed(config.seed + DATA_SEED_OFFSET)
    model = build_model(config)
    if config.output_bias == "mean" and initial is None and not config.resume:  # else the weights are loaded
        init_output_bias(model, train_data.images)
    if initial is not None:
        load_weights(model, initial, config.init_from)
    model = model.to(device)
    optimizer = make_optimizer(model, config, device)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out-dir {config.out_dir}: cannot create the run folder {run_dir} ({err.strerror})") from None
    lock_run_folder(run_dir)  # one writer per run folder, until train() returns (vae.run.lock)
    checked_last(config, run_dir)  # again, now under the lock: another writer may have saved a run meanwhile
    remove_stale_temporaries(run_dir)  # left by a killed writer; the files they were to replace are intact
    progress = RunProgress()
    if config.resume:
        state = load_checkpoint(last)  # on the CPU: the RNG states must stay there
        check_resume(config, state, last, device)  # never cut a run short, nor move it to another device
        progress = restore_run(state, last, model, optimizer, device, data_gen)
        repair_run_folder(run_dir, state, progress)
        at = progress.partial
        log(f"resuming {run_dir} " + (f"in epoch {at['epoch']} after batch {at['batch']}" if at
                                      else f"after epoch {progress.epoch}"))
        if progress.epoch >= config.epochs and not at:
            log(f"note: {run_dir} already has {progress.epoch} epochs; pass --epochs above that to extend it")
    step_model = torch.compile(model) if config.compile else model
    if not config.resume:  # a resumed run's config.json follows its last.pt, see save()
        write_config(run_dir, dataclasses.asdict(config))

    def save(path: Path) -> None:
        save_checkpoint(checkpoint_state(model, optimizer, config, progress, device, data_gen), path)
        if path == last:  # config.json says what last.pt says (see vae.run.state)
            write_config(run_dir, dataclasses.asdict(config))

    with GracefulStop() as stop:
        log(f"training {run_dir} on {device.type} to epoch {config.epochs}; Ctrl-C stops after the current step")
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            model.train()
            # a function of the epoch (resume needs no state); a fine-tune's start is already trained
            model.offdiag_enabled = epoch > config.diag_warmup or config.init_from is not None
            partial, progress.partial = progress.partial, None
            done_before = partial["batch"] if partial else 0
            result = train_epoch(model, step_model, optimizer, train_data, config, device, data_gen,
                                 epoch, progress.step - done_before, partial, stop)
            progress.step += result.batch - done_before
            if result.batch < result.n_batches:  # stopped by a signal in mid-epoch
                progress.partial = result.partial(epoch)
                save(last)
                raise TrainingInterrupted(stop.signum, run_dir, f"in epoch {epoch} at step {progress.step} "
                                          f"(batch {result.batch} of {result.n_batches})")
            model.offdiag_enabled = True  # the off-diagonal entries are exactly zero during the warm-up
            test = evaluate(model, test_x, config.eval_batch_size, config.amp)
            row = _epoch_row(epoch, progress.step, result, len(train_data), test)
            improved = progress.complete(row)
            save(last)  # last.pt, best.pt, metrics.csv: in this order (see vae.run.state)
            if improved:
                save(run_dir / "best.pt")
            write_metrics(run_dir / "metrics.csv", progress.metrics)
            log(f"epoch {epoch:3d}  train {row['train_loss']:8.3f}  test -ELBO {row['test_neg_elbo']:8.3f}  "
                f"(recon {row['test_recon']:.2f}, KL {row['test_kl']:.2f})  "
                f"{row['images_per_s']:,.0f} img/s  {result.seconds:.1f}s")
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, run_dir, f"after epoch {epoch}")
    return run_dir


def _epoch_row(epoch: int, step: int, result: EpochResult, n_images: int, test: dict[str, float]) -> dict:
    """The ``metrics.csv`` row of a finished epoch; a non-finite test bound stops the run."""
    if not math.isfinite(test["test_neg_elbo"]):
        raise NonFiniteLossError(
            f"non-finite test -ELBO after epoch {epoch}, step {step}; stopped without saving, "
            "the last checkpoint is the last good one (try a lower --lr or --grad-clip)"
        )
    loss, neg_elbo, recon, kl = (result.sums / n_images).tolist()
    return {"epoch": epoch, "step": step, "train_loss": loss, "train_neg_elbo": neg_elbo,
            "train_recon": recon, "train_kl": kl, **test, "lr": result.lr, "kl_weight": result.kl_weight,
            "images_per_s": n_images / result.seconds, "train_seconds": result.seconds}
