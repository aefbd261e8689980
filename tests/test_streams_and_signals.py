"""Real processes: output streams that fail, inherited signal dispositions, signals at awkward moments.

Each test runs ``train.py`` (or ``vae.launch``) on a tiny fake MNIST, with real pipes, a real
``/dev/full``, a real ignored SIGINT and real signals, and checks that the run itself never pays
for what happened to its terminal.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_reliability import MODEL_FLAGS, Trainer, csv_epochs, temporaries

TIMEOUT = 180
EPOCHS = 3


def args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--out-dir", str(out), "--run-name", name, *MODEL_FLAGS,
            "--epochs", str(EPOCHS), *extra]


def test_a_closed_pipe_does_not_stop_training(data, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-u", "train.py", *args(data, tmp_path, "r")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(3):  # as `| head -3`: read three lines, then close the pipe
        proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Broken pipe" not in err, err.decode()
    assert csv_epochs(tmp_path / "r") == list(range(1, EPOCHS + 1))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_stdout_does_not_stop_training(data, tmp_path):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "train.py", *args(data, tmp_path, "r")], cwd=REPO, stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
                                env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert csv_epochs(tmp_path / "r") == list(range(1, EPOCHS + 1))


def test_an_ascii_terminal_and_a_non_ascii_run_name(data, tmp_path):
    result = run_cli("train.py", *args(data, tmp_path, "run-é"), env={"PYTHONIOENCODING": "ascii"}, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "run-\\xe9" in result.stdout  # escaped on the way out, not an error
    assert csv_epochs(tmp_path / "run-é") == list(range(1, EPOCHS + 1))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `train.py &` from a script


class StartedIgnoringSigint(Trainer):
    """A :class:`Trainer` whose process starts with SIGINT ignored, as a background job of a script."""

    def __init__(self, *argv: str, env: dict):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **env}
        self.proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO, env=full_env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ignore_sigint)
        self.out, self.err = [], []
        self._pumps = [threading.Thread(target=self._pump, args=pair, daemon=True)
                       for pair in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for pump in self._pumps:
            pump.start()


def test_an_ignored_sigint_stays_ignored_and_sigterm_still_saves(data, tmp_path):
    run_dir = tmp_path / "r"
    t = StartedIgnoringSigint(*args(data, tmp_path, "r"), env={"VAE_TEST_SLOW_WRITE": "last.pt=1.0"})
    t.wait_until(lambda: temporaries(run_dir, "last.pt"), "epoch 1's last.pt write")
    t.proc.send_signal(signal.SIGINT)  # a Ctrl-C aimed at the script's foreground command
    t.wait_until(lambda: 2 in t.printed_epochs(), "epoch 2, SIGINT ignored")
    t.proc.send_signal(signal.SIGTERM)
    assert t.finish() == 128 + signal.SIGTERM, t.err
    assert any("stopped by SIGTERM" in line and "resume with" in line for line in t.err), t.err


def test_ctrl_c_while_the_pictures_are_drawn_says_the_run_is_saved(data, tmp_path):
    run_dir = tmp_path / "r"
    t = Trainer(*args(data, tmp_path, "r", "--plots"), env={"VAE_TEST_SLOW_WRITE": "reconstructions.png=3.0"})
    t.wait_until(lambda: temporaries(run_dir, "reconstructions.png"), "the first picture's write")
    t.proc.send_signal(signal.SIGINT)
    assert t.finish() == 130
    assert len(t.err) == 1 and "Traceback" not in "\n".join(t.err), t.err
    assert "saved" in t.err[0] and f"python -m vae.visualize {run_dir / 'best.pt'}" in t.err[0], t.err
    assert csv_epochs(run_dir) == list(range(1, EPOCHS + 1)) and not temporaries(run_dir)


LAUNCH = ("-m", "vae.launch", "--standalone", "--nproc-per-node", "2", "train.py")
DIST_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigterm_to_one_worker_ends_the_launcher_with_143_and_one_line(data, tmp_path):
    steps = 96 // 16  # a step of epoch 2
    result = run_cli(*LAUNCH, *args(data, tmp_path, "r"), env={**DIST_ENV, "VAE_TEST_FAULT_AT_STEP": f"{steps + 2}"
                                                              "=SIGTERM@1"}, timeout=TIMEOUT)
    assert result.returncode == 143, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "resume with: python -m vae.launch" in lines[0], \
        result.stderr
    assert "failed (exitcode" not in result.stderr and "Traceback" not in result.stderr


def test_a_failed_join_is_one_line_per_process_without_the_c10d_log(data, tmp_path):
    result = run_cli(*LAUNCH, *args(data, tmp_path, "r", "--dist-timeout", "0.001"), env=DIST_ENV, timeout=TIMEOUT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and 1 <= len(lines) <= 2, result.stderr
    assert all("could not join" in line for line in lines), result.stderr  # no c10d or gloo log before them
