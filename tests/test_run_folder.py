"""A run folder has one writer, lies inside ``--out-dir``, and loses none of its user's files.

Real ``python train.py`` processes on a tiny IDX MNIST, as in
``tests/test_reliability.py``, whose helpers these tests share.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_cli, step_fault
from tests.test_reliability import (
    TIMEOUT, Trainer, assert_one_line_error, quiet, run_many, temporaries, tiny_config, train_args,
)
from vae.run.checkpoint import load_checkpoint
from vae.run.lock import LOCK_NAME, RunFolderBusy, RunLock, holding, lock_run_folder
from vae.training import train


# ---------------------------------------------------------------- one writer per run folder


def test_a_second_run_into_the_same_folder_is_refused_until_the_first_ends(data, tmp_path):
    run_dir = tmp_path / "twin"
    # the first run holds its first last.pt write open: it has the lock, and no last.pt exists yet
    first = Trainer(*train_args(data, tmp_path, "twin", "--seed", "1"), env={"VAE_TEST_SLOW_WRITE": "last.pt=60"})
    first.wait_until(lambda: temporaries(run_dir, "last.pt"), "the first run's last.pt write")
    second = run_cli("train.py", *train_args(data, tmp_path, "twin", "--seed", "2", "--lr", "3e-3"), timeout=TIMEOUT)
    assert_one_line_error(second, 2, str(run_dir), f"PID {first.proc.pid}", "in use")
    assert (run_dir / LOCK_NAME).read_text().strip() == str(first.proc.pid)

    first.proc.kill()  # the operating system drops a dead process's lock
    assert first.finish() == -signal.SIGKILL
    third = run_cli("train.py", *train_args(data, tmp_path, "twin", "--seed", "2"), timeout=TIMEOUT)
    assert third.returncode == 0, third.stderr
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 2
    assert load_checkpoint(run_dir / "last.pt")["config"]["seed"] == 2


def test_resume_of_a_run_in_use_is_refused_but_readers_never_wait(data, tmp_path):
    run_dir = train(tiny_config(data, tmp_path, run_name="busy"), log=quiet)
    before = (run_dir / "last.pt").read_bytes()
    with RunLock(run_dir):  # this test process plays the run that is still training
        results = run_many({
            "resume": ["train.py", "--resume", "--out-dir", str(tmp_path), "--run-name", "busy", "--epochs", "5"],
            "evaluate": ["-m", "vae.evaluate", str(run_dir / "best.pt"), "--k", "2", "--no-progress"],
            "visualize": ["-m", "vae.visualize", str(run_dir / "best.pt"), "--out", str(tmp_path / "pics")],
        })
    assert_one_line_error(results["resume"], 2, str(run_dir), f"PID {os.getpid()}")
    assert (run_dir / "last.pt").read_bytes() == before
    for reader in ("evaluate", "visualize"):
        assert results[reader].returncode == 0, results[reader].stderr
    assert (tmp_path / "pics" / "latent.png").is_file()


def test_the_lock_is_held_until_the_outermost_holding_block_ends(tmp_path):
    def holder_of(folder: Path):
        try:
            RunLock(folder).acquire().release()
        except RunFolderBusy as busy:
            return busy.pid
        return None

    with holding():
        with holding():  # train() inside train.py: the inner block does not release
            lock_run_folder(tmp_path)
            assert lock_run_folder(tmp_path) is lock_run_folder(tmp_path)  # taken once per process
        assert holder_of(tmp_path) == os.getpid()  # a second open of the file is a second writer
    assert holder_of(tmp_path) is None


# ---------------------------------------------------------------- run names (the flags: tests/test_reliability.py)


def test_a_checkpoint_whose_stored_run_name_is_a_path_still_loads(data, tmp_path):
    from vae.run.checkpoint import load_model, save_checkpoint

    state = load_checkpoint(train(tiny_config(data, tmp_path, epochs=1), log=quiet) / "last.pt")
    state["config"]["run_name"] = "../escaped"  # as trained before run names were checked
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").latent_dim == 2


# ---------------------------------------------------------------- cleanup (kill -9, resume: test_reliability.py)


def test_cleanup_removes_only_the_temporaries_of_atomic_writes(tmp_path):
    from vae.run.files import remove_stale_temporaries, write_text_atomic

    write_text_atomic(tmp_path / "config.json", "{}\n")
    ours = [tmp_path / ".fullcov-last.pt.k2j_9x0a.tmp", tmp_path / ".fullcov-metrics.csv.0123abcd.tmp"]
    theirs = [tmp_path / name for name in (".notes.tmp", ".mynotes.tmp", ".last.pt.k2j_9x0a.tmp", ".fullcov-notes.tmp",
                                           ".fullcov-notes.TMP", ".fullcov.lock", "notes.tmp")]
    for path in ours + theirs:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(ours)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["config.json"] + [p.name for p in theirs])


# ---------------------------------------------------------------- resume keeps config.json and last.pt in agreement


def stored_config(run_dir: Path) -> dict:
    """``last.pt``'s config as ``config.json`` writes it."""
    return json.loads(json.dumps(load_checkpoint(run_dir / "last.pt")["config"]))


def test_resume_never_cuts_a_run_short_and_may_name_the_device_it_ran_on(data, tmp_path):
    from vae.config import TrainConfig
    from vae.run.folder import RunFolder

    done = train(tiny_config(data, tmp_path, run_name="done"), log=quiet)  # 3 epochs
    auto = train(tiny_config(data, tmp_path, run_name="auto", device="auto", epochs=1), log=quiet)  # auto: the CPU here
    before = {name: (done / name).read_bytes() for name in ("config.json", "last.pt", "best.pt", "metrics.csv")}
    results = run_many({
        "shorter": ["train.py", "--resume", "--out-dir", str(tmp_path), "--run-name", "done", "--epochs", "2"],
        "device": ["train.py", "--resume", "--out-dir", str(tmp_path), "--run-name", "auto", "--epochs", "2",
                   "--device", "cpu"],
    })
    assert_one_line_error(results["shorter"], 2, str(done / "last.pt"), "already has 3 epochs", "--epochs 3 or more")
    assert {name: (done / name).read_bytes() for name in before} == before
    assert json.loads((done / "config.json").read_text()) == stored_config(done)
    assert results["device"].returncode == 0, results["device"].stderr
    assert stored_config(auto)["device"] == "cpu" and load_checkpoint(auto / "last.pt")["epoch"] == 2
    assert json.loads((auto / "config.json").read_text()) == stored_config(auto)
    with pytest.raises(ValueError, match="already has 3 epochs"):  # the library refuses it too
        train(TrainConfig(**{**stored_config(done), "epochs": 2, "resume": True}), log=quiet)
    with pytest.raises(ValueError, match="already has 3 epochs"):
        RunFolder(tiny_config(data, tmp_path, run_name="done", resume=True, epochs=1)).resume_config(
            {"resume", "epochs"})


def test_resume_refuses_a_stop_in_mid_epoch_cut_short_and_another_device(data, tmp_path):
    from vae.run.checkpoint import save_checkpoint
    from vae.run.signals import TrainingInterrupted

    with step_fault("8=SIGINT"), pytest.raises(TrainingInterrupted):  # batch 2 of epoch 2 (6 steps an epoch)
        train(tiny_config(data, tmp_path, run_name="r"), log=quiet)
    with pytest.raises(ValueError, match="already has 1 epoch and part of epoch 2; .* epochs 2 or more"):
        train(tiny_config(data, tmp_path, run_name="r", resume=True, epochs=1), log=quiet)
    last = tmp_path / "r" / "last.pt"
    state = load_checkpoint(last)
    state["rng"]["cuda"] = state["rng"]["torch"][:16]  # as if saved by a run on a GPU
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, last)
    with pytest.raises(ValueError, match="was trained on cuda; continued on cpu"):
        train(tiny_config(data, tmp_path, run_name="r", resume=True), log=quiet)
