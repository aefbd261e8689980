"""Batches and binarization of data already on the device.

A whole split sits on the device as one tensor; batches are rows picked by a
per-epoch permutation. No per-item transform and no ``DataLoader`` stand in
the training loop.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

__all__ = ["binarize", "TEST_BINARIZATION_SEED", "binarize_fixed", "evaluation_images", "batch_indices"]


def binarize(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw every pixel as Bernoulli(intensity): ``(..., 784)`` -> same shape, values in {0, 1}.

    ``uniform < intensity`` is exactly Bernoulli(intensity), and about 3x faster
    on the CPU than ``torch.bernoulli``.
    """
    uniform = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (uniform < images).to(images.dtype)


TEST_BINARIZATION_SEED = 20151101  # evaluation splits are binarized once, the same for every run


def binarize_fixed(images: torch.Tensor, seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """One reproducible binarization of an evaluation split (the protocol's fixed test set).

    Drawn on the CPU, so the fixed test set is the same whatever the device.
    """
    return binarize(images.cpu(), torch.Generator().manual_seed(seed)).to(images.device)


def evaluation_images(images: torch.Tensor, binarize_mode: str) -> torch.Tensor:
    """What a run is scored on: the fixed binarization under ``"dynamic"``, else the intensities."""
    return binarize_fixed(images) if binarize_mode == "dynamic" else images


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Yield the rows of one epoch on ``device``: a fresh permutation cut into batches (the last may be short).

    The permutation is drawn by ``generator`` on its own device (a CPU generator: the same rows on any device).
    """
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)  # (N,)
    yield from order.split(batch_size)
