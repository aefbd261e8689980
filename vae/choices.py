"""The project's plain facts: each list of choices, written once, and the checks on names and paths.

Torch-free, so that every command answers a bad flag before torch loads. A
registry whose entries are implemented elsewhere maps each choice to the name
of its implementation: ``DATASETS`` to a ``torchvision.datasets`` class,
``FAMILIES`` to a class of :mod:`vae.model.posteriors`. Its keys are the
choices; nothing else lists them.
"""
from __future__ import annotations

import os
import typing
from pathlib import Path

from vae.errors import ArgumentError

__all__ = [
    "Registered", "DATASETS", "FAMILIES", "DATA_KINDS", "LIKELIHOODS", "LIKELIHOOD_OF_KIND", "DIAG_TRANSFORMS",
    "DEVICES", "ARCHS", "OBJECTIVES", "ESTIMATORS", "LR_SCHEDULES",
    "BINARIZATIONS", "OUTPUT_BIASES", "FIT_OBJECTIVES", "FIT_OPTIMIZERS", "CHOICES", "NAME_MAX", "PATH_MAX",
    "PRETRAINED_DIR", "check_choice", "check_estimator", "check_path",
]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
"""The shipped models, package data (``vae/pretrained/``); no command writes into it."""

class Registered(typing.NamedTuple):
    """A dataset known by name: its ``torchvision.datasets`` class, one example's shape, its kind of data."""

    torchvision: str
    shape: tuple[int, ...]
    kind: str


DATASETS: dict[str, Registered] = {
    "mnist": Registered("MNIST", (1, 28, 28), "binary"),
    "fashion-mnist": Registered("FashionMNIST", (1, 28, 28), "binary"),
    "cifar10": Registered("CIFAR10", (3, 32, 32), "8bit"),
}
"""Dataset name -> what it is (:mod:`vae.data` reads it); any other ``dataset`` is a path."""
FAMILIES: dict[str, str] = {"full": "FullGaussian", "diagonal": "DiagonalGaussian", "lowrank": "LowRankGaussian"}
"""Posterior family name -> its class in :mod:`vae.model.posteriors`."""
DATA_KINDS = ("auto", "binary", "8bit", "continuous")  # binary or in [0, 1]; integers 0..255; other floats
LIKELIHOODS: dict[str, str] = {"bernoulli": "BernoulliLikelihood", "gaussian": "GaussianLikelihood",
                               "logistic": "DiscretizedLogisticLikelihood"}
"""Likelihood name -> its class in :mod:`vae.model.likelihood`."""
LIKELIHOOD_OF_KIND = {"binary": "bernoulli", "8bit": "logistic", "continuous": "gaussian"}
"""What ``likelihood auto`` picks for each kind of data."""
DIAG_TRANSFORMS = ("softplus", "exp")  # positive maps of a factor's diagonal, vae.cholesky
DEVICES = ("auto", "cpu", "cuda", "mps")
OBJECTIVES = ("elbo", "iwae")
ESTIMATORS = ("reparam", "stl", "dreg")
LR_SCHEDULES = ("constant", "burda", "cosine")
BINARIZATIONS = ("dynamic", "none")
OUTPUT_BIASES = ("mean", "default")
ARCHS = ("mlp", "conv")  # the networks, vae.model.networks
FIT_OBJECTIVES = ("mse", "nll")  # the covariance learner's, vae.toy
FIT_OPTIMIZERS = ("auto", "adam", "lbfgs")

CHOICES: dict[str, tuple[str, ...]] = {
    "posterior": tuple(FAMILIES), "family": tuple(FAMILIES),
    "diag_transform": DIAG_TRANSFORMS, "device": DEVICES, "objective": OBJECTIVES, "estimator": ESTIMATORS,
    "lr_schedule": LR_SCHEDULES, "binarize": BINARIZATIONS, "output_bias": OUTPUT_BIASES, "data_kind": DATA_KINDS,
    "likelihood": tuple(LIKELIHOODS), "arch": ARCHS,
}
"""Argument name -> its choices, for the arguments whose choices are the same wherever they appear."""

NAME_MAX, PATH_MAX = 255, 4095  # bytes in one file name and in a whole path (Linux, macOS: 1023)


def check_choice(argument: str, value: object, choices: typing.Optional[typing.Sequence[str]] = None) -> None:
    """Raise :class:`~vae.errors.ArgumentError` unless ``value`` is one of ``choices`` (default:
    ``CHOICES[argument]``)."""
    choices = CHOICES[argument] if choices is None else choices
    if value not in choices:
        raise ArgumentError(argument, f"must be one of {', '.join(choices)}, got {value!r}")


def check_estimator(objective: str, k: int, estimator: str) -> None:
    """Raise :class:`~vae.errors.ArgumentError` unless the gradient ``estimator`` is unbiased for ``objective``
    at ``k``."""
    check_choice("estimator", estimator)
    if estimator == "dreg" and objective != "iwae":
        raise ArgumentError("estimator", "dreg is for the iwae objective; the ELBO's doubly reparameterized "
                            "gradient is stl")
    if estimator == "stl" and objective == "iwae" and k > 1:
        raise ArgumentError("estimator", "stl is biased for the iwae objective at k above 1; use dreg")


def check_path(argument: str, path: object) -> None:
    """Raise :class:`~vae.errors.ArgumentError` for a path the OS cannot name: a file name over :data:`NAME_MAX`
    bytes, or the whole over :data:`PATH_MAX` (``ENAMETOOLONG`` otherwise, at the first ``stat``)."""
    raw = os.fsencode(os.fspath(path))
    longest = max(raw.split(b"/"), key=len, default=b"")
    if len(longest) > NAME_MAX:
        raise ArgumentError(argument, f": a name of {len(longest)} bytes ({os.fsdecode(longest[:24])}...), over the "
                                      f"{NAME_MAX} bytes a file name may have")
    if len(raw) > PATH_MAX:
        raise ArgumentError(argument, f": a path of {len(raw)} bytes ({os.fsdecode(raw[:24])}...), over the "
                                      f"{PATH_MAX} bytes a path may have")
