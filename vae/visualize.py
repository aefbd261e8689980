"""Every picture of a trained VAE, as PNG files.

    python -m vae.visualize checkpoints/<run>/best.pt [--out DIR] [--data-dir DIR]

Writes ``reconstructions.png``, ``samples.png``, ``latent.png``,
``curves.png`` and, for a 2-D latent space, ``manifold.png`` (images only) and
``ellipses.png``: the 1σ posterior ellipses of test examples, tilted where the
full covariance captures correlation. The pictures follow the data: grey or
colour image grids; for table rows, each column against its reconstruction and
a pair plot of samples over the test rows; points coloured by label when the
data have labels. Figures are drawn with matplotlib's
object API (no pyplot, no GUI backend). Each PNG is rendered in memory and
written atomically (:func:`vae.run.files.save_figure`): a full disk gets one line and exit
code 1, and every picture is whole, the old one or the new one.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from matplotlib.figure import Figure

from vae.choices import check_path
from vae.cli import ArgumentParser, add_checkpoint_args, command_name, test_hooks
from vae.errors import FullcovError
from vae.streams import say
from vae.data import run_split
from vae.model import VAE
from vae.run.checkpoint import PRETRAINED, load_run
from vae.run.files import save_figure
from vae.run.outputs import check_output_folder, make_output_folder, pictures_folder

__all__ = [
    "image_grid", "reconstructions_figure", "samples_figure", "latent_figure",
    "manifold_figure", "ellipses_figure", "curves_figure", "write_run_pictures", "main",
]

CMAP = "tab10"


def image_grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    """Tile ``(rows * cols, C, H, W)`` images, values in [0, 1], into one picture.

    Returns ``(rows * H, cols * W)`` for one channel, ``(rows * H, cols * W, 3)`` for colour (RGB, or the
    first three channels); other channel counts show their first channel.
    """
    n, c, h, w = images.shape
    cols = n // rows
    tiles = images[: rows * cols].reshape(rows, cols, c, h, w)
    picture = tiles.permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c).float().clamp(0, 1).cpu()
    return picture[..., :3] if c >= 3 else picture[..., 0]


def _show(fig: Figure, picture: torch.Tensor, title: str) -> Figure:
    ax = fig.add_subplot()
    ax.imshow(picture.numpy(), cmap="gray" if picture.dim() == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return fig


def _pixels(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Examples ``(N, P)`` or ``(N, *data_shape)`` in the data's units as images ``(N, C, H, W)`` in [0, 1]."""
    return x.reshape(len(x), *model.data_shape).float() / model.likelihood.pixel_scale


@torch.no_grad()
def reconstructions_figure(model: VAE, x: torch.Tensor, n: int = 16) -> Figure:
    """Test examples ``(N, P)`` above their reconstructions from the posterior mean: two rows of each for
    images; for table rows, each of the first columns against its reconstruction."""
    if model.likelihood.pixel_scale is None:
        return _columns_figure(model, x)
    x = x[: 2 * (n // 2)]
    loc, _ = model.encode(x)
    picture = image_grid(torch.cat([_pixels(model, x), _pixels(model, model.mean(loc))]), rows=4)
    return _show(Figure(figsize=(n / 2.2, 4.6)), picture, "test images (top) and reconstructions (bottom)")


def _columns_figure(model: VAE, x: torch.Tensor, columns: int = 6) -> Figure:
    """Table rows ``(N, F)``: the first ``columns`` columns, each value against its reconstruction."""
    recon = model.mean(model.encode(x)[0]).cpu()  # (N, F)
    x = x.cpu().float()
    shown = min(columns, x.shape[1])
    fig = Figure(figsize=(3.2 * shown, 3.4))
    for j, ax in enumerate(fig.subplots(1, shown, squeeze=False)[0]):
        ax.scatter(x[:, j].numpy(), recon[:, j].numpy(), s=3, alpha=0.5)
        low, high = float(x[:, j].min()), float(x[:, j].max())
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        ax.set_xlabel(f"column {j + 1}")
        ax.set_ylabel("reconstruction" if j == 0 else "")
    fig.suptitle(f"test rows against their reconstructions from the posterior mean (first {shown} of "
                 f"{x.shape[1]} columns)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def samples_figure(model: VAE, n: int = 64, seed: int = 0, data: Optional[torch.Tensor] = None) -> Figure:
    """A grid of images decoded from prior samples z ~ N(0, I) (the likelihood's means); for table rows, a pair
    plot of the first columns of draws x ~ p(x|z) p(z) over the test rows ``data``."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if model.likelihood.pixel_scale is None:
        z = torch.randn(max(n, len(data) if data is not None else 0), model.latent_dim, device=device,
                        generator=generator)
        return _pairs_figure(model.likelihood.sample(model.params(z), generator).cpu(), data)
    rows = int(math.sqrt(n))
    picture = image_grid(_pixels(model, model.sample(rows * rows, generator)), rows=rows)
    return _show(Figure(figsize=(6, 6.4)), picture, "samples from the prior")


def _pairs_figure(samples: torch.Tensor, data: Optional[torch.Tensor], columns: int = 3) -> Figure:
    """A pair plot of the first ``columns`` columns: the test rows (grey) and the model's samples."""
    shown = min(columns, samples.shape[1])
    fig = Figure(figsize=(3.2 * shown, 3.2 * shown))
    cells = fig.subplots(shown, shown, squeeze=False)
    for i in range(shown):
        for j in range(shown):
            ax = cells[i, j]
            if i == j:
                if data is not None:
                    ax.hist(data[:, j].cpu().float().numpy(), bins=40, color="0.6", density=True, label="test")
                ax.hist(samples[:, j].numpy(), bins=40, histtype="step", density=True, label="samples")
            else:
                if data is not None:
                    ax.scatter(data[:, j].cpu().numpy(), data[:, i].cpu().numpy(), s=2, color="0.6", alpha=0.4)
                ax.scatter(samples[:, j].numpy(), samples[:, i].numpy(), s=2, alpha=0.4)
            ax.set_xlabel(f"column {j + 1}" if i == shown - 1 else "")
            ax.set_ylabel(f"column {i + 1}" if j == 0 else "")
    cells[0, 0].legend(fontsize=7)
    fig.suptitle("test rows (grey) and the model's draws")
    fig.tight_layout()
    return fig


def _colour(ax, fig, points: torch.Tensor, labels: Optional[torch.Tensor], alpha: float):
    """Scatter ``points (N, 2)``, coloured by ``labels`` with a colour bar when there are labels, plain otherwise."""
    if labels is None:
        return ax.scatter(*points.cpu().T.numpy(), s=2, alpha=alpha, color="C0")
    labels = labels.cpu().numpy()
    scatter = ax.scatter(*points.cpu().T.numpy(), c=labels, cmap=CMAP, s=2, alpha=alpha)
    fig.colorbar(scatter, ax=ax, ticks=range(int(labels.max()) + 1) if len(labels) else None, label="label")
    return scatter


def _project(loc: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The latent itself for D = 2, else the top-2 principal components: ``(N, D) -> (N, 2)``."""
    if loc.shape[1] == 2:
        return loc, "z"
    centered = loc - loc.mean(0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    return centered @ vh[:2].T, "PC"


@torch.no_grad()
def latent_figure(model: VAE, images: torch.Tensor, labels: Optional[torch.Tensor]) -> Figure:
    """Posterior means of test examples, coloured by label when there are labels (PCA when D > 2)."""
    loc, _ = model.encode(images)
    points, axis = _project(loc)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    _colour(ax, fig, points, labels, alpha=0.6)
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    title = "latent space" if axis == "z" else f"PCA of posterior means (D = {loc.shape[1]})"
    ax.set_title(f"{title}, test set")
    return fig


@torch.no_grad()
def manifold_figure(model: VAE, n: int = 20) -> Figure:
    """For D = 2: images decoded over a grid of prior quantiles 5%..95%."""
    device = next(model.parameters()).device
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n)).to(device)
    grid = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)  # (n*n, 2)
    picture = image_grid(_pixels(model, model.mean(grid)), rows=n)
    return _show(Figure(figsize=(8, 8.4)), picture, "decoded manifold over prior quantiles")


@torch.no_grad()
def ellipses_figure(model: VAE, images: torch.Tensor, labels: Optional[torch.Tensor], n: int = 30) -> Figure:
    """For D = 2: 1σ posterior ellipses {loc + L u : |u| = 1} of ``n`` test examples, coloured by label if any.

    Left, at true scale over the scatter of posterior means; right, each
    ellipse on its own equal-aspect axes with its correlation ρ, so the tilt
    that a full covariance captures is visible however small the ellipse.
    """
    loc, scale_tril = model.encode(images)
    covariance = scale_tril @ scale_tril.transpose(-1, -2)  # (N, 2, 2)
    t = torch.linspace(0, 2 * math.pi, 100, device=loc.device)
    circle = torch.stack([t.cos(), t.sin()])  # (2, 100)
    picks = torch.linspace(0, len(loc) - 1, n).long().tolist()
    fig = Figure(figsize=(15, 6.5))
    main_fig, grid_fig = fig.subfigures(1, 2, width_ratios=[1.1, 1])
    ax = main_fig.add_subplot()
    scatter = _colour(ax, main_fig, loc, labels, alpha=0.25)
    colour = (lambda i: "C0") if labels is None else (lambda i: scatter.get_cmap()(scatter.norm(int(labels[i]))))
    cols = math.ceil(math.sqrt(n * 1.2))
    cells = grid_fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for cell, i in zip(cells, picks):
        outline = (loc[i, :, None] + scale_tril[i] @ circle).cpu().numpy()  # (2, 100): the 1σ contour
        color = colour(i)
        ax.plot(*outline, color=color, lw=1.5)
        ax.plot(*loc[i].cpu().numpy(), "k.", ms=3)
        rho = covariance[i, 0, 1] / covariance[i].diagonal().prod().sqrt()
        cell.plot(*outline, color=color, lw=1.5)
        cell.set_aspect("equal", adjustable="datalim")
        cell.set_title(f"ρ={rho:+.2f}", fontsize=8)
        cell.set_xticks([])
        cell.set_yticks([])
    for cell in cells[len(picks):]:
        cell.axis("off")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"1σ posterior ellipses of {n} test examples, true scale")
    grid_fig.suptitle("the same ellipses, each on its own axes (equal aspect)")
    return fig


def curves_figure(metrics: Sequence[dict]) -> Figure:
    """Train and test -ELBO, and the test reconstruction and KL terms, per epoch."""
    epochs = [row["epoch"] for row in metrics]
    tested = [row for row in metrics if not math.isnan(row["test_neg_elbo"])]  # --eval-every skips some
    tested_epochs = [row["epoch"] for row in tested]
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [row["train_neg_elbo"] for row in metrics], "o-", label="train")
    left.plot(tested_epochs, [row["test_neg_elbo"] for row in tested], "o-", label="test")
    left.set_ylabel("-ELBO (nats per image)")
    right.plot(tested_epochs, [row["test_recon"] for row in tested], "o-", label="reconstruction")
    right.plot(tested_epochs, [row["test_kl"] for row in tested], "o-", label="KL")
    right.set_ylabel("test term (nats per image)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("training curves")
    fig.tight_layout()
    return fig


def write_run_pictures(
    checkpoint: str | Path, out_dir: str | Path, data_dir: Optional[str] = None, device: str = "cpu",
) -> list[Path]:
    """Draw every picture of a checkpoint into ``out_dir`` and return the PNG paths.

    Raises:
        vae.run.checkpoint.CheckpointError: the checkpoint cannot be loaded.
        vae.data.DataError: the test set cannot be loaded.
        vae.errors.UsageError: ``out_dir`` cannot be made (a file stands in its place, say).
        vae.run.files.WriteError: a picture could not be written; those before it were.
    """
    model, config, state = load_run(checkpoint, map_location=device)
    x, labels, _ = run_split(config, data_dir, device=device)  # (N, P): the test split
    figures = {
        "reconstructions": reconstructions_figure(model, x),
        "samples": samples_figure(model, data=x[:2000]),
        "latent": latent_figure(model, x, labels),
        "curves": curves_figure(state["metrics"]),
    }
    if model.latent_dim == 2:
        if model.likelihood.pixel_scale is not None:  # images: the decoded manifold
            figures["manifold"] = manifold_figure(model)
        figures["ellipses"] = ellipses_figure(model, x, labels)
    out_dir = make_output_folder(Path(out_dir), "pictures")
    return [save_figure(fig, out_dir / f"{name}.png", dpi=110, bbox_inches="tight") for name, fig in figures.items()]


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), draw and write every picture; return the exit code."""
    parser = ArgumentParser(prog=command_name("vae.visualize"), description="Draw every picture of a trained VAE.")
    parser.add_argument("--out", help="folder for the PNGs (default: the checkpoint's folder; for a shipped model, "
                        "<stem>-pictures/ in the current folder)")
    add_checkpoint_args(parser, PRETRAINED, "a best.pt or last.pt written by train.py", compute=False)
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    out = Path(args.out) if args.out else pictures_folder(checkpoint)
    try:
        check_path("checkpoint", checkpoint)
        check_output_folder(out, "reconstructions.png", "pictures")
        with test_hooks():
            paths = write_run_pictures(checkpoint, out, args.data_dir)
    except FullcovError as err:  # a usage error: exit code 2; a broken checkpoint, a full disk: 1 (each picture
        return parser.report(err)  # written is whole, the old one or the new one)
    for path in paths:
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
