"""The user's own data end to end: arrays, tables and image folders through train.py and vae.fit.

Each test writes its own small fixture. What is checked: the one-line description of the data and the
likelihood ``auto`` picks; that every reported log-likelihood is in the data's own units; resume; and
that bad data or a likelihood that cannot fit it is one line, exit code 2, and writes nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vae
from tests.conftest import run_cli
from vae.config import TrainConfig
from vae.data import DataError, held_out
from vae.errors import ArgumentError
from vae.run.checkpoint import load_checkpoint, load_run
from vae.training import train

quiet = lambda *_: None  # noqa: E731
TINY = dict(epochs=2, latent_dim=2, hidden=(16,), batch_size=32, progress=False, plots=False, threads=1)


def table(path: Path, rows: int = 240, scales=(1e-3, 1.0, 1e3), seed: int = 0) -> np.ndarray:
    """Rows of a 2-factor model with columns at the given scales, saved as .npy."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 2))
    x = (z @ rng.normal(size=(2, len(scales))) + 0.3 * rng.normal(size=(rows, len(scales)))) * np.array(scales)
    np.save(path, x.astype(np.float32))
    return x.astype(np.float32)


def images(path: Path, n: int = 96, shape=(3, 8, 8), seed: int = 0) -> None:
    """8-bit images with labels in a .npz (a given split)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, 3, size=n)
    np.savez(path, train=x[: n * 3 // 4], test=x[n * 3 // 4:], train_labels=labels[: n * 3 // 4],
             test_labels=labels[n * 3 // 4:])


def one_line_usage_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_an_image_array_picks_the_logistic_and_says_so(tmp_path):
    images(tmp_path / "imgs.npz")
    result = run_cli("train.py", "--dataset", str(tmp_path / "imgs.npz"), "--epochs", "1", "--latent-dim", "2",
                     "--hidden", "16", "--out-dir", str(tmp_path / "runs"), "--no-progress", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert "data: images 3×8×8, 8-bit, 72 train / 24 test, 3 classes; likelihood logistic" in result.stdout
    state = load_checkpoint(tmp_path / "runs" / "imgs-full-d2-s0" / "last.pt")
    assert state["config"]["likelihood"] == "logistic" and state["config"]["data_kind"] == "8bit"
    assert tuple(state["config"]["data_shape"]) == (3, 8, 8)
    model, _, _ = load_run(tmp_path / "runs" / "imgs-full-d2-s0" / "best.pt")
    x = torch.from_numpy(np.load(tmp_path / "imgs.npz")["test"][:5])  # (5, 3, 8, 8) uint8
    assert model.posterior(x).batch_shape == (5,)
    assert model.decode(model.encode(x)[0]).shape == (5, 6, 8, 8)  # means and log-scales, stacked on channels
    assert model.sample(4).shape == (4, 3, 8, 8) and 0 <= model.sample(4).min() <= model.sample(4).max() <= 255


def test_a_table_is_gaussian_in_its_own_units_and_resumes(tmp_path):
    x = table(tmp_path / "rows.npy")
    run = train(TrainConfig(dataset=str(tmp_path / "rows.npy"), out_dir=str(tmp_path), **TINY), log=quiet)
    config = json.loads((run / "config.json").read_text())
    assert (config["likelihood"], config["data_kind"], config["data_shape"]) == ("gaussian", "continuous", [3])
    model, _, _ = load_run(run / "last.pt")
    lik = model.likelihood
    train_rows = torch.from_numpy(x).double()[held_out(len(x), 0.1)[0]]  # the standardization is the training split's
    torch.testing.assert_close(lik.shift.double(), train_rows.mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(lik.scale.double(), train_rows.std(0, correction=0), rtol=1e-6, atol=0)
    resumed = train(TrainConfig(dataset=str(tmp_path / "rows.npy"), out_dir=str(tmp_path), resume=True,
                                **{**TINY, "epochs": 3}), log=quiet)
    assert load_checkpoint(resumed / "last.pt")["epoch"] == 3


def test_every_log_likelihood_is_in_the_data_units(tmp_path):
    """A column c times larger: the same training (standardized), and each row's density log c lower."""
    x = table(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", x * np.array([1.0, 1000.0, 1.0], dtype=np.float32))
    rows = {}
    for name in "ab":
        run = train(TrainConfig(dataset=str(tmp_path / f"{name}.npy"), out_dir=str(tmp_path), run_name=name,
                                **TINY), log=quiet)
        rows[name] = load_checkpoint(run / "last.pt")["metrics"][-1]
    for column in ("test_neg_elbo", "train_neg_elbo"):
        assert rows["b"][column] - rows["a"][column] == pytest.approx(np.log(1000.0), abs=2e-3), column
    assert rows["b"]["test_kl"] == pytest.approx(rows["a"]["test_kl"], abs=1e-4)


def test_vae_fit_takes_an_array_and_resumes_on_the_same_one_only(tmp_path):
    x = torch.from_numpy(table(tmp_path / "unused.npy"))
    model, run = vae.fit(x, out_dir=str(tmp_path), log=quiet, **{k: v for k, v in TINY.items() if k != "progress"})
    assert (run / "data.npy").is_file() and run.name == "data-full-d2-s0"
    assert model.posterior(x[:4]).batch_shape == (4,) and not model.training
    model, run = vae.fit(x, out_dir=str(tmp_path), resume=True, log=quiet, **{**TINY, "epochs": 3})
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    with pytest.raises(ArgumentError, match="was trained on other data"):
        vae.fit(x * 2, out_dir=str(tmp_path), resume=True, log=quiet, **{**TINY, "epochs": 4})
    with pytest.raises(ArgumentError, match="not a knob"):
        vae.fit(x, out_dir=str(tmp_path), latent_dims=3)


@pytest.mark.parametrize("case", ["nan", "bernoulli-on-a-table", "logistic-on-floats", "binary-kind-on-a-table",
                                  "not-an-array", "labels"])
def test_bad_data_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    x = table(tmp_path / "rows.npy")
    flags = []
    if case == "nan":
        x[5, 1] = np.nan
        np.save(tmp_path / "rows.npy", x)
        path, needles = tmp_path / "rows.npy", ["rows.npy", "NaN"]
    elif case == "bernoulli-on-a-table":
        path, needles, flags = tmp_path / "rows.npy", ["--likelihood=bernoulli cannot fit", "rows.npy"], [
            "--likelihood", "bernoulli"]
    elif case == "logistic-on-floats":
        path, needles, flags = tmp_path / "rows.npy", ["--likelihood=logistic cannot fit"], ["--likelihood", "logistic"]
    elif case == "binary-kind-on-a-table":
        path, needles, flags = tmp_path / "rows.npy", ["rows.npy", "binary"], ["--data-kind", "binary"]
    elif case == "not-an-array":
        path = tmp_path / "notes.npy"
        path.write_text("not an array")
        needles = ["notes.npy"]
    else:
        np.savez(tmp_path / "l.npz", train=x[:200], test=x[200:], train_labels=np.zeros(199))
        path, needles = tmp_path / "l.npz", ["l.npz", "label"]
    result = run_cli("train.py", "--dataset", str(path), *flags, "--epochs", "1", "--out-dir",
                     str(tmp_path / "runs"), "--no-progress")
    one_line_usage_error(result, *needles)
    assert not (tmp_path / "runs").exists()


def test_evaluate_visualize_and_gaps_follow_the_data(tmp_path):
    """An image run and a table run through the three readers: bits per dimension for 8-bit images only
    (a density has none), pictures that fit the data, and the split the run was trained on."""
    images(tmp_path / "imgs.npz")
    table(tmp_path / "rows.npy")
    runs = {name: train(TrainConfig(dataset=str(tmp_path / f"{name}.{suffix}"), out_dir=str(tmp_path), **TINY),
                        log=quiet) for name, suffix in (("imgs", "npz"), ("rows", "npy"))}
    for name, run in runs.items():
        result = run_cli("-m", "vae.evaluate", str(run / "best.pt"), "--k", "20", "--no-progress")
        assert result.returncode == 0, result.stderr
        scores = json.loads((run / "eval-test-k20.json").read_text())
        assert scores["images"] == 24  # the given test split of 24 images; 240 rows hold out 24
        assert ("bits_per_dim" in scores) == (name == "imgs"), scores
        pictures = run_cli("-m", "vae.visualize", str(run / "best.pt"))
        assert pictures.returncode == 0, pictures.stderr
        written = {p.name for p in run.glob("*.png")}
        assert written == {"reconstructions.png", "samples.png", "latent.png", "curves.png", "ellipses.png"} | (
            {"manifold.png"} if name == "imgs" else set())
        gaps = run_cli("-m", "vae.gaps", str(run / "best.pt"), "--k", "20", "--steps", "3", "--limit", "6",
                       "--families", "full", "diagonal", "--no-progress")
        assert gaps.returncode == 0, gaps.stderr
    import matplotlib.image

    colour = matplotlib.image.imread(runs["imgs"] / "reconstructions.png")  # (H, W, 4) RGBA
    assert (colour[..., 0] != colour[..., 1]).any(), "a colour grid, not grey"


def test_a_resume_or_an_evaluation_on_changed_data_is_refused(tmp_path):
    """The held-out split is a function of the rows: a file that gained rows would move it."""
    x = table(tmp_path / "rows.npy")
    run = train(TrainConfig(dataset=str(tmp_path / "rows.npy"), out_dir=str(tmp_path), **TINY), log=quiet)
    assert json.loads((run / "config.json").read_text())["data_rows"] == 240
    np.save(tmp_path / "rows.npy", np.concatenate([x, x[:10]]))
    result = run_cli("-m", "vae.evaluate", str(run / "best.pt"), "--k", "5", "--no-progress")
    one_line_usage_error(result, "250 rows", "240")
    with pytest.raises(DataError, match="holds 250 rows; the run was trained on 240"):
        train(TrainConfig(dataset=str(tmp_path / "rows.npy"), out_dir=str(tmp_path), resume=True,
                          **{**TINY, "epochs": 3}), log=quiet)
