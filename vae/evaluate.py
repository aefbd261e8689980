r"""Test log-likelihood by importance sampling (Burda et al. 2016), with the ELBO beside it.

    python -m vae.evaluate [CKPT] [--k 5000] [--split test] [--batch-size 20] [--seed 0]

For each image, ``K`` draws :math:`z_k` from the encoder's posterior (any
family) give log-weights
:math:`\log w_k = \log p(x|z_k) + \log p(z_k) - \log q(z_k|x)`, and

.. math::
    -\mathrm{ELBO} \approx -\tfrac1K \sum_k \log w_k, \qquad
    \mathrm{NLL} \approx -\log \tfrac1K \sum_k w_k \;\text{(logsumexp)}.

At ``K = 1`` the two coincide. Images go through in batches and samples in
chunks (:func:`vae.model.objectives.importance_weighted_bounds`), so memory
stays bounded for any ``K``. The split is binarized once with
the same fixed seed as training's test set, so numbers are reproducible.

Results are printed and saved as JSON (``--out``; by default
``eval-<split>-k<K>[-limit<N>][-seed<S>].json`` beside the checkpoint, by the
rules of :mod:`vae.run.outputs`). The
shipped folder ``vae/pretrained/`` is read-only to this command: for
a checkpoint in it the JSON goes to the current folder, named
``<checkpoint stem>-eval-...json``, and an ``--out`` into it is refused. The
JSON records the checkpoint's path relative to the repository when it lies
inside it, else only its file name: no machine's paths.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from vae.choices import check_path
from vae.cli import ArgumentParser, add_checkpoint_args, command_name, require_positive
from vae.streams import say
from vae.config import check_seed
from vae.data import run_split
from vae.devices import accumulator_dtype, resolve_device, set_threads
from vae.model import VAE
from vae.model.objectives import importance_weighted_bounds, sample_chunk
from vae.run.checkpoint import PRETRAINED, load_run
from vae.run.files import write_text_atomic
from vae.run.outputs import check_output_path, result_path

__all__ = ["portable_path", "evaluate_model", "main"]

REPO = Path(__file__).resolve().parents[1]


def portable_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else its file name: no machine's paths."""
    resolved = path.resolve()
    return resolved.relative_to(REPO).as_posix() if REPO in resolved.parents else path.name


@torch.no_grad()
def evaluate_model(
    model: VAE, images: torch.Tensor, k: int = 5000, batch_size: int = 20, seed: int = 0, progress: bool = True,
) -> dict[str, float]:
    """Mean -ELBO and NLL bound of ``images`` ``(N, P)`` (already binarized), in nats per example and in the
    data's own units; for a likelihood of discrete values (8-bit, binary) also in bits per dimension.

    Args:
        model: the VAE, on the device of ``images``.
        k: importance samples per image; batch_size: images per pass.
        seed: seed of the posterior noise.
    """
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    chunk = sample_chunk(k, batch_size)  # the same for every batch, the last one too
    sums = torch.zeros(2, dtype=accumulator_dtype(images.device), device=images.device)  # -elbo, nll
    with tqdm(total=len(images), desc=f"K={k}", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for x in images.split(batch_size):
            log_lik = lambda z: model.likelihood.log_prob(model.params(z), x)  # noqa: E731
            elbo, log_px = importance_weighted_bounds(log_lik, model.q(x), k, chunk, generator)
            sums -= torch.stack([elbo.sum(), log_px.sum()]).to(sums.dtype)
            bar.update(len(x))
    neg_elbo, nll = (sums / len(images)).tolist()
    result = {"neg_elbo": neg_elbo, "nll": nll}
    if model.likelihood.discrete:  # a probability mass; a density's bits per dimension would mean nothing
        result["bits_per_dim"] = nll / (images.shape[1] * math.log(2))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), evaluate, write the JSON; return the exit code."""
    parser = ArgumentParser(prog=command_name("vae.evaluate"), description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000, help="importance samples per image (default: 5000)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--batch-size", type=int, default=20, help="images per pass (default: 20)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--out", default=None, help="JSON path (default: eval-<split>-k<K>[-limit<N>].json beside the "
                        "checkpoint; for a shipped one, <stem>-eval-...json in the current folder)")
    add_checkpoint_args(parser, PRETRAINED, "checkpoint to evaluate", seed_help="seed of the posterior noise")
    args = parser.parse_args(argv)
    require_positive(parser, args, "k", "batch_size", "limit")
    return parser.run(lambda: _evaluate(args))  # a usage error: exit code 2; a broken checkpoint, a full disk: 1


def _evaluate(args: argparse.Namespace) -> int:
    """:func:`main` once the flags are parsed; every failure a user can act on is a ``FullcovError``."""
    check_seed(args.seed)
    checkpoint = args.checkpoint
    check_path("checkpoint", checkpoint)
    if args.data_dir:
        check_path("data_dir", args.data_dir)
    out = Path(args.out) if args.out else result_path(checkpoint, args.split, args.k, args.limit, args.seed)
    check_output_path(out)  # before a long evaluation
    device = resolve_device(args.device)
    set_threads(args.threads)
    model, config, _ = load_run(checkpoint, map_location=device)
    images, _, _ = run_split(config, args.data_dir, train=args.split == "train", limit=args.limit, device=device)
    if config.binarize != "dynamic" and model.likelihood.name == "bernoulli":
        say(f"note: {checkpoint} was trained on intensities (--binarize none); the Bernoulli "
            "bound on them is not a likelihood of binary images", file=sys.stderr)
    start = time.perf_counter()
    result = evaluate_model(model, images, args.k, args.batch_size, args.seed, args.progress)
    result = {"checkpoint": portable_path(checkpoint), "split": args.split, "images": len(images), "k": args.k,
              "seed": args.seed, **result, "seconds": time.perf_counter() - start, "device": str(device),
              "threads": torch.get_num_threads()}
    bits = f"{result['bits_per_dim']:.4f} bits/dim  " if "bits_per_dim" in result else ""
    say(f"{args.split} -ELBO {result['neg_elbo']:.3f}  NLL (K={args.k}) {result['nll']:.3f} nats  {bits}"
        f"[{len(images)} {'images' if len(config.shape) == 3 else 'rows'}, "
        f"{result['seconds']:.0f}s]")
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")  # a full disk: no partial JSON, an older one intact
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
