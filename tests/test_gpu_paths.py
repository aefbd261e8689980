"""What the CPU can prove of the CUDA paths: where the random numbers come from, and how a compiled step is marked.

The rest of the CUDA paths runs in ``benchmarks/gpu.sh`` on a GPU; its dry run on the CPU is tested here too.
"""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

import vae.step
from tests.conftest import REPO, real_data_dir
from vae.config import TrainConfig
from vae.data import batch_indices
from vae.run.checkpoint import build_model
from vae.run.distributed import Ranks
from vae.step import TrainStep, binarizes_from_global
from vae.training import make_generators, make_optimizer

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_on_cuda_eager_and_compiled_steps_binarize_from_the_same_global_generator(monkeypatch):
    # so a resume that turns --compile on or off keeps the run's stream
    dynamic, none = TrainConfig(binarize="dynamic"), TrainConfig(binarize="none")
    assert binarizes_from_global(CUDA, dynamic) and not binarizes_from_global(CPU, dynamic)
    assert not binarizes_from_global(CUDA, none)
    assert not binarizes_from_global(CUDA, TrainConfig(binarize="dynamic", likelihood="logistic"))
    config = TrainConfig(latent_dim=3, hidden=(16,))
    model = build_model(config)
    drawn = []
    monkeypatch.setattr(vae.step, "binarize", lambda images, generator=None: (drawn.append(generator), images)[1])
    given = torch.Generator().manual_seed(0)
    for device in (CUDA, CPU):  # an eager step builds nothing on its device: the CUDA one runs here on CPU tensors
        step = TrainStep(model, make_optimizer(model, config, CPU), config, device)
        step.loss(torch.rand(4, 784), given)
    assert drawn == [None, given]  # CUDA: the global generator, whatever the caller passes; CPU: the run's


def test_permutations_come_from_a_cpu_generator_on_every_device():
    # identical shards on every rank need identical permutations, which a CUDA generator only gives on
    # identical GPU models; a CPU one gives them everywhere
    config = TrainConfig(seed=3)
    for device in (CUDA, CPU):
        data_gen, noise_gen = make_generators(config, device, Ranks())
        assert data_gen.device.type == "cpu"
        assert noise_gen is data_gen  # one process: CPU binarization from the data generator (CUDA: unused)
    data_gen, _ = make_generators(config, CPU, Ranks())
    first = torch.cat(list(batch_indices(10, 4, data_gen, "cpu")))
    again = torch.cat(list(batch_indices(10, 4, torch.Generator().manual_seed(3 + 0x5EED), "meta")))
    assert again.device.type == "meta" and first.shape == again.shape == (10,)
    assert sorted(first.tolist()) == list(range(10))


def test_a_compiled_cuda_step_marks_its_beginning_once_per_step(monkeypatch):
    # one step, one CUDA-graph generation: its forward, backward and update graphs share it
    torch._dynamo.reset()
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    config = TrainConfig(latent_dim=3, hidden=(16,), compile=True, grad_clip=1.0)
    torch.manual_seed(0)
    model = build_model(config)
    step = TrainStep(model, make_optimizer(model, config, CPU), config, CPU)
    assert not step._cuda_graphs  # on the CPU: no CUDA graphs, no marks
    step._cuda_graphs = True  # as on CUDA
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss, _ = step.loss(torch.rand(8, 784), generator)
        step.update(loss)
    assert len(marks) == 3


def test_the_gpu_check_dry_runs_on_the_cpu_and_reports_every_stage(tmp_path):
    data = real_data_dir()
    if not (data / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {data}")
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_QUICK": "1", "VAE_DATA_DIR": str(data),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "benchmarks/gpu.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    summary = (out / "gpu-summary.md").read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = summary.split("| stage | exit | time |")[1].split("\n## ")[0]
    stages = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in table.splitlines()[2:] if row}
    assert list(stages) == ["tests", "matrix", "resume", "ddp", "speed-eval-every-1", "speed-eval-every-3",
                            "tf32-float32", "tf32-tf32", "conv", "throughput"], summary
    assert all(code == "0" for code in stages.values()), summary
    matrix = [row for row in summary.split("## matrix")[1].split("\n## ")[0].splitlines() if row.startswith("| ")]
    settings = [row.split("|")[1:4] for row in matrix[1:]]
    assert len(settings) in (6, 12) and all(" ok " in row for row in matrix[1:]), summary  # 6: no native bf16
    assert "difference" in summary.split("## resume")[1] and "eval every 3" in summary
    conv = summary.split("## conv")[1].split("\n## ")[0]
    assert conv.count("\nepoch ") == 3 and "error" not in conv, summary
