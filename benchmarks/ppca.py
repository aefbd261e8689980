"""A table from probabilistic PCA, whose true log-likelihood is known: the yardstick of the Gaussian likelihood.

    python benchmarks/ppca.py --out-dir ~/runs/ppca          # writes rows.npy and truth.json
    python train.py --dataset ~/runs/ppca/rows.npy ...       # then train and evaluate on it (docs/results.md)

The rows are x = (W z + noise) * s + m with z ~ N(0, I_d), noise ~ N(0, sigma^2 I_F), and column
scales s spaced log-evenly from 1e-3 to 1e3: x ~ N(m, S (W W^T + sigma^2 I) S) exactly. The true model's
test NLL, in the data's own units (nats per row), is computed on the rows that training holds out
(:func:`vae.data.held_out`, the same split a run on ``rows.npy`` uses), and written to ``truth.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.cli import ArgumentParser, require_positive  # noqa: E402
from vae.data import held_out  # noqa: E402


def ppca(rows: int, features: int, latent: int, noise: float, seed: int) -> tuple[np.ndarray, torch.Tensor,
                                                                                   torch.Tensor]:
    """The rows ``(N, F)`` float32 and the true model's mean ``(F,)`` and covariance ``(F, F)`` (float64)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, latent))  # (F, d)
    scales = np.logspace(-3, 3, features)  # (F,)
    offsets = rng.normal(size=features) * scales * 3  # (F,)
    z = rng.normal(size=(rows, latent))  # (N, d)
    x = (z @ w.T + noise * rng.normal(size=(rows, features))) * scales + offsets  # (N, F)
    cov = (w @ w.T + noise**2 * np.eye(features)) * np.outer(scales, scales)  # (F, F)
    return x.astype(np.float32), torch.from_numpy(offsets), torch.from_numpy(cov)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, help="where rows.npy and truth.json go")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--latent", type=int, default=3, help="the true model's latent dimension d")
    parser.add_argument("--noise", type=float, default=0.1, help="sigma, before the column scales")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="as train.py's --test-fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_positive(parser, args, "rows", "features", "latent")
    x, mean, cov = ppca(args.rows, args.features, args.latent, args.noise, args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "rows.npy", x)
    _, test = held_out(len(x), args.test_fraction, str(out / "rows.npy"))
    truth = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    rows = torch.from_numpy(x[test.numpy()]).double()  # (T, F), the stored float32 values
    nll = -truth.log_prob(rows).mean().item()
    record = {"rows": args.rows, "features": args.features, "latent": args.latent, "noise": args.noise,
              "seed": args.seed, "test_fraction": args.test_fraction, "test_rows": len(rows),
              "true_test_nll": nll}
    (out / "truth.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'rows.npy'} ({args.rows:,} x {args.features}); the true model's test NLL: {nll:.4f} "
          f"nats per row, on the {len(rows):,} held-out rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
