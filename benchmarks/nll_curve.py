"""Test NLL against epochs for several runs, from checkpoint snapshots.

    python benchmarks/nll_curve.py full=runs/snap-full diagonal=runs/snap-diagonal \\
        --k 5000 --limit 1000 --out docs/img/nll-vs-epochs.png

Each ``LABEL=FOLDER`` holds snapshots ``e<EPOCH>.pt`` of one run (copies of
its ``last.pt``). Every snapshot is evaluated on the first ``--limit`` test
images (binarized once with the fixed test seed) with ``K`` importance
samples; the table is printed as markdown and the curves saved as a PNG.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.cli import ArgumentParser, require_positive  # noqa: E402

from vae.run.checkpoint import load_run  # noqa: E402
from vae.data import evaluation_images, load_split  # noqa: E402
from vae.evaluate import evaluate_model  # noqa: E402


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("e*.pt") if (m := re.fullmatch(r"e(\d+)\.pt", p.name))]
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER of e<EPOCH>.pt snapshots")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=1000, help="test images per evaluation")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="nll-vs-epochs.png")
    args = parser.parse_args(argv)
    require_positive(parser, args, "k", "limit")
    curves = {}
    images = None
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        if not label or not folder or not snapshots(Path(folder)):
            parser.error(f"{spec!r}: expected LABEL=FOLDER with e<EPOCH>.pt snapshots in FOLDER")
        for epoch, path in snapshots(Path(folder)):
            model, config, _ = load_run(path)
            if images is None:
                split = load_split(config.dataset, args.data_dir or config.data_dir, train=False, limit=args.limit)
                images = evaluation_images(split.images, config.binarize)
            result = evaluate_model(model, images, k=args.k, progress=False)
            curves.setdefault(label, []).append((epoch, result["neg_elbo"], result["nll"]))
            print(f"{label} epoch {epoch}: -ELBO {result['neg_elbo']:.2f}  NLL {result['nll']:.2f}", flush=True)
    print(f"\n| run | epoch | test -ELBO | test NLL (K={args.k}, first {args.limit} images) |\n|---|---|---|---|")
    for label, points in curves.items():
        for epoch, neg_elbo, nll in points:
            print(f"| {label} | {epoch} | {neg_elbo:.2f} | {nll:.2f} |")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for label, points in curves.items():
        epochs, neg_elbo, nll = zip(*points)
        line, = ax.plot(epochs, nll, "o-", label=f"{label}: NLL (K={args.k})")
        ax.plot(epochs, neg_elbo, "o--", color=line.get_color(), alpha=0.5, label=f"{label}: -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title(f"MNIST test, first {args.limit} images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
