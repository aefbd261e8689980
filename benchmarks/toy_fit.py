"""Wall time for the covariance learner to reach its closed form, against the closed form itself.

    python benchmarks/toy_fit.py [--dims 2 10 50] [--samples 10000] [--condition-number 10]
    python benchmarks/toy_fit.py --probes

For each D: N samples from the toy problem's random true Sigma (condition
number 10, mean [1, -1, ...]), objective nll on the full tensor, from the
default start and settings (standardized, in float64, from the sample mean and
L = diag of the standard deviations). A first run with a callback finds the first
epoch at which both the covariance and the mean are within ``--target``
relative Frobenius error of the closed form (sample mean, 1/N covariance);
the timed runs then train exactly that many epochs, without the check, and
the median wall time is reported (the whole ``fit_covariance`` call, moments
pass included). One L-BFGS epoch is one ``step`` of up to ``--lbfgs-iter``
iterations. Adam is capped at ``--adam-epochs``; a miss is reported as such,
with the error it reached. "closed form" is ``x.mean(0)`` plus
``torch.cov(x.T, correction=0)``: the floor any learner is measured against.

``--probes``: the probe problems (data at scales where the old
defaults failed), each fitted by ``fit_covariance(x, "nll")`` with every other
argument at its default: median time, relative Frobenius error of Sigma and of
the mean to the closed form, and whether the fit says it converged.

One thread by default: at D <= 50 every op is tiny, and intra-op threads only
add synchronization, which on a busy 2-core machine costs up to 20x.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vae.cli import ArgumentParser, require_positive  # noqa: E402
from vae.toy import CovarianceLearner, closed_form, fit_covariance, relative_error  # noqa: E402
from vae.toy.moments import sigma_points  # noqa: E402
from vae.toy.problems import ToyConfig, make_problem  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _time_to_target(x, optimizer: str, args, mean, cov) -> dict:
    """Epochs, iterations and median seconds to reach the target; or the error reached at the cap."""
    kwargs = dict(optimizer=optimizer, max_iter=args.lbfgs_iter)
    cap = args.adam_epochs if optimizer == "adam" else args.lbfgs_steps
    reached = []

    def check(epoch, learner, loss):
        error = max(relative_error(learner.covariance_matrix, cov), relative_error(learner.loc, mean))
        reached[:] = [epoch + 1, error]
        return error < args.target

    _, history = fit_covariance(x, "nll", epochs=cap, callback=check, **kwargs)
    epochs, error = reached
    row = dict(epochs=epochs, error=error, iterations=history.iterations, evaluations=history.evaluations)
    if error < args.target:
        row["seconds"] = _median_seconds(lambda: fit_covariance(x, "nll", epochs=epochs, **kwargs), args.repeats)
    return row


PROBES = [  # name, D, (lowest, highest variance), mean size, N
    ("D=5, variances 1..1e3, means ±5", 5, (1.0, 1e3), 5.0, 1000),
    ("D=8, variances 1..1e3, means ±5", 8, (1.0, 1e3), 5.0, 1000),
    ("D=10, variances 1e-4..1e-1, means 0", 10, (1e-4, 1e-1), 0.0, 1000),
    ("D=50, variances 1..1e6 (condition number 1e6), means ±1", 50, (1.0, 1e6), 1.0, 2000),
    ("D=5, variances 1e-4, means ±100", 5, (1e-4, 1e-4), 100.0, 1000),
]


def probe_data(dim: int, variances, mean_size: float, n: int, seed: int = 0) -> torch.Tensor:
    """``(N, D)`` float32 samples: a random rotation of variances log-spaced over ``variances``, means of
    ``mean_size`` with random signs (times 1 to 1.1)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))  # (D, D) orthogonal
    eigenvalues = torch.logspace(math.log10(variances[0]), math.log10(variances[1]), dim, dtype=torch.float64)
    cov = (q * eigenvalues) @ q.mT  # (D, D)
    signs = torch.where(torch.rand(dim, generator=g) < 0.5, -1.0, 1.0).double()
    mean = mean_size * signs * (1 + 0.1 * torch.rand(dim, generator=g, dtype=torch.float64))  # (D,)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return (mean + z @ torch.linalg.cholesky((cov + cov.mT) / 2).mT).float()


def _probes(repeats: int) -> None:
    print("| probe | time | Sigma error | mean error | converged |")
    print("|---|---|---|---|---|")
    for name, dim, variances, mean_size, n in PROBES:
        x = probe_data(dim, variances, mean_size, n)
        mean, cov = closed_form(x, "nll")
        learner, history = fit_covariance(x, "nll")
        seconds = _median_seconds(lambda: fit_covariance(x, "nll"), repeats)
        print(f"| {name} | {seconds:.3f} s | {relative_error(learner.covariance_matrix, cov):.1e} "
              f"| {relative_error(learner.loc, mean):.1e} | {'yes' if history.converged else 'NO'} |", flush=True)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--condition-number", type=float, default=10.0)
    parser.add_argument("--target", type=float, default=1e-3, help="relative Frobenius error (default 1e-3)")
    parser.add_argument("--adam-epochs", type=int, default=20_000, help="Adam's cap (default 20000)")
    parser.add_argument("--lbfgs-steps", type=int, default=200, help="L-BFGS's cap, in steps (default 200)")
    parser.add_argument("--lbfgs-iter", type=int, default=5, help="L-BFGS iterations per step (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 keeps torch's (default 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--probes", action="store_true", help="time the default fit on the probe problems")
    args = parser.parse_args(argv)
    require_positive(parser, args, "dims", "repeats", "samples")
    if args.threads:
        torch.set_num_threads(args.threads)
    # the timed runs stop at the epoch that reached --target, short of the library's own tolerance
    warnings.filterwarnings("ignore", "fit_covariance did not converge", UserWarning)

    warm = torch.randn(50, 3)  # the first optimizer pays a one-off ~1 s import inside torch.optim
    for optimizer in ("adam", "lbfgs"):
        fit_covariance(warm, "nll", optimizer=optimizer, epochs=2)

    print(f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; " + (f"median of {args.repeats}\n" if args.probes else
          f"N={args.samples}, condition number {args.condition_number:g}, target {args.target:g}, "
          f"median of {args.repeats}\n"))
    if args.probes:
        _probes(args.repeats)
        return 0
    print("| D | optimizer | time to target | epochs (L-BFGS: steps) | iterations | loss evaluations | error "
          "| closed form |")
    print("|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        cfg = ToyConfig("mle", dim=dim, samples=args.samples, condition_number=args.condition_number, seed=args.seed)
        cfg.validate()
        x = make_problem(cfg)[2]  # (N, D)
        mean, cov = closed_form(x, "nll")
        floor = _median_seconds(lambda: (x.mean(0), torch.cov(x.T, correction=0)), max(args.repeats, 10))
        for optimizer, name in (("lbfgs", "L-BFGS"), ("adam", "Adam")):
            row = _time_to_target(x, optimizer, args, mean, cov)
            unit = "steps" if optimizer == "lbfgs" else "epochs"
            took = (f"**{row['seconds']:.3f} s**" if "seconds" in row
                    else f"not reached in {row['epochs']} {unit} (error {row['error']:.2e})")
            print(f"| {dim} | {name} | {took} | {row['epochs']} | {row['iterations']} | {row['evaluations']} | "
                  f"{row['error']:.1e} | {1e3 * floor:.3f} ms |", flush=True)
    print(f"\nOne nll loss-and-gradient evaluation at D={dim}: {_evaluation_ms(x, x):.3f} ms on the N={len(x)} "
          f"points, {_evaluation_ms(x, sigma_points(mean, cov).float()):.3f} ms on the {2 * dim} sigma points.")
    return 0


def _evaluation_ms(x, points) -> float:
    learner = CovarianceLearner(x.shape[1])

    def evaluate():
        learner.zero_grad()
        (-learner(points).mean()).backward()

    return 1e3 * _median_seconds(evaluate, 20)


if __name__ == "__main__":
    sys.exit(main())
