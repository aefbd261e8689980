"""Where training runs: the device, its float types, autocast, and how much memory one step may take.

``resolve_device("auto")`` picks CUDA, then MPS, then the CPU. Before any
data is loaded, :func:`check_step_memory` refuses a ``--k`` and
``--batch-size`` whose training step would need more than
:data:`STEP_MEMORY_FRACTION` of the device's memory. Nothing here runs on import.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from vae.cli import ArgumentError, check_choice

__all__ = [
    "available", "resolve_device", "accumulator_dtype", "autocast", "STEP_MEMORY_FRACTION", "step_memory_bytes",
    "device_memory", "check_step_memory",
]

STEP_MEMORY_FRACTION = 0.25
"""One training step may need at most this share of the device's memory (the GPU's for CUDA, else the RAM)."""


def available(kind: str) -> bool:
    """Whether this machine has a device of type ``kind`` (``cpu``, ``cuda``, ``mps``)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    check_choice("device", name)
    if name == "auto":
        return torch.device("cuda" if available("cuda") else "mps" if available("mps") else "cpu")
    if not available(name):
        raise ArgumentError("device", f"{name}: {name.upper()} is not available on this machine (try cpu)")
    return torch.device(name)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums of losses, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_memory_bytes(config) -> int:
    """Estimated peak memory of one training step of ``config`` (a :class:`vae.config.TrainConfig`), in bytes.

    Each of the batch's ``batch_size * k`` posterior draws carries float32
    logits, their loss terms and gradients (3 x 784 values) and the decoder's
    activations and gradients (2 x the hidden widths): measured peaks on the
    CPU were 2,374 to 3,449 floats per draw for hidden 16 to 500-500, against
    2,390 to 4,544 here. The weights and the test set are not counted.
    """
    from vae.data import IMAGE_PIXELS  # here: loading a checkpoint needs this module, not torchvision

    per_draw = 3 * IMAGE_PIXELS + 2 * sum(config.hidden) + 3 * config.latent_dim
    return 4 * config.batch_size * config.k * per_draw


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory of ``device`` in bytes: the GPU's own for CUDA, else the RAM; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None


def check_step_memory(config, device: torch.device, total: Optional[int] = None) -> None:
    """Refuse a step that needs more than :data:`STEP_MEMORY_FRACTION` of ``total`` (default: the device's memory).

    Raises:
        ValueError: one line with the estimate, the limit, and the largest ``--batch-size`` that fits.
    """
    total = device_memory(device) if total is None else total
    need, limit = step_memory_bytes(config), STEP_MEMORY_FRACTION * (total or 0)
    if total is None or need <= limit:
        return
    fits = int(limit // (need / config.batch_size))  # the largest batch size within the limit
    hint = f"lower `batch_size` to {fits} or `k`" if fits >= 1 else "lower `k`"
    gib = 2.0**30
    raise ArgumentError(
        "k", f"{config.k} with `batch_size` {config.batch_size}: one training step needs about {need / gib:.1f} GiB "
        f"({config.batch_size} x {config.k} draws of logits, their gradients and the decoder's activations), "
        f"over {STEP_MEMORY_FRACTION:.0%} of the {total / gib:.1f} GiB of {device.type} memory; {hint}"
    )
