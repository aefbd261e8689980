"""``vae.gaps`` against known answers: a linear-Gaussian model, whose posterior and log p(x) are exact."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from tests.conftest import run_cli
from tests.test_training import tiny_config
from vae.gaps import GapSettings, fixed_noise, gaps, summarize
from vae.model import FullGaussian

D, P, N = 3, 6, 16
SIGMA = 0.5


class GaussianLikelihood:
    """x ~ N(mean, SIGMA^2 I): the decoder's output is the mean."""

    params_per_pixel = 1

    def log_prob(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(mean, SIGMA).log_prob(x.unsqueeze(1)).sum(-1)  # (N, K)


class LinearGaussian(nn.Module):
    """z ~ N(0, I), x | z ~ N(W z + b, SIGMA^2 I), and a poor encoder: the exact posterior mean, twice its scale."""

    family, rank, diag_transform = "full", 2, "softplus"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(P, D, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(P, generator=g, dtype=torch.float64))
        self.likelihood = GaussianLikelihood()

    def params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters: the means W z + b."""
        return z @ self.W.T + self.b

    def q(self, x: torch.Tensor) -> FullGaussian:
        posterior = self.posterior(x)
        return FullGaussian(posterior.mean, 2 * posterior.scale_tril)

    def precision(self) -> torch.Tensor:
        """Λ of p(z|x), the same for every x: I + WᵀW / σ²."""
        return torch.eye(D, dtype=torch.float64) + self.W.T @ self.W / SIGMA**2

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        precision = self.precision()
        mean = torch.linalg.solve(precision, ((x - self.b) @ self.W / SIGMA**2).T).T  # (N, D)
        return MultivariateNormal(mean, precision_matrix=precision.expand(len(x), D, D))

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        covariance = self.W @ self.W.T + SIGMA**2 * torch.eye(P, dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=covariance).log_prob(x)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(1)
    model = LinearGaussian()
    with torch.no_grad():
        x = model.params(torch.randn(N, D, dtype=torch.float64)) + SIGMA * torch.randn(N, P, dtype=torch.float64)
    per_image = gaps(model, x, ["full", "diagonal"], GapSettings(steps=400, samples=32, lr=0.05), k=2000,
                     progress=False)
    return model, x, per_image


def test_the_full_family_closes_the_approximation_gap_and_log_px_is_exact(measured):
    model, x, per_image = measured
    with torch.no_grad():
        exact = model.log_px(x)
    torch.testing.assert_close(per_image["log_px"], exact, atol=0.02, rtol=0)
    assert (exact - per_image["full"]).abs().max() < 0.05  # each image's optimized full q is its posterior
    assert abs((exact - per_image["full"]).mean()) < 0.02


def test_the_diagonal_family_s_gap_is_the_closed_form(measured):
    model, x, per_image = measured
    with torch.no_grad():
        precision = model.precision()
        closed_form = 0.5 * (torch.diagonal(precision).log().sum() - torch.logdet(precision))
    assert closed_form > 0.1  # a correlated posterior: the diagonal family really loses something
    gap = (per_image["log_px"] - per_image["diagonal"]).mean()
    assert abs(gap - closed_form) < 0.03, (gap, closed_form)


def test_the_amortization_gap_of_a_poor_encoder_matches_a_direct_computation(measured):
    model, x, per_image = measured
    with torch.no_grad():  # the gap to the best full q, the posterior itself, is KL(q || p(z|x))
        q = model.q(x)
        direct = kl_divergence(MultivariateNormal(q.loc, scale_tril=q.scale_tril), model.posterior(x))
    torch.testing.assert_close(direct, torch.full_like(direct, 0.5 * D * (3 - math.log(4))))  # 2.42 nats
    result = summarize(per_image, "full", ["full", "diagonal"])
    assert abs(result["amortization_gap"] - direct.mean().item()) < 0.05
    assert set(result) == {"log_px", "amortized_elbo", "amortization_gap", "family", "families"}
    assert set(result["families"]["full"]) == {"optimized_elbo", "approximation_gap"}


def test_fixed_noise_is_moment_matched_when_there_are_enough_draws():
    eps = fixed_noise(4, 40, 5, torch.Generator().manual_seed(0), "cpu", torch.float64)
    torch.testing.assert_close(eps.mean(1), torch.zeros(4, 5, dtype=torch.float64))
    torch.testing.assert_close(eps.mT @ eps / 40, torch.eye(5, dtype=torch.float64).expand(4, 5, 5))
    assert fixed_noise(4, 3, 5, torch.Generator().manual_seed(0), "cpu", torch.float64).shape == (4, 3, 5)


def test_the_command_line_on_a_checkpoint(fake_mnist, tmp_path):
    from vae.training import train

    run_dir = train(tiny_config(fake_mnist, tmp_path, posterior="lowrank", rank=2), log=lambda *_: None)
    out, plot = tmp_path / "gaps.json", tmp_path / "gaps.png"
    result = run_cli("-m", "vae.gaps", str(run_dir / "best.pt"), "--families", "diagonal", "--limit", "12",
                     "--steps", "5", "--samples", "4", "--k", "8", "--data-dir", str(fake_mnist), "--no-progress",
                     "--out", str(out), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert set(saved) == {"log_px", "amortized_elbo", "amortization_gap", "family", "families"}
    assert saved["family"] == "lowrank" and set(saved["families"]) == {"diagonal", "lowrank"}  # its own is added
    for row in saved["families"].values():
        assert math.isclose(row["approximation_gap"], saved["log_px"] - row["optimized_elbo"], rel_tol=1e-9)
    assert math.isclose(saved["amortization_gap"],
                        saved["families"]["lowrank"]["optimized_elbo"] - saved["amortized_elbo"], rel_tol=1e-9)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    bad = run_cli("-m", "vae.gaps", str(run_dir / "best.pt"), "--steps", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "python -m vae.gaps: error: --steps must be positive, got 0"]


def test_measuring_the_gaps_leaves_the_model_as_it_was():
    model = LinearGaussian()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(4, P, dtype=torch.float64)
    gaps(model, x, ["diagonal"], GapSettings(steps=3, samples=8), k=4, progress=False)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # no gradient reached the decoder
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
