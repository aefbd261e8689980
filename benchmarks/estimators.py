"""Step time of the gradient estimators: stl and dreg against the plain reparameterized gradient.

    python benchmarks/estimators.py [--k 5 50] [--posterior full diagonal] [--steps 30] [--rounds 5]

One training step (forward, backward, Adam) of the results architecture
(784-300-300, D = 32, batch 128) on random binary images, for each estimator
the objective allows: the ELBO at k = 1 (``reparam``, ``stl``) and the IWAE at
each ``--k`` (``reparam``, ``dreg``). The estimators are timed in turn, round
after round, so a machine whose speed drifts slows each of them alike; the
table shows the median over rounds of the mean step time, and the ratio to
``reparam`` of the same objective and k.
"""
from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.cli import ArgumentParser, require_positive  # noqa: E402
from vae.model import VAE  # noqa: E402
from vae.model.objectives import training_loss  # noqa: E402


def step_seconds(model: VAE, optimizer, x: torch.Tensor, objective: str, k: int, estimator: str, steps: int) -> float:
    """Mean wall time of ``steps`` training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        surrogate, _ = training_loss(model, x, objective, k, estimator)
        optimizer.zero_grad(set_to_none=True)
        surrogate.mean().backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 50], help="IWAE sample counts (default: 5 50)")
    parser.add_argument("--posterior", nargs="+", choices=("full", "diagonal"), default=["full", "diagonal"])
    parser.add_argument("--steps", type=int, default=30, help="steps per timing (default: 30)")
    parser.add_argument("--rounds", type=int, default=5, help="timings per estimator (default: 5)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    require_positive(parser, args, "k", "steps", "rounds", "batch_size")
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 784).bernoulli()  # (B, 784)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), batch {args.batch_size}, 784-300-300, D = 32\n")
    print("| posterior | objective | k | estimator | step (ms) | vs reparam |")
    print("|---|---|---|---|---|---|")
    for posterior in args.posterior:
        model = VAE(latent_dim=32, hidden=(300, 300), posterior=posterior)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        for objective, k, estimators in [("elbo", 1, ("reparam", "stl"))] + [("iwae", k, ("reparam", "dreg"))
                                                                              for k in args.k]:
            for estimator in estimators:  # warm-up
                step_seconds(model, optimizer, x, objective, k, estimator, 2)
            times = {estimator: [] for estimator in estimators}
            for _ in range(args.rounds):
                for estimator in estimators:
                    times[estimator].append(step_seconds(model, optimizer, x, objective, k, estimator, args.steps))
            base = statistics.median(times["reparam"])
            for estimator in estimators:
                median = statistics.median(times[estimator])
                print(f"| {posterior} | {objective} | {k} | {estimator} | {1000 * median:.2f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
