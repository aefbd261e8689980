"""One epoch: shuffled batches through the training step, then the test bound and the epoch's metrics row.

Each step sets the KL weight and learning rate of its global step
(:mod:`vae.schedules`) and runs a :class:`vae.step.TrainStep`: fresh binarized
pixels, the surrogate of :func:`vae.model.objectives.training_loss`, its
gradient and the optimizer's update, eager or compiled. Losses stay on the device and are
synced every :data:`PROGRESS_EVERY` steps, where a NaN or Inf stops the run.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from vae.config import TrainConfig
from vae.errors import FullcovError
from vae.data import ImageSplit, batch_indices
from vae.devices import accumulator_dtype, autocast
from vae.model import VAE
from vae.model.objectives import negative_elbo
from vae.run.agreement import StopVote
from vae.run.distributed import Ranks, current
from vae.run.signals import GracefulStop
from vae.run.state import EpochResult, PartialEpoch
from vae.schedules import kl_weight, learning_rate
from vae.step import TrainStep

__all__ = ["NonFiniteLossError", "EVAL_NOISE_SEED", "PROGRESS_EVERY", "NOT_TESTED", "evaluate", "train_epoch",
           "epoch_row"]

EVAL_NOISE_SEED = 0  # the per-epoch test bound uses the same posterior noise every epoch
PROGRESS_EVERY = 50  # steps between host syncs for the progress bar and the finiteness check
TEST_HOOK = None
"""A :class:`vae.run.faults.StepFault`, set only by :func:`vae.run.faults.installed` at a command's entry when
``VAE_TEST_FAULT_AT_STEP`` asks for one; None otherwise, and no step consults anything else."""


class NonFiniteLossError(FullcovError):
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


def train_epoch(
    train_step: TrainStep, data: ImageSplit, config: TrainConfig,
    device: torch.device, data_gen: torch.Generator, epoch: int = 1, step: int = 0,
    partial: Optional[PartialEpoch] = None, stop: Optional[GracefulStop] = None,
    noise_gen: Optional[torch.Generator] = None, ranks: Optional[Ranks] = None,
) -> EpochResult:
    """One pass over the training set in shuffled batches, or the rest of an interrupted one.

    Args:
        train_step: the model's optimizer step, eager or compiled.
        data: the training split on ``device``; data_gen: the generator of permutations
            and binarization draws; epoch: for messages; step: optimizer steps done
            before this epoch began.
        partial: the interrupted epoch to finish (its permutation is redrawn from
            ``partial.data_rng``, its first ``partial.batch`` batches skipped).
        stop: once ``stop.signum`` is set, return after the current step (under torchrun: once it is set on
            any rank, all return after the same step, see :class:`vae.run.agreement.StopVote`).
        noise_gen: the generator of binarization draws (default ``data_gen``; a per-rank stream under torchrun).
        ranks: the processes that share each batch (default :func:`vae.run.distributed.current`); each takes
            its shard of every batch, and the losses are summed over them at each host sync.

    Raises:
        NonFiniteLossError: a step's loss was NaN or Inf.
    """
    fault = TEST_HOOK  # None unless a reliability test asked for a fault (vae.run.faults)
    ranks = current() if ranks is None else ranks
    vote = StopVote(ranks, stop)  # under torchrun: the ranks agree on a stop after every step
    noise_gen = data_gen if noise_gen is None else noise_gen
    if partial is None:
        start_rng = data_gen.get_state()
        batches = list(batch_indices(len(data), config.batch_size, data_gen, device))  # the epoch's permutation
    else:  # redraw the interrupted epoch's permutation, then continue its draws where they stopped
        start_rng, resume_rng = partial.data_rng, data_gen.get_state()
        data_gen.set_state(start_rng)
        batches = list(batch_indices(len(data), config.batch_size, data_gen, device))
        data_gen.set_state(resume_rng)
    first = partial.batch if partial else 0
    acc = accumulator_dtype(device)
    sums = partial.sums.to(device, acc) if partial else torch.zeros(4, device=device, dtype=acc)
    window = []  # per-step sums since the last host sync, on the device
    done_images = min(first * config.batch_size, len(data))
    bar = tqdm(total=len(data), initial=done_images, desc=f"epoch {epoch}/{config.epochs}", unit="img",
               disable=not (config.progress and ranks.is_main), leave=False, dynamic_ncols=True)
    seen, start, done = 0, time.perf_counter(), first
    total_steps = config.epochs * len(batches)
    beta = 1.0
    for i in range(first, len(batches)):
        rows = batches[i]
        images = data.images[ranks.shard(rows)]  # (B, 784); under torchrun this rank's (B / N, 784)
        beta = kl_weight(step + i, config.kl_warmup, len(batches))
        if config.lr_schedule != "constant":
            train_step.learning_rate = learning_rate(config.lr_schedule, config.lr, step + i, total_steps)
        with autocast(device, config.amp):
            loss, stats = train_step.loss(images, noise_gen, beta, rows.numel())
        if fault is not None and fault.hits(step + i + 1, "nan", "inf"):  # the sums see it as a real one
            loss = loss + float(fault.action)
            stats[3] = loss.detach()
        train_step.update(loss)  # DistributedDataParallel averages the gradients here
        window.append(stats)  # kept on the device: no host sync inside the step
        seen, done = seen + rows.numel(), i + 1
        if fault is not None:
            fault.after_step(step + done, stop)
        stopping = vote.after_step() and done < len(batches)
        if done % PROGRESS_EVERY == 0 or done == len(batches) or stopping:
            # (W, 4): the bound at beta = 1, recon, KL, the surrogate; summed over the ranks
            steps = ranks.all_reduce_sum(torch.stack(window).to(sums.dtype))
            window.clear()
            bad = (~torch.isfinite(steps[:, [0, 3]]).all(1)).nonzero()
            if len(bad):
                bar.close()
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {step + done - len(steps) + int(bad[0]) + 1}; "
                    "stopped without saving, the last checkpoint is the last good one (try a lower `lr` or `grad_clip`)"
                )
            loss_sum, recon_sum, kl_sum, _ = steps.sum(0)
            sums += torch.stack([loss_sum, recon_sum + kl_sum, recon_sum, kl_sum])
            bar.update(done_images + seen - bar.n)
            bar.set_postfix(loss=f"{sums[0].item() / (done_images + seen):.2f}",
                            img_s=f"{seen / (time.perf_counter() - start):,.0f}")
        if stopping:
            break
    bar.close()
    vote.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (partial.seconds if partial else 0.0) + time.perf_counter() - start
    return EpochResult(sums, done, len(batches), seconds, start_rng, train_step.learning_rate, beta)


NOT_TESTED = {"test_neg_elbo": math.nan, "test_recon": math.nan, "test_kl": math.nan}
"""The test columns of an epoch that ``--eval-every`` skips."""


def epoch_row(epoch: int, step: int, result: EpochResult, n_images: int, test: Optional[dict[str, float]]) -> dict:
    """The ``metrics.csv`` row of a finished epoch; a non-finite test bound stops the run.

    ``test`` None: an epoch without a test bound (``--eval-every``); its test columns hold NaN.
    """
    if test is None:
        test = NOT_TESTED
    elif not math.isfinite(test["test_neg_elbo"]):
        raise NonFiniteLossError(
            f"non-finite test -ELBO after epoch {epoch}, step {step}; stopped without saving, "
            "the last checkpoint is the last good one (try a lower `lr` or `grad_clip`)"
        )
    loss, neg_elbo, recon, kl = (result.sums / n_images).tolist()
    return {"epoch": epoch, "step": step, "train_loss": loss, "train_neg_elbo": neg_elbo,
            "train_recon": recon, "train_kl": kl, **test, "lr": result.lr, "kl_weight": result.kl_weight,
            "images_per_s": n_images / result.seconds, "train_seconds": result.seconds}
