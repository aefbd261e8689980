"""Training throughput: our VAE (full, diagonal and low-rank posteriors) against the classic PyTorch example.

    python benchmarks/throughput.py [--data-dir DIR] [--device cpu] [--steps eager compiled] [--threads N]
                                    [--precisions float32 bf16] [--iwae-steps 20]

Measures, in one process on one machine:

* the **reference**: the classic PyTorch VAE example (784-400-(20, 20), diagonal
  posterior, torchvision MNIST through a ``DataLoader`` with ``ToTensor()``,
  batch 128, Adam 1e-3), written out below;
* **ours**: ``vae.epoch.train_epoch`` (eager, and with ``--steps compiled`` as ``train.py --compile`` runs it)
  at hidden 400, batch 128 (``--batch-sizes``), for the full, diagonal and
  low-rank (``--rank``, default 2) posteriors at D in {2, 20, 64}, and at the
  results architecture (784-300-300, D = 32) for full and diagonal;
* a plain float32 matmul's GFLOP/s, at the model's largest layer shape
  (128 x 784 @ 784 x 400) and at 2048^3, to judge the achieved FLOP rate;
* each setting in float32 and, with ``--precisions bf16`` (the default where
  the device has native bf16), under ``--amp``'s bf16 autocast;
* one IWAE step of the long runs (results architecture, k = 50, dreg),
  ``--iwae-steps`` of them timed, in each precision.

Each setting's epoch is timed ``--repeats`` times and the fastest counts; a
compiled setting first runs one untimed epoch (its compilation). It prints a
markdown table and the issue-11 targets, each with its measured value.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.choices import DEVICES  # noqa: E402
from vae.cli import ArgumentParser, require_positive  # noqa: E402

from vae.config import THREADS_HELP, TrainConfig  # noqa: E402
from vae.data import load_split, resolve_data_dir  # noqa: E402
from vae.model import FAMILIES  # noqa: E402
from vae.run.checkpoint import build_model  # noqa: E402
from vae.devices import amp_supported, autocast, check_amp, resolve_device, set_threads  # noqa: E402
from vae.epoch import train_epoch  # noqa: E402
from vae.training import make_optimizer  # noqa: E402
from vae.step import TrainStep  # noqa: E402


class ClassicVAE(nn.Module):
    """The model of pytorch/examples vae/main.py, re-typed for this benchmark."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def classic_epoch(data_dir: Path, device: torch.device, limit: int | None) -> tuple[float, int]:
    """One epoch of the classic example; returns (seconds, images)."""
    dataset = torchvision.datasets.MNIST(str(data_dir), train=True, transform=torchvision.transforms.ToTensor())
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(limit))
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True)
    model = ClassicVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # Kingma & Welling 2014, appendix B
        optimizer.zero_grad()
        (bce + kld).backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start, len(dataset)


class OurSetting:
    """One of our settings, built once and timed epoch by epoch (a compiled one compiles in its first)."""

    def __init__(self, train_data, device, hidden: tuple[int, ...], latent_dim: int, posterior: str,
                 batch_size: int, rank: int, compiled: bool, amp: bool = False, **objective):
        self.config = TrainConfig(latent_dim=latent_dim, hidden=hidden, posterior=posterior,
                                  rank=min(rank, latent_dim), batch_size=batch_size, lr=1e-3, device=str(device),
                                  progress=False, compile=compiled, amp=amp, **objective)
        self.train_data, self.device = train_data, device
        if compiled:
            torch._dynamo.reset()  # a fresh cache: the settings before are not this one's recompilations
        torch.manual_seed(0)
        model = build_model(self.config).to(device)
        self.step = TrainStep(model, make_optimizer(model, self.config, device), self.config, device)
        self.data_gen = torch.Generator().manual_seed(0)  # the permutations: a CPU generator, as in training
        if compiled:
            self.epoch()  # compilation, untimed

    def epoch(self) -> tuple[float, int]:
        """One epoch of vae.epoch.train_epoch; returns (seconds, images)."""
        result = train_epoch(self.step, self.train_data, self.config, self.device, self.data_gen)
        return result.seconds, len(self.train_data)

    def steps(self, n: int) -> tuple[float, int]:
        """``n`` training steps on the first batch, after 3 untimed ones; returns (seconds a step, images a step)."""
        images = self.train_data.images[: self.config.batch_size]
        for i in range(n + 3):
            if i == 3:
                _sync(self.device)
                start = time.perf_counter()
            with autocast(self.device, self.config.amp):
                loss, _ = self.step.loss(images, self.data_gen)
            self.step.update(loss)
        _sync(self.device)
        return (time.perf_counter() - start) / n, len(images)


def training_flops(latent_dim: int, posterior: str, hidden: tuple[int, ...] = (400,), pixels: int = 784,
                   rank: int = 2) -> float:
    """Matmul FLOPs of one training image: forward 2mn per layer, backward 4mn (2mn for the input layer)."""
    n_raw = FAMILIES[posterior].head_size(latent_dim, min(rank, latent_dim))
    encoder, decoder = (pixels, *hidden), (latent_dim, *reversed(hidden), pixels)
    layers = [*zip(encoder, encoder[1:]), (hidden[-1], latent_dim), (hidden[-1], n_raw), *zip(decoder, decoder[1:])]
    flops = sum(6 * m * n for m, n in layers) - 2 * pixels * hidden[0]  # no input gradient for the data
    return flops + 6 * latent_dim * latent_dim  # z = loc + L eps, forward and backward


def matmul_gflops(device, m: int, k: int, n: int, seconds: float = 1.0, dtype=torch.float32) -> float:
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


RESULTS_ARCH = ((300, 300), 32)  # the results architecture: 784-300-300, D = 32


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="dataset root (default $VAE_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP + " (default: 0)")
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[2, 20, 64])
    parser.add_argument("--limit", type=int, default=None, help="images per epoch (default: all 60,000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128],
                        help="our batch sizes (default: 128, the classic example's; the targets use 128)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per setting; the fastest counts")
    parser.add_argument("--posteriors", nargs="+", default=list(FAMILIES), choices=tuple(FAMILIES))
    parser.add_argument("--rank", type=int, default=2, help="R of the low-rank posterior (default 2)")
    parser.add_argument("--steps", nargs="+", choices=("eager", "compiled"), default=["eager"],
                        help="our training steps to time: eager, and/or compiled as by --compile (default: eager)")
    parser.add_argument("--no-results-arch", dest="results_arch", action="store_false",
                        help="skip the results architecture (784-300-300, D = 32, full and diagonal)")
    parser.add_argument("--precisions", nargs="+", choices=("float32", "bf16"), default=None,
                        help="float32, and bf16 autocast as --amp runs it (default: both where the device has "
                             "native bf16, else float32)")
    parser.add_argument("--iwae-steps", type=int, default=20,
                        help="timed steps of the k = 50 IWAE at the results architecture (0: none; default 20)")
    args = parser.parse_args(argv)
    require_positive(parser, args, "repeats", "latent_dims", "batch_sizes", "rank", "limit")
    try:
        device = resolve_device(args.device)
        threads = set_threads(args.threads)
        precisions = _precisions(device, args.precisions)
    except ValueError as err:
        parser.error(err)
    data_dir = resolve_data_dir(args.data_dir)
    train_data = load_split("mnist", str(data_dir), train=True, limit=args.limit, device=device)

    print(f"# throughput on {device} ({_machine(device)}), torch {torch.__version__}, {threads}", flush=True)
    peaks = {amp: (matmul_gflops(device, 128, 784, 400, dtype=_dtype(amp)),
                   matmul_gflops(device, 2048, 2048, 2048, dtype=_dtype(amp))) for amp in precisions}
    best = lambda fn: min((fn() for _ in range(args.repeats)), key=lambda r: r[0])  # noqa: E731
    ref_s, ref_n = best(lambda: classic_epoch(data_dir, device, args.limit))
    settings = [((400,), d, posterior, batch) for batch in args.batch_sizes for d in args.latent_dims
                for posterior in args.posteriors]
    if args.results_arch:
        settings += [(*RESULTS_ARCH, posterior, batch) for batch in args.batch_sizes
                     for posterior in ("full", "diagonal") if posterior in args.posteriors]
    rows, iwae = {}, {}
    modes = [step == "compiled" for step in dict.fromkeys(args.steps)]
    for amp in precisions:
        for compiled in modes:
            for hidden, d, posterior, batch in settings:
                setting = OurSetting(train_data, device, hidden, d, posterior, batch, args.rank, compiled, amp)
                seconds, n = best(setting.epoch)
                flops = training_flops(d, posterior, hidden, rank=args.rank)
                rows[amp, compiled, hidden, d, posterior, batch] = (seconds, n, flops * n / seconds / 1e9)
                print(f"  {_precision(amp)} {'compiled' if compiled else 'eager'} {posterior} {hidden} D={d} "
                      f"batch {batch}: {seconds:.2f} s", flush=True)
            if args.iwae_steps:  # the long runs' step: results architecture, k = 50, dreg
                setting = OurSetting(train_data, device, *RESULTS_ARCH, "full", 128, args.rank, compiled, amp,
                                     objective="iwae", k=50, estimator="dreg")
                iwae[amp, compiled] = best(lambda: setting.steps(args.iwae_steps))[0]
                print(f"  {_precision(amp)} {'compiled' if compiled else 'eager'} IWAE k = 50 step: "
                      f"{iwae[amp, compiled] * 1e3:.1f} ms", flush=True)

    print()
    for amp, (layer, square) in peaks.items():
        print(f"plain {_precision(amp)} matmul: {layer:.1f} GFLOP/s at 128x784@784x400, {square:.1f} GFLOP/s at 2048^3")
    print()
    print("| model | precision | step | hidden | batch | D | epoch (s) | images/s | GFLOP/s | vs classic epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| classic example (DataLoader + ToTensor) | float32 | eager | 400 | 128 | 20 | {ref_s:.2f} | "
          f"{ref_n / ref_s:,.0f} | {training_flops(20, 'diagonal') * ref_n / ref_s / 1e9:.1f} | 1.00 |")
    for (amp, compiled, hidden, d, posterior, batch), (seconds, n, gflops) in rows.items():
        label = f"lowrank (R = {min(args.rank, d)})" if posterior == "lowrank" else posterior
        print(f"| ours, {label} | {_precision(amp)} | {'compiled' if compiled else 'eager'} | "
              f"{'-'.join(map(str, hidden))} | {batch} | {d} | {seconds:.2f} | {n / seconds:,.0f} | {gflops:.1f} | "
              f"{seconds / ref_s:.2f} |")
    if iwae:
        print("\n| IWAE k = 50 (dreg), 784-300-300-32 full, batch 128 | precision | step | ms a step | epoch (s) |")
        print("|---|---|---|---|---|")
        steps_per_epoch = -(-len(train_data) // 128)
        for (amp, compiled), seconds in iwae.items():
            print(f"| one step | {_precision(amp)} | {'compiled' if compiled else 'eager'} | {seconds * 1e3:.1f} | "
                  f"{seconds * steps_per_epoch:.1f} |")
    for amp in precisions:
        for compiled in modes:
            _targets(rows, amp, compiled, ref_s, *peaks[amp])
    return 0


def _precision(amp: bool) -> str:
    return "bf16" if amp else "float32"


def _dtype(amp: bool) -> torch.dtype:
    return torch.bfloat16 if amp else torch.float32


def _precisions(device, asked) -> list[bool]:
    """The ``amp`` settings to time: ``asked``, else bf16 too where the device has it natively."""
    if asked is None:
        return [False, True] if amp_supported(device) else [False]
    if "bf16" in asked:
        check_amp(device, True)  # refuses in one line where --amp would
    return [name == "bf16" for name in dict.fromkeys(asked)]


def _targets(rows: dict, amp: bool, compiled: bool, ref_s: float, peak_layer: float, peak_square: float) -> None:
    """The CPU targets, for one precision and step, where the settings were measured."""
    get = lambda hidden, d, posterior: rows.get((amp, compiled, hidden, d, posterior, 128))  # noqa: E731
    print(f"\ntargets, {_precision(amp)} {'compiled' if compiled else 'eager'} step, batch 128:")
    full = get((400,), 20, "full")
    if full:
        print(f"- 784-400-20 full, epoch time vs classic: {full[0] / ref_s:.2f}x (target <= 0.40x, goal 0.30x)")
        print(f"- 784-400-20 full, FLOP rate vs a plain {_precision(amp)} matmul at the layer shape: "
              f"{full[2] / peak_layer:.0%} "
              f"(target >= 60%); vs 2048^3: {full[2] / peak_square:.0%}")
    for hidden, d, target in (((400,), 20, 1.10), ((400,), 64, 1.30), (*RESULTS_ARCH, 1.15)):
        full, diagonal = get(hidden, d, "full"), get(hidden, d, "diagonal")
        if full and diagonal:
            print(f"- 784-{'-'.join(map(str, hidden))}-{d} full / diagonal epoch time: {full[0] / diagonal[0]:.2f}x "
                  f"(target <= {target:.2f}x)")


def _machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
