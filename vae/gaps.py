r"""Where the bound loses: the approximation and amortization gaps of each posterior family.

    python -m vae.gaps [CKPT] [--families full diagonal lowrank] [--rank R] [--limit N] [--k 5000]
                       [--steps 100] [--samples S] [--lr 0.02] [--out FILE.json] [--plot FILE.png]

With the decoder fixed, Cremer, Li & Duvenaud (2018) split the distance
between the ELBO and :math:`\log p(x)`:

.. math::
    \log p(x) - \mathcal L[q_\phi] =
    \underbrace{\log p(x) - \mathcal L[q^*_\mathcal F]}_{\text{approximation gap}}
    + \underbrace{\mathcal L[q^*_\mathcal F] - \mathcal L[q_\phi]}_{\text{amortization gap}}

where :math:`q_\phi` is the encoder's own posterior (the *amortized* ELBO) and
:math:`q^*_\mathcal F` the best member of a family :math:`\mathcal F` for each
image, found by optimization (the *optimized* ELBO). For every family asked
for, each image gets its own q, started from the encoder's output projected
onto the family (:meth:`~vae.model.posteriors.GaussianPosterior.project`) and
optimized by Adam on that image's ELBO, all images at once as one batch of
per-image parameters in the family's raw layout (its
:meth:`~vae.model.posteriors.GaussianPosterior.raw`, through
:mod:`vae.cholesky`). The ELBO being optimized uses a fixed set of noise draws
per image (a sample-average approximation), moment-matched to mean 0 and
covariance I where there are more draws than noise dimensions, so the
optimization is deterministic. The final ELBOs are then re-estimated with
fresh draws, so the optimization noise does not bias them. :math:`\log p(x)`
is the importance-weighted bound
(:func:`~vae.model.objectives.importance_weighted_bounds`) with ``K`` draws from
each image's best optimized q.

Everything is in nats per image, bounds as log-likelihoods (negative numbers).
The JSON holds exactly ``log_px``, ``amortized_elbo``, ``amortization_gap``
(the model's own family's optimized ELBO minus the amortized ELBO),
``family`` (the model's own) and ``families``
(``{name: {"optimized_elbo", "approximation_gap"}}``), each a mean over the
images. The covariance learner's optimizer loops (:mod:`vae.toy`) fit one
Gaussian to data and do not fit this objective, a batch of posteriors against
a decoder; what is shared is the one map and the families' raw layouts.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from vae.choices import FAMILIES as FAMILY_NAMES, check_path
from vae.cli import ArgumentParser, add_checkpoint_args, command_name, require_positive
from vae.errors import ArgumentError
from vae.streams import say
from vae.config import check_seed
from vae.data import run_split
from vae.devices import resolve_device, set_threads
from vae.model import FAMILIES, Draw, GaussianPosterior
from vae.model.objectives import importance_weighted_bounds, log_weights
from vae.run.checkpoint import PRETRAINED, load_run
from vae.run.files import save_figure, write_text_atomic
from vae.run.outputs import check_output_path, result_path

__all__ = ["GapSettings", "fixed_noise", "optimize_family", "estimate_bounds", "gaps", "summarize", "gaps_figure",
           "main"]

FRESH_DRAWS = 1000  # draws per image that re-estimate each final ELBO
EXTRA_DRAWS = 16  # the default fixed draws per image: the family's noise dimension plus this


@dataclass(frozen=True)
class GapSettings:
    """How each family's q is optimized: ``steps`` Adam steps at peak ``lr`` (cosine to 0), ``samples`` draws.

    ``samples`` None means the family's noise dimension plus :data:`EXTRA_DRAWS`: enough draws to
    moment-match them (fewer let a full factor stretch along the directions the draws miss, for free
    in the fixed-draw ELBO, and overfit it). ``rank`` is the low-rank family's R (at most D).
    """

    steps: int = 100
    samples: Optional[int] = None
    lr: float = 0.02
    rank: int = 2


def fixed_noise(n: int, samples: int, dim: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Standard-normal draws ``(n, samples, dim)``, per image moment-matched to mean 0 and covariance I if samples > dim."""
    eps = torch.randn(n, samples, dim, generator=generator, device=device, dtype=dtype)
    if samples <= dim:
        return eps
    centred = eps - eps.mean(1, keepdim=True)  # (n, S, E)
    covariance = centred.mT @ centred / samples  # (n, E, E)
    chol = torch.linalg.cholesky(covariance)
    return torch.linalg.solve_triangular(chol, centred.mT, upper=False).mT  # sample mean 0, sample covariance I


def _elbo(model, x: torch.Tensor, q: GaussianPosterior, eps: torch.Tensor) -> torch.Tensor:
    """The ELBO of each image ``(N,)`` averaged over the given draws ``eps (N, S, E)`` of q."""
    z = q.transform(eps)  # (N, S, D)
    return log_weights(model.likelihood.log_prob(model.params(z), x), Draw(q, eps, z)).mean(1)


def optimize_family(model, x: torch.Tensor, start: GaussianPosterior, family: str, settings: GapSettings,
                    generator: torch.Generator, bar: Optional[tqdm] = None) -> GaussianPosterior:
    """Each image's best q of ``family``, from ``start`` projected onto it (the decoder held fixed).

    Args:
        model: the VAE (or any model with ``decode``, ``likelihood`` and ``diag_transform``).
        x: images ``(N, P)``; start: the encoder's posteriors of them.
    """
    cls, rank = FAMILIES[family], min(settings.rank, start.dim)
    first = cls.project(start.detach(), rank)
    transform = getattr(model, "diag_transform", "softplus")
    loc = first.loc.clone().requires_grad_()  # (N, D)
    raw = first.raw(transform).clone().requires_grad_()  # (N, head size)
    samples = settings.samples or first.noise_dim() + EXTRA_DRAWS
    eps = fixed_noise(len(x), samples, first.noise_dim(), generator, x.device, loc.dtype)
    optimizer = torch.optim.Adam([loc, raw], lr=settings.lr)
    best = torch.full((len(x),), -math.inf, device=x.device, dtype=loc.dtype)  # each image's best fixed-draw ELBO
    best_loc, best_raw = loc.detach().clone(), raw.detach().clone()
    for step in range(settings.steps + 1):
        elbo = _elbo(model, x, cls.from_raw(loc, raw, transform, 1.0, rank), eps)  # (N,)
        with torch.no_grad():  # keep each image's best q: the objective is deterministic, so this is monotone
            better = elbo > best
            best = torch.where(better, elbo, best)
            best_loc[better], best_raw[better] = loc[better], raw[better]
        if step == settings.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        optimizer.zero_grad(set_to_none=True)
        # a sum: each image's gradient is its own; the decoder is fixed, so only the per-image q gets one
        (-elbo.sum()).backward(inputs=[loc, raw])
        optimizer.step()
        if bar is not None:
            bar.update(1)
    return cls.from_raw(best_loc, best_raw, transform, 1.0, rank)


@torch.no_grad()
def estimate_bounds(model, x: torch.Tensor, q: GaussianPosterior, k: int, generator: torch.Generator,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh estimates ``(N,)`` from ``k`` draws of q: each image's ELBO and its importance-weighted log p(x)."""
    log_lik = lambda z: model.likelihood.log_prob(model.params(z), x)  # noqa: E731
    return importance_weighted_bounds(log_lik, q, k, generator=generator)


def gaps(model, x: torch.Tensor, families: Sequence[str], settings: GapSettings, k: int = 5000, seed: int = 0,
         progress: bool = True) -> dict[str, torch.Tensor]:
    """Per-image amortized ELBO, optimized ELBO of each family, and log p(x), each ``(N,)``.

    Returns:
        ``{"amortized_elbo": ..., "log_px": ..., "<family>": optimized ELBO, ...}``.
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        start = model.q(x)
    out = {"amortized_elbo": estimate_bounds(model, x, start, FRESH_DRAWS, generator)[0]}
    optimized = {}
    with tqdm(total=settings.steps * len(families), desc="optimizing q per image", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        for family in families:
            bar.set_postfix(family=family)
            optimized[family] = optimize_family(model, x, start, family, settings, generator, bar)
            out[family] = estimate_bounds(model, x, optimized[family], FRESH_DRAWS, generator)[0]
    best = torch.stack([out[f] for f in families]).argmax(0)  # (N,): each image's best family
    log_px = torch.empty_like(out["amortized_elbo"])
    for i, family in enumerate(families):
        rows = (best == i).nonzero().squeeze(1)
        if len(rows):
            log_px[rows] = estimate_bounds(model, x[rows], optimized[family][rows], k, generator)[1]
    out["log_px"] = log_px
    return out


def summarize(per_image: dict[str, torch.Tensor], own: str, families: Sequence[str]) -> dict:
    """The JSON: means over the images, with exactly the keys the module docstring names."""
    mean = {name: per_image[name].double().mean().item() for name in per_image}
    return {
        "log_px": mean["log_px"], "amortized_elbo": mean["amortized_elbo"],
        "amortization_gap": mean[own] - mean["amortized_elbo"], "family": own,
        "families": {f: {"optimized_elbo": mean[f], "approximation_gap": mean["log_px"] - mean[f]} for f in families},
    }


def gaps_figure(per_image: dict[str, torch.Tensor], families: Sequence[str], title: str):
    """Per image (sorted by log p(x)): the amortized ELBO, each family's optimized ELBO, and log p(x)."""
    from matplotlib.figure import Figure

    order = per_image["log_px"].argsort()
    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot()
    index = range(len(order))
    ax.plot(index, per_image["amortized_elbo"][order].cpu(), ".", ms=3, alpha=0.6, label="amortized ELBO (encoder)")
    for family in families:
        ax.plot(index, per_image[family][order].cpu(), ".", ms=3, alpha=0.6, label=f"optimized ELBO, {family}")
    ax.plot(index, per_image["log_px"][order].cpu(), "k-", lw=1, label="log p(x) (importance sampled)")
    ax.set_xlabel("test image, sorted by log p(x)")
    ax.set_ylabel("nats")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), measure the gaps, print and write them; return the exit code."""
    parser = ArgumentParser(prog=command_name("vae.gaps"), description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILY_NAMES, default=["full", "diagonal"],
                        help="the families to optimize (default: full diagonal; the model's own is always added)")
    parser.add_argument("--rank", type=int, default=2, help="R of the lowrank family (default: 2)")
    parser.add_argument("--limit", type=int, default=1000, help="the first N test images (default: 1000)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples for log p(x) (default: 5000)")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per family (default: 100)")
    parser.add_argument("--samples", type=int, default=None, help="fixed draws per image while optimizing "
                        f"(default: the family's noise dimension + {EXTRA_DRAWS}, e.g. 48 at D = 32)")
    parser.add_argument("--lr", type=float, default=0.02, help="peak Adam learning rate, cosine to 0 (default: 0.02)")
    parser.add_argument("--out", default=None, help="JSON path (default: gaps-test-k<K>-limit<N>.json beside the "
                        "checkpoint; for a shipped one, <stem>-gaps-...json in the current folder)")
    parser.add_argument("--plot", default=None, help="also draw the per-image bounds into this PNG")
    add_checkpoint_args(parser, PRETRAINED, "checkpoint", seed_help="seed of every draw")
    args = parser.parse_args(argv)
    require_positive(parser, args, "rank", "limit", "k", "steps", "samples")
    return parser.run(lambda: _measure(args))  # a usage error: exit code 2; a broken checkpoint, a full disk: 1


def _measure(args: argparse.Namespace) -> int:
    """:func:`main` once the flags are parsed; every failure a user can act on is a ``FullcovError``."""
    families = list(dict.fromkeys(args.families))  # once each, in the order given
    checkpoint = args.checkpoint
    check_path("checkpoint", checkpoint)
    if args.data_dir:
        check_path("data_dir", args.data_dir)
    out = Path(args.out) if args.out else result_path(checkpoint, "test", args.k, args.limit, args.seed, "gaps")
    check_seed(args.seed)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ArgumentError("lr", f"must be a positive finite number, got {args.lr}")
    check_output_path(out)
    if args.plot:
        check_output_path(Path(args.plot), "plot")
    device = resolve_device(args.device)
    set_threads(args.threads)
    model, config, _ = load_run(checkpoint, map_location=device)
    images, _, _ = run_split(config, args.data_dir, limit=args.limit, device=device)
    settings = GapSettings(args.steps, args.samples, args.lr, args.rank)
    families += [] if model.family in families else [model.family]  # the amortization gap needs the model's own
    per_image = gaps(model, images, families, settings, args.k, args.seed, args.progress)
    result = summarize(per_image, model.family, families)
    _print_table(result, len(images), args.k)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    say(f"wrote {out}")
    if args.plot:
        title = f"{checkpoint.name}: {len(images)} test images, K = {args.k}"
        say(f"wrote {save_figure(gaps_figure(per_image, families, title), args.plot, dpi=110)}")
    return 0


def _print_table(result: dict, n: int, k: int) -> None:
    say(f"{n} test images; log p(x) (K = {k}) {result['log_px']:.3f}, amortized ELBO "
          f"{result['amortized_elbo']:.3f} (the model's {result['family']} encoder)")
    say("| family | optimized ELBO | approximation gap |")
    say("|---|---|---|")
    for family, row in result["families"].items():
        say(f"| {family} | {row['optimized_elbo']:.3f} | {row['approximation_gap']:.3f} |")
    say(f"amortization gap ({result['family']}): {result['amortization_gap']:.3f} nats")


if __name__ == "__main__":
    sys.exit(main())
