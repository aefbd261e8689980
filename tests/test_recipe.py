"""The training recipe: learning-rate schedules, KL warm-up, output-bias init, Adam's epsilon, presets."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, step_fault
from tests.test_training import read_metrics, tiny_config
from vae.run.checkpoint import load_checkpoint
from vae.config import PRESETS, TrainConfig, preset_config
from vae.model import VAE
from vae.model.objectives import log_weights, negative_elbo, training_loss
from vae.schedules import BURDA_EPOCHS, kl_weight, learning_rate
from vae.run.signals import TrainingInterrupted
from vae.run.folder import RunFolder
from vae.training import make_optimizer, train

quiet = lambda *_: None  # noqa: E731
TIMING = {"images_per_s", "train_seconds"}


def burda_lr_at_epoch(epoch: int, epochs: int = BURDA_EPOCHS, steps_per_epoch: int = 1) -> float:
    return learning_rate("burda", 1e-3, epoch * steps_per_epoch, epochs * steps_per_epoch)


def test_burda_schedule_has_the_protocol_s_eight_stages_at_3280_epochs():
    first_epoch_of_stage = [0, 1, 4, 13, 40, 121, 364, 1093]  # 3^i epochs each
    for stage, start in enumerate(first_epoch_of_stage):
        expected = 1e-3 * 10 ** (-stage / 7)
        assert burda_lr_at_epoch(start) == pytest.approx(expected, rel=1e-12), stage
        if start:
            assert burda_lr_at_epoch(start - 1) == pytest.approx(1e-3 * 10 ** (-(stage - 1) / 7), rel=1e-12)
    assert burda_lr_at_epoch(BURDA_EPOCHS - 1) == pytest.approx(1e-4)
    # a shorter run keeps the stages' proportions: 328 epochs of 10 steps = the protocol's steps / 1
    for epoch in (0, 1, 4, 13, 40, 121, 364, 1093, 3000):
        assert learning_rate("burda", 1e-3, epoch, BURDA_EPOCHS) == learning_rate("burda", 1e-3, epoch, 328 * 10)


def test_cosine_and_constant_schedules():
    assert learning_rate("cosine", 2e-3, 0, 100) == pytest.approx(2e-3)
    assert learning_rate("cosine", 2e-3, 50, 100) == pytest.approx(1e-3)
    assert learning_rate("cosine", 2e-3, 99, 100) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert learning_rate("constant", 2e-3, 77, 100) == 2e-3
    with pytest.raises(ValueError, match="step"):
        learning_rate("steps", 1e-3, 0, 10)


def test_kl_weight_rises_per_step_over_the_warm_up():
    assert [kl_weight(s, 2, 4) for s in range(9)] == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert kl_weight(0, 0, 4) == 1.0


def test_beta_scales_only_the_differentiated_loss():
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,)).double()
    x = torch.rand(5, 784, dtype=torch.float64).bernoulli()
    torch.manual_seed(1)
    surrogate, bound = training_loss(model, x, "elbo", 1, "reparam", beta=0.25)
    torch.manual_seed(1)
    plain = negative_elbo(model, x)
    torch.testing.assert_close(bound.loss, plain.loss)  # the report: beta = 1
    torch.testing.assert_close(surrogate, plain.recon + 0.25 * plain.kl)
    for estimator in ("reparam", "dreg"):
        torch.manual_seed(2)
        surrogate, bound = training_loss(model, x, "iwae", 4, estimator, beta=0.0)
        torch.manual_seed(2)
        posterior, logits = model(x, 4)
        log_px_z = model.likelihood.log_prob(logits, x)  # (5, 4); at beta = 0 the weights are p(x|z) alone
        torch.testing.assert_close(surrogate, math.log(4) - torch.logsumexp(log_px_z, 1))
        torch.testing.assert_close(bound.loss, negative_iwae_from(log_px_z, posterior))


def negative_iwae_from(log_px_z, posterior):
    log_w = log_weights(log_px_z, posterior)
    return math.log(log_w.shape[1]) - torch.logsumexp(log_w, 1)


def test_warm_up_and_schedule_are_recorded_per_epoch(fake_mnist, tmp_path):
    run = train(tiny_config(fake_mnist, tmp_path, epochs=3, kl_warmup=2, lr_schedule="cosine", lr=1e-3), log=quiet)
    rows = read_metrics(run)
    assert [float(r["kl_weight"]) for r in rows] == [0.5, 1.0, 1.0]  # 6 steps an epoch; the last step's weight
    total = 3 * 6
    for row in rows:
        step = int(row["step"])
        assert float(row["lr"]) == pytest.approx(learning_rate("cosine", 1e-3, step - 1, total))
        # what is reported is the true bound at weight 1
        assert float(row["train_neg_elbo"]) == pytest.approx(float(row["train_recon"]) + float(row["train_kl"]))
        assert float(row["train_loss"]) == pytest.approx(float(row["train_neg_elbo"]))
    assert load_checkpoint(run / "last.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(float(rows[-1]["lr"]))


def assert_same_run(straight, resumed) -> None:
    """The resumed run ended with the straight run's weights and metrics (timing columns aside)."""
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_metrics(straight)) == strip(read_metrics(resumed))


@pytest.mark.parametrize("stop_after", [3, 8])  # inside the warm-up's first epoch, and in its second
def test_resume_is_exact_through_warm_up_and_schedule(fake_mnist, tmp_path, monkeypatch, stop_after):
    recipe = dict(epochs=3, kl_warmup=2, lr_schedule="burda", adam_eps=1e-4, objective="iwae", k=3,
                  estimator="dreg")
    straight = train(tiny_config(fake_mnist, tmp_path / "a", **recipe), log=quiet)
    found = signal.getsignal(signal.SIGINT)
    with step_fault(f"{stop_after}=SIGINT"), pytest.raises(TrainingInterrupted):
        train(tiny_config(fake_mnist, tmp_path / "b", **recipe), log=quiet)
    assert signal.getsignal(signal.SIGINT) is found  # training restores the handler it found
    resumed = train(tiny_config(fake_mnist, tmp_path / "b", resume=True), log=quiet, explicit={"resume"})
    assert_same_run(straight, resumed)


def test_resume_refuses_to_rescale_a_schedule(fake_mnist, tmp_path):
    train(tiny_config(fake_mnist, tmp_path, epochs=1, lr_schedule="burda"), log=quiet)
    with pytest.raises(ValueError, match="burda learning-rate schedule, scaled to its 1 epochs"):
        RunFolder(tiny_config(fake_mnist, tmp_path, resume=True, epochs=2)).resume_config({"resume", "epochs"})
    train(tiny_config(fake_mnist, tmp_path, epochs=1, run_name="flat"), log=quiet)
    flat = RunFolder(tiny_config(fake_mnist, tmp_path, resume=True, epochs=2, run_name="flat"))
    assert flat.resume_config({"resume", "epochs"}).epochs == 2  # a constant rate may be extended


def test_output_bias_starts_at_the_logit_of_the_mean_pixel(fake_mnist, tmp_path):
    from vae.data import load_split

    mean = load_split("mnist", str(fake_mnist), train=True).images.mean(0).clamp(1e-3, 1 - 1e-3)
    run = train(tiny_config(fake_mnist, tmp_path, lr=1e-12), log=quiet)  # lr 1e-12: the start, read off the end
    bias = load_checkpoint(run / "last.pt")["model"]["decoder.head.bias"]
    torch.testing.assert_close(bias, torch.logit(mean), atol=1e-6, rtol=0)
    other = train(tiny_config(fake_mnist, tmp_path, lr=1e-12, output_bias="default", run_name="d"), log=quiet)
    assert load_checkpoint(other / "last.pt")["model"]["decoder.head.bias"].abs().max() < 0.5  # PyTorch's init


def test_adam_eps_reaches_the_optimizer():
    config = TrainConfig(adam_eps=1e-4)
    assert make_optimizer(VAE(latent_dim=2, hidden=(8,)), config, torch.device("cpu")).param_groups[0]["eps"] == 1e-4


def test_presets_are_flags_that_explicit_flags_override():
    config = preset_config({"preset": "results-vae-diagonal", "epochs": 7})
    assert config.epochs == 7 and config.posterior == "diagonal" and config.hidden == (300, 300)
    assert config.lr_schedule == PRESETS["results-vae-diagonal"]["lr_schedule"]
    assert config.name == "results-vae-diagonal"
    assert preset_config({}) == TrainConfig()
    for name, flags in PRESETS.items():
        assert set(flags) <= set(TrainConfig.__dataclass_fields__), name
        preset_config({"preset": name}).validate()


def test_preset_on_the_command_line(fake_mnist, tmp_path):
    args = ["train.py", "--preset", "results-vae-full", "--epochs", "1", "--data-dir", str(fake_mnist),
            "--out-dir", str(tmp_path), "--device", "cpu", "--no-plots", "--no-progress"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "results-vae-full" / "config.json").read_text())
    assert stored["preset"] == "results-vae-full" and stored["epochs"] == 1 and stored["hidden"] == [300, 300]
    assert stored["lr_schedule"] == "cosine" and stored["adam_eps"] == 1e-4 and stored["kl_warmup"] > 0
    with open(tmp_path / "results-vae-full" / "metrics.csv", newline="") as f:
        assert list(csv.DictReader(f))[0]["epoch"] == "1"
    bad = run_cli("train.py", "--preset", "best", "--out-dir", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--preset" in bad.stderr


@pytest.mark.parametrize("flags,message", [
    (["--estimator", "dreg"], "--estimator dreg is for the iwae objective"),
    (["--objective", "iwae", "--k", "5", "--estimator", "stl"], "--estimator stl is biased"),
    (["--kl-warmup", "-1"], "--kl-warmup must be a non-negative integer"),
    (["--adam-eps", "0"], "--adam-eps must be a positive finite number"),
    (["--lr-schedule", "linear"], "--lr-schedule"),
])
def test_bad_recipe_flags_are_one_line(tmp_path, flags, message):
    result = run_cli("train.py", *flags, "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("name,preset", [("iwae-full.pt", "results-iwae-full"),
                                         ("iwae-diagonal.pt", "results-iwae-diagonal"),
                                         ("conv-full.pt", "results-conv-full"),
                                         ("conv-diagonal.pt", "results-conv-diagonal")])
def test_each_preset_reproduces_its_shipped_run(name, preset):
    """Every field that shapes the model or its training is the preset's; only where it ran differs."""
    from vae.run.checkpoint import PRETRAINED_DIR, load_checkpoint

    stored = load_checkpoint(PRETRAINED_DIR / name)["config"]
    config = preset_config({"preset": preset})
    where = {"init_from", "out_dir", "resume", "progress", "preset", "threads",  # where and how it ran
             "dataset", "data_kind", "data_shape", "likelihood",  # what the run recorded of its data
             "hidden", "channels"}  # lists in JSON, compared below
    assert list(stored["hidden"]) == list(config.hidden)
    if config.arch == "conv":
        assert list(stored["channels"]) == list(config.channels)
    assert {k: v for k, v in stored.items() if k not in where} == {
        k: v for k, v in dataclasses.asdict(config).items() if k not in where and k in stored}
    if config.init_from:
        assert Path(stored["init_from"]).name == Path(config.init_from).name


def test_eval_every_tests_and_saves_every_nth_epoch_and_the_last_and_trains_alike(fake_mnist, tmp_path, monkeypatch):
    every_epoch = train(tiny_config(fake_mnist, tmp_path / "a", epochs=5), log=quiet)
    writes = []
    real_save = RunFolder.save
    monkeypatch.setattr(RunFolder, "save", lambda folder, name, state: (writes.append(name), real_save(folder, name, state)))
    sparse = train(tiny_config(fake_mnist, tmp_path / "b", epochs=5, eval_every=2), log=quiet)
    assert writes.count("last.pt") == 3  # epochs 2, 4 and the last
    rows, dense = read_metrics(sparse), read_metrics(every_epoch)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    tested = [math.isfinite(float(r["test_neg_elbo"])) for r in rows]
    assert tested == [False, True, False, True, True]
    for ours, theirs, was_tested in zip(rows, dense, tested):  # the training draws do not see the skipped tests
        for name in set(ours) - TIMING - (set() if was_tested else {"test_neg_elbo", "test_recon", "test_kl"}):
            assert ours[name] == theirs[name], name
    assert load_checkpoint(sparse / "last.pt")["epoch"] == 5
    assert load_checkpoint(sparse / "best.pt")["epoch"] in (2, 4, 5)


@pytest.mark.parametrize("stop_after", [6, 9])  # at the end of untested epoch 1, and inside epoch 2
def test_a_stop_between_tested_epochs_saves_and_resumes_exactly(fake_mnist, tmp_path, monkeypatch, stop_after):
    recipe = dict(epochs=4, eval_every=3, kl_warmup=1)
    straight = train(tiny_config(fake_mnist, tmp_path / "a", **recipe), log=quiet)
    with step_fault(f"{stop_after}=SIGINT"), pytest.raises(TrainingInterrupted):  # 6 steps an epoch
        train(tiny_config(fake_mnist, tmp_path / "b", **recipe), log=quiet)
    assert load_checkpoint(tmp_path / "b" / "tiny" / "last.pt")["step"] == stop_after  # nothing lost
    resumed = train(tiny_config(fake_mnist, tmp_path / "b", resume=True, **recipe), log=quiet, explicit={"resume"})
    assert_same_run(straight, resumed)


def test_eval_every_must_be_positive_and_may_change_on_resume(fake_mnist, tmp_path):
    with pytest.raises(ValueError, match="eval_every.*positive"):
        train(tiny_config(fake_mnist, tmp_path, eval_every=0), log=quiet)
    train(tiny_config(fake_mnist, tmp_path, epochs=1), log=quiet)
    config = RunFolder(tiny_config(fake_mnist, tmp_path, resume=True, epochs=2, eval_every=5)).resume_config(
        {"resume", "epochs", "eval_every"})
    assert config.eval_every == 5
