"""The one parameterization module, vae/cholesky.py: validity, inverse maps and log-prob."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vae.cholesky import (
    DIAG_FLOOR,
    DIAG_TRANSFORMS,
    dim_from_tril_size,
    entries_to_scale_tril,
    mvn_log_prob,
    positive,
    scale_tril_to_entries,
    tril_size,
)


def assert_valid_factor(scale_tril: torch.Tensor, dim: int) -> None:
    """Lower-triangular, finite, diagonal at or above the floor, non-singular."""
    assert scale_tril.shape[-2:] == (dim, dim)
    assert bool(torch.isfinite(scale_tril).all())
    assert torch.equal(scale_tril, torch.tril(scale_tril)), "entries above the diagonal"
    diagonal = torch.diagonal(scale_tril, dim1=-2, dim2=-1)
    assert bool((diagonal >= torch.tensor(DIAG_FLOOR, dtype=diagonal.dtype)).all())
    assert bool(torch.isfinite(diagonal.log().sum(-1)).all()), "singular factor"  # log|L|


def random_spd(dim: int, *batch: int, dtype=torch.float64) -> torch.Tensor:
    a = torch.randn(*batch, dim, dim, dtype=dtype)
    return a @ a.mT + 0.5 * torch.eye(dim, dtype=dtype)


@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_tril_size_and_its_inverse(dim):
    assert tril_size(dim) == dim * (dim + 1) // 2
    assert dim_from_tril_size(tril_size(dim)) == dim


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_tril_size_rejects_bad_dims(bad):
    with pytest.raises(ValueError, match="dim"):
        tril_size(bad)


@pytest.mark.parametrize("size", [0, 2, 4, 5, 7])
def test_dim_from_tril_size_rejects_non_triangular_sizes(size):
    with pytest.raises(ValueError, match="lower triangle"):
        dim_from_tril_size(size)


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_random_entries_give_valid_factors_with_batch_dims(transform, dim):
    torch.manual_seed(0)
    raw = 3 * torch.randn(4, 3, tril_size(dim))
    scale_tril = entries_to_scale_tril(raw, transform)
    assert scale_tril.shape == (4, 3, dim, dim)
    assert_valid_factor(scale_tril, dim)
    # off-diagonal entries are taken as they are, row by row
    rows, cols = torch.tril_indices(dim, dim)
    off = rows != cols
    assert torch.equal(scale_tril[..., rows[off], cols[off]], raw[..., off])


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
@pytest.mark.parametrize("value", [50.0, -50.0])
def test_extreme_entries_give_valid_factors(transform, value):
    dim = 6
    raw = torch.full((tril_size(dim),), value)
    assert_valid_factor(entries_to_scale_tril(raw, transform), dim)
    alternating = value * (-1.0) ** torch.arange(tril_size(dim), dtype=torch.float32)
    assert_valid_factor(entries_to_scale_tril(alternating, transform), dim)


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
def test_gradients_stay_finite_at_extreme_entries(transform):
    raw = torch.tensor([50.0, -50.0, 50.0, -50.0, -50.0, 50.0], requires_grad=True)
    entries_to_scale_tril(raw, transform).sum().backward()
    assert bool(torch.isfinite(raw.grad).all())


@settings(max_examples=150, deadline=None)
@given(
    transform=st.sampled_from(DIAG_TRANSFORMS),
    values=st.integers(1, 6).flatmap(
        lambda dim: st.lists(st.floats(-1e4, 1e4, width=32), min_size=tril_size(dim), max_size=tril_size(dim))),
)
def test_property_any_raw_values_up_to_1e4_give_a_valid_factor(transform, values):
    raw = torch.tensor(values, dtype=torch.float32)
    assert_valid_factor(entries_to_scale_tril(raw, transform), dim_from_tril_size(len(values)))


def test_low_precision_input_comes_out_in_at_least_float32():
    for dtype in (torch.float16, torch.bfloat16):
        assert entries_to_scale_tril(torch.zeros(3, dtype=dtype)).dtype == torch.float32
    assert entries_to_scale_tril(torch.zeros(3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
def test_entries_round_trip_through_the_factor(transform):
    torch.manual_seed(1)
    raw = 2 * torch.randn(5, tril_size(4), dtype=torch.float64)
    back = scale_tril_to_entries(entries_to_scale_tril(raw, transform), transform)
    torch.testing.assert_close(back, raw, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
def test_factor_round_trips_through_the_entries(transform):
    torch.manual_seed(2)
    scale_tril = torch.linalg.cholesky(random_spd(4, 3))
    back = entries_to_scale_tril(scale_tril_to_entries(scale_tril, transform), transform)
    torch.testing.assert_close(back, scale_tril, rtol=1e-9, atol=1e-9)


def test_entries_ignore_the_upper_triangle():
    scale_tril = torch.tensor([[1.0, 99.0], [0.5, 2.0]], dtype=torch.float64)
    back = entries_to_scale_tril(scale_tril_to_entries(scale_tril))
    torch.testing.assert_close(back, torch.tril(scale_tril), rtol=1e-12, atol=1e-12)


def test_inverse_maps_reject_invalid_matrices():
    with pytest.raises(ValueError, match="floor"):
        scale_tril_to_entries(torch.tensor([[1.0, 0.0], [0.3, -1.0]]))
    with pytest.raises(ValueError, match="square"):
        scale_tril_to_entries(torch.ones(2, 3))
    with pytest.raises(ValueError, match="diag_transform"):
        entries_to_scale_tril(torch.zeros(3), "relu")


@pytest.mark.parametrize("transform", DIAG_TRANSFORMS)
def test_log_prob_matches_multivariate_normal(transform):
    torch.manual_seed(5)
    dim = 4
    scale_tril = entries_to_scale_tril(torch.randn(3, tril_size(dim), dtype=torch.float64), transform)  # (3, D, D)
    loc = torch.randn(dim, dtype=torch.float64)  # broadcast over the batch
    x = torch.randn(7, 3, dim, dtype=torch.float64)
    expected = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril).log_prob(x)  # (7, 3)
    torch.testing.assert_close(mvn_log_prob(x, loc, scale_tril), expected, rtol=1e-10, atol=1e-10)


def test_log_prob_of_many_points_under_one_distribution():
    torch.manual_seed(6)
    covariance = random_spd(3)
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.randn(100, 3, dtype=torch.float64)
    scale_tril = torch.linalg.cholesky(covariance)
    expected = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril).log_prob(x)
    torch.testing.assert_close(mvn_log_prob(x, loc, scale_tril), expected, rtol=1e-10, atol=1e-10)
    # the standard normal by hand, to pin the constant
    assert mvn_log_prob(torch.zeros(2), torch.zeros(2), torch.eye(2)).item() == pytest.approx(-math.log(2 * math.pi))


def test_log_prob_solves_each_factor_once_for_the_points_it_serves():
    # factors broadcast along a middle batch dimension, as a posterior's (N, 1, D, D) along its draws
    torch.manual_seed(7)
    dim = 3
    scale_tril = torch.linalg.cholesky(random_spd(dim, 4, 1, 2))  # (4, 1, 2, D, D)
    loc = torch.randn(4, 1, 2, dim, dtype=torch.float64)
    x = torch.randn(4, 5, 2, dim, dtype=torch.float64)
    expected = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril).log_prob(x)  # (4, 5, 2)
    torch.testing.assert_close(mvn_log_prob(x, loc, scale_tril), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mvn_log_prob(x[:, :1], loc, scale_tril), expected[:, :1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_softplus_map_is_torchs_softplus_to_a_few_ulps_with_its_gradient(dtype):
    # vae.cholesky's own softplus (vectorized, Kahan's log1p) against log1p in float64, tails included:
    # tiny scales keep their relative precision, large ones are the identity
    u = torch.cat([torch.linspace(-120, 120, 2001, dtype=dtype), torch.randn(1000, dtype=dtype) * 5])
    u.requires_grad_()
    ours = positive(u, "softplus")
    exact = u.detach().double()  # log1p in float64 (F.softplus returns u itself above u = 20)
    reference = (exact.clamp(min=0) + torch.log1p(torch.exp(-exact.abs())) + DIAG_FLOOR).to(dtype)
    assert ((ours - reference).abs() <= 16 * torch.finfo(dtype).eps * reference).all()  # a few ulps
    grad, = torch.autograd.grad(ours.sum(), u)
    torch.testing.assert_close(grad, torch.sigmoid(u.detach()))
