"""A full disk is answered in one line with exit code 1, and loses nothing, in every command that writes.

``train.py``, ``python -m vae.evaluate``, ``python -m vae.visualize`` and
``python -m vae.toy`` run for real: first with the ``ENOSPC`` that the test
hook ``VAE_TEST_DISK_FULL`` injects into the atomic writer (everywhere), then
on a real 600 KB tmpfs (only as root, where ``mount`` works).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_reliability import assert_one_line_error, quiet, run_many, tiny_config, train_args
from vae.run.checkpoint import load_checkpoint
from vae.training import train

PNG = b"\x89PNG\r\n\x1a\n"
OLD = "an older file that must survive\n"


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A finished two-epoch run to resume, evaluate and draw."""
    return train(tiny_config(data, tmp_path_factory.mktemp("runs"), epochs=2), log=quiet)


def no_space(name: str) -> dict:
    return {"VAE_TEST_DISK_FULL": name}


def files(folder: Path, names=("last.pt", "best.pt", "metrics.csv")) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def assert_failed_in_one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 1 and one error line naming every needle (the toy's progress bar may precede it)."""
    if "vae.toy" in result.args:
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if ": error:" in line]
        assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
        assert all(needle in errors[0] for needle in needles), (needles, errors[0])
        return errors[0]
    return assert_one_line_error(result, 1, *needles)


def assert_no_temporaries(*folders: Path) -> None:
    for folder in folders:
        assert not list(folder.glob(".fullcov-*.tmp")), folder


def test_an_injected_full_disk_is_one_line_and_loses_nothing_everywhere(data, run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run.parent, resumed)
    before = files(resumed / run.name)
    fresh = tmp_path / "fresh"
    evaluated, pictures, toy = tmp_path / "eval.json", tmp_path / "pics", tmp_path / "toy.png"
    pictures.mkdir()
    for path in (evaluated, pictures / "latent.png", toy):
        path.write_text(OLD)
    commands = {
        "resume": (["train.py", "--resume", "--out-dir", str(resumed), "--run-name", run.name, "--epochs", "3"],
                   "last.pt"),
        "pictures": (["train.py", *train_args(data, tmp_path, "fresh", "--epochs", "1", "--plots")], "samples.png"),
        "evaluate": (["-m", "vae.evaluate", str(run / "best.pt"), "--k", "2", "--no-progress", "--out", str(evaluated)],
                     "*.json"),
        "visualize": (["-m", "vae.visualize", str(run / "best.pt"), "--out", str(pictures)], "latent.png"),
        "toy": (["-m", "vae.toy", "mle", "--epochs", "5", "--out", str(toy)], "*.png"),
    }
    results = {}
    for name, result in run_many({name: args for name, (args, _) in commands.items()}, envs={
            name: no_space(pattern) for name, (_, pattern) in commands.items()}).items():
        results[name] = assert_failed_in_one_line(result, "no space left on device")

    assert str(resumed / run.name / "last.pt") in results["resume"]
    assert files(resumed / run.name) == before  # epoch 3 was not saved; nothing of epochs 1-2 was lost
    config = json.loads((resumed / run.name / "config.json").read_text())  # still what last.pt says
    assert config == json.loads(json.dumps(load_checkpoint(resumed / run.name / "last.pt")["config"]))
    assert "training finished, but the pictures" in results["pictures"]
    assert str(fresh / "samples.png") in results["pictures"]
    assert load_checkpoint(fresh / "last.pt")["epoch"] == 1 and (fresh / "reconstructions.png").read_bytes()[:8] == PNG
    assert not (fresh / "samples.png").exists()
    assert str(evaluated) in results["evaluate"] and evaluated.read_text() == OLD
    assert str(pictures / "latent.png") in results["visualize"] and (pictures / "latent.png").read_text() == OLD
    assert (pictures / "samples.png").read_bytes()[:8] == PNG  # drawn before the failure, and whole
    assert str(toy) in results["toy"] and toy.read_text() == OLD
    assert_no_temporaries(resumed / run.name, fresh, tmp_path, pictures)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB tmpfs mounted for the test, and unmounted after it."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> None:
    """Write a filler file until the disk says it is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError) as full:
            while True:
                f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def test_a_real_full_disk_is_one_line_and_leaves_no_partial_file(data, run, tmp_path, small_disk):
    # a checkpoint of a 784-256-2 model with its Adam state is ~5 MB: the first last.pt does not fit
    trained = run_many({"train": ["train.py", *train_args(data, small_disk, "r", "--hidden", "256", "--epochs", "1")]})
    line = assert_failed_in_one_line(trained["train"], "no space left on device", str(small_disk / "r" / "last.pt"))
    assert "intact" in line and not (small_disk / "r" / "last.pt").exists()
    assert_no_temporaries(small_disk / "r")

    pictures = small_disk / "pics"
    pictures.mkdir()
    fill(small_disk)
    results = run_many({
        "evaluate": ["-m", "vae.evaluate", str(run / "best.pt"), "--k", "2", "--no-progress",
                     "--out", str(small_disk / "eval.json")],
        "visualize": ["-m", "vae.visualize", str(run / "best.pt"), "--out", str(pictures)],
        "toy": ["-m", "vae.toy", "mle", "--epochs", "5", "--out", str(small_disk / "toy.png")],
    })
    for name, result in results.items():
        assert_failed_in_one_line(result, "no space left on device", str(small_disk))
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "pics", "r"]  # no partial JSON or PNG
    assert list(pictures.iterdir()) == []
    assert_no_temporaries(small_disk / "r", small_disk, pictures)
