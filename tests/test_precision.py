"""Mixed precision: the covariance maths stays float32 under any autocast, and ``--amp`` on the CPU."""
from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import vae.devices
from tests.conftest import CUDA_MARKS, run_cli
from tests.test_training import read_metrics, tiny_config
from vae.config import TrainConfig
from vae.devices import check_amp, native_bf16
from vae.model import FAMILIES
from vae.model.objectives import training_loss
from vae.model.posteriors import LowRankGaussian
from vae.run.checkpoint import build_model
from vae.step import TrainStep
from vae.training import make_optimizer, train

CPU = torch.device("cpu")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]
needs_bf16 = pytest.mark.skipif(native_bf16() is None, reason="this CPU has no native bf16")


def large_posterior(family: str, dim: int = 32, rank: int = 8, n: int = 6, seed: int = 0, device="cpu"):
    """A posterior of ``family`` from large raw outputs, where bf16 matmuls would be far off."""
    g = torch.Generator().manual_seed(seed)
    cls = FAMILIES[family]
    loc = 3 * torch.randn(n, dim, generator=g)
    raw = 4 * torch.randn(n, cls.head_size(dim, rank), generator=g)
    return cls.from_raw(loc.to(device), raw.to(device), rank=rank)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_density_and_kl_method_is_float32_exact_under_autocast(family, device):
    q = large_posterior(family, device=device)
    eps = torch.randn(q.loc.shape[0], 5, q.noise_dim(), generator=torch.Generator().manual_seed(1)).to(device)
    z = q.transform(eps)

    def values():
        return {"transform": q.transform(eps), "log_prob": q.log_prob(z), "log_prob_draws": q.log_prob_draws(eps, z),
                "log_det": q.log_det(), "trace": q.trace(), "kl": q.kl_standard_normal(),
                "conditional_variance": q.conditional_variance(), "scale_tril": q.scale_tril,
                "covariance": q.covariance_matrix}

    expected = values()
    if family == "lowrank":
        q._capacitance = None  # built afresh inside the autocast region
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        got = values()
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-5, msg=name)


def test_the_lowrank_cholesky_carries_no_error_check_that_reads_back_to_the_host():
    # torch.linalg.cholesky traces to cholesky_ex plus _linalg_check_errors, which syncs with a GPU every
    # step and cannot be captured in a CUDA graph; the capacitance is positive definite by construction
    q = large_posterior("lowrank", dim=6, rank=2, n=3)
    z = torch.randn(3, 2, 6)

    def log_prob(loc, factor, diag, z):
        return LowRankGaussian(loc, factor, diag).log_prob(z)

    graph = make_fx(log_prob)(q.loc, q.cov_factor, q.cov_diag, z).code
    assert "linalg_cholesky_ex" in graph
    assert "_linalg_check_errors" not in graph


@pytest.mark.parametrize("device", DEVICES)
def test_the_diagonal_warm_up_switch_never_recompiles_the_compiled_step(device):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    device = torch.device(device)
    config = TrainConfig(latent_dim=4, hidden=(16,), posterior="full", compile=True, device=device.type)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    step = TrainStep(model, make_optimizer(model, config, device), config, device)
    images, generator = torch.rand(8, 784, device=device), torch.Generator(device=device).manual_seed(0)
    frames = []
    for enabled in (False, True, False):
        model.offdiag_enabled = enabled
        loss, _ = step.loss(images, generator)
        step.update(loss)
        frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert frames[0] > 0 and frames[0] == frames[1] == frames[2]  # the warm-up's end compiles nothing new
    assert model.offdiag_enabled is False
    q = model.q(images)
    assert (q.scale_tril.tril(-1) == 0).all()  # and the switch still holds the factor diagonal


def test_amp_is_refused_in_one_line_where_the_cpu_has_no_native_bf16(monkeypatch, fake_mnist, tmp_path):
    monkeypatch.setattr(vae.devices, "native_bf16", lambda: None)
    with pytest.raises(ValueError, match="no native bf16.*--no-amp"):
        check_amp(CPU, True)
    assert check_amp(CPU, False) == "precision: float32"
    with pytest.raises(ValueError, match="--no-amp"):
        train(tiny_config(fake_mnist, tmp_path / "runs", amp=True), log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "AMX"),
                            ("fpu avx512f avx512_bf16", "AVX512-BF16"), ("fpu sse2 avx2", None)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path,
                                                                              *a, **k))
        native_bf16.cache_clear()
        try:
            assert native_bf16() == expected
        finally:
            monkeypatch.setattr(builtins, "open", real_open)
            native_bf16.cache_clear()


@needs_bf16
@pytest.mark.parametrize("posterior", ["full", "lowrank"])
def test_a_bf16_step_matches_a_float32_step_within_bf16_rounding(posterior):
    # bf16 keeps 8 bits of mantissa: the networks' outputs move by ~0.4% of their size, and the
    # loss (a sum over 784 pixels) by well under 1% of itself; the gradients point the same way
    config = TrainConfig(latent_dim=8, hidden=(64,), posterior=posterior, rank=2)
    torch.manual_seed(0)
    model = build_model(config)
    x = torch.rand(32, 784).bernoulli()
    results = []
    for amp in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        with vae.devices.autocast(CPU, amp):
            surrogate, bound = training_loss(model, x)
        surrogate.mean().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((bound, grad))
    (fp32, grad32), (bf16, grad16) = results
    torch.testing.assert_close(bf16.loss, fp32.loss, rtol=5e-3, atol=0)
    torch.testing.assert_close(bf16.kl, fp32.kl, rtol=5e-3, atol=1e-3)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights stay float32


@needs_bf16
def test_an_amp_run_on_the_cpu_says_so_trains_and_resumes_exactly(fake_mnist, tmp_path):
    lines = []
    runs = tmp_path / "runs"
    whole = train(tiny_config(fake_mnist, runs, run_name="whole", epochs=2, amp=True), log=lines.append)
    assert any(line.startswith("precision: bf16 autocast") and "float32" in line for line in lines[:4]), lines
    train(tiny_config(fake_mnist, runs, run_name="split", epochs=1, amp=True), log=lambda *_: None)
    split = train(tiny_config(fake_mnist, runs, run_name="split", epochs=2, amp=True, resume=True),
                  log=lambda *_: None)
    for ours, theirs in zip(read_metrics(whole), read_metrics(split)):
        assert ours["test_neg_elbo"] == theirs["test_neg_elbo"]
    plain = train(tiny_config(fake_mnist, runs, run_name="plain", epochs=2), log=lambda *_: None)
    assert read_metrics(plain)[-1]["train_loss"] != read_metrics(whole)[-1]["train_loss"]  # bf16 did run


def test_a_run_made_with_amp_resumes_without_it_on_a_cpu_that_lacks_bf16(fake_mnist, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setattr(vae.devices, "native_bf16", lambda: "AMX")  # made on a bf16 machine
    train(tiny_config(fake_mnist, runs, run_name="r", epochs=1, amp=True), log=lambda *_: None)
    monkeypatch.setattr(vae.devices, "native_bf16", lambda: None)  # resumed on one without
    with pytest.raises(ValueError, match="--no-amp"):
        train(tiny_config(fake_mnist, runs, run_name="r", epochs=2, amp=True, resume=True), log=lambda *_: None)
    assert len(read_metrics(runs / "r")) == 1
    lines = []
    train(tiny_config(fake_mnist, runs, run_name="r", epochs=2, amp=False, resume=True), log=lines.append)
    assert "precision: float32" in lines and len(read_metrics(runs / "r")) == 2
    help_text = run_cli("train.py", "--help").stdout
    assert "--no-amp" in help_text and "--amp" in help_text
