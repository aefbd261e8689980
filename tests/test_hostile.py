"""Hostile input: crafted checkpoints, planted links and special files, absurd sizes and paths.

Every crafted file is generated here, into ``tmp_path``, from one tiny real run (no binary fixture
is committed): :data:`CRAFTED` is the catalogue of broken checkpoints, each one edit of a good
``last.pt``, with the field its one-line refusal must name. The next adversarial round starts
from it. Processes run with the suite's own interpreter; commands that train use a tiny fake MNIST.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import vae
from tests.conftest import run_cli
from tests.test_reliability import assert_one_line_error, run_many, tiny_config
from tests.test_training import assert_names_the_largest_that_fits
from vae.run.checkpoint import CheckpointError, load_checkpoint
from vae.training import train

TIMEOUT = 180


@pytest.fixture(scope="module")
def good(data, tmp_path_factory) -> Path:
    """A good ``last.pt`` of one tiny epoch (latent 2, hidden 16, 96 images in batches of 16)."""
    out = tmp_path_factory.mktemp("good")
    train(tiny_config(data, out, epochs=1), log=lambda *_: None)
    return out / "tiny" / "last.pt"


def craft(good: Path, target: Path, edit) -> Path:
    """``good`` with ``edit(state)`` applied, saved as is (``torch.save``: nothing checks it on the way)."""
    state = torch.load(good, weights_only=True)
    edit(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


def _set(path: str, value):
    """An edit that sets ``state[a][b]...`` (``path`` "a.b") to ``value``."""
    def edit(state):
        *parents, last = path.split(".")
        node = state
        for key in parents:
            node = node[key]
        node[last] = value(node.get(last)) if callable(value) else value
    return edit


def _partial(state):
    state["partial"] = {"epoch": state["epoch"] + 1, "batch": 10**9, "data_rng": torch.Generator().get_state(),
                        "sums": torch.zeros(4, dtype=torch.float64), "seconds": 1.0}


CRAFTED = {  # name -> (edit of a good last.pt, the field its refusal names)
    "epoch-text": (_set("epoch", "x"), "epoch"),
    "epoch-negative": (_set("epoch", -5), "epoch"),
    "step-text": (_set("step", "x"), "step"),
    "best-text": (_set("best_test_neg_elbo", "x"), "best_test_neg_elbo"),
    "metrics-not-list": (_set("metrics", "x"), "metrics"),
    "metrics-row-not-dict": (_set("metrics", [1.0]), "metrics[0]"),
    "metrics-row-lacks-test": (lambda s: s["metrics"][0].pop("test_neg_elbo"), "metrics[0].test_neg_elbo"),
    # an untested epoch (--eval-every) has all three test columns NaN; one NaN alone is damage
    "metrics-row-half-tested": (lambda s: s["metrics"][0].update(test_neg_elbo=math.nan), "metrics[0].test_neg_elbo"),
    "partial-epoch-only": (_set("partial", {"epoch": 3}), "partial"),
    "partial-text": (_set("partial", "x"), "partial"),
    "latent-dim-bool": (_set("config.latent_dim", True), "latent_dim"),
    "hidden-text": (_set("config.hidden", "x"), "hidden"),
    "weights-nan": (lambda s: s["model"]["encoder.loc_head.weight"].fill_(math.nan), "model.encoder.loc_head.weight"),
    "latent-dim-1500": (_set("config.latent_dim", 1500), "model.encoder.loc_head.weight"),
    "latent-dim-huge": (_set("config.latent_dim", 10**9), "config"),
    "hidden-huge": (_set("config.hidden", [10**6]), "model.encoder.body.0.weight"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_checkpoint_is_refused_where_it_is_read_naming_the_file_and_field(good, tmp_path, name):
    edit, field = CRAFTED[name]
    path = craft(good, tmp_path / f"{name}.pt", edit)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and field in message and "\n" not in message, message


def test_a_config_that_names_a_huge_model_builds_nothing_before_the_shapes_are_checked(good, tmp_path, monkeypatch):
    import vae.run.checkpoint as checkpoint

    built, build = [], checkpoint.build_model
    monkeypatch.setattr(checkpoint, "build_model", lambda config: built.append(torch.empty(0).device.type)
                        or build(config))
    for name in ("latent-dim-1500", "latent-dim-huge", "hidden-huge"):
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match="config"):
            vae.load_model(craft(good, tmp_path / f"{name}.pt", CRAFTED[name][0]))
        assert time.perf_counter() - start < 5
    assert set(built) <= {"meta"}, built  # shapes are compared on the meta device; no real model was built


def test_every_reader_refuses_a_crafted_checkpoint_in_one_line(good, data, tmp_path):
    commands, needles = {}, {}
    for name in ("latent-dim-1500", "hidden-huge", "metrics-row-lacks-test", "weights-nan"):
        path = craft(good, tmp_path / f"{name}.pt", CRAFTED[name][0])
        commands[f"{name} visualize"] = ["-m", "vae.visualize", str(path), "--out", str(tmp_path / "pics"),
                                         "--data-dir", str(data)]
        needles[f"{name} visualize"] = (f"{name}.pt", CRAFTED[name][1])
    path = craft(good, tmp_path / "huge.pt", _set("config.latent_dim", 5000))
    commands["5000 evaluate"] = ["-m", "vae.evaluate", str(path), "--k", "1", "--limit", "2", "--data-dir", str(data)]
    commands["5000 gaps"] = ["-m", "vae.gaps", str(path), "--k", "2", "--limit", "2", "--steps", "1",
                             "--data-dir", str(data)]
    needles["5000 evaluate"] = needles["5000 gaps"] = ("huge.pt", "model.encoder.loc_head.weight")
    for name in ("epoch-text", "partial-epoch-only", "best-text", "metrics-not-list", "epoch-negative"):
        craft(good, tmp_path / "runs" / name / "last.pt", CRAFTED[name][0])
        commands[f"{name} resume"] = ["train.py", "--resume", "--out-dir", str(tmp_path / "runs"), "--run-name", name]
        needles[f"{name} resume"] = (f"{name}/last.pt", f"'{CRAFTED[name][1]}'")
    craft(good, tmp_path / "runs" / "batch" / "last.pt", _partial)  # loadable: only this run knows its batches
    commands["partial-batch resume"] = ["train.py", "--resume", "--out-dir", str(tmp_path / "runs"),
                                        "--run-name", "batch", "--epochs", "2", "--no-plots", "--no-progress",
                                        "--data-dir", str(data)]
    needles["partial-batch resume"] = ("batch/last.pt", "'partial.batch'")
    for name, result in run_many(commands, workers=2).items():
        assert_one_line_error(result, 1, *needles[name])
    assert not (tmp_path / "runs" / "epoch-negative" / "metrics.csv").exists()  # nothing trained


def test_a_symlinked_lock_file_never_writes_its_target(good, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    shutil.copy(good, run_dir / "last.pt")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run_dir / ".fullcov.lock").symlink_to(Path("..") / ".." / "victim.txt")  # relative: as an archive holds it
    resume = ["train.py", "--resume", "--out-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-plots"]
    assert_one_line_error(run_cli(*resume, timeout=TIMEOUT), 2, ".fullcov.lock", "symbolic link")
    assert victim.read_text() == "precious\n"

    (run_dir / ".fullcov.lock").unlink()
    (run_dir / ".fullcov.lock").symlink_to(tmp_path / "created-by-us")  # dangling
    assert_one_line_error(run_cli(*resume, timeout=TIMEOUT), 2, "symbolic link")
    assert not (tmp_path / "created-by-us").exists()

    (run_dir / ".fullcov.lock").unlink()
    os.mkfifo(run_dir / ".fullcov.lock")  # would block an open for reading, and is no file of ours
    assert_one_line_error(run_cli(*resume, timeout=TIMEOUT), 2, "FIFO")


def test_a_run_folder_that_is_a_link_is_refused(good, tmp_path):
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("mine\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r").symlink_to(Path("..") / "home")
    result = run_cli("train.py", "--out-dir", str(tmp_path / "runs"), "--run-name", "r", "--epochs", "1",
                     "--no-plots", "--device", "cpu", timeout=TIMEOUT)
    assert_one_line_error(result, 2, "--run-name", "symbolic link")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["config.json"]
    assert (elsewhere / "config.json").read_text() == "mine\n"


def test_special_files_and_link_loops_are_not_checkpoints(tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    for path, why in [(tmp_path / "fifo.pt", "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                      (tmp_path / "loop-a", "loop of symbolic links"), (tmp_path, "not a regular file")]:
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(path)
    result = run_cli("-m", "vae.evaluate", str(tmp_path / "loop-a"), "--k", "1", timeout=TIMEOUT)
    assert_one_line_error(result, 1, "loop of symbolic links")


def test_long_paths_get_one_line(tmp_path):
    long = "a" * 300
    flags = ("--no-plots", "--epochs", "1", "--device", "cpu")
    results = run_many({
        "run-name": ["train.py", "--run-name", long, "--out-dir", str(tmp_path), *flags],
        "out-dir": ["train.py", "--out-dir", str(tmp_path / long), *flags],
        "out": ["-m", "vae.evaluate", "--out", str(tmp_path / f"{long}.json"), "--k", "1"],
        "checkpoint": ["-m", "vae.evaluate", str(tmp_path / f"{long}.pt"), "--k", "1"],
        "data-dir": ["-m", "vae.gaps", "--data-dir", str(tmp_path / long), "--k", "1"],
        "out pictures": ["-m", "vae.visualize", "--out", str(tmp_path / long)],
    }, workers=2)
    for name, result in results.items():
        assert_one_line_error(result, 2, f"--{name.split()[0]}", "over the 255 bytes a file name may have")


def test_training_never_writes_into_the_shipped_folder(tmp_path):
    shipped = sorted(p.name for p in vae.PRETRAINED_DIR.iterdir())
    results = run_many({"pretrained": ["train.py", "--out-dir", "vae", "--run-name", "pretrained"],
                        "inside": ["train.py", "--out-dir", "vae/pretrained", "--run-name", "x"]}, workers=2)
    for result in results.values():
        assert_one_line_error(result, 2, "--out-dir", "shipped models")
    assert sorted(p.name for p in vae.PRETRAINED_DIR.iterdir()) == shipped


def test_data_folders_come_from_the_flag_then_the_environment_then_the_checkpoint(good, data, tmp_path,
                                                                                   monkeypatch):
    from vae.data import resolve_data_dir

    monkeypatch.setenv("VAE_DATA_DIR", "env")
    assert [resolve_data_dir("flag", "stored"), resolve_data_dir(None, "stored")] == [Path("flag"), Path("env")]
    monkeypatch.delenv("VAE_DATA_DIR")
    assert resolve_data_dir(None, "stored") == Path("stored") and resolve_data_dir() == Path("data")

    gone = str(tmp_path / "moved-away")  # the stored folder no longer exists; the environment names a good one
    craft(good, tmp_path / "runs" / "r" / "last.pt", _set("config.data_dir", gone))
    env = {"VAE_DATA_DIR": str(data)}
    results = run_many({
        "resume": ["train.py", "--resume", "--out-dir", str(tmp_path / "runs"), "--run-name", "r", "--epochs", "2",
                   "--no-plots", "--no-progress"],
        "evaluate": ["-m", "vae.evaluate", str(tmp_path / "runs" / "r" / "last.pt"), "--k", "1", "--limit", "4",
                     "--out", str(tmp_path / "eval.json"), "--no-progress"],
    }, workers=2, envs={"resume": env, "evaluate": env})
    for result in results.values():
        assert result.returncode == 0, result.stderr
    assert not Path(gone).exists()  # nothing was downloaded into the stale path


def test_resuming_with_another_process_count_names_the_process_count(good, tmp_path):
    from vae.run.folder import RunFolder

    craft(good, tmp_path / "runs" / "r" / "last.pt", _set("world_size", 2))
    config = dataclasses.replace(load_config(good), out_dir=str(tmp_path / "runs"), run_name="r", resume=True,
                                 batch_size=15)
    with pytest.raises(ValueError, match="trained by 2 processes; continued by 3 processes"):
        RunFolder(config).resume_config({"resume", "out_dir", "run_name", "batch_size"}, world_size=3)


def load_config(path: Path):
    from vae.config import config_from_dict

    return config_from_dict(load_checkpoint(path)["config"])


def test_the_step_memory_counts_the_full_posterior_and_names_the_latent_dim_that_fits():
    from vae.config import TrainConfig
    from vae.step import step_memory_bytes

    full, diagonal = TrainConfig(latent_dim=3000), TrainConfig(latent_dim=3000, posterior="diagonal")
    assert step_memory_bytes(full) > 16 * 400 * 3000 * 3001 // 2  # the scale head, its gradient and Adam's state
    assert step_memory_bytes(diagonal) < step_memory_bytes(full) / 100
    assert_names_the_largest_that_fits(full, "latent_dim", 16 * 2**30, r"lower latent_dim to \d+")
    result = run_cli("train.py", "--latent-dim", "30000", "--limit", "200", "--epochs", "1", "--device", "cpu",
                     "--data-dir", "nowhere", timeout=TIMEOUT)
    assert_one_line_error(result, 2, "--latent-dim 30000", "lower --latent-dim to")


def test_absurd_flags_of_the_other_commands_get_one_line(tmp_path):
    (tmp_path / "missing").mkdir()
    results = run_many({
        "dist-timeout": ["train.py", "--dist-timeout", "1e14"],
        "nproc": ["-m", "vae.launch", "--nproc-per-node", "0", "train.py"],
        "toy seed": ["-m", "vae.toy", "mle", "--seed", "1180591620717411303424"],
        "toy condition": ["-m", "vae.toy", "mle", "--dim", "3", "--samples", "100", "--condition-number", "1e12"],
        "toy samples": ["-m", "vae.toy", "mle", "--samples", "10000000000"],
        "toy dim": ["-m", "vae.toy", "mle", "--dim", "100000"],
        "gaps plot": ["-m", "vae.gaps", "--out", str(tmp_path / "A.json"), "--plot",
                      str(tmp_path / "missing" / "no" / "x.png")],
    }, workers=2)
    needles = {"dist-timeout": "--dist-timeout", "nproc": "--nproc-per-node", "toy seed": "--seed",
               "toy condition": "--condition-number", "toy samples": "--samples", "toy dim": "--dim",
               "gaps plot": "--plot"}
    for name, result in results.items():
        assert_one_line_error(result, 2, needles[name])
    assert "A.json" not in results["gaps plot"].stderr


def test_an_overflowed_fit_is_never_reported_as_converged():
    from vae.toy.fit import fit_covariance

    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * 2e19
    with pytest.warns(UserWarning, match="overflows"):
        learner, history = fit_covariance(x)
    assert not history.converged and history.stop_reason == "overflow"
    assert not torch.isfinite(learner.covariance_matrix).all()


def test_the_smaller_items(good):
    with pytest.raises(ValueError, match="XPU is not available"):
        vae.load_model(good, map_location="xpu")
    model = vae.load_model(good)
    q = model.posterior(torch.zeros(0, 784))
    assert q.batch_shape == (0,) and q.sample().shape == (0, model.latent_dim)
