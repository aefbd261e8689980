"""The importance-sampled NLL estimator: exact on a linear-Gaussian model, ELBO at K=1, the CLI."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from tests.conftest import REPO, run_cli
from vae.run.checkpoint import PRETRAINED, PRETRAINED_DIR, SHIPPED_MODELS, load_checkpoint, load_model
from vae.evaluate import evaluate_model
from vae.model import FullGaussian
from vae.model import VAE
from vae.model.objectives import importance_weighted_bounds, negative_elbo

D, P, NOISE = 3, 6, 0.5  # latent dim, observed dim, observation noise std


def linear_gaussian(seed: int = 0):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): log p(x) and the posterior are known exactly."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(P, D, generator=g, dtype=torch.float64)
    b = torch.randn(P, generator=g, dtype=torch.float64)
    x = torch.randn(8, P, generator=g, dtype=torch.float64) * 2
    marginal_tril = torch.linalg.cholesky(W @ W.T + NOISE**2 * torch.eye(P, dtype=torch.float64))
    log_px = MultivariateNormal(b, scale_tril=marginal_tril).log_prob(x)  # (8,)
    precision = torch.eye(D, dtype=torch.float64) + W.T @ W / NOISE**2  # posterior precision
    precision_tril = torch.linalg.cholesky(precision)
    cov = torch.cholesky_inverse(precision_tril)  # test-side reference maths only
    loc = ((x - b) @ W / NOISE**2) @ cov  # (8, D)
    scale_tril = torch.linalg.cholesky(cov).expand(8, D, D)
    noise_tril = NOISE * torch.eye(P, dtype=torch.float64)

    def log_likelihood(z):  # (N, C, D) -> (N, C)
        return MultivariateNormal(z @ W.T + b, scale_tril=noise_tril).log_prob(x.unsqueeze(1))

    return log_likelihood, loc, scale_tril, log_px


@pytest.mark.parametrize("k,chunk", [(1, 1), (50, 7), (1000, 1000)])
def test_exact_posterior_gives_the_closed_form_log_likelihood(k, chunk):
    log_likelihood, loc, scale_tril, log_px = linear_gaussian()
    elbo, estimate = importance_weighted_bounds(log_likelihood, FullGaussian(loc, scale_tril), k, chunk,
                                                torch.Generator().manual_seed(1))
    # with q equal to the true posterior every weight is p(x): both bounds are exact
    torch.testing.assert_close(estimate, log_px, rtol=0, atol=1e-9)
    torch.testing.assert_close(elbo, log_px, rtol=0, atol=1e-9)


def test_a_wrong_posterior_converges_from_below_as_k_grows():
    log_likelihood, loc, scale_tril, log_px = linear_gaussian()
    wide = 1.6 * scale_tril  # an over-dispersed proposal: the bound is loose but converges
    generator = torch.Generator().manual_seed(2)

    def mean_gap(k: int, repeats: int) -> tuple[float, float]:
        runs = [importance_weighted_bounds(log_likelihood, FullGaussian(loc, wide), k, 500, generator) for _ in range(repeats)]
        elbo = torch.stack([r[0] for r in runs]).mean(0)
        estimate = torch.stack([r[1] for r in runs]).mean(0)
        return (log_px - elbo).mean().item(), (log_px - estimate).mean().item()

    elbo_gap, gap_10 = mean_gap(10, 40)  # theory: KL(q || posterior) ~ 0.9, and ~0.05 at K = 10
    _, gap_5000 = mean_gap(5000, 3)
    assert elbo_gap > 0.5
    assert elbo_gap > gap_10 > 0.01
    assert abs(gap_5000) < 0.01


def test_k1_equals_the_elbo_and_k_tightens_it():
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(32,)).double()
    x = torch.rand(200, 784, dtype=torch.float64).bernoulli()
    at_1 = evaluate_model(model, x, k=1, batch_size=50, progress=False)
    assert at_1["nll"] == pytest.approx(at_1["neg_elbo"], abs=1e-9)
    torch.manual_seed(5)
    analytic = negative_elbo(model, x).loss.mean().item()  # closed-form KL, one draw
    assert at_1["neg_elbo"] == pytest.approx(analytic, rel=0.02)
    at_100 = evaluate_model(model, x, k=100, batch_size=50, progress=False)
    assert at_100["nll"] < at_100["neg_elbo"] - 0.5
    assert at_100["bits_per_dim"] == pytest.approx(at_100["nll"] / (784 * math.log(2)))


def test_cli_writes_json_beside_the_checkpoint(fake_mnist, tmp_path):
    args = ["train.py", "--data-dir", str(fake_mnist), "--out-dir", str(tmp_path), "--run-name", "r",
            "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-plots", "--no-progress", "--device", "cpu"]
    assert run_cli(*args).returncode == 0
    result = run_cli("-m", "vae.evaluate", str(tmp_path / "r" / "best.pt"), "--k", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "r" / "eval-test-k1.json").read_text())
    assert saved["images"] == 40 and saved["k"] == 1
    assert saved["nll"] == pytest.approx(saved["neg_elbo"], abs=1e-4)
    again = run_cli("-m", "vae.evaluate", str(tmp_path / "r" / "best.pt"), "--k", "20", "--no-progress")
    assert again.returncode == 0
    k20 = json.loads((tmp_path / "r" / "eval-test-k20.json").read_text())
    assert k20["nll"] < saved["nll"]
    bad = run_cli("-m", "vae.evaluate", str(tmp_path / "r" / "best.pt"), "--k", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    limited = run_cli("-m", "vae.evaluate", str(tmp_path / "r" / "best.pt"), "--k", "1", "--limit", "10",
                      "--no-progress")
    assert limited.returncode == 0, limited.stderr
    assert json.loads((tmp_path / "r" / "eval-test-k1-limit10.json").read_text())["images"] == 10
    assert json.loads((tmp_path / "r" / "eval-test-k1.json").read_text()) == saved  # not overwritten
    assert saved["checkpoint"] == "best.pt"  # outside the repository: the name only, no machine path


def test_exported_model_is_slim_and_loads(fake_mnist, tmp_path):
    from vae.run.checkpoint import export_model, load_checkpoint, load_model

    args = ["train.py", "--data-dir", str(fake_mnist), "--out-dir", str(tmp_path), "--run-name", "r",
            "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-plots", "--no-progress", "--device", "cpu"]
    assert run_cli(*args).returncode == 0
    best, slim = tmp_path / "r" / "best.pt", tmp_path / "slim.pt"
    export_model(best, slim)
    assert slim.stat().st_size < 0.6 * best.stat().st_size
    assert "optimizer" not in load_checkpoint(slim) and "rng" not in load_checkpoint(slim)
    a, b = load_model(best), load_model(slim)
    x = torch.rand(3, 784)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=0)
    assert run_cli("-m", "vae.evaluate", str(slim), "--k", "2", "--no-progress").returncode == 0


def test_missing_default_checkpoint_is_one_line(tmp_path):
    result = run_cli("-m", "vae.evaluate", str(tmp_path / "absent.pt"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "absent.pt" in result.stderr


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_each_shipped_model_loads_with_its_config_metrics_and_evaluation(name):
    path = PRETRAINED_DIR / name
    assert path.is_file() and path.stat().st_size < 10 * 2**20
    state = load_checkpoint(path)
    assert state["config"]["dataset"] == "mnist" and state["epoch"] == len(state["metrics"])
    assert load_model(path).latent_dim == state["config"]["latent_dim"]
    stem = name[:-3]
    with open(PRETRAINED_DIR / f"{stem}-metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [m["epoch"] for m in state["metrics"]]
    assert float(rows[-1]["test_neg_elbo"]) == pytest.approx(state["metrics"][-1]["test_neg_elbo"])
    evaluations = sorted(PRETRAINED_DIR.glob(f"{stem}-eval-test-k5000*.json"))
    assert [p.name for p in evaluations] in ([f"{stem}-eval-test-k5000.json"],
                                             [f"{stem}-eval-test-k5000-limit2000.json"])
    saved = json.loads(evaluations[0].read_text())
    assert saved["checkpoint"] == path.relative_to(REPO).as_posix()  # no machine path
    assert saved["k"] == 5000 and saved["split"] == "test"
    assert saved["images"] == (2000 if evaluations[0].stem.endswith("limit2000") else 10000)
    assert 70 < saved["nll"] < saved["neg_elbo"] < 120


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_each_shipped_model_computes_what_it_computed_when_it_was_trained(name, real_data):
    """The redesign moved code, not results: the per-epoch test bound (fixed noise) matches the stored one."""
    from vae.data import evaluation_images, load_split
    from vae.devices import native_bf16
    from vae.epoch import evaluate

    model = load_model(PRETRAINED_DIR / name)
    state = load_checkpoint(PRETRAINED_DIR / name)
    images = evaluation_images(load_split("mnist", str(real_data), train=False).images, "dynamic")
    amp = state["config"].get("amp", False)  # a run's per-epoch test bound follows its --amp
    test = evaluate(model, images, amp=amp and native_bf16() is not None)
    # bf16 kernels round by the CPU's vector units: the stored bound is only this machine's to the bit
    tolerance = 2e-3 if not amp else 0.05
    assert test["test_neg_elbo"] == pytest.approx(state["metrics"][-1]["test_neg_elbo"], abs=tolerance)
    assert test["test_kl"] == pytest.approx(state["metrics"][-1]["test_kl"], abs=tolerance)


def test_the_default_model_is_the_best_shipped_one_and_evaluates(real_data, tmp_path):
    whole = [name for name in SHIPPED_MODELS if (PRETRAINED_DIR / f"{name[:-3]}-eval-test-k5000.json").is_file()]
    nll = {name: json.loads((PRETRAINED_DIR / f"{name[:-3]}-eval-test-k5000.json").read_text())["nll"]
           for name in whole}  # the models evaluated on the whole test set
    assert PRETRAINED.name == min(nll, key=nll.get)
    out = tmp_path / "eval.json"
    result = run_cli("-m", "vae.evaluate", "--k", "20", "--limit", "200", "--no-progress",
                     "--data-dir", str(real_data), "--out", str(out))  # no path: the pretrained model
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["checkpoint"] == PRETRAINED.relative_to(REPO).as_posix()  # no machine path
    assert 60 < saved["nll"] < saved["neg_elbo"] < 120  # a trained model, not a random one (~545)


def shipped_files() -> dict[str, bytes]:
    from vae.run.checkpoint import PRETRAINED_DIR as SHIPPED

    return {path.name: path.read_bytes() for path in sorted(SHIPPED.iterdir())}


def test_no_command_writes_into_the_shipped_folder(fake_mnist, tmp_path):
    from vae.run.checkpoint import PRETRAINED
    from vae.run.checkpoint import PRETRAINED_DIR as SHIPPED

    before = shipped_files()
    env = {"PYTHONPATH": str(REPO)}  # run from another folder, with this checkout's vae
    result = run_cli("-m", "vae.evaluate", "--k", "2", "--limit", "20", "--no-progress", "--data-dir", str(fake_mnist),
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / f"{PRETRAINED.stem}-eval-test-k2-limit20.json").read_text())
    assert saved["images"] == 20 and saved["checkpoint"] == PRETRAINED.relative_to(REPO).as_posix()
    refused = run_cli("-m", "vae.evaluate", "--k", "2", "--out", str(SHIPPED / "eval-test-k5000.json"),
                      cwd=tmp_path, env=env)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "shipped" in refused.stderr and "Traceback" not in refused.stderr
    pictures = run_cli("-m", "vae.visualize", "--data-dir", str(fake_mnist), cwd=tmp_path, env=env)  # the default model
    assert pictures.returncode == 0, pictures.stderr
    assert (tmp_path / f"{PRETRAINED.stem}-pictures" / "samples.png").is_file()
    refused = run_cli("-m", "vae.visualize", "--out", str(SHIPPED), cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "shipped" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert shipped_files() == before


def test_result_names_hold_split_k_limit_and_a_shipped_model_s_stem():
    from vae.run.outputs import result_path
    from vae.run.checkpoint import PRETRAINED_DIR as SHIPPED, is_shipped

    run = Path("runs") / "r" / "best.pt"
    assert result_path(run, "test", 5000) == run.parent / "eval-test-k5000.json"
    assert result_path(run, "test", 10, limit=20) == run.parent / "eval-test-k10-limit20.json"
    assert result_path(run, "train", 10, seed=3) == run.parent / "eval-train-k10-seed3.json"
    for name in ("vae-full.pt", "vae-diagonal.pt", "iwae-full.pt"):  # any file there is shipped
        assert is_shipped(SHIPPED / name) and not is_shipped(Path("elsewhere") / name)
        stem = name[:-3]
        assert result_path(SHIPPED / name, "test", 5000) == Path(f"{stem}-eval-test-k5000.json")  # current folder
    assert SHIPPED.name == "pretrained" and SHIPPED.parent.name == "vae"  # package data
