"""The speed paths: the CPU thread default and the compiled training step."""
from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vae.devices
from tests.conftest import run_cli
from tests.test_training import read_metrics, tiny_config
from vae.config import TrainConfig
from vae.devices import THREAD_ENV, busy_cores, set_threads
from vae.run.checkpoint import build_model, load_checkpoint
from vae.step import TrainStep
from vae.training import make_optimizer, train

TIMING_COLUMNS = {"images_per_s", "train_seconds"}


@pytest.fixture
def threads(monkeypatch):
    """No thread variable in the environment; torch's thread count restored afterwards."""
    for name in THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_threads_take_the_usable_cores_less_the_busy_ones(threads, monkeypatch):
    monkeypatch.setattr(vae.devices, "usable_cores", lambda: 4)
    for busy, expected in ((0.2, 4), (1.6, 2), (3.0, 1), (7.5, 1)):
        monkeypatch.setattr(vae.devices, "busy_cores", lambda seconds=0.1: busy)
        line = set_threads(0)
        assert torch.get_num_threads() == expected, line
        assert line.startswith(f"{expected} CPU threads (4 usable cores, {busy:.1f} busy")


def test_a_thread_variable_or_the_flag_overrides_the_default(threads, monkeypatch):
    monkeypatch.setattr(vae.devices, "busy_cores", lambda seconds=0.1: pytest.fail("sampled despite an override"))
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(0) == "1 CPU threads (from OMP_NUM_THREADS)" and torch.get_num_threads() == 1
    assert set_threads(2) == "2 CPU threads (as asked)" and torch.get_num_threads() == 2  # the flag beats the variable
    with pytest.raises(ValueError, match="threads"):
        set_threads(-1)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat")
def test_busy_cores_sees_another_process_spinning():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # let it start
        assert busy_cores(0.5) >= 0.6  # one core's worth, less what a busy CI machine takes from it
    finally:
        spinner.kill()
        spinner.wait()
    assert 0 <= busy_cores(0.05)


def test_training_applies_the_thread_count_and_says_so(threads, monkeypatch, fake_mnist, tmp_path):
    lines = []
    monkeypatch.setattr(vae.devices, "usable_cores", lambda: 2)
    monkeypatch.setattr(vae.devices, "busy_cores", lambda seconds=0.1: 1.0)  # the other core is taken
    torch.set_num_threads(2)
    train(tiny_config(fake_mnist, tmp_path / "runs"), log=lines.append)
    assert torch.get_num_threads() == 1 and "1 CPU threads (2 usable cores, 1.0 busy with other work)" in lines
    lines.clear()
    train(tiny_config(fake_mnist, tmp_path / "runs", run_name="two", threads=2), log=lines.append)
    assert torch.get_num_threads() == 2 and "2 CPU threads (as asked)" in lines


def test_a_negative_thread_count_is_a_usage_error(fake_mnist, tmp_path):
    result = run_cli("-m", "vae.train", "--data-dir", str(fake_mnist), "--out-dir", str(tmp_path), "--threads", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --threads must be a non-negative integer, got -1" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "mnist-full-d20-s0").exists()


def two_steps(config: TrainConfig, model, images: torch.Tensor, beta: float):
    """Two TrainSteps, each from ``model``'s weights (Adam's state carries over): per step the loss, the
    step's sums, the gradients, and how far the update moved the weights (mean absolute change)."""
    model = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    step = TrainStep(model, optimizer, config, torch.device("cpu"))
    results = []
    for seed, weight in ((1, beta), (2, 1.0)):  # a warm-up's weight, then beta = 1: one graph for both
        model.load_state_dict(start)
        torch.manual_seed(seed)
        step.learning_rate = 1e-3 * seed  # a schedule's change: the compiled update must see it
        loss, stats = step.loss(images, torch.Generator().manual_seed(seed), weight)
        step.update(loss)
        grads = [p.grad.clone() for p in model.parameters()]
        moved = torch.stack([(p.detach() - start[name]).abs().mean() for name, p in model.named_parameters()])
        results.append((loss.detach(), stats, grads, moved))
    return results, step.learning_rate


@pytest.mark.parametrize("posterior,objective,k,estimator", [
    ("full", "elbo", 1, "reparam"), ("lowrank", "iwae", 3, "dreg"),
])
def test_the_compiled_step_matches_the_eager_one(posterior, objective, k, estimator):
    # same seed, same draws (inductor falls back to the eager RNG): the loss, the sums and the gradients
    # agree to rounding, and the update moves the weights as far (at the new learning rate). In float64:
    # in float32 a ReLU input within rounding of 0 flips between the two and moves a gradient row by 1e-4
    torch._dynamo.reset()
    base = dict(latent_dim=4, hidden=(32,), posterior=posterior, rank=2, objective=objective, k=k,
                estimator=estimator, grad_clip=5.0, device="cpu")
    torch.manual_seed(0)
    model = build_model(TrainConfig(**base)).double()
    images = torch.rand(16, 784, dtype=torch.float64)
    eager, eager_lr = two_steps(TrainConfig(**base), model, images, beta=0.5)
    compiled, compiled_lr = two_steps(TrainConfig(**base, compile=True), model, images, beta=0.5)
    assert eager_lr == pytest.approx(2e-3) and compiled_lr == pytest.approx(2e-3)
    for (loss, stats, grads, moved), (c_loss, c_stats, c_grads, c_moved) in zip(eager, compiled):
        torch.testing.assert_close(c_loss, loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(c_stats, stats, rtol=1e-12, atol=0)
        for a, b in zip(c_grads, grads):  # rounding, on each tensor's own scale
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * b.abs().max().item())
        # the compiled Adam keeps its step count in a float32 tensor: 1 - 0.999^t loses ~1e-5 of itself
        torch.testing.assert_close(c_moved, moved, rtol=3e-5, atol=0)  # a rate baked in at 1e-3: half as far


def test_a_compiled_run_trains_like_an_eager_one_and_resumes_eagerly(fake_mnist, tmp_path):
    torch._dynamo.reset()
    quiet = lambda *_: None  # noqa: E731
    # the KL warm-up's epoch, then one at beta = 1
    eager = train(tiny_config(fake_mnist, tmp_path / "runs", run_name="eager", epochs=2, kl_warmup=1), log=quiet)
    compiled = train(tiny_config(fake_mnist, tmp_path / "runs", run_name="compiled", epochs=1, kl_warmup=1,
                                 compile=True), log=quiet)
    group = load_checkpoint(compiled / "last.pt")["optimizer"]["param_groups"][0]
    assert isinstance(group["lr"], float) and not group["fused"]  # the compiled step's multi-tensor Adam
    resumed = train(tiny_config(fake_mnist, tmp_path / "runs", run_name="compiled", epochs=2, kl_warmup=1,
                                resume=True), log=quiet)  # without --compile: the checkpoint is the same
    assert resumed == compiled
    assert load_checkpoint(compiled / "last.pt")["optimizer"]["param_groups"][0]["fused"]  # eager: fused again
    for ours, theirs in zip(read_metrics(eager), read_metrics(compiled)):
        for name in set(ours) - TIMING_COLUMNS:
            assert float(theirs[name]) == pytest.approx(float(ours[name]), rel=1e-4, abs=1e-4), name
