"""Datasets as tensors on the device: loading, the data root, binarization.

The whole split sits on the device as one tensor; batches are rows picked by a
per-epoch permutation (:mod:`vae.data.batches`).
"""
from __future__ import annotations

from vae.data.batches import TEST_BINARIZATION_SEED, batch_indices, binarize, binarize_fixed, evaluation_images
from vae.data.dataset import DataError
from vae.data.mnist import IMAGE_PIXELS, ImageSplit, load_split, resolve_data_dir

__all__ = [
    "DataError",
    "ImageSplit",
    "resolve_data_dir",
    "load_split",
    "binarize",
    "TEST_BINARIZATION_SEED",
    "binarize_fixed",
    "evaluation_images",
    "batch_indices",
    "IMAGE_PIXELS",
]
