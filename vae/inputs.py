"""A run's data: read as the config names it, resolved against the config, and laid out for the hot path.

:func:`resolve_data` records in the config what the data turned out to be (its absolute path, kind,
shape and held-out rows) and the likelihood ``auto`` picks for it, once sure they fit; the checkpoint
stores them, so that a resume, the evaluator and the pictures read the same split the same way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from vae.choices import DATASETS
from vae.config import TrainConfig
from vae.data import Dataset, ImageSplit, check_recorded, evaluation_rows, load_dataset
from vae.model.likelihood import make_likelihood

__all__ = ["known_data", "load_data", "resolve_data", "hot_splits"]


def known_data(config: TrainConfig) -> Optional[TrainConfig]:
    """``config`` with the shape and likelihood its data will have, where they are known before loading it."""
    if config.data_shape is not None:
        return config
    if config.dataset not in DATASETS:
        return None
    registered = DATASETS[config.dataset]
    kind = registered.kind if config.data_kind == "auto" else config.data_kind
    return dataclasses.replace(config, data_shape=registered.shape, likelihood=config.likelihood_for(kind))


def load_data(config: TrainConfig, device: torch.device) -> Dataset:
    """The run's dataset on ``device``: its splits as the run defines them (kind, held-out share, limit)."""
    return load_dataset(config.dataset, config.data_dir, kind=config.data_kind, test_fraction=config.test_fraction,
                        limit=config.limit, device=device)


def resolve_data(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """``config`` with what ``dataset`` is (its absolute path, kind, shape, held-out rows) and the likelihood
    ``auto`` picks for it, once sure they fit: the facts the checkpoint records.

    ``likelihood auto`` picks from the kind of data (:data:`vae.choices.LIKELIHOOD_OF_KIND`); dynamic
    binarization belongs to the Bernoulli likelihood alone (:attr:`vae.config.TrainConfig.binarizes`). A
    resumed run's recorded shape and rows must be the data's.

    Raises:
        vae.data.DataError: data of another shape (or, with a held-out split, another number of rows) than
            the run was trained on (:func:`vae.data.check_recorded`).
        vae.errors.ArgumentError: a likelihood that cannot fit the data.
    """
    check_recorded(config, dataset)
    likelihood = config.likelihood_for(dataset.kind)
    check = make_likelihood(likelihood, math.prod(dataset.shape)).check
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        check(split.data, f"{config.dataset} ({name} split, {dataset.kind})")
    where = str(config.data_path) if config.data_path else config.dataset  # the path the run records: absolute
    return dataclasses.replace(config, dataset=where, data_kind=dataset.kind, data_shape=dataset.shape,
                               likelihood=likelihood, data_rows=dataset.split.get("rows"))


def hot_splits(config: TrainConfig, dataset: Dataset) -> tuple[ImageSplit, torch.Tensor]:
    """The training split flattened to rows ``(N, P)`` (the hot path's layout) and the evaluation rows.

    The evaluation rows are the test split, in the fixed binarization under ``binarize dynamic``.
    """
    train = ImageSplit(images=dataset.train.data.reshape(len(dataset.train), -1), labels=dataset.train.labels)
    return train, evaluation_rows(config, dataset.test.data)
