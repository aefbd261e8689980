"""The convolutional networks' cost: FLOPs per image and training throughput, against the MLP.

    python benchmarks/conv.py [--data-dir DIR] [--channels 32 64] [--hidden 256] [--threads 1]
                              [--steps 30] [--layouts channels_last contiguous]

For each network (``--arch mlp`` at the results architecture 784-300-300, and ``--arch conv``
with ``--channels`` and ``--hidden``; D = 32, batch 128, full and diagonal posteriors) it prints:

* the FLOPs of one training image (forward and backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on a real step) and of one decoder pass (what each
  importance sample costs the K = 5000 evaluation);
* images per second of ``vae.step.TrainStep`` on the first MNIST batch, ``--steps`` steps after
  three untimed ones, in float32 and (where the CPU has native bf16) under ``--amp``'s bf16
  autocast, eager and compiled;
* for conv, the same with the networks' weights and activations in ``torch.contiguous_format``
  instead of the ``channels_last`` layout they use, to show what it buys.

The seconds per epoch it prints are 60,000 images at the measured rate.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.config import TrainConfig  # noqa: E402
from vae.data import load_dataset  # noqa: E402
from vae.devices import autocast, native_bf16  # noqa: E402
from vae.run.checkpoint import build_model  # noqa: E402
from vae.step import TrainStep  # noqa: E402
from vae.training import make_optimizer  # noqa: E402


def flops(config: TrainConfig, images: torch.Tensor) -> tuple[float, float]:
    """FLOPs of one training image (forward and backward) and of one decoder pass."""
    model = build_model(config)
    step = TrainStep(model, make_optimizer(model, config, torch.device("cpu")), config, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        loss, _ = step.loss(images, gen)
        loss.backward()
    train = counter.get_total_flops() / len(images)
    z = torch.zeros(len(images), config.latent_dim)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.decoder(z)
    return train, counter.get_total_flops() / len(images)


def rate(config: TrainConfig, images: torch.Tensor, steps: int, layout: torch.memory_format) -> float:
    """Training images per second of ``config``'s step on ``images`` (one batch, repeated)."""
    torch.manual_seed(0)
    model = build_model(config).to(memory_format=layout)
    device = torch.device("cpu")
    step = TrainStep(model, make_optimizer(model, config, device), config, device)
    gen = torch.Generator().manual_seed(0)
    with _layout(layout):
        for i in range(steps + 3):
            if i == 3:
                start = time.perf_counter()
            with autocast(device, config.amp):
                loss, _ = step.loss(images, gen)
            step.update(loss)
    return steps * len(images) / (time.perf_counter() - start)


@contextlib.contextmanager
def _layout(layout: torch.memory_format):
    """Within it, ``Tensor.contiguous(memory_format=channels_last)`` keeps ``layout`` instead (the layout's A/B)."""
    if layout == torch.channels_last:
        yield
        return
    original = torch.Tensor.contiguous

    def contiguous(self, memory_format=torch.contiguous_format):
        return original(self, memory_format=torch.contiguous_format)

    torch.Tensor.contiguous = contiguous
    try:
        yield
    finally:
        torch.Tensor.contiguous = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir, device=torch.device("cpu"))
    images = data.train.data[:128].reshape(128, -1)
    base = TrainConfig(latent_dim=32, batch_size=128, data_shape=(1, 28, 28), likelihood="bernoulli")
    nets = {"mlp 784-300-300": dict(arch="mlp", hidden=(300, 300)),
            f"conv {'-'.join(map(str, args.channels))} / {'-'.join(map(str, args.hidden))}":
                dict(arch="conv", channels=tuple(args.channels), hidden=tuple(args.hidden))}
    precisions = [False, True] if native_bf16() else [False]
    print(f"{torch.__version__}, {args.threads} thread(s), native bf16: {native_bf16()}")
    print("| network | posterior | MFLOPs / training image | MFLOPs / decoder pass | step | layout | img/s "
          "| s / epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, fields in nets.items():
        for posterior in ("full", "diagonal"):
            config = dataclasses.replace(base, posterior=posterior, **fields)
            train, decode = flops(config, images)
            layouts = [torch.channels_last, torch.contiguous_format] if fields["arch"] == "conv" else [
                torch.contiguous_format]
            for amp in precisions:
                for compiled in ([False, True] if args.compiled else [False]):
                    for layout in layouts:
                        run = dataclasses.replace(config, amp=amp, compile=compiled)
                        r = rate(run, images, args.steps, layout)
                        step = ("bf16 " if amp else "fp32 ") + ("compiled" if compiled else "eager")
                        shown = "channels_last" if layout == torch.channels_last else "contiguous"
                        print(f"| {name} | {posterior} | {train / 1e6:.1f} | {decode / 1e6:.2f} | {step} | {shown} "
                              f"| {r:,.0f} | {60000 / r:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
