"""Training under torchrun: 2 gloo processes on the CPU, every reliability guarantee kept.

Real ``python -m torch.distributed.run --standalone --nproc-per-node 2 train.py``
runs on a fake MNIST of 2,048 images (32 steps of 64 an epoch): a straight
run, an epoch-boundary resume, a SIGTERM to torchrun and its resume (both
bit-identical to the straight run), a NaN or a crash on one rank, a bad
batch size, a resume by another number of processes, a rank that cannot
reach the others. A 2-process run and a 1-process run of the same global
batch draw different noise (each rank has its own binarization and
posterior-noise streams, and one process draws them all from one stream in
another order), so their metrics cannot agree bit-wise; what does hold is
tested: the ranks' shards partition every batch, DDP's averaged gradient is
the global batch's gradient for the same draws, and both runs reach
statistically equivalent losses. torchrun itself prints a Python traceback
(its SignalException or ChildFailedError) whenever a worker exits non-zero
or it is signalled; the tests check that none comes from this project.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, write_fake_mnist
from tests.test_reliability import assert_matches_reference, read_metrics, temporaries
from vae.run.checkpoint import load_checkpoint
from vae.run.distributed import Ranks, from_env, rank_seed

NPROC = 2
STEPS = 32  # 2,048 images in batches of 64
TIMEOUT = 180
FLAGS = ("--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--no-plots", "--no-progress", "--device", "cpu")
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(NPROC))
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 train.py ARGS``, through this interpreter."""
    return run_cli(*TORCHRUN, "train.py", *args, env={**ENV, **(env or {})}, timeout=TIMEOUT)


def train_args(data: Path, out: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--out-dir", str(out), "--run-name", name, *FLAGS, "--epochs", str(epochs),
            *extra]


def ours(result: subprocess.CompletedProcess) -> list[str]:
    """The lines this project's processes wrote to stderr (torchrun's own log lines left out)."""
    return [line for line in result.stderr.splitlines() if line.startswith("train.py:")]


def assert_no_traceback_of_ours(result: subprocess.CompletedProcess) -> None:
    """No frame of this project in any traceback (torchrun's own reports are its business)."""
    output = result.stdout + result.stderr
    assert not re.search(r'File "[^"]*(/vae/|train\.py)', output), output


def assert_one_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A failed job whose processes printed exactly one line between them, naming every needle."""
    assert result.returncode != 0, result.stderr
    lines = ours(result)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert_no_traceback_of_ours(result)
    return lines[0]


def epochs_printed(result: subprocess.CompletedProcess) -> list[int]:
    return [int(m.group(1)) for line in result.stdout.splitlines() if (m := re.match(r"epoch\s+(\d+)\s", line))]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("data"), n_train=2048, n_test=200)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted 2-process run of 3 epochs: what every interrupted one must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    result = torchrun(*train_args(data, out, "ref", 3))
    assert result.returncode == 0, result.stderr
    assert epochs_printed(result) == [1, 2, 3]  # rank 0 alone prints
    return out / "ref"


@pytest.fixture(scope="module")
def two_epochs(data, tmp_path_factory) -> Path:
    """A 2-process run of 2 epochs (extended to 3 by a test)."""
    out = tmp_path_factory.mktemp("two")
    result = torchrun(*train_args(data, out, "r", 2))
    assert result.returncode == 0, result.stderr
    return out / "r"


# ---------------------------------------------------------------- runs, resumes, stops


def test_a_run_resumed_at_an_epoch_boundary_ends_like_the_straight_run(two_epochs, reference):
    run_dir = two_epochs
    state = load_checkpoint(run_dir / "last.pt")
    assert state["world_size"] == NPROC and len(state["rank_rng"]) == NPROC
    first, second = state["rank_rng"]
    assert torch.equal(first["data"], second["data"])  # one permutation for all ranks
    assert not torch.equal(first["noise"], second["noise"]) and not torch.equal(first["torch"], second["torch"])
    assert sorted(path.name for path in run_dir.iterdir()) == [".fullcov.lock", "best.pt", "config.json", "last.pt",
                                                                "metrics.csv"]
    result = torchrun("--resume", "--out-dir", str(run_dir.parent), "--run-name", "r", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert epochs_printed(result) == [3] and "resuming" in result.stdout and "after epoch 2" in result.stdout
    assert_matches_reference(run_dir, reference)


def test_a_compiled_run_trains_and_resumes_like_the_eager_one(data, reference, tmp_path):
    # DDP under torch.compile: Dynamo splits the forward at DDP's gradient buckets (its DDPOptimizer); the
    # draws are the eager step's (inductor's eager RNG), so the run follows the eager one to float rounding
    first = torchrun(*train_args(data, tmp_path, "c", 1, "--compile"))
    assert first.returncode == 0, first.stderr
    assert_no_traceback_of_ours(first)
    resumed = torchrun("--resume", "--out-dir", str(tmp_path), "--run-name", "c", "--epochs", "2", "--compile")
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_printed(resumed) == [2]
    ours_rows, eager_rows = read_metrics(tmp_path / "c"), read_metrics(reference)[:2]
    assert [row["epoch"] for row in ours_rows] == ["1", "2"]
    for row, eager in zip(ours_rows, eager_rows):
        for name in ("train_loss", "test_neg_elbo", "test_kl"):
            assert float(row[name]) == pytest.approx(float(eager[name]), rel=1e-3), name
    state = load_checkpoint(tmp_path / "c" / "last.pt")
    assert state["world_size"] == NPROC and state["config"]["compile"]


def test_sigterm_to_torchrun_stops_every_rank_after_one_step_and_resumes_exactly(data, reference, tmp_path):
    step = STEPS + 8  # rank 0 signals torchrun after this step; torchrun passes SIGTERM to both ranks
    result = torchrun(*train_args(data, tmp_path, "r", 3), env={"VAE_TEST_FAULT_AT_STEP": f"{step}=SIGTERM@launcher"})
    line = assert_one_error(result, f"stopped by SIGTERM in epoch 2 at step {step + 1} (batch 9 of {STEPS})",
                            "resume with: torchrun --standalone --nproc-per-node 2 train.py --resume")
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["step"] == step + 1 and state["partial"]["batch"] == 9 and len(state["rank_rng"]) == NPROC
    assert not temporaries(tmp_path / "r")
    argv = shlex.split(re.search(r"resume with: (.*)$", line).group(1))
    assert argv[:4] == ["torchrun", "--standalone", "--nproc-per-node", "2"]
    resumed = run_cli(*TORCHRUN, *argv[4:], env=ENV, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert "in epoch 2 after batch 9" in resumed.stdout
    assert_matches_reference(tmp_path / "r", reference)


@pytest.mark.parametrize("fault, needle", [("nan@1", "non-finite loss at epoch 2, step 40"),
                                           ("SIGKILL@1", "rank 0: lost contact with the other processes")])
def test_a_nan_or_a_crash_on_one_rank_ends_the_job_and_keeps_the_last_good_checkpoint(data, tmp_path, fault, needle):
    result = torchrun(*train_args(data, tmp_path, "r", 3), env={"VAE_TEST_FAULT_AT_STEP": f"{STEPS + 8}={fault}"})
    assert_one_error(result, needle)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["epoch"] == 1 and state["partial"] is None  # epoch 1, whole: nothing of epoch 2 was saved
    assert [row["epoch"] for row in read_metrics(tmp_path / "r")] == ["1"] and not temporaries(tmp_path / "r")


def test_a_batch_the_processes_cannot_share_is_one_line_from_rank_0(data, tmp_path):
    result = torchrun(*train_args(data, tmp_path, "r", 1, "--batch-size", "63"))
    assert_one_error(result, "--batch-size 63 is the global batch, shared by the 2 processes; pass a multiple of 2")
    assert not (tmp_path / "r").exists()


def test_a_resume_by_another_number_of_processes_is_refused(two_epochs, tmp_path):
    result = run_cli("train.py", "--resume", "--out-dir", str(two_epochs.parent), "--run-name", "r", env=ENV)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "was trained by 2 processes; continued by 1 process" in lines[0]


def test_a_rank_that_cannot_reach_the_others_fails_in_one_line_within_the_timeout(data, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # rank 1 never comes
    start = time.monotonic()
    result = run_cli("train.py", *train_args(data, tmp_path, "r", 1, "--dist-timeout", "2"), env=env)
    assert time.monotonic() - start < 60
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "rank 0: could not join the other 1 process(es)" in lines[0] and "--dist-timeout 2 s" in lines[0]
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- what 2 processes share with 1


def test_one_process_with_the_same_global_batch_reaches_equivalent_losses(data, two_epochs, tmp_path):
    result = run_cli("train.py", *train_args(data, tmp_path, "one", 2), env=ENV)
    assert result.returncode == 0, result.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(two_epochs)[:2]  # a test may have extended it
    assert [row["step"] for row in one] == [row["step"] for row in two] == [str(STEPS), str(2 * STEPS)]
    for a, b in zip(one, two):
        for column in ("train_loss", "train_neg_elbo", "test_neg_elbo"):
            assert abs(float(a[column]) - float(b[column])) < 1.0, (column, a[column], b[column])  # ~545 nats
    state = load_checkpoint(tmp_path / "one" / "last.pt")  # the one-process checkpoint is as it always was
    assert state["world_size"] == 1 and "rank_rng" not in state and set(state["rng"]) == {"torch", "data"}


def test_the_shards_of_every_batch_partition_the_epochs_permutation():
    order = torch.randperm(203, generator=torch.Generator().manual_seed(0))
    for world in (1, 2, 3, 4):
        batch_size = 8 * world
        for rows in order.split(batch_size):  # the last batch is short: 203 = 6 * 32 + 11 at world 4
            shards = [Ranks(rank=rank, world_size=world).shard(rows) for rank in range(world)]
            assert torch.equal(torch.cat(shards), rows)
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert rank_seed(0, 0, "binarize") != rank_seed(0, 1, "binarize") != rank_seed(0, 1, "posterior")
    assert rank_seed(5, 1, "binarize") == rank_seed(5, 1, "binarize") < 2**63


def test_one_process_without_torchrun_is_the_world_of_one(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    ranks = from_env()
    assert ranks == Ranks() and ranks.is_main and not ranks.distributed and ranks.launcher() is None
    rows, per_row = torch.arange(10), torch.randn(10, requires_grad=True)
    assert ranks.shard(rows) is rows
    assert torch.equal(ranks.mean(per_row, 10), per_row.mean())  # the very same op: bit-identical training
    assert ranks.all_reduce_sum(rows) is rows and ranks.gather("x") == ["x"] and ranks.broadcast("y") == "y"
    with pytest.raises(RuntimeError, match="gloo"):  # no rewording of errors on one process
        with ranks.communicating():
            raise RuntimeError("gloo")
    assert not torch.distributed.is_initialized()


def _gradient_worker(rank: int, port: int, results: Path) -> None:
    """One rank: DDP's averaged gradient of the sharded loss against the global-batch gradient, same draws."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vae.model import VAE
    from vae.model.objectives import training_loss
    from vae.model.posteriors import GaussianPosterior
    from vae.run.distributed import process_group

    noise = {}  # the draws of the rows in the batch now, shared by both computations

    def fixed_draws(self, k=1, generator=None):
        eps = noise["eps"].to(self.loc.dtype)  # (N, K, E)
        return eps, self.transform(eps)

    GaussianPosterior.rsample = fixed_draws
    batch = 7  # uneven shards: 4 and 3 rows
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(batch, 784, generator=g) < 0.5).float()
    eps = torch.randn(batch, 2, 3, generator=g)
    torch.manual_seed(0)
    model, single = VAE(latent_dim=3, hidden=(16,)), VAE(latent_dim=3, hidden=(16,))
    single.load_state_dict(model.state_dict())
    with process_group(Ranks(rank, rank, 2, 2), timeout=60) as ranks:
        rows = ranks.shard(torch.arange(batch))
        noise["eps"] = eps[rows]
        replicated = ranks.wrap(model)  # held: DDP averages the gradients only while it lives
        surrogate, bound = training_loss(replicated, x[rows], "iwae", 2, "dreg")
        ranks.mean(surrogate, batch).backward()
        sums = ranks.all_reduce_sum(torch.stack([bound.loss.sum(), bound.kl.sum()]).double())
        noise["eps"] = eps
        surrogate, bound = training_loss(single, x, "iwae", 2, "dreg")
        surrogate.mean().backward()
        for (name, p), q in zip(model.named_parameters(), single.parameters()):
            # float32 sums in another order: within 1e-4 of the gradient's scale (unaveraged: ~0.5 of it)
            assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name
        torch.testing.assert_close(sums, torch.stack([bound.loss.sum(), bound.kl.sum()]).double())
        (results / f"rank{rank}").write_text("ok")
        del replicated  # before the group ends (see Ranks.wrap)


def test_gradients_averaged_over_the_ranks_are_the_global_batch_gradient(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(_gradient_worker, args=(port, tmp_path), nprocs=2, join=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rank0", "rank1"]


def test_the_project_s_launcher_ends_a_signalled_job_with_one_line_and_no_traceback(data, tmp_path):
    """``python -m vae.launch``: torchrun's options and job, without torchrun's own traceback on a signal."""
    step = STEPS + 8
    result = run_cli("-m", "vae.launch", "--standalone", "--nproc-per-node", str(NPROC), "train.py",
                     *train_args(data, tmp_path, "r", 3), env={**ENV, "VAE_TEST_FAULT_AT_STEP": f"{step}=SIGTERM@launcher"},
                     timeout=TIMEOUT)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    line = assert_one_error(result, "stopped by SIGTERM", "resume with: python -m vae.launch --standalone "
                            "--nproc-per-node 2 train.py --resume")
    argv = shlex.split(re.search(r"resume with: (.*)$", line).group(1))
    resumed = run_cli(*argv[1:], env=ENV, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert "in epoch 2 after batch 9" in resumed.stdout


def test_the_project_s_launcher_ends_a_failed_job_with_the_process_s_one_line(data, tmp_path):
    result = run_cli("-m", "vae.launch", "--standalone", "--nproc-per-node", str(NPROC), "train.py",
                     *train_args(data, tmp_path, "r", 3), env={**ENV, "VAE_TEST_FAULT_AT_STEP": f"{STEPS + 8}=nan@1"},
                     timeout=TIMEOUT)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert_one_error(result, "non-finite loss at epoch 2")
