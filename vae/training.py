"""The training loop: data on the device, Adam on the bound, per-epoch test, checkpoints.

A run lives in ``<out_dir>/<run_name>/``: ``config.json``, ``metrics.csv``,
``last.pt`` (every epoch), ``best.pt`` (lowest test -ELBO) and the pictures.
``resume`` continues from ``last.pt`` and, on the same device and seed, ends
exactly where an uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from vae.checkpoint import build_model, load_checkpoint, save_checkpoint
from vae.config import TrainConfig, config_from_dict
from vae.data import ImageSplit, batch_indices, binarize, binarize_fixed, load_split
from vae.model import VAE
from vae.objectives import Bound, negative_elbo, negative_iwae

__all__ = [
    "METRIC_COLUMNS", "NonFiniteLossError", "resolve_device",
    "autocast", "evaluate", "train_epoch", "resume_config", "train",
]

EVAL_NOISE_SEED = 0  # the per-epoch test bound uses the same posterior noise every epoch
PROGRESS_EVERY = 50  # steps between host syncs for the progress bar and the finiteness check
METRIC_COLUMNS = (
    "epoch", "step", "train_loss", "train_neg_elbo", "train_recon", "train_kl",
    "test_neg_elbo", "test_recon", "test_kl", "images_per_s", "train_seconds",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last checkpoint on disk is the last good one."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (try --device cpu)")
    if name == "mps" and not mps:
        raise ValueError("--device mps: MPS is not available on this machine (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be one of auto, cpu, cuda, mps, got {name!r}")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bound(config: TrainConfig):
    if config.objective == "iwae":
        return lambda model, x: negative_iwae(model, x, config.k)
    return lambda model, x: negative_elbo(model, x, config.k)


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, batch_size: int = 1000, amp: bool = False) -> dict[str, float]:
    """Mean test -ELBO, reconstruction and KL (nats per image) with fixed posterior noise.

    Args:
        model: the VAE.
        images: already-binarized images ``(N, 784)`` on the model's device.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=images.device, dtype=torch.float64)  # loss, recon, kl
    device = images.device
    devices = [device.index or 0] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(EVAL_NOISE_SEED)
        for x in images.split(batch_size):
            with autocast(images.device, amp):
                bound = negative_elbo(model, x)
            sums += torch.stack([bound.loss.sum(), bound.recon.sum(), bound.kl.sum()]).double()
    model.train(was_training)
    loss, recon, kl = (sums / images.shape[0]).tolist()
    return {"test_neg_elbo": loss, "test_recon": recon, "test_kl": kl}


def _rng_state(device: torch.device, data_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict, device: torch.device, data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in METRIC_COLUMNS} for row in rows)
    _write_text_atomic(path, buf.getvalue())


def train_epoch(
    model: VAE, step_model, optimizer: torch.optim.Optimizer, data: ImageSplit, config: TrainConfig,
    device: torch.device, data_gen: torch.Generator, epoch: int = 1, step: int = 0,
) -> tuple[torch.Tensor, int, float]:
    """One pass over the training set in shuffled batches.

    Args:
        model: the VAE whose parameters are clipped; step_model: it, or its compiled twin.
        data: the training split on ``device``; data_gen: the generator of permutations
            and binarization draws; epoch, step: for messages.

    Returns:
        the mean loss, -ELBO, reconstruction and KL terms ``(4,)``, the number of
        steps, and the wall time in seconds.

    Raises:
        NonFiniteLossError: a step's loss was NaN or Inf.
    """
    loss_fn = _bound(config)
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, neg_elbo, recon, kl
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    n_batches = math.ceil(len(data) / config.batch_size)
    bar = tqdm(total=len(data), desc=f"epoch {epoch}/{config.epochs}", unit="img",
               disable=not config.progress, leave=False, dynamic_ncols=True)
    seen, start = 0, time.perf_counter()
    for i, rows in enumerate(batch_indices(len(data), config.batch_size, data_gen, device)):
        x = data.images[rows]  # (B, 784)
        if config.binarize == "dynamic":
            x = binarize(x, data_gen)
        with autocast(device, config.amp):
            bound: Bound = loss_fn(step_model, x)
        loss = bound.loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():  # accumulate on the device: no host sync inside the step
            terms = torch.stack([bound.loss.sum(), (bound.recon + bound.kl).sum(), bound.recon.sum(), bound.kl.sum()])
            sums += terms.double()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step + i + 1, first_bad)
        seen += rows.numel()
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == n_batches:
            bad = int(first_bad)
            if bad >= 0:
                bar.close()
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {bad}; stopped without saving, "
                    "the last checkpoint is the last good one (try a lower --lr or --grad-clip)"
                )
            elapsed = time.perf_counter() - start
            bar.update(seen - bar.n)
            bar.set_postfix(loss=f"{sums[0].item() / seen:.2f}", img_s=f"{seen / elapsed:,.0f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums / len(data), n_batches, time.perf_counter() - start


RESUMABLE_OVERRIDES = ("epochs", "device", "data_dir", "out_dir", "run_name", "resume",
                       "eval_batch_size", "amp", "compile", "plots", "progress", "grad_clip")


def resume_config(config: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The stored config of the run to resume, with the flags given now applied.

    Only flags that leave the model and the data stream unchanged may differ
    from the stored run (``epochs`` among them, to extend a run).

    Raises:
        ValueError: no run to resume, or a flag that contradicts the stored run.
    """
    last = Path(config.out_dir) / config.name / "last.pt"
    if not last.is_file():
        raise ValueError(f"--resume: no {last} to resume from")
    stored = config_from_dict(load_checkpoint(last)["config"])
    for name in sorted(explicit - set(RESUMABLE_OVERRIDES)):
        if getattr(config, name) != getattr(stored, name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"--resume: {last} was trained with {flag} {getattr(stored, name)!r}; "
                "drop the flag or start a new run"
            )
    return dataclasses.replace(stored, **{name: getattr(config, name) for name in explicit if name in RESUMABLE_OVERRIDES})


def train(config: TrainConfig, log=print) -> Path:
    """Train (or resume) the run ``config`` describes and return its folder.

    Raises:
        ValueError: an impossible configuration, or a run folder that resume cannot use.
        vae.data.DataError: the dataset cannot be loaded.
        NonFiniteLossError: the loss diverged.
    """
    config.validate()
    device = resolve_device(config.device)
    run_dir = Path(config.out_dir) / config.name
    last = run_dir / "last.pt"
    if config.resume and not last.is_file():
        raise ValueError(f"--resume: no {last} to resume from")
    if not config.resume and last.is_file():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-name")
    if config.amp and device.type != "cuda":
        log(f"note: --amp applies to CUDA only; training in float32 on {device.type}")

    train_data = load_split(config.dataset, config.data_dir, True, config.limit, device)
    test_data = load_split(config.dataset, config.data_dir, False, None, device)
    test_x = binarize_fixed(test_data.images) if config.binarize == "dynamic" else test_data.images

    torch.manual_seed(config.seed)
    data_gen = torch.Generator(device=device).manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    metrics, start_epoch, step, best = [], 1, 0, math.inf
    if config.resume:
        state = load_checkpoint(last, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], device, data_gen)
        metrics, step, best = list(state["metrics"]), state["step"], state["best_test_neg_elbo"]
        start_epoch = state["epoch"] + 1
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    step_model = torch.compile(model) if config.compile else model

    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        train_means, n_steps, seconds = train_epoch(
            model, step_model, optimizer, train_data, config, device, data_gen, epoch, step)
        step += n_steps
        loss, neg_elbo, recon, kl = train_means.tolist()
        row = {"epoch": epoch, "step": step, "train_loss": loss, "train_neg_elbo": neg_elbo,
               "train_recon": recon, "train_kl": kl,
               **evaluate(model, test_x, config.eval_batch_size, config.amp),
               "images_per_s": len(train_data) / seconds, "train_seconds": seconds}
        metrics.append(row)
        improved = row["test_neg_elbo"] < best
        best = min(best, row["test_neg_elbo"])
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "config": dataclasses.asdict(config), "epoch": epoch, "step": step,
                 "rng": _rng_state(device, data_gen), "metrics": metrics, "best_test_neg_elbo": best}
        save_checkpoint(state, last)
        if improved:
            save_checkpoint(state, run_dir / "best.pt")
        _write_metrics(run_dir / "metrics.csv", metrics)
        log(f"epoch {epoch:3d}  train {loss:8.3f}  test -ELBO {row['test_neg_elbo']:8.3f}  "
            f"(recon {row['test_recon']:.2f}, KL {row['test_kl']:.2f})  "
            f"{row['images_per_s']:,.0f} img/s  {seconds:.1f}s")
    return run_dir
