"""Every knob of a training run in one dataclass, and its command line.

Each field becomes a kebab-case flag (``latent_dim`` -> ``--latent-dim``); its
help text and choices live in the field's metadata. The config is stored as a
plain dict inside every checkpoint and as ``config.json`` in the run folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vae.choices import (
    ARCHS, BINARIZATIONS, DATASETS, DEVICES, DIAG_TRANSFORMS, ESTIMATORS, FAMILIES, LR_SCHEDULES, OBJECTIVES,
    OUTPUT_BIASES, DATA_KINDS, LIKELIHOOD_OF_KIND, LIKELIHOODS, PRETRAINED_DIR, check_choice, check_estimator,
    check_path,
)
from vae.errors import ArgumentError, flag

__all__ = [
    "DIST_TIMEOUT_MAX", "THREADS_HELP", "TrainConfig", "PRESETS", "check_seed", "check_run_name",
    "add_config_args", "config_from_args", "config_from_dict", "preset_config",
]

# Named groups of flags: ``python train.py --preset NAME`` reproduces a results
# run of docs/results.md; flags given beside it override the preset's values.
_RESULTS = dict(dataset="mnist", hidden=(300, 300), latent_dim=32, batch_size=128, lr=1e-3, adam_eps=1e-4,
                lr_schedule="cosine", kl_warmup=50, output_bias="mean", epochs=600, seed=0)
_CONV = {**_RESULTS, "arch": "conv", "channels": (32, 64), "hidden": (256,), "epochs": 150, "kl_warmup": 10,
         "amp": True}
PRESETS: dict[str, dict] = {
    "results-vae-full": {**_RESULTS, "posterior": "full", "run_name": "results-vae-full"},
    "results-vae-diagonal": {**_RESULTS, "posterior": "diagonal", "run_name": "results-vae-diagonal"},
    # a k = 50 IWAE fine-tuned from the shipped full VAE for 10 epochs (docs/results.md)
    "results-iwae-full": {**_RESULTS, "posterior": "full", "objective": "iwae", "k": 50, "estimator": "dreg",
                          "init_from": str(PRETRAINED_DIR / "vae-full.pt"), "epochs": 10, "lr": 3e-4,
                          "kl_warmup": 0, "run_name": "results-iwae-full"},
    # the same fine-tune from the shipped diagonal VAE
    "results-iwae-diagonal": {**_RESULTS, "posterior": "diagonal", "objective": "iwae", "k": 50, "estimator": "dreg",
                              "init_from": str(PRETRAINED_DIR / "vae-diagonal.pt"), "epochs": 10, "lr": 3e-4,
                              "kl_warmup": 0, "run_name": "results-iwae-diagonal"},
    # convolutional networks (docs/results.md): 150 epochs of bf16 on one CPU thread
    "results-conv-full": {**_CONV, "posterior": "full", "run_name": "results-conv-full"},
    "results-conv-diagonal": {**_CONV, "posterior": "diagonal", "run_name": "results-conv-diagonal"},
}


LIKELIHOOD_CHOICES = ("auto", *LIKELIHOODS)
THREADS_HELP = "CPU threads for torch; 0: the cores no other job is busy on, unless OMP_NUM_THREADS sets them"
DIST_TIMEOUT_MAX = 7 * 24 * 3600.0
"""The longest ``--dist-timeout`` (a week): far above any real wait, far below what ``timedelta`` overflows at."""


def check_seed(seed: int) -> None:
    """Raise ``ValueError`` unless ``seed`` is one that ``torch.Generator.manual_seed`` takes, [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ArgumentError("seed", f"must be in [0, 2**63), got {seed}")


def check_run_name(name: typing.Optional[str]) -> None:
    """Raise ``ValueError`` unless ``name`` (``--run-name``) is a folder name, so the run stays inside ``--out-dir``.

    A path separator, ``.``, ``..``, an absolute path or an empty name is refused; None means the default name.
    """
    if name is None:
        return
    separators = [sep for sep in ("/", os.sep, os.altsep, "\0") if sep and sep in name]
    if not isinstance(name, str) or name in ("", ".", "..") or separators or os.path.isabs(name):
        raise ArgumentError("run_name", f"must be a folder name inside the output folder, not a path "
                            f"(no '/', '.' or '..'), got {name!r}")
    check_path("run_name", name)


def _is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (a stored ``True`` is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _knob(default, help: str, choices: tuple | None = None, **kw):
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


@dataclass
class TrainConfig:
    """Configuration of one training run (see ``python train.py --help``)."""

    dataset: str = _knob("mnist", f"{', '.join(DATASETS)}, or a path: a .npz (train, test), a .npy, .pt or .csv "
                                  "array, or a folder of images (docs/data.md)")
    data_dir: typing.Optional[str] = _knob(
        None, "dataset root (torchvision layout); default $VAE_DATA_DIR, else ./data (downloaded)"
    )
    data_kind: str = _knob("auto", "binary (or in [0, 1]), 8bit, or continuous; auto: inferred from the data",
                           DATA_KINDS)
    test_fraction: float = _knob(0.1, "share of a single array's rows held out for testing, by a fixed seed")
    likelihood: str = _knob("auto", "p(x|z): bernoulli, gaussian (learned variance per dimension, on "
                                    "standardized columns) or logistic (discretized, 8-bit); auto: from the "
                                    "kind of data", LIKELIHOOD_CHOICES)
    data_shape: typing.Optional[typing.Tuple[int, ...]] = _knob(
        None, "one example's shape, (C, H, W) or (F,): recorded when a run starts (not a flag); None: MNIST's (shape)",
        flag=False)
    data_rows: typing.Optional[int] = _knob(
        None, "the rows of a source whose test split is held out, recorded when a run starts (not a flag): the "
              "split is a function of them", flag=False)
    limit: typing.Optional[int] = _knob(None, "use only the first N training images")
    binarize: str = _knob("dynamic", "bernoulli likelihood: fresh Bernoulli pixels every batch, or raw intensities",
                          BINARIZATIONS)
    latent_dim: int = _knob(20, "latent dimension D")
    hidden: typing.Tuple[int, ...] = _knob((400,), "hidden widths of encoder and decoder, e.g. --hidden 500 500 "
                                                   "(conv: the dense layers between the convolutions and the heads)")
    arch: str = _knob("mlp", "the networks: MLPs, or stride-2 convolutions (images only; docs/training.md)", ARCHS)
    channels: typing.Tuple[int, ...] = _knob(
        (32, 64), "conv: channels of the encoder's stride-2 4x4 convolutions, one per layer; the decoder mirrors them"
    )
    posterior: str = _knob("full", "posterior family: full Cholesky factor, diagonal, or low rank plus diagonal",
                           tuple(FAMILIES))
    rank: int = _knob(2, "rank R of the lowrank posterior's factor W (Sigma = W W^T + diag(d))")
    diag_transform: str = _knob("softplus", "positive map of the factor's diagonal", DIAG_TRANSFORMS)
    diag_warmup: int = _knob(
        2, "epochs at the start during which a full posterior is held diagonal (0: none); see docs/results.md"
    )
    init_from: typing.Optional[str] = _knob(
        None, "start from this checkpoint's weights (a fine-tune: fresh optimizer, no diagonal warm-up)"
    )
    objective: str = _knob("elbo", "training bound: ELBO, or the importance-weighted bound", OBJECTIVES)
    k: int = _knob(1, "posterior samples per image (the IWAE's K)")
    estimator: str = _knob(
        "reparam", "encoder gradient: reparameterized, sticking the landing (ELBO), or doubly reparameterized (IWAE)",
        ESTIMATORS,
    )
    kl_warmup: int = _knob(
        0, "epochs over which the KL weight rises linearly, per step, from 0 to 1 (0: none); reports stay at weight 1"
    )
    epochs: int = _knob(10, "number of training epochs")
    batch_size: int = _knob(128, "training batch size")
    lr: float = _knob(1e-3, "Adam learning rate (the peak of a schedule)")
    lr_schedule: str = _knob(
        "constant", "learning rate over the run: constant, Burda et al.'s 8 stages scaled to --epochs, or cosine",
        LR_SCHEDULES,
    )
    adam_eps: float = _knob(1e-8, "Adam's epsilon (Burda et al.'s code: 1e-4)")
    output_bias: str = _knob(
        "mean", "decoder output bias at the start: the logit of the mean training pixel, or PyTorch's default init",
        OUTPUT_BIASES,
    )
    grad_clip: typing.Optional[float] = _knob(None, "clip the gradient's global norm to this value")
    eval_batch_size: int = _knob(1000, "batch size of the per-epoch test evaluation")
    eval_every: int = _knob(
        1, "the test bound and the checkpoint writes (last.pt, best.pt, metrics.csv) every N epochs and after the "
           "last; a stop or a crash resumes from the last one written"
    )
    device: str = _knob("auto", "where to train", DEVICES)
    threads: int = _knob(0, THREADS_HELP)
    dist_timeout: float = _knob(
        120.0, "under torchrun: seconds a process waits for the others (to join, or at any exchange) before it fails"
    )
    amp: bool = _knob(False, "bf16 autocast for the networks, on CUDA or a CPU with native bf16 (AMX, AVX512-BF16); "
                             "covariance maths stays float32", negatable=True)
    compile: bool = _knob(False, "torch.compile the training step (CUDA graphs on CUDA)")
    seed: int = _knob(0, "random seed")
    preset: typing.Optional[str] = _knob(
        None, "a named group of flags (docs/training.md); flags given beside it override it", tuple(PRESETS)
    )
    out_dir: str = _knob("checkpoints", "folder holding one sub-folder per run")
    run_name: typing.Optional[str] = _knob(None, "run folder name; default <dataset>-<posterior>-d<D>-s<seed> (a "
                                                 "path's dataset: the file or folder name without its suffix)")
    resume: bool = _knob(False, "continue the run in <out-dir>/<run-name> from its last.pt")
    plots: bool = _knob(True, "write the pictures at the end of training", negatable=True)
    progress: bool = _knob(True, "show progress bars", negatable=True)

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (list, tuple)) and all(_is_int(h) for h in self.hidden):
            self.hidden = tuple(self.hidden)  # a stored list, or the flag's; anything else fails validate()
        if isinstance(self.data_shape, list) and all(_is_int(n) for n in self.data_shape):
            self.data_shape = tuple(self.data_shape)
        if isinstance(self.channels, list) and all(_is_int(n) for n in self.channels):
            self.channels = tuple(self.channels)

    def validate(self) -> None:
        """Raise :class:`~vae.errors.ArgumentError` (a ``ValueError``) with a one-line message for any impossible
        value."""
        for name in ("latent_dim", "rank", "k", "epochs", "batch_size", "eval_batch_size", "eval_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ArgumentError(name, f"must be a positive integer, got {value!r}")
        for name in ("diag_warmup", "kl_warmup", "threads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ArgumentError(name, f"must be a non-negative integer, got {value!r}")
        if self.data_rows is not None and (not _is_int(self.data_rows) or self.data_rows < 2):
            raise ArgumentError("data_rows", f"must be an integer of at least 2, got {self.data_rows!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise ArgumentError("limit", f"must be a positive integer, got {self.limit!r}")
        for name in ("lr", "adam_eps", "dist_timeout", "grad_clip", "test_fraction"):
            value = getattr(self, name)
            if not (value is None and name == "grad_clip") and (isinstance(value, bool)
                                                                 or not isinstance(value, (int, float))):
                raise ArgumentError(name, f"must be a number, got {value!r}")
        for name in ("dataset", "data_dir", "init_from", "out_dir", "run_name", "preset"):
            value = getattr(self, name)
            if not (value is None and name != "out_dir") and not isinstance(value, str):
                raise ArgumentError(name, f"must be a string, got {value!r}")
        for name in ("amp", "compile", "resume", "plots", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentError(name, f"must be true or false, got {getattr(self, name)!r}")
        check_seed(self.seed)
        check_run_name(self.run_name)
        for name in ("lr", "adam_eps", "dist_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ArgumentError(name, f"must be a positive finite number, got {value}")
        if self.dist_timeout > DIST_TIMEOUT_MAX:
            raise ArgumentError("dist_timeout", f"must be at most {DIST_TIMEOUT_MAX:g} seconds (a week), "
                                                f"got {self.dist_timeout:g}")
        if not 0 < self.test_fraction < 1:
            raise ArgumentError("test_fraction", f"must be between 0 and 1, got {self.test_fraction}")
        if not self.dataset:
            raise ArgumentError("dataset", "must name a dataset or a path, got ''")
        if self.dataset not in DATASETS:
            check_path("dataset", self.dataset)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ArgumentError("grad_clip", f"must be positive, got {self.grad_clip}")
        for name in ("data_dir", "init_from", "out_dir"):
            if getattr(self, name) is not None:
                check_path(name, getattr(self, name))
        if self.data_shape is not None and (not isinstance(self.data_shape, tuple) or len(self.data_shape) not in (1, 3)
                                            or not all(_is_int(n) and n >= 1 for n in self.data_shape)):
            raise ArgumentError("data_shape", f"must be (C, H, W) or (F,) of positive sizes, got {self.data_shape!r}")
        for name in ("hidden", "channels"):
            widths = getattr(self, name)
            if not isinstance(widths, tuple) or not widths or any(not _is_int(h) or h < 1 for h in widths):
                shown = list(widths) if isinstance(widths, tuple) else widths
                raise ArgumentError(name, f"must list positive widths, got {shown!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and not (f.default is None and value is None):
                check_choice(f.name, value, choices)
        if self.posterior == "lowrank" and self.rank > self.latent_dim:
            raise ArgumentError("rank", f"must be at most latent_dim ({self.latent_dim}), got {self.rank}")
        check_estimator(self.objective, self.k, self.estimator)

    @property
    def data_path(self) -> typing.Optional[Path]:
        """``dataset`` as an absolute path, or None for a registered dataset's name."""
        return None if self.dataset in DATASETS else Path(os.path.abspath(os.path.expanduser(self.dataset)))

    @property
    def shape(self) -> typing.Tuple[int, ...]:
        """One example's shape: ``data_shape``, or MNIST's for a config stored before runs recorded it."""
        return self.data_shape or DATASETS["mnist"].shape

    def likelihood_for(self, kind: str) -> str:
        """The likelihood this run uses on data of ``kind``: ``likelihood``, or what ``auto`` picks for the kind."""
        return LIKELIHOOD_OF_KIND[kind] if self.likelihood == "auto" else self.likelihood

    @property
    def binarizes(self) -> bool:
        """Whether each batch is drawn binary: ``binarize dynamic`` under a likelihood of binary data (the
        Bernoulli; ``auto`` in a config stored before runs recorded their likelihood, an MNIST run's)."""
        return self.binarize == "dynamic" and self.likelihood in ("auto", "bernoulli")

    @property
    def name(self) -> str:
        """The run folder's name."""
        data = self.dataset if self.dataset in DATASETS else Path(self.dataset.rstrip("/\\")).stem or "data"
        return self.run_name or f"{data}-{self.posterior}-d{self.latent_dim}-s{self.seed}"

    def check_run_dir(self) -> Path:
        """The run folder ``<out_dir>/<name>``, once sure that it can be created; nothing is created.

        Raises:
            ValueError: a file or a symbolic link stands in the way, the folder would lie in the shipped
                folder, or the nearest existing folder cannot be written.
        """
        run_dir = Path(self.out_dir) / self.name
        check_path("out_dir", run_dir / ".fullcov-last.pt.12345678.tmp")  # the longest name written there
        shipped = Path(os.path.realpath(PRETRAINED_DIR))
        inside = Path(os.path.realpath(run_dir))
        if inside == shipped or shipped in inside.parents:
            raise ArgumentError("out_dir", f"{self.out_dir}: the run folder {run_dir} would lie in {PRETRAINED_DIR}, "
                                           "which holds the shipped models and which no command writes; choose "
                                           "another `out_dir`")
        if os.path.islink(run_dir):  # e.g. unpacked from an archive: its files would be written wherever it points
            raise ArgumentError("run_name", f"{run_dir} is a symbolic link; a run folder must be a folder of its own "
                                            "(to train on another disk, point `out_dir` there)")
        existing = run_dir
        while not os.path.lexists(existing) and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise ArgumentError("out_dir", f"{self.out_dir}: cannot create the run folder {run_dir}, "
                                           f"{existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ArgumentError("out_dir", f"{self.out_dir}: cannot create the run folder {run_dir}, "
                                           f"{existing} is not writable")
        return run_dir


def add_config_args(parser: argparse.ArgumentParser, cls=TrainConfig, with_defaults: bool = True) -> None:
    """Add one kebab-case flag per field of the dataclass ``cls``.

    With ``with_defaults=False`` the parser's own default applies (use
    ``argparse.SUPPRESS`` to learn which flags were given).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag") is False:  # a fact a run records, not a choice
            continue
        option = flag(f.name)
        kind = hints[f.name]
        meta = f.metadata
        shown = "" if f.default is None else f" (default: {' '.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default})"
        kwargs = {"help": meta.get("help", "") + shown, "dest": f.name}
        if with_defaults:
            kwargs["default"] = f.default
        if kind is bool and meta.get("negatable"):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if kind is bool:
            parser.add_argument(option, action="store_true", **kwargs)
            continue
        args = typing.get_args(kind)
        if typing.get_origin(kind) is tuple:
            kwargs.update(nargs="+", type=args[0], metavar="N")
        else:
            base = next((a for a in args if a is not type(None)), kind)  # Optional[X] -> X
            kwargs.update(type=base, metavar=f.name.upper() if base is not str else None)
        if meta.get("choices"):
            kwargs.update(choices=meta["choices"], metavar=None)
        parser.add_argument(option, **kwargs)


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    """Build ``cls`` from the parsed flags."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def config_from_dict(values: dict, cls=TrainConfig):
    """Rebuild ``cls`` from a stored dict, ignoring keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def preset_config(explicit: dict, cls=TrainConfig):
    """The config of ``explicit`` flags (a name -> value dict) on top of their preset's values, if one is named.

    An unknown preset adds nothing here; :meth:`TrainConfig.validate` refuses it like any other bad choice.
    """
    return cls(**{**PRESETS.get(explicit.get("preset"), {}), **explicit})
