"""The toy-problem CLI, ``python -m vae.toy``, run for real in subprocesses."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae.toy import closed_form, relative_error
from vae.toy.cli import _parser
from vae.toy.problems import ToyConfig, make_problem, random_covariance

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "vae.toy", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def block(stdout: str, header: str):
    """The Python literal printed under ``header:`` (one matrix row per line)."""
    lines = stdout.splitlines()
    i = lines.index(header + ":") + 1
    text = lines[i]
    while text.count("[") != text.count("]"):
        i += 1
        text += lines[i]
    return torch.tensor(ast.literal_eval(text), dtype=torch.float64)


BAD_ARGS = {
    "dim": ["mle", "--dim", "0"],
    "samples": ["mle", "--samples", "1"],
    "--samples must exceed --dim for the mle problem": ["mle", "--samples", "5", "--dim", "10"],
    "--samples must exceed --dim for the batched problem": ["batched", "--samples", "8", "--dim", "8"],
    "epochs": ["mse", "--epochs", "0"],
    "lr": ["mle", "--lr", "-0.1"],
    "batch-size": ["batched", "--batch-size", "0"],
    "condition-number": ["mle", "--condition-number", "0.5"],
    "optimizer": ["mle", "--optimizer", "sgd"],
    "out": ["mle", "--out", "no-such-folder/x.png"],
    "problem": ["mlee"],
    "device": ["mle", "--device", "nonsense"],
}


def test_every_bad_argument_gives_one_line_and_exit_code_2(tmp_path):
    # started together: each process pays torch's import, so they overlap
    procs = {name: start(*args, cwd=tmp_path) for name, args in BAD_ARGS.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert "Traceback" not in stderr and name in stderr, (name, stderr)
        assert stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_bad_flag_is_answered_before_torch_is_imported(tmp_path):
    code = ("import runpy, sys\n"
            "sys.argv = ['vae.toy', 'mle', '--lr', '-1']\n"
            "try:\n"
            "    runpy.run_module('vae.toy', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as stop:\n"
            "    assert stop.code == 2, stop.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "python -m vae.toy: error: --lr must be positive and finite, got -1.0"


def test_mle_run_writes_the_plot_and_prints_the_mle(tmp_path):
    proc = start("mle", "--out", str(tmp_path / "plot.png"), cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    png = (tmp_path / "plot.png").read_bytes()
    assert len(png) > 10_000 and png.startswith(b"\x89PNG")

    cfg = ToyConfig("mle")
    cfg.validate()
    true_mean, true_cov, x = make_problem(cfg)
    mean, covariance = closed_form(x, "nll")
    assert relative_error(block(stdout, "learned Sigma"), covariance) < 1e-3
    assert relative_error(block(stdout, "learned mean"), mean) < 1e-3
    torch.testing.assert_close(block(stdout, "closed-form Sigma (1/N MLE)"), covariance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(block(stdout, "true Sigma"), true_cov.double())
    assert "converged: yes" in stdout
    assert "nll/adam" in stderr, "no tqdm bar"


def test_unconverged_run_says_so_and_points_to_the_fixes(tmp_path, capsys):
    from vae.toy.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["mse", "--epochs", "20", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets one thread for the toy run
    out = capsys.readouterr().out
    assert "converged: NO" in out and "--epochs 200" in out and "--optimizer lbfgs" in out
    assert (tmp_path / "toy-mse.png").stat().st_size > 0  # a folder as --out gets the default name


def test_flags_are_the_config_fields_in_kebab_case():
    args = _parser().parse_args(["batched", "--batch-size", "8", "--condition-number", "3", "--optimizer", "lbfgs"])
    cfg = ToyConfig(**vars(args))
    cfg.validate()
    assert (cfg.batch_size, cfg.condition_number, cfg.optimizer) == (8, 3.0, "lbfgs")
    assert (cfg.samples, cfg.epochs, cfg.lr) == (1024, 100, 1.0)  # L-BFGS defaults


@pytest.mark.parametrize("problem, samples, epochs", [("mse", 1000, 500), ("mle", 100, 1000), ("batched", 1024, 1000)])
def test_classic_defaults(problem, samples, epochs):
    cfg = ToyConfig(problem)
    cfg.validate()
    assert (cfg.dim, cfg.samples, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed) == (2, samples, epochs, 0.01, 32, 42)
    mean, cov, x = make_problem(cfg)
    assert mean.tolist() == [1.0, -1.0] and cov.tolist() == [[1.0, 0.5], [0.5, 2.0]]
    torch.manual_seed(42)
    expected = torch.distributions.MultivariateNormal(mean, cov).sample((samples,))
    torch.testing.assert_close(x, expected)


def test_random_covariance_has_the_requested_condition_number():
    cov = random_covariance(10, 100.0, torch.Generator().manual_seed(0))
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert torch.equal(cov, cov.mT) and eigenvalues.min() > 0
    assert (eigenvalues.max() / eigenvalues.min()).item() == pytest.approx(100.0, rel=1e-9)


def test_other_dims_draw_a_random_covariance_with_condition_number_10():
    cfg = ToyConfig("mle", dim=5)
    cfg.validate()
    mean, cov, x = make_problem(cfg)
    assert x.shape == (100, 5) and mean.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]
    eigenvalues = torch.linalg.eigvalsh(cov.double())
    assert (eigenvalues.max() / eigenvalues.min()).item() == pytest.approx(10.0, rel=1e-4)
