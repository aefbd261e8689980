"""Training end to end: the real loading code on a tiny IDX MNIST, resume, the CLI on real data."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch

import vae
from tests.conftest import needs_cuda, run_cli
from vae.run.checkpoint import load_checkpoint
from vae.config import TrainConfig
from vae.data import DataError, load_split
from vae.run.folder import METRIC_COLUMNS
from vae.run.folder import RunFolder
from vae.training import train

TIMING_COLUMNS = {"images_per_s", "train_seconds"}


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> TrainConfig:
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), latent_dim=3, hidden=(32,), epochs=1,
                batch_size=16, eval_batch_size=16, device="cpu", progress=False, plots=False, run_name="tiny")
    return TrainConfig(**{**base, **overrides})


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_real_loader_reads_idx_files(fake_mnist):
    split = load_split("mnist", str(fake_mnist), train=True)
    assert split.images.shape == (96, 784) and split.labels.shape == (96,)
    assert 0 <= split.images.min() and split.images.max() <= 1
    assert load_split("mnist", str(fake_mnist), train=False, limit=10).images.shape == (10, 784)


def test_one_epoch_end_to_end(fake_mnist, tmp_path):
    run_dir = train(tiny_config(fake_mnist, tmp_path / "runs"), log=lambda *_: None)
    assert {p.name for p in run_dir.iterdir()} >= {"metrics.csv", "config.json", "last.pt", "best.pt"}
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and tuple(rows[0]) == METRIC_COLUMNS
    assert rows[0]["epoch"] == "1" and rows[0]["step"] == "6"  # 96 images / batch 16
    assert 0 < float(rows[0]["test_neg_elbo"]) < 1e4 and float(rows[0]["train_seconds"]) > 0
    state = load_checkpoint(run_dir / "last.pt")
    assert set(state) >= {"model", "optimizer", "config", "epoch", "step", "rng", "metrics"}
    assert state["config"]["latent_dim"] == 3
    model = vae.load_model(run_dir / "best.pt")
    assert not model.training and model.latent_dim == 3
    loc, scale_tril = model.encode(torch.rand(2, 1, 28, 28))
    assert loc.shape == (2, 3) and scale_tril.shape == (2, 3, 3)
    assert model.decode(loc).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("objective,k", [("elbo", 1), ("iwae", 3)])
def test_resume_ends_exactly_where_an_uninterrupted_run_does(fake_mnist, tmp_path, objective, k):
    quiet = lambda *_: None
    kwargs = dict(objective=objective, k=k, epochs=3)
    straight = train(tiny_config(fake_mnist, tmp_path / "a", **kwargs), log=quiet)
    first = train(tiny_config(fake_mnist, tmp_path / "b", **{**kwargs, "epochs": 1}), log=quiet)
    resumed_config = RunFolder(tiny_config(fake_mnist, tmp_path / "b", resume=True, epochs=3)).resume_config(
        {"epochs", "resume"})
    assert resumed_config.epochs == 3 and resumed_config.objective == objective
    resumed = train(resumed_config, log=quiet)
    assert resumed == first
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    assert strip(read_metrics(straight)) == strip(read_metrics(resumed))


def test_diag_warmup_holds_a_full_posterior_diagonal_then_releases_it(fake_mnist, tmp_path):
    quiet = lambda *_: None
    rows, cols = torch.tril_indices(3, 3)
    offdiag = lambda run: load_checkpoint(run / "last.pt")["model"]["encoder.scale_head.weight"][rows != cols]
    run = train(tiny_config(fake_mnist, tmp_path, diag_warmup=1, epochs=1), log=quiet)
    assert torch.equal(offdiag(run), torch.zeros(3, 32))  # held at zero by the warm-up
    train(tiny_config(fake_mnist, tmp_path, diag_warmup=1, epochs=2, resume=True), log=quiet)
    assert (offdiag(run).abs().sum(1) > 0).all()  # released in epoch 2: every entry learns
    no_warmup = train(tiny_config(fake_mnist, tmp_path, diag_warmup=0, run_name="none"), log=quiet)
    assert (offdiag(no_warmup).abs().sum(1) > 0).all()


def test_init_from_starts_a_fine_tune_at_a_checkpoint_s_weights(fake_mnist, tmp_path):
    quiet = lambda *_: None
    start = train(tiny_config(fake_mnist, tmp_path, run_name="start", diag_warmup=0), log=quiet) / "last.pt"
    weights = load_checkpoint(start)["model"]
    # lr 1e-12: the fine-tune's weights stay where it started, so the start can be read off its end
    tune = train(tiny_config(fake_mnist, tmp_path, run_name="tune", objective="iwae", k=4, lr=1e-12,
                             init_from=str(start)), log=quiet)
    tuned = load_checkpoint(tune / "last.pt")
    for name, tensor in weights.items():
        torch.testing.assert_close(tuned["model"][name], tensor, atol=1e-8, rtol=0, msg=name)
    assert tuned["config"]["init_from"] == str(start)
    fresh = train(tiny_config(fake_mnist, tmp_path, run_name="fresh", lr=1e-12, seed=5), log=quiet)
    assert not torch.allclose(load_checkpoint(fresh / "last.pt")["model"]["decoder.head.weight"],
                              weights["decoder.head.weight"], atol=1e-3)
    other = ["--data-dir", str(fake_mnist), "--out-dir", str(tmp_path), "--run-name", "other", "--latent-dim", "4",
             "--hidden", "32", "--batch-size", "16", "--device", "cpu", "--no-plots", "--no-progress",
             "--epochs", "1", "--init-from", str(start)]
    result = run_cli("train.py", *other)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"train.py: error: --init-from {start}: another model "
                                                  "(--latent-dim 3 there, 4 here)"]
    missing = run_cli("train.py", *other[:-1], str(tmp_path / "none.pt"))
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"train.py: error: --init-from {tmp_path / 'none.pt'}: no such checkpoint file"]
    assert not (tmp_path / "other").exists()


def test_resume_refuses_a_flag_that_changes_the_model(fake_mnist, tmp_path):
    train(tiny_config(fake_mnist, tmp_path), log=lambda *_: None)
    with pytest.raises(ValueError, match="was trained with latent_dim 3"):
        RunFolder(tiny_config(fake_mnist, tmp_path, resume=True, latent_dim=4)).resume_config(
            {"latent_dim", "resume"})


def test_missing_data_is_one_clear_message(tmp_path):
    with pytest.raises(DataError, match="`data_dir`"):
        load_split("mnist", str(tmp_path / "nowhere"))
    result = run_cli("train.py", "--data-dir", str(tmp_path / "nowhere"), "--device", "cpu", "--out-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "--data-dir" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nowhere" / "MNIST").exists()  # the failed download left nothing behind


def test_cli_refuses_to_overwrite_a_run(fake_mnist, tmp_path):
    """(Bad flag values are covered in tests/test_reliability.py.)"""
    args = ["train.py", "--data-dir", str(fake_mnist), "--out-dir", str(tmp_path), "--run-name", "r",
            "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-plots", "--no-progress", "--device", "cpu"]
    assert run_cli(*args).returncode == 0
    before = (tmp_path / "r" / "last.pt").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (tmp_path / "r" / "last.pt").read_bytes() == before


def test_cli_short_run_on_real_mnist_writes_every_picture(real_data, tmp_path):
    result = run_cli("train.py", "--dataset", "mnist", "--data-dir", str(real_data), "--limit", "2000",
                     "--epochs", "1", "--latent-dim", "2", "--out-dir", str(tmp_path), "--run-name", "d2",
                     "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "d2"
    for name in ("reconstructions", "samples", "latent", "curves", "manifold", "ellipses"):
        png = run_dir / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = read_metrics(run_dir)[0]
    assert float(row["test_neg_elbo"]) < 300  # learning happened (untrained: ~545 nats)
    out = tmp_path / "pics"
    viz = run_cli("-m", "vae.visualize", str(run_dir / "best.pt"), "--out", str(out))
    assert viz.returncode == 0, viz.stderr
    assert (out / "ellipses.png").stat().st_size > 5000


@needs_cuda
def test_cuda_amp_epoch(fake_mnist, tmp_path):
    run_dir = train(tiny_config(fake_mnist, tmp_path, device="cuda", amp=True), log=lambda *_: None)
    assert float(read_metrics(run_dir)[0]["test_neg_elbo"]) > 0
    assert vae.load_model(run_dir / "last.pt", map_location="cuda").encode(torch.rand(2, 784, device="cuda"))[1].dtype == torch.float32


def test_binarization_draws_are_fresh_random_numbers(fake_mnist, tmp_path, monkeypatch):
    """The data stream neither replays the weight init (same seed) nor the epoch's permutation draws."""
    import vae.epoch as training  # the module whose train_epoch draws the batches
    from vae.step import TrainStep  # whose loss draws the binarization from the generator it is given

    seen = []
    real_loss = TrainStep.loss

    def spy(self, images, generator, *args):
        seen.append((generator.initial_seed(), generator.get_state().clone()))
        return real_loss(self, images, generator, *args)

    monkeypatch.setattr(TrainStep, "loss", spy)
    starts = []
    real_batches = training.batch_indices
    monkeypatch.setattr(training, "batch_indices",
                        lambda n, b, g, d: (starts.append(g.get_state().clone()), real_batches(n, b, g, d))[1])
    train(tiny_config(fake_mnist, tmp_path, seed=7), log=lambda *_: None)
    assert seen[0][0] != 7 and seen[0][0] != torch.initial_seed()  # its own seed, not the global RNG's
    assert not torch.equal(seen[0][1], starts[0])  # the first batch's draws come after the permutation's


def test_a_training_step_too_large_for_the_memory_is_refused_before_the_data(tmp_path):
    result = run_cli("train.py", "--objective", "iwae", "--k", "1000000", "--data-dir", str(tmp_path / "nowhere"),
                     "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--k 1000000 with --batch-size 128" in lines[0] and "GiB" in lines[0] and "lower --" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "nowhere").exists()  # the data was never looked for


def assert_names_the_largest_that_fits(config: TrainConfig, field: str, total: int, match: str) -> None:
    """``config``'s step is refused in one line (``match``) naming the largest ``field`` that fits ``total``."""
    import re

    from vae.step import check_step_memory

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=match) as refused:
        check_step_memory(config, cpu, total=total)
    flag = "--" + field.replace("_", "-")
    fits = int(re.search(rf"lower {flag} to (\d+)", refused.value.as_flag()).group(1))
    check_step_memory(dataclasses.replace(config, **{field: fits}), cpu, total=total)
    with pytest.raises(ValueError):
        check_step_memory(dataclasses.replace(config, **{field: fits + 1}), cpu, total=total)


def test_the_memory_limit_is_a_quarter_of_the_device_and_names_the_batch_that_fits():
    from vae.step import STEP_MEMORY_FRACTION, check_step_memory, step_memory_bytes

    cpu, gib = torch.device("cpu"), 2**30
    issue = TrainConfig(objective="iwae", k=5000)  # batch 128, hidden 400: the issue measured 7.8 GB
    assert 7 * gib < step_memory_bytes(issue) < 9 * gib and STEP_MEMORY_FRACTION == 0.25
    check_step_memory(issue, cpu, total=64 * gib)  # 16 GiB allowed
    assert_names_the_largest_that_fits(issue, "batch_size", 16 * gib,
                                       r"needs about 7\.7 GiB .* over 25% of the 16\.0 GiB of cpu memory")
    with pytest.raises(ValueError, match="lower k$"):  # not even one image fits
        check_step_memory(TrainConfig(k=10**9, batch_size=1), cpu, total=16 * gib)
    check_step_memory(TrainConfig(), cpu)  # the defaults fit anywhere
