"""Where training runs: the device, its float types, autocast, and how much memory one step may take.

``resolve_device("auto")`` picks CUDA, then MPS, then the CPU. Nothing here
runs on import.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["available", "resolve_device", "accumulator_dtype", "autocast"]


def available(kind: str) -> bool:
    """Whether this machine has a device of type ``kind`` (``cpu``, ``cuda``, ``mps``)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        return torch.device("cuda" if available("cuda") else "mps" if available("mps") else "cpu")
    if name in ("cuda", "mps") and not available(name):
        raise ValueError(f"--device {name}: {name.upper()} is not available on this machine (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be one of auto, cpu, cuda, mps, got {name!r}")
    return torch.device(name)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums of losses, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

