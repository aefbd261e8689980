"""The toy run's picture: the data with 1- and 2-sigma ellipses, next to the excess loss per epoch.

Plots go through matplotlib's Agg canvas, never through pyplot, and are
written atomically (a full disk leaves no half-written PNG). numpy and
matplotlib are imported inside the functions. Nothing runs on import.
"""
from __future__ import annotations

import math

__all__ = ["plot_fit"]


def _ellipse(ax, mean, cov, k: float, **style) -> None:
    """The k-sigma ellipse of a 2x2 covariance."""
    import numpy as np
    from matplotlib.patches import Ellipse

    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    angle = math.degrees(math.atan2(eigenvectors[1, 1], eigenvectors[0, 1]))
    width, height = 2 * k * np.sqrt(np.clip(eigenvalues[::-1], 0, None))
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, **style))


def plot_fit(cfg, x, history, optimum: float, fits) -> None:
    """Save ``cfg.out``: the scatter of ``x (N, D)`` with the ellipses of ``fits``, and the excess-loss curve.

    ``fits`` holds ``(label, mean (D,), cov (D, D), line style)``; only the
    first two dimensions are drawn (a histogram and densities at D = 1).
    ``optimum`` is the closed-form loss the curve is measured from.
    """
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
