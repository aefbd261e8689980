"""Reliability and security: kills, signals, NaNs, unsafe or broken files, bad input, determinism.

Faults are injected into real ``python train.py`` processes on a tiny IDX
MNIST, some with the test hooks of :mod:`vae.run.faults` (a slowed checkpoint
write to kill into; a NaN, Inf or signal at an exact step). Waits poll for
printed lines and files, never sleep a fixed time, and have generous
timeouts. Timing columns of ``metrics.csv`` (``images_per_s``,
``train_seconds``) are wall-clock by nature and left out of every comparison.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vae
from tests.conftest import REPO, run_cli, step_fault
from vae.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae.cholesky import DIAG_FLOOR
from vae.config import TrainConfig
from vae.model import VAE
from vae.epoch import NonFiniteLossError
from vae.run.signals import TrainingInterrupted
from vae.training import train

TIMING_COLUMNS = {"images_per_s", "train_seconds"}
EPOCHS, STEPS_PER_EPOCH = 4, 6  # 96 fake training images in batches of 16
TIMEOUT = 180  # seconds; generous for a loaded 2-core machine
SLOW_WRITE = "2.0"  # seconds a hooked write waits before os.replace: the window to kill into (>> poll latency)
MODEL_FLAGS = ("--hidden", "16", "--latent-dim", "2", "--batch-size", "16", "--no-plots", "--no-progress",
               "--device", "cpu")


# ---------------------------------------------------------------- helpers


def train_args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--out-dir", str(out), "--run-name", name, *MODEL_FLAGS,
            "--epochs", str(EPOCHS), *extra]


def resume_args(out: Path, name: str) -> list[str]:
    return ["--resume", "--out-dir", str(out), "--run-name", name]


class Trainer:
    """A ``python train.py`` process whose stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, args=pair, daemon=True)
                       for pair in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream, lines: list) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_until(self, condition, what: str, timeout: float = TIMEOUT) -> None:
        """Poll ``condition()`` until true; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self.finish()
                if condition():
                    return
                pytest.fail(f"train.py exited with {self.proc.returncode} before {what}:\n" + "\n".join(self.err))
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)

    def printed_epochs(self) -> list[int]:
        return [int(m.group(1)) for line in list(self.out) if (m := re.match(r"epoch\s+(\d+)\s", line))]

    def printed(self, text: str) -> bool:
        return any(text in line for line in list(self.out))

    def finish(self, timeout: float = TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(timeout)
        return rc


def run_many(commands: dict[str, list[str]], workers: int = 3,
             envs: dict[str, dict] | None = None) -> dict[str, subprocess.CompletedProcess]:
    """Run several CLI commands (argument lists for this interpreter) a few at a time, each with ``envs[name]``."""
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run_cli, *args, env=(envs or {}).get(name), timeout=TIMEOUT)
                   for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one line on stderr mentioning every needle, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def csv_epochs(run_dir: Path) -> list[int]:
    return [int(row["epoch"]) for row in read_metrics(run_dir)]


def temporaries(run_dir: Path, name: str = "") -> list[Path]:
    """The project's own temporaries of atomic writes (of the file ``name``) in ``run_dir``."""
    return sorted(run_dir.glob(f".fullcov-{name}*.tmp"))


USER_FILES = {".notes.tmp": "my notes\n", ".mynotes.tmp": "more notes\n",
              ".last.pt.draft.tmp": "a draft\n"}  # a user's files in a run folder: never deleted


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def assert_matches_reference(run_dir: Path, reference: Path) -> None:
    """The run ended exactly where the uninterrupted reference did."""
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(reference))
    assert_same_weights(run_dir / "last.pt", reference / "last.pt")
    assert_same_weights(run_dir / "best.pt", reference / "best.pt")
    assert not temporaries(run_dir)


def assert_nothing_lost(run_dir: Path, printed: list[int]) -> int:
    """After a kill: every checkpoint loads; no epoch printed as done is missing from ``last.pt``.

    ``metrics.csv`` is written last, so it may lag ``last.pt`` by the epoch
    whose writes were cut short, never more. Returns ``last.pt``'s epoch.
    """
    for path in run_dir.glob("*.pt"):
        load_checkpoint(path)
    epoch = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert epoch >= max(printed, default=0)
    assert csv_epochs(run_dir) in (list(range(1, epoch + 1)), list(range(1, epoch)))
    return epoch


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data_dir=str(data), out_dir=str(out), run_name="tiny", latent_dim=2, hidden=(16,), epochs=3,
                batch_size=16, device="cpu", progress=False, plots=False)
    return TrainConfig(**{**base, **overrides})


def quiet(*_) -> None:
    pass


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted CLI run that the interrupted ones must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli("train.py", *train_args(data, out, "ref"), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return out / "ref"


# ---------------------------------------------------------------- 1. kill -9


def test_kill_9_at_several_moments_loses_no_completed_epoch(data, reference, tmp_path):
    run_dir = tmp_path / "r"

    # (a) in the middle of writing epoch 2's last.pt
    t = Trainer(*train_args(data, tmp_path, "r"), env={"VAE_TEST_SLOW_WRITE": f"last.pt={SLOW_WRITE}"})
    t.wait_until(lambda: 1 in t.printed_epochs() and temporaries(run_dir, "last.pt"), "epoch 2's last.pt write")
    t.proc.kill()
    assert t.finish() == -signal.SIGKILL
    assert assert_nothing_lost(run_dir, t.printed_epochs()) == 1  # epoch 1 intact, epoch 2 not yet saved
    stale = temporaries(run_dir, "last.pt")
    assert stale  # the killed writer's temp file is still there
    for name, text in USER_FILES.items():
        (run_dir / name).write_text(text)

    # (b) after last.pt, while best.pt or metrics.csv is written: the files disagree
    t = Trainer(*resume_args(tmp_path, "r"), env={"VAE_TEST_SLOW_WRITE": f"best.pt={SLOW_WRITE},metrics.csv={SLOW_WRITE}"})
    t.wait_until(lambda: t.printed("resuming"), "the resume")
    assert not any(path.exists() for path in stale)  # stale temporaries are cleared on start
    assert {name: (run_dir / name).read_text() for name in USER_FILES} == USER_FILES  # and nothing else
    t.wait_until(lambda: temporaries(run_dir, "best.pt") or temporaries(run_dir, "metrics.csv"), "epoch 2's writes")
    t.proc.kill()
    assert t.finish() == -signal.SIGKILL
    assert assert_nothing_lost(run_dir, t.printed_epochs()) == 2
    assert csv_epochs(run_dir) == [1]  # metrics.csv lags last.pt here

    # (c) resume repairs metrics.csv and best.pt from last.pt; then kill -9 in mid-epoch 4
    t = Trainer(*resume_args(tmp_path, "r"), env={"VAE_TEST_SLOW_WRITE": f"last.pt={SLOW_WRITE}",
                                                    "VAE_TEST_FAULT_AT_STEP": f"{3 * STEPS_PER_EPOCH + 3}=SIGKILL"})
    t.wait_until(lambda: t.printed("resuming"), "the resume")
    state = load_checkpoint(run_dir / "last.pt")
    assert csv_epochs(run_dir) == [1, 2]  # rebuilt from last.pt, no epoch lost or doubled
    best_epoch = min(state["metrics"], key=lambda row: row["test_neg_elbo"])["epoch"]
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == best_epoch
    assert t.finish() == -signal.SIGKILL
    assert 3 in t.printed_epochs()
    assert assert_nothing_lost(run_dir, t.printed_epochs()) == 3

    # (d) the last resume runs to the end, exactly like the uninterrupted run
    t = Trainer(*resume_args(tmp_path, "r"))
    assert t.finish() == 0, t.err
    assert_matches_reference(run_dir, reference)
    assert {name: (run_dir / name).read_text() for name in USER_FILES} == USER_FILES


# ---------------------------------------------------------------- 2. graceful stop


def resume_as_printed(stderr_lines: list[str]) -> subprocess.CompletedProcess:
    """Run the resume command that train.py printed when it stopped."""
    command = re.search(r"resume with: (.*)$", stderr_lines[-1]).group(1)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"], command
    return run_cli(*argv[1:], timeout=TIMEOUT)


def test_sigterm_in_mid_epoch_saves_and_resumes_exactly(data, reference, tmp_path):
    step = STEPS_PER_EPOCH + 3  # batch 3 of epoch 2; the process signals itself after that step
    t = Trainer(*train_args(data, tmp_path, "r"), env={"VAE_TEST_FAULT_AT_STEP": f"{step}=SIGTERM"})
    assert t.finish() == 143
    assert len(t.err) == 1 and "Traceback" not in "\n".join(t.err)
    assert f"stopped by SIGTERM in epoch 2 at step {step} (batch 3 of {STEPS_PER_EPOCH})" in t.err[0]
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["step"] == step and state["epoch"] == 1 and state["partial"]["batch"] == 3
    result = resume_as_printed(t.err)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "in epoch 2 after batch 3" in result.stdout
    assert_matches_reference(tmp_path / "r", reference)


def test_sigint_during_a_checkpoint_write_finishes_it_and_resumes_exactly(data, reference, tmp_path):
    run_dir = tmp_path / "r"
    t = Trainer(*train_args(data, tmp_path, "r"), env={"VAE_TEST_SLOW_WRITE": f"last.pt={SLOW_WRITE}"})
    t.wait_until(lambda: 1 in t.printed_epochs() and temporaries(run_dir, "last.pt"), "epoch 2's last.pt write")
    t.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert t.finish() == 130
    assert len(t.err) == 1 and "stopped by SIGINT after epoch 2" in t.err[0], t.err
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2 and csv_epochs(run_dir) == [1, 2]
    assert not temporaries(run_dir)
    result = resume_as_printed(t.err)
    assert result.returncode == 0, result.stderr
    assert_matches_reference(run_dir, reference)


@pytest.mark.parametrize("stop_after", [1, STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2])
def test_a_stop_anywhere_resumes_to_the_same_weights_in_process(data, tmp_path, monkeypatch, stop_after):
    straight = train(tiny_config(data, tmp_path / "a"), log=quiet)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with step_fault(f"{stop_after}=SIGINT"):
        with pytest.raises(TrainingInterrupted) as stopped:
            train(tiny_config(data, tmp_path / "b"), log=quiet)
        assert stopped.value.exit_code == 130
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # handlers restored
    assert load_checkpoint(tmp_path / "b" / "tiny" / "last.pt")["step"] == stop_after
    train(tiny_config(data, tmp_path / "b", resume=True), log=quiet, explicit={"resume"})
    assert_same_weights(straight / "last.pt", tmp_path / "b" / "tiny" / "last.pt")
    assert without_timing(read_metrics(straight)) == without_timing(read_metrics(tmp_path / "b" / "tiny"))
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


# ---------------------------------------------------------------- 3. safe loading


class RunsCode:
    """Pickles as a call of ``os.system``: unpickling it would create ``target``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.target))}",))


def malicious_checkpoint(path: Path, target: Path) -> Path:
    """A checkpoint with every expected key whose pickle would run ``touch target``."""
    torch.save({"format": "fullcov-vae/1", "model": {}, "config": {}, "epoch": 1, "metrics": RunsCode(target)}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(reference, tmp_path):
    canary = tmp_path / "canary"
    torch.load(malicious_checkpoint(tmp_path / "sanity.pt", canary), weights_only=False)
    assert canary.exists()  # the payload is real: an unsafe load does run it

    target = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.pt", target)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    shutil.copy(evil, run_dir / "last.pt")
    with pytest.raises(CheckpointError, match="refused: its pickle would call posix.system"):
        vae.load_model(evil)
    results = run_many({"visualize": ["-m", "vae.visualize", str(evil), "--out", str(tmp_path / "pics")],
                        "resume": ["train.py", *resume_args(tmp_path / "runs", "r")]})
    for result in results.values():
        assert_one_line_error(result, 1, "refused", "nothing in it was run")
    assert not target.exists()


def broken_checkpoints(reference: Path, folder: Path) -> dict[str, Path]:
    """Files that are not usable checkpoints, each named by what is wrong with it."""
    good = (reference / "last.pt").read_bytes()
    files = {"truncated": good[: len(good) // 2], "empty": b"", "text": b"epoch,loss\n1,2.5\n"}
    paths = {}
    for kind, content in files.items():
        paths[kind] = folder / f"{kind}.pt"
        paths[kind].write_bytes(content)
    paths["foreign"] = folder / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, paths["foreign"])
    state = load_checkpoint(reference / "last.pt")
    state["config"]["latent_dim"] = 3  # the weights are those of a 2-D latent space
    paths["architecture"] = folder / "architecture.pt"
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, paths["architecture"])
    return paths


BROKEN_MESSAGES = {"truncated": "truncated or corrupted", "empty": "empty file", "text": "not a checkpoint",
                   "foreign": "not a fullcov-vae checkpoint", "architecture": "do not fit the stored architecture"}


def test_broken_checkpoints_get_one_clear_line_and_exit_1(reference, tmp_path):
    paths = broken_checkpoints(reference, tmp_path)
    commands = {}
    for kind, path in paths.items():
        with pytest.raises(CheckpointError, match=BROKEN_MESSAGES[kind]):
            vae.load_model(path)
        run_dir = tmp_path / "runs" / kind
        run_dir.mkdir(parents=True)
        shutil.copy(path, run_dir / "last.pt")
        commands[f"{kind} visualize"] = ["-m", "vae.visualize", str(path), "--out", str(tmp_path / "pics")]
        commands[f"{kind} resume"] = ["train.py", *resume_args(tmp_path / "runs", kind)]
    for name, result in run_many(commands).items():
        assert_one_line_error(result, 1, BROKEN_MESSAGES[name.split()[0]])


# ---------------------------------------------------------------- 4. numerical faults


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(reference, run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.csv")}
    bad_step = EPOCHS * STEPS_PER_EPOCH + 3  # in epoch 5 of the extended run
    t = Trainer(*resume_args(tmp_path, "r"), "--epochs", str(EPOCHS + 2),
                env={"VAE_TEST_FAULT_AT_STEP": f"{bad_step}=nan"})
    assert t.finish() == 1
    assert len(t.err) == 1 and f"non-finite loss at epoch {EPOCHS + 1}, step {bad_step}" in t.err[0], t.err
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert not temporaries(run_dir)


def test_inf_and_real_divergence_stop_before_any_save(data, tmp_path):
    with step_fault("4=inf"), pytest.raises(NonFiniteLossError, match="epoch 1, step 4"):
        train(tiny_config(data, tmp_path, run_name="inf"), log=quiet)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        train(tiny_config(data, tmp_path, run_name="lr", lr=1e10), log=quiet)  # Adam steps of ~1e10
    assert not list(tmp_path.glob("*/*.pt"))


def test_grad_clip_changes_training_and_a_huge_one_changes_nothing(data, tmp_path):
    weights = {}
    for name, clip in (("none", None), ("huge", 1e9), ("tight", 1e-2)):
        run_dir = train(tiny_config(data, tmp_path, run_name=name, epochs=1, grad_clip=clip), log=quiet)
        weights[name] = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.equal(weights["none"][k], weights["huge"][k]) for k in weights["none"])
    assert not all(torch.equal(weights["none"][k], weights["tight"][k]) for k in weights["none"])


@settings(max_examples=60, deadline=None)
@given(
    weight_scale=st.one_of(st.just(0.0), st.floats(1e-30, 1e12)),
    input_scale=st.floats(0.0, 1e3),
    seed=st.integers(0, 2**31 - 1),
    posterior=st.sampled_from(["full", "diagonal"]),
    diag_transform=st.sampled_from(["softplus", "exp"]),
)
def test_the_encoder_never_gives_a_singular_factor(weight_scale, input_scale, seed, posterior, diag_transform):
    """Extreme encoder weights and inputs: raw factor entries up to ~1e28, L still finite and invertible."""
    g = torch.Generator().manual_seed(seed)
    model = VAE(latent_dim=3, hidden=(8,), posterior=posterior, diag_transform=diag_transform)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * weight_scale)
    x = torch.rand(5, 784, generator=g) * input_scale
    loc, scale_tril = model.encode(x)
    assert torch.isfinite(loc).all() and torch.isfinite(scale_tril).all()
    diagonal = torch.diagonal(scale_tril, dim1=-2, dim2=-1)
    assert (diagonal >= DIAG_FLOOR * 0.99).all()  # non-singular: a positive diagonal
    assert torch.equal(scale_tril, scale_tril.tril())
    assert torch.isfinite(diagonal.log().sum(-1)).all()  # log|L|: finite


# ---------------------------------------------------------------- 5. bad input

FLAG_ERRORS = {
    "unknown dataset": (["--dataset", "svhn"], "--dataset svhn: no such file or folder"),
    "unknown device": (["--device", "tpu"], "--device"),
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "negative epochs": (["--epochs", "-3"], "--epochs"),
    "epochs not a number": (["--epochs", "two"], "--epochs"),
    "zero batch size": (["--batch-size", "0"], "--batch-size"),
    "zero lr": (["--lr", "0"], "--lr"),
    "negative lr": (["--lr", "-1"], "--lr"),
    "nan lr": (["--lr", "nan"], "--lr"),
    "infinite lr": (["--lr", "inf"], "--lr"),
    "zero latent dim": (["--latent-dim", "0"], "--latent-dim"),
    "zero k": (["--k", "0"], "--k"),
    "negative k": (["--k", "-2"], "--k"),
    "zero grad clip": (["--grad-clip", "0"], "--grad-clip"),
    "negative diagonal warm-up": (["--diag-warmup", "-1"], "--diag-warmup"),
    "unknown flag": (["--bogus"], "--bogus"),
    "run name is a path": (["--run-name", "../escape"], "--run-name", "'../escape'"),
    "run name is the root": (["--run-name", "/"], "--run-name", "not a path"),
    "run name is an absolute path": (["--run-name", "{file}"], "--run-name", "not a path"),
    "run name holds a separator": (["--run-name", "a/b"], "--run-name"),
    "run name is dot-dot": (["--run-name", ".."], "--run-name"),
    "run name is a dot": (["--run-name", "."], "--run-name"),
    "empty run name": (["--run-name", ""], "--run-name"),
    "resume of a run name that is a path": (["--resume", "--run-name", "../escape"], "--run-name"),
    "out-dir is a file": (["--out-dir", "{file}"], "--out-dir", "{file} is a file, not a folder"),
    "out-dir under a file": (["--out-dir", "{file}/sub"], "--out-dir {file}/sub", "{file} is a file, not a folder"),
}


@pytest.mark.parametrize("case", FLAG_ERRORS)
def test_a_bad_flag_or_output_folder_is_one_line_and_exit_2(data, tmp_path, case):
    """Answered before torch is imported; nothing is created."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder\n")
    flags, *needles = [[arg.format(file=in_the_way) for arg in item] if isinstance(item, list)
                       else item.format(file=in_the_way) for item in FLAG_ERRORS[case]]
    out = tmp_path / "out"
    result = run_cli("train.py", "--data-dir", str(data), "--out-dir", str(out), "--no-plots", *flags)
    assert_one_line_error(result, 2, *needles)
    assert not out.exists() and in_the_way.read_text() == "not a folder\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]  # nothing escaped --out-dir either


def corrupt(data: Path, folder: Path, name: str, edit) -> Path:
    """A copy of the fake MNIST whose file ``name`` went through ``edit(bytes) -> bytes``."""
    root = folder / "data"
    shutil.copytree(data, root)
    path = root / "MNIST" / "raw" / name
    path.write_bytes(edit(path.read_bytes()))
    return root


@pytest.fixture(scope="module")
def bad_environment_results(data, tmp_path_factory) -> dict:
    """The bad inputs that need torch to be found, run through the CLI a few at a time.

    Returns ``{case: (result, out_dir)}``.
    """
    base = tmp_path_factory.mktemp("bad")
    corrupted = {
        "bad magic number": ("train-images-idx3-ubyte", lambda b: b"\x12\x34\x56\x78" + b[4:]),
        "truncated images": ("train-images-idx3-ubyte", lambda b: b[: len(b) // 2]),
        "truncated header": ("t10k-labels-idx1-ubyte", lambda b: b[:3]),
        "empty labels": ("train-labels-idx1-ubyte", lambda b: b""),
    }
    runs = {"cuda without CUDA": (data, base / "out-cuda", ["--device", "cuda"])}
    for case, (name, edit) in corrupted.items():
        folder = base / case.replace(" ", "-")
        runs[case] = (corrupt(data, folder, name, edit), folder / "out", [])
    partial = corrupt(data, base / "partial", "t10k-labels-idx1-ubyte", lambda b: b)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (partial / "MNIST" / "raw" / name).unlink()
    runs["missing test files"] = (partial, base / "partial" / "out", [])
    results = run_many({case: ["train.py", *train_args(root, out, "r", *extra)]
                        for case, (root, out, extra) in runs.items()})
    return {case: (results[case], runs[case][1]) for case in runs}


ENVIRONMENT_ERRORS = {
    "cuda without CUDA": ("--device cuda: CUDA is not available",),
    "bad magic number": ("train-images-idx3-ubyte", "bad magic number 0x12345678"),
    "truncated images": ("train-images-idx3-ubyte", "truncated"),
    "truncated header": ("t10k-labels-idx1-ubyte", "too short for an IDX header"),
    "empty labels": ("train-labels-idx1-ubyte", "too short"),
    "missing test files": ("missing from", "MNIST/raw: t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte;"),
}


@pytest.mark.parametrize("case", ENVIRONMENT_ERRORS)
def test_a_missing_device_or_a_corrupted_dataset_is_one_line_and_exit_2(bad_environment_results, case):
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result, out = bad_environment_results[case]
    assert_one_line_error(result, 2, *ENVIRONMENT_ERRORS[case])
    assert not out.exists()  # refused before the run folder was created


# ---------------------------------------------------------------- 6. determinism


def test_same_seed_twice_gives_the_same_metrics_and_weights(data, reference, tmp_path):
    out = tmp_path / "missing" / "nested"  # a missing --out-dir is simply created
    t = Trainer(*train_args(data, out, "ref"))
    assert t.finish() == 0, t.err
    rows, ref_rows = read_metrics(out / "ref"), read_metrics(reference)
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    # every column but the wall-clock ones (images_per_s, train_seconds) is identical
    assert without_timing(rows) == without_timing(ref_rows)
    assert_same_weights(out / "ref" / "last.pt", reference / "last.pt")
