r"""The three toy problems of learning a covariance: ``python -m vae.toy mse|mle|batched``.

1. ``mse``: fit :math:`L` so that :math:`L L^\top` matches ``torch.cov`` of the data.
2. ``mle``: learn the mean and :math:`L` by the Gaussian NLL of a full data tensor.
3. ``batched``: the same NLL over mini-batches from a ``DataLoader``.

Defaults are the classic settings: D=2, true mean [1, -1], true Sigma
[[1, 0.5], [0.5, 2]], ``torch.manual_seed(42)``, 1000 / 100 / 1024 samples,
Adam at lr 0.01 for 500 / 1000 / 1000 epochs, batch size 32 for ``batched``.
With ``--dim`` other than 2, or with ``--condition-number``, the true Sigma is
drawn at random with that condition number (default 10) and the true mean is
[1, -1, 1, -1, ...]. With ``--optimizer lbfgs`` the defaults become lr 1.0 and
at most 100 L-BFGS steps (of up to 20 iterations each), stopping early.

The run prints the learned, closed-form and true parameters, the relative
Frobenius error to the closed form, and whether it is below 1e-3 ("converged").
It saves a PNG (``--out``; default ``toy-<problem>.png`` in the working
directory, or that name inside ``--out`` when it is a folder): the data (first
two dimensions) with 1- and 2-sigma ellipses of the true, closed-form and
learned Sigma, next to the excess loss over the closed-form optimum.

By default (``--init classic``) the learner starts as the classic recipe does:
zero mean, raw entries = I with an ``exp`` diagonal, i.e. L = e I. From there
the 500 mse epochs end 8.9% (relative Frobenius) from ``torch.cov``, and the
script says so. ``--init identity`` starts from L = I with the softplus
diagonal (the library's default) and ends at 2e-7. Any run that misses 1e-3
says so and points to ``--epochs`` or ``--optimizer lbfgs``.

Bad arguments print one line on stderr and exit with code 2; a plot that
cannot be written (a full disk) prints one line, exits with code 1 and leaves
no partial PNG. Nothing runs on import; plots go through matplotlib's Agg
canvas, never through pyplot. torch,
numpy and matplotlib are imported inside the functions that use them, so a bad
flag is answered before torch loads (as with ``vae.config``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from vae.cli import ArgumentParser  # torch-free: a bad flag is answered before torch loads

__all__ = ["PROBLEMS", "CONVERGED", "ToyConfig", "random_covariance", "make_problem", "main"]

PROBLEMS = {"mse": ("mse", 1000, 500), "mle": ("nll", 100, 1000), "batched": ("nll", 1024, 1000)}
"""problem -> (objective, classic samples, classic Adam epochs)"""
CONVERGED = 1e-3  # relative Frobenius error to the closed form
INITS = {"classic": ("exp", math.e), "identity": ("softplus", 1.0)}
"""init -> (diagonal transform, starting L = value * I)"""
CLASSIC_MEAN = [1.0, -1.0]
CLASSIC_COV = [[1.0, 0.5], [0.5, 2.0]]


def _flag(default, help: str, type=None, **kwargs):
    return field(default=default, metadata=dict(help=help, type=type, **kwargs))


@dataclass
class ToyConfig:
    """One toy run; each field but ``problem`` is a kebab-case flag."""

    problem: str = "mle"
    dim: int = _flag(2, "dimension D (default 2, the classic problem)", int)
    samples: Optional[int] = _flag(None, "number of samples N (default 1000 / 100 / 1024)", int)
    epochs: Optional[int] = _flag(None, "epochs (default Adam 500 / 1000 / 1000; L-BFGS 100 steps)", int)
    lr: Optional[float] = _flag(None, "learning rate (default 0.01 for Adam, 1.0 for L-BFGS)", float)
    batch_size: int = _flag(32, "mini-batch size of the batched problem (default 32)", int)
    optimizer: str = _flag("adam", "optimizer (default adam)", str, choices=("adam", "lbfgs"))
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
        """Fill the per-problem defaults; raise ``ValueError`` on a bad value."""
        if self.problem not in PROBLEMS or self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"unknown problem {self.problem!r} or optimizer {self.optimizer!r}")
        _, samples, epochs = PROBLEMS[self.problem]
        lbfgs = self.optimizer == "lbfgs"
        self.samples = samples if self.samples is None else self.samples
        self.epochs = (100 if lbfgs else epochs) if self.epochs is None else self.epochs
        self.lr = (1.0 if lbfgs else 0.01) if self.lr is None else self.lr
        for name, ok, need in [("dim", self.dim >= 1, ">= 1"), ("samples", self.samples >= 2, ">= 2"),
                               ("epochs", self.epochs >= 1, ">= 1"), ("batch-size", self.batch_size >= 1, ">= 1"),
                               ("lr", 0 < self.lr < math.inf, "positive and finite")]:
            if not ok:
                raise ValueError(f"--{name} must be {need}, got {getattr(self, name.replace('-', '_'))}")
        if self.objective == "nll" and self.samples <= self.dim:  # the 1/N covariance would be singular
            raise ValueError(f"--samples must exceed --dim for the {self.problem} problem: {self.samples} samples "
                             f"in {self.dim} dimensions give a singular covariance, which has no Gaussian "
                             f"likelihood; use --samples {self.dim + 1} or more")
        if self.condition_number is not None and not 1 <= self.condition_number < math.inf:
            raise ValueError(f"--condition-number must be >= 1 and finite, got {self.condition_number}")


def _png_path(out: Optional[str], problem: str) -> str:
    """Resolve ``--out`` to a PNG path; raise ``ValueError`` if it cannot be written."""
    name = f"toy-{problem}.png"
    out = out or name
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        out = os.path.join(out, name)
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(out) or (
            os.path.exists(out) and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {out!r} is not writable")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m vae.toy", description="Learn a Gaussian's covariance on a toy problem.")
    parser.add_argument("problem", choices=tuple(PROBLEMS), help="which toy problem")
    for f in dataclasses.fields(ToyConfig)[1:]:
        meta = dict(f.metadata)
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, **meta)
    return parser


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


def _fmt(t) -> str:
    """A tensor as a Python literal, one matrix row per line."""
    rows = t.detach().cpu().double().reshape(-1, t.shape[-1]).tolist()
    text = ",\n ".join("[" + ", ".join(f"{v: .6g}" for v in row) + "]" for row in rows)
    return f"[{text}]" if t.dim() == 2 else text


def _report(cfg: ToyConfig, learner, history, true_mean, true_cov, cf_mean, cf_cov) -> bool:
    from vae.covariance import relative_error

    nll = cfg.objective == "nll"
    opt = "Adam" if cfg.optimizer == "adam" else "L-BFGS"
    print(f"\n{cfg.problem}: D={cfg.dim}, N={cfg.samples}, {cfg.objective} objective, {opt} lr={cfg.lr:g}, "
          f"{cfg.init} start, "
          f"{len(history)} epochs ({history.iterations} iterations), {history.seconds:.2f} s")
    target = "1/N MLE" if nll else "torch.cov, unbiased"
    blocks = [("mean", learner.loc, cf_mean, true_mean, "sample mean")] if nll else []
    blocks.append(("Sigma", learner.covariance_matrix, cf_cov, true_cov, target))
    errors = {}
    for name, learned, closed, true, how in blocks:
        print(f"learned {name}:\n{_fmt(learned)}\nclosed-form {name} ({how}):\n{_fmt(closed)}\n"
              f"true {name}:\n{_fmt(true)}")
        errors[name] = relative_error(learned, closed)
    print("relative Frobenius error to the closed form: "
          + ", ".join(f"{name} {err:.3g}" for name, err in errors.items()))
    worst_name, worst = max(errors.items(), key=lambda item: item[1])
    if worst < CONVERGED:
        print(f"converged: yes (error below {CONVERGED:g})")
        return True
    hint = f"train longer (--epochs {10 * cfg.epochs})"
    if cfg.optimizer == "adam":
        hint = ("mini-batch Adam at a constant lr keeps a noise floor; --optimizer lbfgs uses the exact gradient "
                "accumulated over the batches" if cfg.problem == "batched" else hint + " or use --optimizer lbfgs")
    print(f"converged: NO - the learned {worst_name} stands {100 * worst:.2g}% (relative Frobenius) from its "
          f"closed form after {len(history)} epochs (threshold {CONVERGED:g}); {hint}")
    return False


def _ellipse(ax, mean, cov, k: float, **style) -> None:
    """The k-sigma ellipse of a 2x2 covariance."""
    import numpy as np
    from matplotlib.patches import Ellipse

    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    angle = math.degrees(math.atan2(eigenvectors[1, 1], eigenvectors[0, 1]))
    width, height = 2 * k * np.sqrt(np.clip(eigenvalues[::-1], 0, None))
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, **style))


def _plot(cfg: ToyConfig, x, history, optimum: float, fits) -> None:
    """Save the scatter with 1- and 2-sigma ellipses next to the excess-loss curve."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vae.run.files import save_figure

    fig = Figure(figsize=(11, 4.6))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    left, right = fig.subplots(1, 2)
    points = x.detach().cpu().double().numpy()
    if cfg.dim == 1:
        left.hist(points[:, 0], bins=30, density=True, color="0.8")
        grid = np.linspace(points.min(), points.max(), 200)
    else:
        left.scatter(points[:, 0], points[:, 1], s=6, color="0.6", alpha=0.6, label=f"data (N={cfg.samples})")
    for label, mean, cov, style in fits:
        mean, cov = mean.detach().cpu().double().numpy()[:2], cov.detach().cpu().double().numpy()[:2, :2]
        if cfg.dim == 1:
            pdf = np.exp(-0.5 * (grid - mean[0]) ** 2 / cov[0, 0]) / np.sqrt(2 * np.pi * cov[0, 0])
            left.plot(grid, pdf, label=label, **style)
            continue
        for k in (1, 2):
            _ellipse(left, mean, cov, k, label=label if k == 1 else None, **style)
    left.set_title(f"{cfg.problem}: 1- and 2-sigma ellipses" + (" (dims 1-2)" if cfg.dim > 2 else ""))
    left.legend(loc="best", fontsize=8)
    if cfg.dim > 1:
        left.axis("equal")
    # float32 cannot resolve a loss closer than eps * |optimum| to the optimum: floor the curve there
    floor = np.finfo(np.float32).eps * abs(optimum) or np.finfo(np.float32).tiny
    excess = np.maximum(np.asarray(history, dtype=float) - optimum, floor)
    right.semilogy(np.arange(1, len(excess) + 1), excess, marker="o" if len(excess) < 50 else None)
    right.set(title="loss above the closed-form optimum", xlabel="epoch", ylabel=f"{cfg.objective} excess (log)")
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, cfg.out, dpi=90)  # atomic: a full disk leaves no half-written PNG


def run(cfg: ToyConfig) -> bool:
    """Fit, report and plot one validated config; returns whether it converged."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from vae.cholesky import mvn_log_prob
    from vae.covariance import closed_form, fit_covariance

    true_mean, true_cov, x = make_problem(cfg)
    data = DataLoader(TensorDataset(x), batch_size=cfg.batch_size, shuffle=True) if cfg.problem == "batched" else x
    diag_transform, start = INITS[cfg.init]
    init = (torch.zeros(cfg.dim), start * torch.eye(cfg.dim))
    learner, history = fit_covariance(data, cfg.objective, optimizer=cfg.optimizer, lr=cfg.lr, epochs=cfg.epochs,
                                      diag_transform=diag_transform, init=init, device=cfg.device, progress=True)
    cf_mean, cf_cov = closed_form(x, cfg.objective)
    converged = _report(cfg, learner, history, true_mean, true_cov, cf_mean, cf_cov)
    optimum = 0.0
    if cfg.objective == "nll":
        optimum = -mvn_log_prob(x.double(), cf_mean, torch.linalg.cholesky(cf_cov)).mean().item()
    learned_mean = learner.loc if cfg.objective == "nll" else cf_mean  # mse learns no mean
    _plot(cfg, x, history, optimum, [("true", true_mean, true_cov, dict(color="k", lw=1.5)),
                                     ("closed form", cf_mean, cf_cov, dict(color="tab:blue", ls="--", lw=1.5)),
                                     ("learned", learned_mean, learner.covariance_matrix, dict(color="tab:red", lw=1))])
    print(f"plot: {cfg.out}")
    return converged


def main(argv=None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run, and return the exit code (0 even if not converged)."""
    parser = _parser()
    cfg = ToyConfig(**vars(parser.parse_args(argv)))
    try:
        cfg.validate()
        cfg.out = _png_path(cfg.out, cfg.problem)
    except ValueError as err:
        parser.error(err)
    import torch

    # The toy tensors are tiny: intra-op threads only add synchronization, which on a
    # busy 2-core machine made a mini-batch step 10x slower (8.8 vs 0.85 ms).
    torch.set_num_threads(1)
    try:
        torch.empty(0, device=cfg.device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {cfg.device!r} is not usable: {err}")
    from vae.run.files import WriteError

    try:
        run(cfg)
    except (FloatingPointError, WriteError) as err:  # a diverged fit; a full disk under the plot
        return parser.fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
