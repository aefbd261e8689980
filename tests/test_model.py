"""The VAE's shapes, its closed-form KL and log-densities, sampling, and gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, MultivariateNormal, kl_divergence

from tests.conftest import needs_cuda

from vae.cholesky import entries_to_scale_tril, tril_size
from vae.model import VAE, FullGaussian
from vae.model.likelihood import BernoulliLikelihood
from vae.model.objectives import log_weights, negative_elbo, training_loss


@pytest.fixture
def model() -> VAE:
    """A VAE whose factor is full: its off-diagonal rows start at zero, so they are drawn here."""
    torch.manual_seed(0)
    model = VAE(latent_dim=5, hidden=(32, 16)).double()
    with torch.no_grad():
        model.encoder.scale_head.weight.normal_(0.0, 0.1)
    return model


def iwae_loss(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """The negative IWAE bound per image, ``(N,)``: the true bound ``training_loss`` reports for the iwae objective."""
    return training_loss(model, x, "iwae", k)[1].loss


def test_shapes_for_flat_and_image_input(model):
    x = torch.rand(7, 1, 28, 28, dtype=torch.float64)
    loc, scale_tril = model.encode(x)
    assert loc.shape == (7, 5) and scale_tril.shape == (7, 5, 5)
    loc_flat, _ = model.encode(x.reshape(7, 784))
    torch.testing.assert_close(loc, loc_flat)
    assert model.decode(loc).shape == (7, 1, 28, 28)  # the data's own shape
    posterior, logits = model(x.reshape(7, 784), k=3)
    assert posterior.z.shape == posterior.eps.shape == (7, 3, 5)
    assert logits.shape == (7, 3, 784)
    assert model.latent_dim == 5
    assert model.encoder.scale_head.out_features == tril_size(5)


def test_scale_tril_is_lower_triangular_with_positive_diagonal(model):
    _, scale_tril = model.encode(torch.rand(4, 784, dtype=torch.float64))
    assert torch.equal(scale_tril, scale_tril.tril())
    assert (torch.diagonal(scale_tril, dim1=-2, dim2=-1) > 0).all()
    assert (scale_tril.tril(-1) != 0).any()  # a full factor, not a diagonal one


def test_a_full_posterior_starts_diagonal_and_the_switch_holds_it_there(model):
    x = torch.rand(8, 784, dtype=torch.float64)
    fresh = VAE(latent_dim=5, hidden=(32, 16)).double()
    _, scale_tril = fresh.encode(x)
    assert torch.equal(scale_tril.tril(-1), torch.zeros_like(scale_tril))  # exactly diagonal at init

    model.offdiag_enabled = False
    _, held = model.encode(x)
    assert torch.equal(held.tril(-1), torch.zeros_like(held))
    negative_elbo(model, x.bernoulli()).loss.sum().backward()
    rows, cols = torch.tril_indices(5, 5)
    grad = model.encoder.scale_head.weight.grad  # (15, 16)
    assert torch.equal(grad[rows != cols], torch.zeros_like(grad[rows != cols]))  # Adam leaves them still
    assert (grad[rows == cols].abs().sum(1) > 0).all()

    model.offdiag_enabled = True
    _, released = model.encode(x)
    assert (released.tril(-1) != 0).any()
    torch.testing.assert_close(torch.diagonal(released, dim1=-2, dim2=-1), torch.diagonal(held, dim1=-2, dim2=-1))


def test_diagonal_posterior_uses_the_same_path_with_a_diagonal_factor():
    model = VAE(latent_dim=4, hidden=(16,), posterior="diagonal")
    assert model.encoder.scale_head.out_features == 4
    _, scale_tril = model.encode(torch.rand(3, 784))
    assert torch.equal(scale_tril, torch.diag_embed(torch.diagonal(scale_tril, dim1=-2, dim2=-1)))
    assert negative_elbo(model, torch.rand(3, 784).bernoulli()).loss.shape == (3,)


def test_closed_form_kl_matches_torch_distributions():
    torch.manual_seed(1)
    loc = torch.randn(6, 4, dtype=torch.float64)
    scale_tril = entries_to_scale_tril(torch.randn(6, tril_size(4), dtype=torch.float64))
    prior = MultivariateNormal(torch.zeros(4, dtype=torch.float64), scale_tril=torch.eye(4, dtype=torch.float64))
    expected = kl_divergence(MultivariateNormal(loc, scale_tril=scale_tril), prior)
    torch.testing.assert_close(FullGaussian(loc, scale_tril).kl_standard_normal(), expected, rtol=1e-10, atol=1e-10)


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(2)
    loc = torch.randn(1, 3, dtype=torch.float64)
    scale_tril = entries_to_scale_tril(torch.randn(1, tril_size(3), dtype=torch.float64))
    q = MultivariateNormal(loc[0], scale_tril=scale_tril[0])
    z = q.sample((400_000,))
    prior = MultivariateNormal(torch.zeros(3, dtype=torch.float64), scale_tril=torch.eye(3, dtype=torch.float64))
    samples = q.log_prob(z) - prior.log_prob(z)
    stderr = samples.std() / math.sqrt(len(z))
    assert abs(samples.mean() - FullGaussian(loc, scale_tril).kl_standard_normal()[0]) < 4 * stderr


def test_importance_weights_match_torch_distributions(model):
    x = torch.rand(5, 784, dtype=torch.float64).bernoulli()
    torch.manual_seed(3)
    posterior, logits = model(x, k=4)
    log_w = log_weights(model.likelihood.log_prob(logits, x), posterior)  # (5, 4)
    q = MultivariateNormal(posterior.q.loc.unsqueeze(1), scale_tril=posterior.q.scale_tril.unsqueeze(1))
    prior = MultivariateNormal(torch.zeros(5, dtype=torch.float64), scale_tril=torch.eye(5, dtype=torch.float64))
    expected = (Bernoulli(logits=logits).log_prob(x.unsqueeze(1)).sum(-1)
                + prior.log_prob(posterior.z) - q.log_prob(posterior.z))
    torch.testing.assert_close(log_w, expected, rtol=1e-10, atol=1e-8)


def test_iwae_with_one_sample_is_the_elbo(model):
    x = torch.rand(64, 784, dtype=torch.float64).bernoulli()
    torch.manual_seed(4)
    iwae = iwae_loss(model, x, 1)
    torch.manual_seed(4)
    posterior, logits = model(x, k=1)
    # same draw: recon + the Monte-Carlo KL log q - log p
    log_qz = MultivariateNormal(posterior.q.loc, scale_tril=posterior.q.scale_tril).log_prob(posterior.z[:, 0])
    log_pz = MultivariateNormal(torch.zeros(5, dtype=torch.float64),
                                scale_tril=torch.eye(5, dtype=torch.float64)).log_prob(posterior.z[:, 0])
    recon = -Bernoulli(logits=logits[:, 0]).log_prob(x).sum(-1)
    torch.testing.assert_close(iwae, recon + log_qz - log_pz, rtol=1e-10, atol=1e-8)
    # in expectation it is the ELBO with the closed-form KL
    draws = torch.stack([iwae_loss(model, x, 1) - negative_elbo(model, x).loss for _ in range(200)])
    assert abs(draws.mean()) < 4 * draws.std() / math.sqrt(draws.numel())


def test_iwae_bound_tightens_with_k(model):
    x = torch.rand(16, 784, dtype=torch.float64).bernoulli()
    torch.manual_seed(5)
    elbo = negative_elbo(model, x, k=200).loss.mean()
    iwae = iwae_loss(model, x, 200).mean()
    assert iwae < elbo


def test_samples_have_covariance_scale_tril_times_its_transpose():
    torch.manual_seed(6)
    loc = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    scale_tril = torch.tensor([[[1.0, 0, 0], [0.8, 0.5, 0], [-0.3, 1.2, 0.7]]], dtype=torch.float64)
    _, z = FullGaussian(loc, scale_tril).rsample(k=200_000)  # (1, K, 3)
    torch.testing.assert_close(z[0].mean(0), loc[0], atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(z[0].T), scale_tril[0] @ scale_tril[0].T, atol=0.03, rtol=0)


def test_gradients_reach_every_entry_of_the_factor(model):
    x = torch.rand(32, 784, dtype=torch.float64).bernoulli()
    negative_elbo(model, x).loss.sum().backward()
    grad = model.encoder.scale_head.weight.grad  # one row per free entry of L
    assert grad.shape[0] == tril_size(5)
    assert (grad.abs().sum(1) > 0).all()
    assert (model.encoder.scale_head.bias.grad != 0).all()


def test_covariance_maths_stays_float32_under_autocast():
    model = VAE(latent_dim=3, hidden=(16,))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        posterior, logits = model(torch.rand(4, 784), k=2)
    assert posterior.q.scale_tril.dtype == posterior.q.loc.dtype == posterior.z.dtype == torch.float32
    assert logits.dtype == torch.bfloat16  # the MLP itself did run in reduced precision


@needs_cuda
def test_cuda_bf16_autocast_step():
    model = VAE(latent_dim=8, hidden=(64,)).cuda()
    x = torch.rand(16, 784, device="cuda").bernoulli()
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        bound = negative_elbo(model, x)
    assert bound.loss.dtype == torch.float32 and torch.isfinite(bound.loss).all()
    bound.loss.mean().backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.parameters())


def test_encode_takes_one_image_any_float_dtype_and_refuses_0_255_pixels():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,)).eval()  # eval: the mode vae.load_model returns
    x = torch.rand(784)
    loc, scale_tril = model.encode(x)  # one image, no batch dimension
    assert loc.shape == (1, 3) and scale_tril.shape == (1, 3, 3)
    torch.testing.assert_close(model.encode(x.reshape(1, 1, 28, 28)), (loc, scale_tril), rtol=0, atol=0)
    loc64, tril64 = model.encode(x.double().unsqueeze(0))  # float64 is cast to the model's float32
    assert loc64.dtype == tril64.dtype == torch.float32
    torch.testing.assert_close((loc64, tril64), (loc, scale_tril))
    for images, message in [((x * 255).round(), r"\[0, 1\].*divide by 255"), ((x * 255).to(torch.uint8), "255"),
                            (x - 0.5, r"\[0, 1\]"), (torch.full((784,), float("nan")), "nan"),
                            (torch.rand(2, 392), "784 values")]:
        with pytest.raises(ValueError, match=message):
            model.encode(images)
    model.train()  # the training loop's hot path: no min/max, no host sync per batch
    assert model.encode(x * 255)[0].shape == (1, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_loading_onto_cuda_without_cuda_says_so(tmp_path):
    import dataclasses

    import vae
    from vae.run.checkpoint import save_checkpoint
    from vae.config import TrainConfig

    config = TrainConfig(latent_dim=2, hidden=(8,))
    path = tmp_path / "model.pt"
    save_checkpoint({"model": VAE(latent_dim=2, hidden=(8,)).state_dict(), "config": dataclasses.asdict(config),
                     "epoch": 0, "metrics": []}, path)
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            vae.load_model(path, map_location=device)
    with pytest.raises(ValueError, match="not a device"):
        vae.load_model(path, map_location="gpu")
    assert vae.load_model(path).latent_dim == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_log_prob_is_the_cross_entropy_and_its_gradient(dtype):
    # the fast path (vae.model.likelihood) against torch's own cross-entropy with logits,
    # for binary pixels and for intensities (--binarize none), values and both gradients
    torch.manual_seed(0)
    logits = (torch.randn(5, 3, 784, dtype=dtype) * 8).requires_grad_()  # |l| up to ~40: both tails
    for x in ((torch.rand(5, 784, dtype=dtype) < 0.3).to(dtype), torch.rand(5, 784, dtype=dtype)):
        x.requires_grad_()
        ours = BernoulliLikelihood().log_prob(logits, x)  # (5, 3)
        reference = -F.binary_cross_entropy_with_logits(logits, x.unsqueeze(1).expand_as(logits),
                                                        reduction="none").sum(-1)
        tol = 1e-4 if dtype == torch.float32 else 1e-10  # sums of 784 terms of up to ~40 nats
        torch.testing.assert_close(ours, reference, rtol=0, atol=tol * reference.abs().max().item())
        weights = torch.randn_like(ours)
        ours_grads = torch.autograd.grad((ours * weights).sum(), (logits, x))
        reference_grads = torch.autograd.grad((reference * weights).sum(), (logits, x))
        for a, b in zip(ours_grads, reference_grads):
            torch.testing.assert_close(a, b)
