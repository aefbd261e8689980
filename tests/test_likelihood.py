"""The likelihoods: each log-density against a direct computation, in the data's own units, and in float32."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from vae.choices import PRETRAINED_DIR
from vae.errors import ArgumentError
from vae.model.likelihood import (
    LIKELIHOODS, LOG_SIGMA_MIN, BernoulliLikelihood, DiscretizedLogisticLikelihood, GaussianLikelihood,
    bernoulli_log_prob, make_likelihood,
)
from vae.model.networks import MLPDecoder as Decoder
from vae.run.checkpoint import load_model

SCALES = torch.logspace(-3, 3, 7)  # column scales, 1e-3 to 1e3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def columns(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Data ``(n, 7)`` whose columns have scales from 1e-3 to 1e3 and offsets of a few scales."""
    g = gen(seed)
    offsets = 3 * torch.randn(len(SCALES), generator=g)
    return (torch.randn(n, len(SCALES), generator=g) + offsets) * SCALES


def fitted_gaussian(x: torch.Tensor, seed: int = 1) -> GaussianLikelihood:
    lik = GaussianLikelihood(x.shape[1])
    lik.fit_standardization(x)
    with torch.no_grad():
        lik.log_sigma.copy_(0.5 * torch.randn(x.shape[1], generator=gen(seed)))
    return lik


def raw_normal(lik: GaussianLikelihood, params: torch.Tensor) -> Normal:
    """The model's Normal in raw units, float64: mean ``params * scale + shift``, sd ``sigma * scale``."""
    scale, shift = lik.scale.double(), lik.shift.double()
    sigma = torch.exp(lik.log_sigma.double().clamp(min=LOG_SIGMA_MIN))
    return Normal(params.double() * scale + shift, sigma * scale)


# ----------------------------------------------------------------------------------------------- gaussian


def test_gaussian_log_prob_is_normal_in_raw_units_with_its_gradients():
    x = columns()  # (64, 7)
    lik = fitted_gaussian(x)
    params = torch.randn(64, 3, 7, generator=gen(2), requires_grad=True)  # (N, K, P), standardized means
    log_p = lik.log_prob(params, x)
    assert log_p.shape == (64, 3) and log_p.dtype == torch.float32

    ref_lik = copy.deepcopy(lik).double()
    ref_params = params.detach().double().requires_grad_()
    ref = raw_normal(ref_lik, ref_params).log_prob(x.double().unsqueeze(1)).sum(-1)  # (N, K)
    torch.testing.assert_close(log_p.double(), ref, rtol=1e-5, atol=1e-4)

    weights = torch.randn(64, 3, generator=gen(3))
    (log_p * weights).sum().backward()
    (ref * weights.double()).sum().backward()
    torch.testing.assert_close(params.grad.double(), ref_params.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lik.log_sigma.grad.double(), ref_lik.log_sigma.grad, rtol=1e-4, atol=1e-3)


def test_gaussian_float64_gradients_match_finite_differences():
    x = columns(8).double()
    lik = fitted_gaussian(x.float()).double()
    params = torch.randn(8, 2, 7, generator=gen(4), dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(lambda p: lik.log_prob(p, x), (params,))
    log_sigma = lik.log_sigma.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: _gaussian_with(lik, s).log_prob(params.detach(), x), (log_sigma,))


def _gaussian_with(lik: GaussianLikelihood, log_sigma: torch.Tensor) -> GaussianLikelihood:
    """``lik`` with ``log_sigma`` as a plain tensor (so that gradcheck can differentiate through it)."""
    other = copy.deepcopy(lik)
    del other.log_sigma
    other.log_sigma = log_sigma
    return other


def test_unit_rule_raw_density_and_rescaling_a_column():
    x = columns(128)
    lik = fitted_gaussian(x)
    params = torch.randn(128, 2, 7, generator=gen(5))
    log_p = lik.log_prob(params, x)
    ref = raw_normal(lik, params).log_prob(x.double().unsqueeze(1)).sum(-1)
    torch.testing.assert_close(log_p.double(), ref, rtol=1e-6, atol=1e-4)

    for column, c in [(0, 1e3), (3, 7.5), (6, 1e-3)]:  # the same data, one column in other units
        rescaled = x.clone()
        rescaled[:, column] *= c
        other = GaussianLikelihood(7)
        other.fit_standardization(rescaled)
        other.log_sigma.data.copy_(lik.log_sigma.data)
        change = other.log_prob(params, rescaled) - log_p  # (N, K)
        torch.testing.assert_close(change, torch.full_like(change, -math.log(c)), rtol=0, atol=1e-4)


def test_gaussian_standardization_mean_sample_and_state():
    x = columns(256)
    lik = fitted_gaussian(x)
    torch.testing.assert_close(lik.shift, x.double().mean(0).float())
    torch.testing.assert_close(lik.scale, x.double().std(0, correction=0).float())
    prepared = lik.prepare(x)
    assert prepared.dtype == torch.float32 and prepared.shape == x.shape
    torch.testing.assert_close(prepared.mean(0), torch.zeros(7), rtol=0, atol=1e-5)
    torch.testing.assert_close(prepared.std(0, correction=0), torch.ones(7), rtol=1e-5, atol=1e-5)

    params = torch.randn(4, 7, generator=gen(6))
    torch.testing.assert_close(lik.mean(params), params * lik.scale + lik.shift)
    draws = lik.sample(params[:1].expand(40000, 7), generator=gen(7))  # (40000, 7)
    sd = torch.exp(lik.log_sigma.detach()) * lik.scale
    torch.testing.assert_close(draws.mean(0), lik.mean(params[0]), rtol=0, atol=(0.03 * sd).max().item())
    torch.testing.assert_close(draws.std(0), sd, rtol=0.03, atol=0)

    assert set(lik.state_dict()) == {"shift", "scale", "log_sigma"}
    fresh = GaussianLikelihood(7)
    fresh.load_state_dict(lik.state_dict())
    assert torch.equal(fresh.log_prob(params.unsqueeze(1), x[:4]), lik.log_prob(params.unsqueeze(1), x[:4]))


def test_gaussian_constant_column_log_sigma_floor_and_refusals():
    x = columns(32)
    x[:, 2] = 0.1  # a constant column
    lik = GaussianLikelihood(7)
    lik.fit_standardization(x)
    assert lik.scale[2] == 1 and torch.isclose(lik.shift[2], torch.tensor(0.1))

    params = torch.zeros(32, 1, 7)
    with torch.no_grad():
        lik.log_sigma.fill_(-30.0)
    floored = lik.log_prob(params, x)
    with torch.no_grad():
        lik.log_sigma.fill_(LOG_SIGMA_MIN)
    assert torch.equal(floored, lik.log_prob(params, x)) and floored.isfinite().all()

    x[5, 4] = float("nan")
    for call in (lambda: lik.fit_standardization(x, "rows.csv"), lambda: lik.check(x, "rows.csv")):
        with pytest.raises(ArgumentError, match="gaussian") as err:
            call()
        assert "rows.csv" in str(err.value) and "column 4" in str(err.value) and "\n" not in str(err.value)
    x[5, 4] = float("inf")
    with pytest.raises(ArgumentError, match="column 4"):
        lik.check(x, "rows.csv")
    lik.check(columns(), "rows.csv")  # finite data of any scale


# ----------------------------------------------------------------------------------------------- logistic

# (mu, log s) in [-1, 1] units: centred, tiny and large scales, at the edges, far outside the range, and
# a log-scale below the clamp at -7
SETTINGS = [(0.0, -2.0), (0.3, -7.0), (-0.3, -6.5), (0.99, -4.0), (-1.0, -3.0), (1.0, -7.0), (3.0, -1.0),
            (-4.0, -2.0), (50.0, 0.0), (-20.0, 2.0), (0.0, 3.0), (0.2, 6.0), (-0.7, 0.5), (0.1, -9.0)]
VALUES = torch.arange(256)


def direct_log_prob(mu: torch.Tensor, log_s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """log P(v) from the logistic CDF, float64 sigmoid differences, elementwise.

    The bin's upper CDF minus its lower one, or (for a bin above the mean, where both are near 1)
    the lower survival function minus the upper one; the edge bins reach to -inf and +inf.
    """
    mu, log_s, v = mu.double(), log_s.double().clamp(min=-7), v.double()
    s, x = torch.exp(log_s), v / 127.5 - 1
    a, b = (x + 1 / 255 - mu) / s, (x - 1 / 255 - mu) / s
    cdf_a = torch.where(v >= 255, 1.0, torch.sigmoid(a))
    cdf_b = torch.where(v <= 0, 0.0, torch.sigmoid(b))
    sf_a = torch.where(v >= 255, 0.0, torch.sigmoid(-a))
    sf_b = torch.where(v <= 0, 1.0, torch.sigmoid(-b))
    return torch.log(torch.where(x > mu, sf_b - sf_a, cdf_a - cdf_b))


def all_values(settings=SETTINGS, dtype=torch.float32):
    """Params ``(256, K, 2)`` (one pixel, K settings) and the 256 values ``(256, 1)``."""
    mu, log_s = torch.tensor(settings, dtype=dtype).T  # (K,) each
    params = torch.stack([mu, log_s], -1).expand(256, -1, -1).clone()  # (256, K, 2)
    return params, VALUES.reshape(256, 1)


def precise_log_prob(mu: float, log_s: float, v: int) -> float:
    """log P(v) from the logistic CDF at 60 digits (as :func:`direct_log_prob`), where float64 underflows."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        s, x = mpmath.exp(max(log_s, -7)), mpmath.mpf(v) / mpmath.mpf(127.5) - 1
        high, low = x + mpmath.mpf(1) / 255, x - mpmath.mpf(1) / 255
        if x > mu:  # survival functions, which do not cancel above the mean
            sf = lambda t: 1 / (1 + mpmath.exp((t - mu) / s))  # noqa: E731
            p = (1 if v == 0 else sf(low)) - (0 if v == 255 else sf(high))
        else:
            cdf = lambda t: 1 / (1 + mpmath.exp(-(t - mu) / s))  # noqa: E731
            p = (1 if v == 255 else cdf(high)) - (0 if v == 0 else cdf(low))
        return float(mpmath.log(p))


def test_logistic_log_prob_against_the_cdf_every_value_and_setting():
    params, v = all_values()
    log_p = DiscretizedLogisticLikelihood().log_prob(params, v)  # (256, K): every value under every setting
    assert log_p.shape == (256, len(SETTINGS)) and log_p.dtype == torch.float32 and log_p.isfinite().all()
    ref = direct_log_prob(params[..., 0], params[..., 1], v)  # (256, K)
    representable = ref > -600  # float64's sigmoid differences underflow further out
    assert representable[[0, -1]].sum() >= len(SETTINGS), "the edge bins are compared under most settings"
    torch.testing.assert_close(log_p.double()[representable], ref[representable], rtol=1e-5, atol=2e-5)
    for value, k in (~representable).nonzero().tolist():  # the far tails, to 60 digits
        precise = precise_log_prob(*SETTINGS[k], value)
        assert log_p[value, k].item() == pytest.approx(precise, rel=1e-5), (value, SETTINGS[k])
    total = torch.logsumexp(log_p.double(), 0)  # (K,): the 256 probabilities sum to 1
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-5)


def test_logistic_edge_bins_take_the_tails():
    lik = DiscretizedLogisticLikelihood()
    for mu, log_s in [(-1.5, -1.0), (1.5, -1.0), (0.0, 1.0)]:
        s = math.exp(log_s)
        params = torch.tensor([[[mu, log_s]]])
        low = lik.log_prob(params, torch.tensor([[0]])).item()
        high = lik.log_prob(params, torch.tensor([[255]])).item()
        assert low == pytest.approx(math.log(1 / (1 + math.exp(-(-1 + 1 / 255 - mu) / s))), abs=1e-5)
        assert high == pytest.approx(math.log(1 / (1 + math.exp((1 - 1 / 255 - mu) / s))), abs=1e-5)


def test_logistic_gradients_match_float64_autograd_and_finite_differences():
    settings = [(0.0, -2.0), (0.3, -6.0), (-0.8, -3.0), (1.2, -1.0), (-2.0, 0.5), (0.1, 2.0)]
    params, v = all_values(settings)
    params.requires_grad_()
    log_p = DiscretizedLogisticLikelihood().log_prob(params, v)  # (256, K)
    ref_params = params.detach().double().requires_grad_()
    ref = direct_log_prob(ref_params[..., 0], ref_params[..., 1], v)
    near = ref.detach() > -40  # where float64's sigmoid differences keep their digits
    log_p[near].sum().backward()
    ref[near].sum().backward()
    torch.testing.assert_close(params.grad.double(), ref_params.grad, rtol=1e-4, atol=1e-4)

    lik = DiscretizedLogisticLikelihood()
    x = torch.tensor([[0, 1, 100, 128, 254, 255]])  # (1, 6): both edges and the interior
    p64 = torch.tensor([[[0.1, -0.9, 0.2, -0.2, 0.95, 0.4, -3.0, -5.5, -1.0, -2.0, -4.0, 1.0]]],
                       dtype=torch.float64, requires_grad=True)  # (1, 1, 12): 6 means, 6 log-scales
    assert torch.autograd.gradcheck(lambda p: lik.log_prob(p, x), (p64,))


def test_logistic_units_mean_sample_and_prepare():
    lik = DiscretizedLogisticLikelihood()
    pixels = torch.randint(0, 256, (5, 10), generator=gen(8), dtype=torch.uint8)
    params = torch.randn(5, 3, 20, generator=gen(9))  # (N, K, 2P)
    assert torch.equal(lik.log_prob(params, pixels), lik.log_prob(params, pixels.float()))
    assert torch.equal(lik.prepare(pixels), pixels.float() / 127.5 - 1)
    assert lik.prepare(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]

    mean = lik.mean(params)
    assert mean.shape == (5, 3, 10) and mean.min() >= 0 and mean.max() <= 255
    torch.testing.assert_close(mean, ((params[..., :10] + 1) * 127.5).clamp(0, 255))
    params, v = all_values([(0.2, -4.0)])
    expectation = (lik.log_prob(params, v).exp().squeeze(1) * VALUES).sum()  # sum_v v P(v)
    assert lik.mean(params[0]).item() == pytest.approx(expectation.item(), abs=0.01)

    for mu, log_s in [(0.1, -3.0), (-1.02, -3.0), (0.97, -2.0)]:  # interior and the tails at both edges
        draws = lik.sample(torch.tensor([[mu, log_s]]).expand(100_000, 2), generator=gen(10))  # (100000, 1)
        assert draws.dtype == torch.float32 and torch.equal(draws, draws.round())
        assert draws.min() >= 0 and draws.max() <= 255
        frequencies = torch.bincount(draws.long().flatten(), minlength=256).double() / len(draws)
        params, v = all_values([(mu, log_s)])
        probabilities = lik.log_prob(params, v).exp().squeeze(1).double()
        assert (frequencies.cumsum(0) - probabilities.cumsum(0)).abs().max() < 0.01


# ----------------------------------------------------------------------------------------------- bernoulli


def old_fused_forward(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The Bernoulli log-probability exactly as the fused Function has always computed it."""
    logits = logits.float()
    x = x.to(logits.dtype).unsqueeze(1)
    terms = logits.abs().neg_().exp_().add_(1.0).log_()
    terms.add_(torch.addcmul(logits.clamp(min=0), logits, x, value=-1.0))
    return terms.sum(-1).neg_()


@pytest.mark.parametrize("data", ["binary", "intensities"])
def test_bernoulli_is_unchanged_bit_for_bit(data):
    g = gen(11)
    logits = (6 * torch.randn(16, 4, 784, generator=g)).requires_grad_()
    x = torch.rand(16, 784, generator=g)
    x = x.round() if data == "binary" else x
    lik = BernoulliLikelihood()
    log_p = lik.log_prob(logits, x)
    assert torch.equal(log_p, old_fused_forward(logits.detach(), x))
    assert torch.equal(log_p, bernoulli_log_prob(logits, x))
    bce = -F.binary_cross_entropy_with_logits(logits, x.unsqueeze(1).expand_as(logits), reduction="none").sum(-1)
    torch.testing.assert_close(log_p, bce)
    log_p.sum().backward()
    assert torch.equal(logits.grad, x.unsqueeze(1) - torch.sigmoid(logits.detach()))

    assert lik.prepare(x) is x and lik.prepare(x.to(torch.uint8)).dtype == torch.float32
    assert torch.equal(lik.mean(logits), torch.sigmoid(logits))
    assert torch.equal(lik.sample(logits, gen(12)), torch.bernoulli(torch.sigmoid(logits), generator=gen(12)))


def test_bernoulli_and_logistic_have_no_state_and_shipped_models_load():
    for lik in (BernoulliLikelihood(), DiscretizedLogisticLikelihood()):
        assert lik.state_dict() == {} and not list(lik.parameters()) and not list(lik.buffers())
    decoder = Decoder(4, (8,), 784)
    assert not [key for key in decoder.state_dict() if "likelihood" in key]
    for name in ("vae-full.pt", "vae-diagonal.pt", "iwae-full.pt"):
        model = load_model(PRETRAINED_DIR / name)  # strict: a new state-dict key would refuse it
        assert isinstance(model.likelihood, BernoulliLikelihood)


# ----------------------------------------------------------------------------------------------- all three


def test_registry_names_and_head_sizes():
    assert {name: cls.name for name, cls in LIKELIHOODS.items()} == {n: n for n in LIKELIHOODS}
    assert [make_likelihood(name, 5).params_per_pixel for name in LIKELIHOODS] == [1, 1, 2]
    assert make_likelihood("gaussian", 5).log_sigma.shape == (5,)
    with pytest.raises(ArgumentError, match="likelihood must be one of bernoulli, gaussian, logistic"):
        make_likelihood("poisson", 5)
    with pytest.raises(ArgumentError, match="dim"):
        GaussianLikelihood(0)


REFUSED = [
    ("bernoulli", torch.tensor([[0.0, 1.5]]), "outside \\[0, 1\\]"),
    ("bernoulli", torch.tensor([[-0.1, 1.0]]), "outside \\[0, 1\\]"),
    ("bernoulli", torch.tensor([[0, 255]], dtype=torch.uint8), "divide by 255"),
    ("bernoulli", torch.tensor([[float("nan"), 0.5]]), "outside"),
    ("logistic", torch.tensor([[0.0, 12.5]]), "non-integer"),
    ("logistic", torch.tensor([[0.0, 0.25, 1.0]]), "multiply by 255"),
    ("logistic", torch.tensor([[0.0, 256.0]]), "not 8-bit"),
    ("logistic", torch.tensor([[0, 256]]), "not 8-bit"),
    ("logistic", torch.tensor([[-1, 5]]), "not 8-bit"),
    ("logistic", torch.tensor([[float("nan"), 5.0]]), "not 8-bit"),
    ("gaussian", torch.tensor([[0.0, float("nan")]]), "column 1"),
]


@pytest.mark.parametrize("name, x, says", REFUSED)
def test_check_refuses_data_it_cannot_fit_in_one_line(name, x, says):
    with pytest.raises(ArgumentError, match=says) as err:
        make_likelihood(name, x.shape[1]).check(x, "train split of my-data")
    text = str(err.value)
    assert "\n" not in text and "train split of my-data" in text and text.startswith(f"likelihood={name}")
    assert err.value.as_flag().startswith(f"--likelihood={name}")


@pytest.mark.parametrize("name, x", [
    ("bernoulli", torch.tensor([[0, 1]], dtype=torch.uint8)), ("bernoulli", torch.rand(10, 3)),
    ("bernoulli", torch.tensor([[True, False]])), ("logistic", torch.arange(256, dtype=torch.uint8)[None]),
    ("logistic", torch.arange(256.0)[None]), ("logistic", torch.arange(256, dtype=torch.int64)[None]),
    ("gaussian", columns()), ("bernoulli", torch.zeros(0, 3)),
])
def test_check_accepts_data_it_fits(name, x):
    make_likelihood(name, x.shape[1]).check(x, "data")


def head_params(name: str, n: int = 6, k: int = 2, p: int = 5) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A likelihood, a decoder head's input ``(N, K, 8)`` and data ``(N, P)`` for it."""
    lik = make_likelihood(name, p)
    data = {"bernoulli": torch.rand(n, p, generator=gen(13)).round(), "gaussian": 1e3 * torch.randn(n, p),
            "logistic": torch.randint(0, 256, (n, p), generator=gen(14), dtype=torch.uint8)}[name]
    if name == "gaussian":
        lik.fit_standardization(data)
    return lik, 3 * torch.randn(n, k, 8, generator=gen(15)), data


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_float32_under_bf16_autocast(name):
    lik, h, x = head_params(name)
    head = torch.nn.Linear(8, 5 * lik.params_per_pixel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = head(h)
        assert params.dtype == torch.bfloat16
        log_p, mean, draw, prepared = lik.log_prob(params, x), lik.mean(params), lik.sample(params), lik.prepare(x)
    assert [t.dtype for t in (log_p, mean, draw, prepared)] == [torch.float32] * 4
    assert log_p.shape == (6, 2) and mean.shape == draw.shape == (6, 2, 5) and prepared.shape == x.shape
    assert torch.equal(log_p, lik.log_prob(params.float(), x))  # the same maths as outside autocast
    assert torch.equal(mean, lik.mean(params.float()))
