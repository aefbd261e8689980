"""Training throughput: our VAE (full, diagonal and low-rank posteriors) against the classic PyTorch example.

    python benchmarks/throughput.py [--data-dir DIR] [--device cpu] [--epochs 1]

Measures, in one process on one machine:

* the **reference**: the classic PyTorch VAE example (784-400-(20, 20), diagonal
  posterior, torchvision MNIST through a ``DataLoader`` with ``ToTensor()``,
  batch 128, Adam 1e-3), written out below;
* **ours**: ``vae.epoch.train_epoch`` at hidden 400, batch 128, for the full,
  diagonal and low-rank (``--rank``, default 2) posteriors at D in {2, 20, 64};
* a plain float32 matmul's GFLOP/s, at the model's largest layer shape
  (128 x 784 @ 784 x 400) and at 2048^3, to judge the achieved FLOP rate.

and prints a markdown table with the three target ratios at 784-400-20.
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

from vae.cli import DEVICES, ArgumentParser, require_positive  # noqa: E402

from vae.config import TrainConfig  # noqa: E402
from vae.data import load_split, resolve_data_dir  # noqa: E402
from vae.model import FAMILIES  # noqa: E402
from vae.run.checkpoint import build_model  # noqa: E402
from vae.devices import resolve_device  # noqa: E402
from vae.epoch import train_epoch  # noqa: E402
from vae.training import make_optimizer  # noqa: E402


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


def our_epoch(train_data, device, latent_dim: int, posterior: str, batch_size: int = 128,
              rank: int = 2) -> tuple[float, int]:
    """One epoch of vae.epoch.train_epoch; returns (seconds, images)."""
    config = TrainConfig(latent_dim=latent_dim, hidden=(400,), posterior=posterior, rank=min(rank, latent_dim),
                         batch_size=batch_size, lr=1e-3, device=str(device), progress=False)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config, device)
    data_gen = torch.Generator(device=device).manual_seed(0)
    seconds = train_epoch(model, model, optimizer, train_data, config, device, data_gen).seconds
    return seconds, len(train_data)


def training_flops(latent_dim: int, posterior: str, hidden: int = 400, pixels: int = 784, rank: int = 2) -> float:
    """Matmul FLOPs of one training image: forward 2mn per layer, backward 4mn (2mn for the input layer)."""
    n_raw = FAMILIES[posterior].head_size(latent_dim, min(rank, latent_dim))
    layers = [(pixels, hidden), (hidden, latent_dim), (hidden, n_raw), (latent_dim, hidden), (hidden, pixels)]
    flops = sum(6 * m * n for m, n in layers) - 2 * pixels * hidden  # no input gradient for the data
    return flops + 6 * latent_dim * latent_dim  # z = loc + L eps, forward and backward


def matmul_gflops(device, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
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


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="dataset root (default $VAE_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[2, 20, 64])
    parser.add_argument("--limit", type=int, default=None, help="images per epoch (default: all 60,000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128],
                        help="our batch sizes (default: 128, the classic example's; the targets use 128)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per setting; the fastest counts")
    parser.add_argument("--posteriors", nargs="+", default=list(FAMILIES), choices=tuple(FAMILIES))
    parser.add_argument("--rank", type=int, default=2, help="R of the low-rank posterior (default 2)")
    args = parser.parse_args(argv)
    require_positive(parser, args, "repeats", "latent_dims", "batch_sizes", "rank")
    device = resolve_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    train_data = load_split("mnist", str(data_dir), train=True, limit=args.limit, device=device)

    print(f"# throughput on {device} ({_machine(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, hidden 400", flush=True)
    peak_layer = matmul_gflops(device, 128, 784, 400)
    peak_square = matmul_gflops(device, 2048, 2048, 2048)
    best = lambda fn: min((fn() for _ in range(args.repeats)), key=lambda r: r[0])
    ref_s, ref_n = best(lambda: classic_epoch(data_dir, device, args.limit))
    rows = {}
    for batch in args.batch_sizes:
        for d in args.latent_dims:
            for posterior in args.posteriors:
                seconds, n = best(lambda: our_epoch(train_data, device, d, posterior, batch, args.rank))
                rows[batch, d, posterior] = (seconds, n, training_flops(d, posterior, rank=args.rank) * n / seconds / 1e9)

    print(f"\nplain float32 matmul: {peak_layer:.1f} GFLOP/s at 128x784@784x400, "
          f"{peak_square:.1f} GFLOP/s at 2048^3\n")
    print("| model | batch | D | epoch (s) | images/s | GFLOP/s | vs classic epoch |")
    print("|---|---|---|---|---|---|---|")
    print(f"| classic example (DataLoader + ToTensor) | 128 | 20 | {ref_s:.2f} | {ref_n / ref_s:,.0f} | "
          f"{training_flops(20, 'diagonal') * ref_n / ref_s / 1e9:.1f} | 1.00 |")
    for (batch, d, posterior), (seconds, n, gflops) in rows.items():
        label = f"lowrank (R = {min(args.rank, d)})" if posterior == "lowrank" else posterior
        print(f"| ours, {label} | {batch} | {d} | {seconds:.2f} | {n / seconds:,.0f} | {gflops:.1f} "
              f"| {seconds / ref_s:.2f} |")
    if (128, 20, "full") in rows and (128, 20, "diagonal") in rows:
        full, diag = rows[128, 20, "full"], rows[128, 20, "diagonal"]
        print("\ntargets at 784-400-20, full posterior, batch 128:")
        print(f"- epoch time vs classic: {full[0] / ref_s:.2f}x (target <= 0.45x)")
        print(f"- full / diagonal epoch time: {full[0] / diag[0]:.2f}x (target <= 1.15x)")
        print(f"- achieved FLOP rate vs plain matmul at the layer shape: {full[2] / peak_layer:.0%} "
              f"(target >= 60%); vs 2048^3: {full[2] / peak_square:.0%}")
    return 0


def _machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
