"""Every family x {eager, compiled} x {float32, bf16 autocast}: a few training steps each, timed and checked.

    python benchmarks/step_matrix.py [--device cuda] [--steps 30] [--hidden 300 300] [--latent-dim 32]

One row per setting, printed as soon as it is done (a stage cut short by its time limit keeps the rows
before it): whether the steps ran and their losses stayed finite, the loss after them, the step time
after the first (compilation) steps, the graphs Dynamo compiled, and every "skipping cudagraphs" reason
inductor gave (a CUDA graph that did not replay). Part of ``benchmarks/gpu.sh``; on the CPU a dry run.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.choices import DEVICES  # noqa: E402
from vae.cli import ArgumentParser  # noqa: E402
from vae.config import TrainConfig  # noqa: E402
from vae.devices import amp_supported, autocast, resolve_device  # noqa: E402
from vae.model import FAMILIES  # noqa: E402
from vae.run.checkpoint import build_model  # noqa: E402
from vae.step import TrainStep  # noqa: E402
from vae.training import make_optimizer  # noqa: E402


class _Skips(logging.Handler):
    """Collects inductor's perf hints that a CUDA graph was skipped."""

    def __init__(self):
        super().__init__()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "skipping cudagraphs" in message:
            self.reasons.append(message.split("skipping cudagraphs", 1)[1].strip(" :"))


def run_setting(device, posterior: str, compiled: bool, amp: bool, args, skips: _Skips) -> str:
    """One row of the table for this setting."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    skips.reasons.clear()
    config = TrainConfig(latent_dim=args.latent_dim, hidden=tuple(args.hidden), posterior=posterior, rank=2,
                         objective=args.objective, k=args.k, estimator=args.estimator, grad_clip=args.grad_clip,
                         batch_size=args.batch_size, compile=compiled, amp=amp, device=str(device))
    torch.manual_seed(0)
    model = build_model(config).to(device)
    step = TrainStep(model, make_optimizer(model, config, device), config, device)
    generator = torch.Generator(device=device).manual_seed(0) if device.type != "cuda" else None
    images = torch.rand(args.batch_size, 784, device=device)
    losses, start, warm = [], None, min(3, args.steps - 1)
    for i in range(args.steps):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        model.offdiag_enabled = i >= args.steps // 2  # the warm-up's end, half way: no recompilation
        with autocast(device, amp):
            loss, stats = step.loss(images, generator)
        step.update(loss)
        losses.append(stats[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - start) / (args.steps - warm) * 1e3
    values = torch.stack(losses).double() / args.batch_size
    finite = bool(torch.isfinite(values).all())
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if compiled else 0
    skipped = "; ".join(dict.fromkeys(skips.reasons)) or "-"
    return (f"| {posterior} | {'compiled' if compiled else 'eager'} | {'bf16' if amp else 'float32'} | "
            f"{'ok' if finite else 'NON-FINITE'} | {values[-1]:.3f} | {per_step:.2f} | {graphs} | {skipped} |")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--steps", type=int, default=30, help="steps per setting (default 30)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 300])
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--objective", default="iwae", choices=("elbo", "iwae"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--estimator", default="dreg", choices=("reparam", "stl", "dreg"))
    parser.add_argument("--grad-clip", type=float, default=100.0,
                        help="clipping on (it scales the gradients in place, between the compiled graphs)")
    parser.add_argument("--posteriors", nargs="+", default=list(FAMILIES), choices=tuple(FAMILIES))
    parser.add_argument("--compiled", nargs="*", default=None, choices=tuple(FAMILIES),
                        help="the families also run compiled (default: all of --posteriors)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(err)
    precisions = (False, True) if amp_supported(device) else (False,)
    if len(precisions) == 1:
        print(f"note: bf16 rows skipped (--amp does not run on this {device.type})")
    skips = _Skips()
    torch._logging.set_logs(perf_hints=True)
    logging.getLogger("torch").addHandler(skips)
    print(f"# {args.steps} steps a setting on {device}: 784-{'-'.join(map(str, args.hidden))}-{args.latent_dim}, "
          f"batch {args.batch_size}, {args.objective} k = {args.k} ({args.estimator}), clip {args.grad_clip}")
    print("| family | step | precision | finite | loss | ms a step | graphs | cudagraphs skipped |")
    print("|---|---|---|---|---|---|---|---|")
    failures = 0
    compiled_families = args.posteriors if args.compiled is None else args.compiled
    for posterior in args.posteriors:
        for compiled in (False, True) if posterior in compiled_families else (False,):
            for amp in precisions:
                try:
                    row = run_setting(device, posterior, compiled, amp, args, skips)
                except Exception as err:  # noqa: BLE001 -- a row per setting, whatever breaks: the check goes on
                    first = (str(err).strip() or type(err).__name__).splitlines()[0][:200]
                    row = (f"| {posterior} | {'compiled' if compiled else 'eager'} | {'bf16' if amp else 'float32'} "
                           f"| FAILED: {type(err).__name__}: {first} | | | | |")
                failures += "ok" not in row.split("|")[4]
                print(row, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
