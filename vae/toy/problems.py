r"""The three classic toy problems and their settings: :class:`ToyConfig`, :func:`make_problem`.

1. ``mse``: fit :math:`L` so that :math:`L L^\top` matches ``torch.cov`` of the data.
2. ``mle``: learn the mean and :math:`L` by the Gaussian NLL of a full data tensor.
3. ``batched``: the same NLL over mini-batches from a ``DataLoader``.

Classic settings: D=2, true mean [1, -1], true Sigma [[1, 0.5], [0.5, 2]],
``torch.manual_seed(42)``, 1000 / 100 / 1024 samples, Adam at lr 0.01 for
500 / 1000 / 1000 epochs, batch size 32 for ``batched``. With ``dim`` other
than 2, or with ``condition_number``, the true Sigma is drawn at random with
that condition number (default 10) and the true mean is [1, -1, 1, -1, ...].

Importable without torch (the command line answers a bad flag before torch
loads): torch is imported inside the functions that use it. Nothing runs on
import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from vae.choices import FIT_OPTIMIZERS, check_choice
from vae.errors import ArgumentError, flag

__all__ = ["PROBLEMS", "INITS", "CLI_OPTIMIZERS", "MAX_DIM", "MAX_VALUES", "MAX_CONDITION", "ToyConfig",
           "random_covariance", "make_problem"]

PROBLEMS = {"mse": ("mse", 1000, 500), "mle": ("nll", 100, 1000), "batched": ("nll", 1024, 1000)}
"""problem -> (objective, classic samples, classic Adam epochs)"""
INITS = {"classic": ("exp", math.e), "identity": ("softplus", 1.0)}
"""init -> (diagonal transform, starting L = value * I)"""
CLI_OPTIMIZERS = tuple(name for name in FIT_OPTIMIZERS if name != "auto")
"""The optimizers a toy run names: its defaults (lr, epochs) depend on which one it is."""
MAX_DIM = 2000
"""The largest ``--dim``: the fit holds several (D, D) float64 matrices and factors them every step."""
MAX_VALUES = 10**8
"""The most samples x dim values a toy data set may hold (400 MB of float32)."""
MAX_CONDITION = 1e6
"""The largest ``--condition-number``: the true Sigma is drawn in float32, whose Cholesky fails near 1e7."""
CLASSIC_MEAN = [1.0, -1.0]
CLASSIC_COV = [[1.0, 0.5], [0.5, 2.0]]


def _flag(default, help: str, type=None, **kwargs):
    return field(default=default, metadata=dict(help=help, type=type, **kwargs))


@dataclass
class ToyConfig:
    """One toy run; each field but ``problem`` is a kebab-case flag of ``python -m vae.toy``."""

    problem: str = "mle"
    dim: int = _flag(2, "dimension D (default 2, the classic problem)", int)
    samples: Optional[int] = _flag(None, "number of samples N (default 1000 / 100 / 1024)", int)
    epochs: Optional[int] = _flag(None, "epochs (default Adam 500 / 1000 / 1000; L-BFGS 100 steps)", int)
    lr: Optional[float] = _flag(None, "learning rate (default 0.01 for Adam, 1.0 for L-BFGS)", float)
    batch_size: int = _flag(32, "mini-batch size of the batched problem (default 32)", int)
    optimizer: str = _flag("adam", "optimizer (default adam)", str, choices=CLI_OPTIMIZERS)
    condition_number: Optional[float] = _flag(
        None, "draw a random true Sigma with this condition number (default: the classic Sigma at D=2, else 10)", float)
    init: str = _flag("classic", "start: classic (exp diagonal, L = e*I, as the classic recipe) or identity "
                      "(softplus diagonal, L = I) (default classic)", str, choices=tuple(INITS))
    device: str = _flag("cpu", "torch device (default cpu)", str)
    seed: int = _flag(42, "random seed (default 42)", int)
    out: Optional[str] = _flag(None, "PNG path or folder (default ./toy-<problem>.png)", str)

    @property
    def objective(self) -> str:
        return PROBLEMS[self.problem][0]

    def validate(self) -> None:
        """Fill the per-problem defaults; raise :class:`~vae.errors.ArgumentError` on a bad value."""
        check_choice("problem", self.problem, tuple(PROBLEMS))
        check_choice("optimizer", self.optimizer, CLI_OPTIMIZERS)
        _, samples, epochs = PROBLEMS[self.problem]
        lbfgs = self.optimizer == "lbfgs"
        self.samples = samples if self.samples is None else self.samples
        self.epochs = (100 if lbfgs else epochs) if self.epochs is None else self.epochs
        self.lr = (1.0 if lbfgs else 0.01) if self.lr is None else self.lr
        if not 0 <= self.seed < 2**63:
            raise ArgumentError("seed", f"must be in [0, 2**63), got {self.seed}")
        for name, ok, need in [("dim", 1 <= self.dim <= MAX_DIM, f"in [1, {MAX_DIM}]"),
                               ("samples", self.samples >= 2, ">= 2"),
                               ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                               ("lr", 0 < self.lr < math.inf, "positive and finite")]:
            if not ok:
                raise ArgumentError(name, f"must be {need}, got {getattr(self, name)}")
        if self.objective == "nll" and self.samples <= self.dim:  # the 1/N covariance would be singular
            raise ArgumentError("samples", f"must exceed {flag('dim')} for the {self.problem} problem: "
                                f"{self.samples} samples in {self.dim} dimensions give a singular covariance, "
                                f"which has no Gaussian likelihood; use {flag('samples')} {self.dim + 1} or more")
        if self.samples * self.dim > MAX_VALUES:
            raise ArgumentError("samples", f"{self.samples} in {self.dim} dimensions is {self.samples * self.dim:,} "
                                f"values, over the {MAX_VALUES:,} a toy problem may hold; lower {flag('samples')}")
        if self.condition_number is not None and not 1 <= self.condition_number <= MAX_CONDITION:
            raise ArgumentError("condition_number", f"must be in [1, {MAX_CONDITION:g}] (the true Sigma is drawn in "
                                f"float32), got {self.condition_number}")


def random_covariance(dim: int, condition_number: float, generator=None):
    """A random SPD ``(D, D)`` float64 matrix with eigenvalues log-spaced in ``[1, condition_number]``."""
    import torch

    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))  # (D, D) orthogonal
    eigenvalues = torch.logspace(0, math.log10(condition_number), dim, dtype=torch.float64)  # (D,)
    cov = (q * eigenvalues) @ q.mT
    return (cov + cov.mT) / 2


def make_problem(cfg: ToyConfig):
    """``(true_mean (D,), true_cov (D, D), x (N, D))`` for a validated config, seeded like the classic code."""
    import torch

    if cfg.dim == 2 and cfg.condition_number is None:
        mean, cov = torch.tensor(CLASSIC_MEAN), torch.tensor(CLASSIC_COV)
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        cov = random_covariance(cfg.dim, cfg.condition_number or 10.0, generator).float()
        mean = torch.tensor([(-1.0) ** i for i in range(cfg.dim)])
    torch.manual_seed(cfg.seed)
    true = torch.distributions.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov))
    return mean, cov, true.sample((cfg.samples,))
