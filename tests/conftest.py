"""Shared fixtures: the real data root, and a tiny MNIST written in torchvision's raw IDX layout."""
from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One thread count for the whole suite (runs compared bit for bit must not differ in it), and no
# 0.1 s sample of the machine per training run: `--threads 0` keeps a count the environment sets.
# tests/test_speed.py clears it where it tests the automatic choice.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

# The real data root, read once: every test then runs without VAE_DATA_DIR (see no_data_dir_env), so
# that a run given --data-dir resumes from it, whatever folder the environment of the suite names.
REAL_DATA_DIR = Path(os.environ.get("VAE_DATA_DIR") or REPO.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt in each test, and reaches the processes it starts, as in a terminal.

    However the suite was started: ``nohup``, a background job and some CI runners start it with SIGINT
    ignored, which training (rightly) leaves ignored. The test that needs it ignored sets that itself.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch) -> None:
    """Each test (and each process it starts) without ``VAE_DATA_DIR``; a test of it sets it itself."""
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)


CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))
"""The marks of a test that needs a GPU: skipped here, run by ``benchmarks/gpu.sh`` (``pytest -m cuda``)."""


def needs_cuda(test):
    """Mark ``test`` with :data:`CUDA_MARKS`."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (benchmarks/gpu.sh runs them: pytest -m cuda)")


def real_data_dir() -> Path:
    """``$VAE_DATA_DIR`` as the suite started, else ``../shared/data`` beside the repository."""
    return REAL_DATA_DIR


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (magic 0x0000080N, big-endian sizes)."""
    header = struct.pack(">I", 0x0800 | array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def write_fake_mnist(root: Path, n_train: int = 96, n_test: int = 40, seed: int = 0) -> Path:
    """A tiny random MNIST under ``root/MNIST/raw``; returns ``root``."""
    g = torch.Generator().manual_seed(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=g))
    return root


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    return write_fake_mnist(tmp_path / "data")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny fake MNIST shared by a module's tests (a module may define its own, larger one)."""
    return write_fake_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def real_data() -> Path:
    root = real_data_dir()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {root} (set VAE_DATA_DIR)")
    return root


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 600):
    """Run a command of this repository with the current interpreter; return the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def step_fault(spec: str):
    """``VAE_TEST_FAULT_AT_STEP=spec`` for training run in this process, installed as a command's entry installs it."""
    from vae.run.faults import FAULT_AT_STEP_ENV, installed

    os.environ[FAULT_AT_STEP_ENV] = spec
    try:
        with installed():
            yield
    finally:
        del os.environ[FAULT_AT_STEP_ENV]
