"""The recipe ablation of docs/results.md: each step of the training recipe, full against diagonal, over seeds.

    python benchmarks/ablation.py --out-dir ~/runs/ablation [--epochs 20] [--seeds 0 1 2] [--k 100] [--jobs 1]
    python benchmarks/ablation.py --out-dir ~/runs/ablation --report   # the tables of the runs finished so far

Each run is a real ``python train.py`` process (one torch thread) at the
results architecture (784-300-300, D = 32, batch 128), followed by
``python -m vae.evaluate`` of its final ``last.pt`` at ``--k`` importance
samples on all 10,000 test images. A run folder that already holds a finished
evaluation is skipped, and one left unfinished is resumed, so the script can be
stopped and started again. It writes ``ablation.csv`` (a row per run) and
``ablation.md`` (mean ± standard deviation over the seeds, and the full-minus-
diagonal difference per seed) into ``--out-dir``.

The steps (:func:`steps`; each adds to the one before it, except the Burda
row, which swaps the schedule):

* ``constant``: constant lr 1e-3, no warm-up, PyTorch's output-bias init, Adam eps 1e-8;
* ``+cosine``: the cosine schedule and Adam eps 1e-4;
* ``+burda``: Burda et al.'s 8 stages (scaled to ``--epochs``) instead of cosine;
* ``+warmup``: ``+cosine`` with the KL warm-up over a quarter of the epochs;
* ``+bias``: ``+warmup`` with the output bias at the logit of the mean pixel (the whole recipe),
  for the low-rank family (R = 2) too;
* ``iwae5-reparam`` / ``iwae5-dreg``: the whole recipe on the k = 5 IWAE bound, full posterior only.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.cli import ArgumentParser, require_positive  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = ["--dataset", "mnist", "--hidden", "300", "300", "--latent-dim", "32", "--batch-size", "128", "--lr", "1e-3"]


def flags(**values) -> list[str]:
    """``lr_schedule="cosine"`` -> ``["--lr-schedule", "cosine"]``."""
    return [item for name, value in values.items() for item in ("--" + name.replace("_", "-"), str(value))]


def steps(epochs: int) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(name, posterior families, flags) of each step of the ablation at a budget of ``epochs``."""
    constant = dict(lr_schedule="constant", kl_warmup=0, output_bias="default", adam_eps=1e-8)
    cosine = {**constant, "lr_schedule": "cosine", "adam_eps": 1e-4}
    burda = {**cosine, "lr_schedule": "burda"}
    with_warmup = {**cosine, "kl_warmup": max(1, epochs // 4)}
    recipe = {**with_warmup, "output_bias": "mean"}
    both = ("full", "diagonal")
    return [("constant", both, flags(**constant)), ("+cosine", both, flags(**cosine)),
            ("+burda", both, flags(**burda)), ("+warmup", both, flags(**with_warmup)),
            ("+bias", (*both, "lowrank"), flags(**recipe)),
            ("iwae5-reparam", ("full",), flags(**recipe, objective="iwae", k=5, estimator="reparam")),
            ("iwae5-dreg", ("full",), flags(**recipe, objective="iwae", k=5, estimator="dreg"))]


def run_one(out_dir: Path, name: str, posterior: str, step_flags: list[str], seed: int, epochs: int, k: int,
            train_missing: bool = True) -> dict | None:
    """Train (or resume) one run and evaluate it; return its table row (None: unfinished, not trained)."""
    run_name = f"{name}-{posterior}-s{seed}"
    run_dir, evaluation = out_dir / run_name, out_dir / run_name / f"eval-k{k}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if not evaluation.is_file() and not train_missing:
        return None
    if not evaluation.is_file():
        train = [sys.executable, str(REPO / "train.py"), *BASE, *step_flags, "--posterior", posterior, "--seed", str(seed),
                 "--epochs", str(epochs), "--out-dir", str(out_dir), "--run-name", run_name, "--no-plots",
                 "--no-progress", "--device", "cpu"]
        if (run_dir / "last.pt").is_file():
            train = [sys.executable, str(REPO / "train.py"), "--resume", "--out-dir", str(out_dir),
                     "--run-name", run_name, "--no-progress", "--no-plots"]
        with open(out_dir / f"{run_name}.log", "a") as log:
            subprocess.run(train, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
            subprocess.run([sys.executable, "-m", "vae.evaluate", str(run_dir / "last.pt"), "--k", str(k),
                            "--out", str(evaluation), "--no-progress"],
                           env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    with open(run_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    result = json.loads(evaluation.read_text())
    return {"step": name, "posterior": posterior, "seed": seed, "epochs": int(metrics[-1]["epoch"]),
            "test_neg_elbo": float(metrics[-1]["test_neg_elbo"]), "nll": result["nll"], "k": k,
            "train_seconds": sum(float(row["train_seconds"]) for row in metrics)}


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "—"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict], names: list[str]) -> str:
    """The markdown summary: per step, mean ± sd over seeds of -ELBO and NLL, and full minus diagonal."""
    k = rows[0]["k"] if rows else 0
    lines = [f"| step | full −ELBO | full NLL (K={k}) | diagonal −ELBO | diagonal NLL (K={k}) "
             f"| NLL full − diagonal | low-rank (R = 2) NLL (K={k}) | seeds |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        pick = lambda posterior, key: [r[key] for r in rows if r["step"] == name and r["posterior"] == posterior]  # noqa: E731
        paired = {r["seed"]: r["nll"] for r in rows if r["step"] == name and r["posterior"] == "full"}
        diffs = [paired[r["seed"]] - r["nll"] for r in rows
                 if r["step"] == name and r["posterior"] == "diagonal" and r["seed"] in paired]
        seeds = sorted({r["seed"] for r in rows if r["step"] == name})
        lines.append(f"| {name} | {mean_sd(pick('full', 'test_neg_elbo'))} | {mean_sd(pick('full', 'nll'))} "
                     f"| {mean_sd(pick('diagonal', 'test_neg_elbo'))} | {mean_sd(pick('diagonal', 'nll'))} "
                     f"| {mean_sd(diffs)} | {mean_sd(pick('lowrank', 'nll'))} | {', '.join(map(str, seeds))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, help="folder of the ablation's runs (outside the checkout)")
    parser.add_argument("--epochs", type=int, default=20, help="the short budget (default: 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=100, help="importance samples of the NLL (default: 100)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one core each (default: 1)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps")
    parser.add_argument("--report", action="store_true", help="train nothing: tabulate the finished runs")
    args = parser.parse_args(argv)
    require_positive(parser, args, "epochs", "k", "jobs")
    out_dir = Path(args.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [s for s in steps(args.epochs) if args.only is None or s[0] in args.only]
    # seed by seed, the VAE steps before the (costlier) IWAE ones: a cut-short ablation still pairs its seeds
    tasks = [(name, posterior, step_flags, seed) for iwae in (False, True) for seed in args.seeds
             for name, families, step_flags in plan if name.startswith("iwae") == iwae for posterior in families]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, out_dir, name, posterior, step_flags, seed, args.epochs, args.k,
                               not args.report) for name, posterior, step_flags, seed in tasks]
        rows = []
        for (name, posterior, _, seed), future in zip(tasks, futures):
            try:
                rows.append(future.result())
            except subprocess.CalledProcessError as err:
                print(f"{name}-{posterior}-s{seed}: failed ({err}); see its log in {out_dir}", file=sys.stderr)
            else:
                if rows[-1] is None:
                    rows.pop()
                    continue
                print(f"{name}-{posterior}-s{seed}: -ELBO {rows[-1]['test_neg_elbo']:.2f}  NLL {rows[-1]['nll']:.2f}",
                      flush=True)
    with open(out_dir / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    summary = table(rows, [name for name, _, _ in plan])
    (out_dir / "ablation.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
