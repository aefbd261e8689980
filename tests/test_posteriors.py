"""The posterior families against torch.distributions: KL, log q, draws' moments, and their place in the VAE."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal, MultivariateNormal, kl_divergence

from vae.cholesky import entries_to_scale_tril, tril_size
from vae.model import FAMILIES, VAE, DiagonalGaussian, FullGaussian, LowRankGaussian
from vae.model.objectives import negative_elbo, training_loss

N, D, R = 5, 4, 2
DOUBLE = dict(dtype=torch.float64)


def random_posterior(family: str, seed: int = 0):
    """N random Gaussians of ``family`` in float64, and the same as a torch.distributions object built by hand."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(N, D, generator=g, **DOUBLE)
    if family == "full":
        scale_tril = entries_to_scale_tril(torch.randn(N, tril_size(D), generator=g, **DOUBLE))
        return FullGaussian(loc, scale_tril), MultivariateNormal(loc, scale_tril=scale_tril)
    if family == "diagonal":
        scale = torch.rand(N, D, generator=g, **DOUBLE) + 0.2
        return DiagonalGaussian(loc, scale), MultivariateNormal(loc, covariance_matrix=torch.diag_embed(scale**2))
    factor, diag = torch.randn(N, D, R, generator=g, **DOUBLE), torch.rand(N, D, generator=g, **DOUBLE) + 0.1
    covariance = factor @ factor.mT + torch.diag_embed(diag)
    return LowRankGaussian(loc, factor, diag), MultivariateNormal(loc, covariance_matrix=covariance)


def standard_normal():
    return MultivariateNormal(torch.zeros(D, **DOUBLE), scale_tril=torch.eye(D, **DOUBLE))


@pytest.mark.parametrize("family", FAMILIES)
def test_kl_log_det_and_log_prob_match_torch_distributions(family):
    q, reference = random_posterior(family)
    torch.testing.assert_close(q.kl_standard_normal(), kl_divergence(reference, standard_normal()))
    torch.testing.assert_close(q.log_det(), torch.logdet(reference.covariance_matrix))
    z = torch.randn(N, 7, D, **DOUBLE) * 2  # any points, not q's own draws
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z.transpose(0, 1)).T)
    torch.testing.assert_close(q.covariance_matrix, reference.covariance_matrix)
    torch.testing.assert_close(q.scale_tril @ q.scale_tril.mT, reference.covariance_matrix)
    torch.testing.assert_close(q.scale_tril, q.scale_tril.tril())


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_of_own_draws_uses_their_noise_and_agrees(family):
    q, reference = random_posterior(family, seed=1)
    eps, z = q.rsample(6, torch.Generator().manual_seed(0))
    assert z.shape == (N, 6, D) and eps.shape == (N, 6, q.noise_dim())
    torch.testing.assert_close(q.log_prob_draws(eps, z), reference.log_prob(z.transpose(0, 1)).T)


@pytest.mark.parametrize("family", FAMILIES)
def test_draws_have_the_family_s_mean_and_covariance(family):
    q, reference = random_posterior(family, seed=2)
    _, z = q.rsample(100_000, torch.Generator().manual_seed(1))  # (N, K, D)
    for i in range(N):
        torch.testing.assert_close(z[i].mean(0), q.loc[i], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(z[i].T), reference.covariance_matrix[i], atol=0.1, rtol=0.03)


@pytest.mark.parametrize("family", FAMILIES)
def test_distribution_is_the_torch_object_users_expect(family):
    q, reference = random_posterior(family, seed=3)
    dist = q.distribution()
    expected_type = LowRankMultivariateNormal if family == "lowrank" else MultivariateNormal
    assert type(dist) is expected_type and dist.batch_shape == (N,) and dist.event_shape == (D,)
    torch.testing.assert_close(dist.covariance_matrix, reference.covariance_matrix)
    if family == "lowrank":
        assert torch.equal(dist.cov_factor, q.cov_factor) and torch.equal(dist.cov_diag, q.cov_diag)


@pytest.mark.parametrize("family", FAMILIES)
def test_detach_holds_the_parameters_fixed(family):
    q, _ = random_posterior(family, seed=4)
    params = [t.requires_grad_() for t in q._tensors()]
    z = torch.randn(N, 3, D, **DOUBLE, requires_grad=True)
    q.detach().log_prob(z).sum().backward()
    assert all(p.grad is None for p in params) and z.grad is not None


def test_lowrank_log_det_is_the_determinant_lemma_at_rank_above_the_data():
    """R = D: W W^T alone is full rank; the capacitance is R x R and the lemma still holds."""
    g = torch.Generator().manual_seed(5)
    loc, factor = torch.zeros(2, 3, **DOUBLE), torch.randn(2, 3, 3, generator=g, **DOUBLE)
    diag = torch.full((2, 3), 1e-3, **DOUBLE)
    q = LowRankGaussian(loc, factor, diag)
    torch.testing.assert_close(q.log_det(), torch.logdet(factor @ factor.mT + torch.diag_embed(diag)))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_starts_as_the_same_isotropic_gaussian(family):
    torch.manual_seed(0)
    model = VAE(latent_dim=D, hidden=(16,), posterior=family, rank=R)
    assert model.family == family
    x = torch.rand(3, 784)
    covariance = model.posterior(x).covariance_matrix  # (3, D, D)
    off_diagonal = covariance - torch.diag_embed(torch.diagonal(covariance, dim1=-2, dim2=-1))
    assert torch.equal(off_diagonal, torch.zeros_like(off_diagonal))  # the factor's off-diagonal part is zero
    torch.testing.assert_close(torch.diagonal(covariance, dim1=-2, dim2=-1),
                               torch.full((3, D), math.log(2) ** 2), atol=0.05, rtol=0)  # softplus(~0)^2


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_posterior_and_encode_agree_with_the_hot_path(family):
    torch.manual_seed(1)
    model = VAE(latent_dim=D, hidden=(16,), posterior=family, rank=R).double().eval()
    with torch.no_grad():
        model.encoder.scale_head.weight.normal_(0.0, 0.3)  # an off-diagonal part to compare
    x = torch.rand(3, 784, **DOUBLE)
    q, dist = model.q(x), model.posterior(x)
    loc, scale_tril = model.encode(x)
    torch.testing.assert_close(loc, dist.mean)
    torch.testing.assert_close(scale_tril @ scale_tril.mT, dist.covariance_matrix)
    torch.testing.assert_close(q.kl_standard_normal(), kl_divergence(dist, standard_normal()))
    assert (dist.covariance_matrix - torch.diag_embed(dist.variance)).abs().max() > 1e-6 or family == "diagonal"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_raw_entry_and_the_switch_holds_the_off_diagonal_part(family):
    torch.manual_seed(2)
    model = VAE(latent_dim=D, hidden=(16,), posterior=family, rank=R).double()
    x = torch.rand(32, 784, **DOUBLE).bernoulli()
    negative_elbo(model, x).loss.sum().backward()
    grad = model.encoder.scale_head.weight.grad  # one row per raw entry
    assert grad.shape[0] == FAMILIES[family].head_size(D, R)
    assert (grad.abs().sum(1) > 0).all()
    model.zero_grad()
    model.offdiag_enabled = False
    training_loss(model, x, "iwae", 3, "dreg")[0].sum().backward()
    grad = model.encoder.scale_head.weight.grad
    held = {"full": torch.tril_indices(D, D)[0] != torch.tril_indices(D, D)[1],
            "diagonal": torch.zeros(D, dtype=torch.bool),
            "lowrank": torch.arange(D * R + D) < D * R}[family]
    assert torch.equal(grad[held], torch.zeros_like(grad[held]))
    assert (grad[~held].abs().sum(1) > 0).all()


def test_covariance_maths_stays_float32_under_autocast_for_every_family():
    for family in FAMILIES:
        model = VAE(latent_dim=3, hidden=(16,), posterior=family, rank=2)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            draw, logits = model(torch.rand(4, 784), k=2)
            kl = draw.q.kl_standard_normal()
        assert draw.z.dtype == kl.dtype == draw.q.loc.dtype == torch.float32
        assert logits.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_entries_round_trip_through_from_raw(family):
    q, _ = random_posterior(family, seed=6)
    cls = FAMILIES[family]
    again = cls.from_raw(q.loc, q.raw(), rank=R)
    for a, b in zip(q._tensors(), again._tensors()):
        torch.testing.assert_close(a, b)
    assert q.raw().shape == (N, cls.head_size(D, R))


@pytest.mark.parametrize("source", FAMILIES)
@pytest.mark.parametrize("target", FAMILIES)
def test_projection_onto_a_family_keeps_the_mean_and_what_the_family_can_hold(source, target):
    q, reference = random_posterior(source, seed=7)
    projected = FAMILIES[target].project(q, rank=R)
    assert type(projected) is FAMILIES[target]
    torch.testing.assert_close(projected.loc, q.loc)
    cov, got = reference.covariance_matrix, projected.covariance_matrix
    if target == "full" or source == "diagonal" == target:
        torch.testing.assert_close(got, cov)  # nothing to lose: the family holds it exactly
    if target == "diagonal":  # the mean-field optimum: the conditional variances 1 / (Sigma^-1)_ii
        torch.testing.assert_close(projected.scale**2, 1 / torch.diagonal(torch.linalg.inv(cov), dim1=-2, dim2=-1))


def test_lowrank_projection_is_exact_at_full_rank_and_keeps_the_top_directions():
    q, reference = random_posterior("full", seed=8)
    torch.testing.assert_close(LowRankGaussian.project(q, rank=D).covariance_matrix, reference.covariance_matrix)
    projected = LowRankGaussian.project(q, rank=1)
    top = torch.linalg.eigh(reference.covariance_matrix)[1][..., -1]  # (N, D), the first principal direction
    direction = projected.cov_factor[..., 0] / projected.cov_factor[..., 0].norm(dim=-1, keepdim=True)
    torch.testing.assert_close((direction * top).sum(-1).abs(), torch.ones(N, **DOUBLE))


def test_a_lowrank_run_end_to_end_trains_resumes_evaluates_and_draws_its_ellipses(fake_mnist, tmp_path):
    from tests.conftest import run_cli

    common = ["--out-dir", str(tmp_path), "--run-name", "lr", "--no-progress"]
    first = run_cli("train.py", "--data-dir", str(fake_mnist), "--posterior", "lowrank", "--rank", "2",
                    "--latent-dim", "2", "--hidden", "32", "--batch-size", "16", "--epochs", "1",
                    "--diag-warmup", "0", "--device", "cpu", "--no-plots", *common)
    assert first.returncode == 0, first.stderr
    resumed = run_cli("train.py", "--resume", "--epochs", "2", "--plots", *common)  # draws the pictures this time
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "lr" / "ellipses.png").read_bytes()[:4] == b"\x89PNG"
    evaluated = run_cli("-m", "vae.evaluate", str(tmp_path / "lr" / "best.pt"), "--k", "4", "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    import vae

    model = vae.load_model(tmp_path / "lr" / "last.pt")
    assert model.family == "lowrank" and model.rank == 2
    dist = model.posterior(torch.rand(3, 784))
    assert isinstance(dist, LowRankMultivariateNormal) and dist.cov_factor.shape == (3, 2, 2)
    assert dist.cov_factor.abs().max() > 0  # trained out of its diagonal start
