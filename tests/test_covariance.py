"""The standalone covariance learner, vae/toy/, on the three toy problems and on bad input."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vae.cholesky import entries_to_scale_tril, mvn_log_prob
from vae.toy import CovarianceLearner, FitHistory, closed_form, fit_covariance, relative_error
from vae.toy.moments import sigma_points
from vae.toy.problems import ToyConfig, make_problem


def toy_data(problem: str, **overrides) -> torch.Tensor:
    """The exact data of ``python -m vae.toy <problem>`` (classic settings unless overridden)."""
    cfg = ToyConfig(problem, **overrides)
    cfg.validate()
    return make_problem(cfg)[2]


def errors(learner, data, objective="nll"):
    mean, covariance = closed_form(data, objective)
    return relative_error(learner.covariance_matrix, covariance), relative_error(learner.loc, mean)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower steps on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mse_data():
    return toy_data("mse")


@pytest.fixture(scope="module")
def mle_data():
    return toy_data("mle")


@pytest.fixture(scope="module")
def batched_data():
    return toy_data("batched")


# --- the learner ---------------------------------------------------------------------------------

def test_learner_starts_at_zero_mean_and_identity():
    learner = CovarianceLearner(3)
    assert torch.equal(learner.loc, torch.zeros(3))
    torch.testing.assert_close(learner.scale_tril, torch.eye(3))
    torch.testing.assert_close(learner.covariance_matrix, torch.eye(3))
    assert {name for name, _ in learner.named_parameters()} == {"raw_tril", "mean"}
    fixed = CovarianceLearner(3, learn_mean=False)
    assert [name for name, _ in fixed.named_parameters()] == ["raw_tril"]


def test_reported_covariance_is_the_trained_one_not_the_raw_product():
    """The classic bug printed raw @ raw.T; the learner must go through the mask and the diagonal map."""
    learner = CovarianceLearner(3, diag_transform="exp")
    with torch.no_grad():
        learner.raw_tril.copy_(torch.tensor([-2.0, 0.7, -1.0, 0.3, 0.4, 1.5]))
    scale_tril = entries_to_scale_tril(learner.raw_tril, "exp")
    torch.testing.assert_close(learner.covariance_matrix, scale_tril @ scale_tril.mT)
    assert bool((torch.linalg.eigvalsh(learner.covariance_matrix) > 0).all())
    assert learner.scale_tril[0, 0].item() == pytest.approx(math.exp(-2.0) + 1e-5)


def test_distribution_is_built_from_scale_tril():
    torch.manual_seed(0)
    learner = CovarianceLearner(4)
    with torch.no_grad():
        learner.raw_tril.normal_()
        learner.mean.normal_()
    dist = learner.distribution()
    assert isinstance(dist, torch.distributions.MultivariateNormal)
    assert "covariance_matrix" not in vars(dist), "built with covariance_matrix=, which refactorizes"
    torch.testing.assert_close(dist.scale_tril, learner.scale_tril)
    x = torch.randn(10, 4)
    torch.testing.assert_close(dist.log_prob(x), learner(x))


def test_sigma_points_give_exactly_the_data_nll_and_gradient():
    torch.manual_seed(1)
    x = torch.randn(500, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64) + 3
    n = x.shape[0]
    points = sigma_points(x.mean(0), torch.cov(x.T, correction=0))
    assert points.shape == (10, 5)
    losses, grads = [], []
    for inputs in (x, points):
        learner = CovarianceLearner(5, dtype=torch.float64)
        with torch.no_grad():
            learner.raw_tril.copy_(torch.linspace(-1, 1, 15))
            learner.mean.copy_(torch.arange(5.0))
        loss = -learner(inputs).mean()
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([learner.raw_tril.grad, learner.mean.grad]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)
    assert n == 500


# --- closed forms --------------------------------------------------------------------------------

def test_closed_forms_are_torch_cov_and_the_1_over_n_mle(mse_data):
    x = mse_data.double()
    mean, unbiased = closed_form(x, "mse")
    _, mle = closed_form(x, "nll")
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(unbiased, torch.cov(x.T))
    torch.testing.assert_close(mle, torch.cov(x.T, correction=0))


def test_closed_form_streams_a_loader_with_uneven_batches(mse_data):
    loader = DataLoader(TensorDataset(mse_data), batch_size=7)
    for objective in ("mse", "nll"):
        for got, expected in zip(closed_form(loader, objective), closed_form(mse_data, objective)):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_relative_error():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert relative_error(torch.tensor([3.0, 4.5]), torch.tensor([3.0, 4.0])) == pytest.approx(0.1)


# --- the three toy problems reach their closed forms ----------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_mse_problem_reaches_torch_cov(mse_data, optimizer):
    learner, history = fit_covariance(mse_data, "mse", optimizer=optimizer, epochs=500 if optimizer == "adam" else None)
    _, target = closed_form(mse_data, "mse")
    assert relative_error(learner.covariance_matrix, target) < 1e-3
    assert torch.equal(learner.loc, torch.zeros(2)), "mse learns no mean"
    assert isinstance(history, FitHistory) and history[-1] < 1e-8 and history[-1] <= history[0]


def test_classic_start_of_the_mse_problem_stands_about_9_percent_off(mse_data):
    """The classic recipe starts from raw entries = I under exp, i.e. L = e I; 500 Adam epochs leave ~9%."""
    learner, _ = fit_covariance(mse_data, "mse", diag_transform="exp", init=(None, math.e * torch.eye(2)), epochs=500)
    _, target = closed_form(mse_data, "mse")
    assert 0.05 < relative_error(learner.covariance_matrix, target) < 0.15


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_mle_problem_reaches_sample_mean_and_1_over_n_covariance(mle_data, optimizer):
    learner, history = fit_covariance(mle_data, "nll", optimizer=optimizer)  # Adam: the classic lr 0.01, 1000 epochs
    assert max(errors(learner, mle_data)) < 1e-3
    assert len(history) == (1000 if optimizer == "adam" else len(history)) and history.iterations >= len(history)


def test_batched_problem_reaches_the_mle_with_lbfgs_over_the_loader(batched_data):
    loader = DataLoader(TensorDataset(batched_data), batch_size=32, shuffle=True)
    learner, history = fit_covariance(loader, "nll", optimizer="lbfgs", seed=0)
    assert max(errors(learner, batched_data)) < 1e-3
    assert history.stopped_early


def test_batched_adam_steps_once_per_batch_and_learns(batched_data):
    loader = DataLoader(TensorDataset(batched_data), batch_size=32, shuffle=True)
    learner, history = fit_covariance(loader, "nll", lr=0.05, epochs=10, seed=0)
    assert len(history) == 10 and history.iterations == 10 * 32
    assert history[-1] < history[0]
    assert max(errors(learner, batched_data)) < 0.2  # from 0.5 / 1.0 at the start


def test_plain_iterables_of_tensors_or_1_lists_work_as_loaders(mle_data):
    for loader in (list(mle_data.split(30)), [[chunk] for chunk in mle_data.split(30)]):
        learner, _ = fit_covariance(loader, "nll", optimizer="lbfgs")
        assert max(errors(learner, mle_data)) < 1e-3


def test_mle_at_dimension_10_with_condition_number_100():
    x = toy_data("mle", dim=10, condition_number=100.0)
    learner, _ = fit_covariance(x, "nll", optimizer="lbfgs")
    assert max(errors(learner, x)) < 1e-2


def test_float64_data_fits_in_float64(mle_data):
    learner, _ = fit_covariance(mle_data.double(), "nll", optimizer="lbfgs")
    assert learner.scale_tril.dtype == torch.float64
    assert max(errors(learner, mle_data.double())) < 1e-6


def test_seed_makes_shuffled_runs_repeatable(batched_data):
    runs = [fit_covariance(DataLoader(TensorDataset(batched_data), batch_size=32, shuffle=True), "nll",
                           epochs=2, seed=7)[0].covariance_matrix for _ in range(2)]
    assert torch.equal(*runs)


def test_callback_stops_the_run_and_inits_are_applied(mle_data):
    seen = []
    _, history = fit_covariance(mle_data, "nll", epochs=50, callback=lambda e, l, loss: seen.append(e) or e == 3)
    assert seen == [0, 1, 2, 3] and len(history) == 4 and history.stopped_early
    start = fit_covariance(mle_data, "nll", epochs=1, lr=1e-12, init="diagonal")[0]
    torch.testing.assert_close(torch.diagonal(start.scale_tril), mle_data.std(0, correction=0), rtol=1e-4, atol=1e-5)
    loc, scale_tril = torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 0.0], [0.5, 1.0]])
    start = fit_covariance(mle_data, "nll", epochs=1, lr=1e-12, init=(loc, scale_tril))[0]
    torch.testing.assert_close(start.scale_tril, scale_tril, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(start.loc, loc, rtol=1e-4, atol=1e-5)


def test_divergence_raises_instead_of_returning_garbage(mse_data):
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit_covariance(mse_data, "mse", diag_transform="exp", lr=1e3, epochs=50)


# --- bad input ------------------------------------------------------------------------------------

def _good():
    return torch.randn(10, 2)


def _with(value):
    x = _good()
    x[3, 1] = value
    return x


def _loader(*batches):
    return DataLoader(batches, batch_size=None)  # yields the given tensors as they are


BAD_INPUTS = {
    "1-D data": (dict(data_or_loader=torch.randn(10)), "2-D"),
    "3-D data": (dict(data_or_loader=torch.randn(10, 2, 2)), "2-D"),
    "no columns": (dict(data_or_loader=torch.randn(10, 0)), "D >= 1"),
    "N=1": (dict(data_or_loader=torch.randn(1, 2)), "N=2"),
    "N=0": (dict(data_or_loader=torch.randn(0, 2)), "N=2"),
    "NaN": (dict(data_or_loader=_with(float("nan"))), "NaN"),
    "Inf": (dict(data_or_loader=_with(float("inf"))), "NaN or Inf"),
    "-Inf": (dict(data_or_loader=_with(-float("inf"))), "NaN or Inf"),
    "loader of N=1": (dict(data_or_loader=DataLoader(TensorDataset(torch.randn(1, 2)))), "N=2"),
    "loader with a later NaN batch": (dict(data_or_loader=_loader(_good(), _good(), _with(float("nan")))), "NaN"),
    "loader with wrong D": (dict(data_or_loader=_loader(_good(), torch.randn(10, 3))), "D=3, expected D=2"),
    "loader of 1-D batches": (dict(data_or_loader=_loader(torch.randn(10))), "2-D"),
    "loader of 2-tuples": (dict(data_or_loader=DataLoader(TensorDataset(_good(), _good()), batch_size=4)), "tuple"),
    "loader of non-tensors": (dict(data_or_loader=[[1.0, 2.0], [3.0, 4.0]]), "1-tuples"),
    "list of numbers": (dict(data_or_loader=[1.0, 2.0]), "Tensor"),
    "objective": (dict(objective="mle"), "objective"),
    "optimizer": (dict(optimizer="sgd"), "optimizer"),
    "lr": (dict(lr=0.0), "lr"),
    "epochs": (dict(epochs=0), "epochs"),
    "init": (dict(init="random"), "init"),
    "diag_transform": (dict(diag_transform="relu"), "diag_transform"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_fit_rejects_bad_input_with_a_clear_value_error(case):
    kwargs, message = BAD_INPUTS[case]
    kwargs = {"data_or_loader": _good(), "objective": "nll", **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_covariance(**{"epochs": 2, **kwargs})


@pytest.mark.parametrize("dim", [0, -3])
def test_learner_rejects_dim_below_1(dim):
    with pytest.raises(ValueError, match="dim"):
        CovarianceLearner(dim)


BAD_STARTS = {
    "loc of the wrong shape": (dict(loc=torch.zeros(3)), "loc must have shape \\(2,\\), got \\(3,\\)"),
    "NaN loc": (dict(loc=torch.tensor([0.0, float("nan")])), "loc must be finite"),
    "scale_tril of the wrong shape": (dict(scale_tril=torch.eye(3)), "scale_tril must have shape \\(2, 2\\)"),
    "1-D scale_tril": (dict(scale_tril=torch.ones(2)), "scale_tril must have shape"),
    "Inf in scale_tril": (dict(scale_tril=torch.tensor([[1.0, 0.0], [float("inf"), 1.0]])), "must be finite"),
    "upper entries": (dict(scale_tril=torch.tensor([[1.0, 0.5], [0.0, 1.0]])), "lower-triangular"),
    "zero diagonal": (dict(scale_tril=torch.tensor([[1.0, 0.0], [0.5, 0.0]])), "positive diagonal"),
    "negative diagonal": (dict(scale_tril=-torch.eye(2)), "positive diagonal"),
}


@pytest.mark.parametrize("case", BAD_STARTS, ids=list(BAD_STARTS))
def test_initialize_rejects_bad_values_in_one_line_and_changes_nothing(case):
    kwargs, message = BAD_STARTS[case]
    learner = CovarianceLearner(2)
    with pytest.raises(ValueError, match=message) as raised:
        learner.initialize(**{"loc": torch.ones(2), **kwargs})
    assert "\n" not in str(raised.value)
    torch.testing.assert_close(learner.scale_tril, torch.eye(2))
    assert torch.equal(learner.loc, torch.zeros(2))


def test_closed_form_rejects_bad_input():
    with pytest.raises(ValueError, match="objective"):
        closed_form(_good(), "mle")
    with pytest.raises(ValueError, match="N=2"):
        closed_form(torch.randn(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        closed_form(_with(float("nan")))
