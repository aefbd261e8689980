"""``--arch conv``: the convolutional encoder and decoder, through the model, training and every command.

What is checked: shapes for MNIST's 1x28x28, CIFAR's 3x32x32 and an odd-sized image, for each family
and likelihood; that gradients reach every layer; that a run saves, loads, resumes exactly and
fine-tunes (``--init-from``) within its architecture and is refused across them; a one-line refusal
(exit 2, nothing written) for images too small for the strides and for rows; the step-memory estimate;
and that evaluate, visualize and gaps read a conv run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vae
from tests.conftest import run_cli
from tests.test_own_data import images, one_line_usage_error, table
from vae.config import TrainConfig
from vae.errors import ArgumentError
from vae.model import VAE
from vae.model.networks import ConvDecoder, ConvEncoder, conv_sizes
from vae.run.checkpoint import CheckpointError, build_model, load_checkpoint
from vae.run.folder import RunFolder
from vae.step import STEP_MEMORY_FRACTION, check_step_memory, step_memory_bytes
from vae.training import train

quiet = lambda *_: None  # noqa: E731
CONV = dict(arch="conv", channels=(4, 8), hidden=(16,), latent_dim=3)


def tiny(data_dir: Path, out_dir: Path, **overrides) -> TrainConfig:
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), epochs=1, batch_size=16, eval_batch_size=16,
                device="cpu", progress=False, plots=False, run_name="conv", threads=1, **CONV)
    return TrainConfig(**{**base, **overrides})


def examples(shape, likelihood: str, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if likelihood == "logistic":
        return torch.randint(0, 256, (n, *shape), generator=g).float()
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, *shape), 0.3), generator=g)
    return torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("posterior", ["full", "diagonal", "lowrank"])
@pytest.mark.parametrize("shape,likelihood", [((1, 28, 28), "bernoulli"), ((3, 32, 32), "logistic"),
                                              ((2, 13, 9), "gaussian")])
def test_shapes_through_every_method(shape, likelihood, posterior):
    model = VAE(3, (16,), posterior, data_shape=shape, likelihood=likelihood, arch="conv", channels=(4, 8))
    ppp, (c, h, w) = model.likelihood.params_per_pixel, shape
    x = examples(shape, likelihood)
    draw, params = model(x, k=2)
    assert draw.z.shape == (5, 2, 3) and params.shape == (5, 2, ppp * c * h * w)
    model.eval()
    loc, scale_tril = model.encode(x)
    assert loc.shape == (5, 3) and scale_tril.shape == (5, 3, 3)
    assert model.encode(x.reshape(5, -1))[0].shape == (5, 3)  # flattened examples too
    assert model.decode(loc).shape == (5, ppp * c, h, w) and model.decode(draw.z).shape == (5, 2, ppp * c, h, w)
    assert model.mean(loc).shape == (5, *shape) and model.sample(4).shape == (4, *shape)
    # the flat parameters are the decoded maps flattened: means first, then a second parameter's maps
    torch.testing.assert_close(model.decode(loc).flatten(1), model.params(loc))
    encoder, decoder = model.encoder, model.decoder
    assert isinstance(encoder, ConvEncoder) and isinstance(decoder, ConvDecoder)
    sides = conv_sizes(shape, (4, 8))  # each stride-2 layer halves the sides, rounding down
    assert sides == [(h, w), (h // 2, w // 2), (h // 4, w // 4)]
    assert encoder.convs(x[:1].reshape(1, *shape)).shape == (1, 8, *sides[-1])


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_gradients_reach_every_layer(posterior):
    model = VAE(3, (16, 16), posterior, data_shape=(3, 32, 32), likelihood="logistic", arch="conv", channels=(4, 8, 8))
    x = examples((3, 32, 32), "logistic", n=8)
    draw, params = model(x)
    loss = -(model.likelihood.log_prob(params, x.reshape(8, -1)).mean() - draw.q.kl_standard_normal().mean())
    loss.backward()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert sum(isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d) for m in layers) == 3
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in layers) == 3
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_conv_decoder_is_spatial():
    """A latent that moves one output pixel's logit moves its neighbours, not a far pixel: a convolution."""
    torch.manual_seed(0)
    decoder = VAE(3, (16,), "diagonal", arch="conv", channels=(4,)).decoder
    first = decoder.deconvs[0]  # the only (transposed) convolution: 4 maps of 14x14 -> 1 map of 28x28
    with torch.no_grad():
        first.weight.zero_()
        first.weight[0, 0, 1, 1] = 1.0  # map 0 feeds each output pixel from exactly one input pixel
        h = torch.zeros(1, 4, 14, 14)
        h[0, 0, 5, 5] = 1.0
        out = first(h)[0, 0]  # (28, 28)
    assert out.nonzero().tolist() == [[10, 10]]


def test_save_load_and_resume_exactly(fake_mnist, tmp_path):
    straight = train(tiny(fake_mnist, tmp_path / "a", epochs=3), log=quiet)
    first = train(tiny(fake_mnist, tmp_path / "b"), log=quiet)
    resumed = train(RunFolder(tiny(fake_mnist, tmp_path / "b", resume=True, epochs=3)).resume_config(
        {"epochs", "resume"}), log=quiet)
    assert resumed == first
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["config"]["arch"] == "conv" and tuple(a["config"]["channels"]) == (4, 8)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert any(name.startswith("encoder.convs") for name in a["model"])
    model = vae.load_model(straight / "best.pt")
    assert isinstance(model.encoder, ConvEncoder) and model.decode(torch.zeros(2, 3)).shape == (2, 1, 28, 28)
    with pytest.raises(ArgumentError, match="was trained with channels \\(4, 8\\)"):
        RunFolder(tiny(fake_mnist, tmp_path / "b", resume=True, epochs=4, channels=(4, 4))).resume_config(
            {"epochs", "resume", "channels"})


def test_init_from_within_the_architecture_and_not_across(fake_mnist, tmp_path):
    start = train(tiny(fake_mnist, tmp_path, run_name="start"), log=quiet) / "last.pt"
    weights = load_checkpoint(start)["model"]
    tune = train(tiny(fake_mnist, tmp_path, run_name="tune", objective="iwae", k=3, lr=1e-12, init_from=str(start)),
                 log=quiet)
    tuned = load_checkpoint(tune / "last.pt")["model"]
    for name, tensor in weights.items():
        torch.testing.assert_close(tuned[name], tensor, atol=1e-8, rtol=0, msg=name)
    with pytest.raises(CheckpointError, match="another model \\(`arch` conv there, mlp here"):
        train(tiny(fake_mnist, tmp_path, run_name="mlp", arch="mlp", init_from=str(start)), log=quiet)
    with pytest.raises(CheckpointError, match="`channels` \\(4, 8\\) there, \\(4, 4\\) here"):
        train(tiny(fake_mnist, tmp_path, run_name="narrow", channels=(4, 4), init_from=str(start)), log=quiet)
    assert not (tmp_path / "mlp").exists() and not (tmp_path / "narrow").exists()


@pytest.mark.parametrize("case", ["too-small", "rows", "bad-channels"])
def test_data_the_network_cannot_take_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    images(tmp_path / "imgs.npz", shape=(3, 8, 8))
    table(tmp_path / "rows.npy")
    dataset, channels, needles = {
        "too-small": ("imgs.npz", ["8", "8", "8", "8"], ["--channels=8 8 8 8", "at least 16x16, got 8x8"]),
        "rows": ("rows.npy", ["8"], ["--arch conv needs images", "rows of 3 values", "--arch mlp"]),
        "bad-channels": ("imgs.npz", ["8", "0"], ["--channels must list positive widths"]),
    }[case]
    result = run_cli("train.py", "--dataset", str(tmp_path / dataset), "--arch", "conv", "--channels", *channels,
                     "--epochs", "1", "--out-dir", str(tmp_path / "runs"), "--no-progress")
    one_line_usage_error(result, *needles)
    assert not (tmp_path / "runs").exists()


def test_a_registered_dataset_too_small_is_refused_before_its_data_is_read(tmp_path):
    """MNIST's shape is known before loading: six halvings of 28 leave nothing, refused without a data root."""
    result = run_cli("train.py", "--arch", "conv", "--channels", *["4"] * 6, "--data-dir", str(tmp_path / "none"),
                     "--out-dir", str(tmp_path / "runs"), "--no-progress")
    one_line_usage_error(result, "--channels=4 4 4 4 4 4", "at least 64x64, got 28x28")


def test_the_step_memory_counts_the_convolutions():
    small = TrainConfig(data_shape=(3, 32, 32), likelihood="logistic", **CONV)
    wide = TrainConfig(data_shape=(3, 32, 32), likelihood="logistic", **{**CONV, "channels": (256, 512)})
    params = sum(p.numel() for p in build_model(small).parameters())
    per_image = step_memory_bytes(TrainConfig(**{**small.__dict__, "batch_size": 2})) - step_memory_bytes(
        TrainConfig(**{**small.__dict__, "batch_size": 1}))
    assert step_memory_bytes(small) == 16 * params + small.batch_size * per_image  # 4 float32 copies of each weight
    # 256 + 512 maps of 16x16 and 8x8 per image and per draw, with their gradients: far above the small network
    assert step_memory_bytes(wide) - 16 * sum(p.numel() for p in build_model(wide).parameters()) > 128 * 4 * 4 * (
        256 * 16 * 16 + 512 * 8 * 8)
    total = int(step_memory_bytes(wide) / STEP_MEMORY_FRACTION) - 1  # just too small a device
    with pytest.raises(ArgumentError, match="lower batch_size to 127 or k"):
        check_step_memory(wide, torch.device("cpu"), total=total)


def test_evaluate_visualize_and_gaps_read_a_conv_run(fake_mnist, tmp_path):
    run = train(tiny(fake_mnist, tmp_path, epochs=2), log=quiet)
    result = run_cli("-m", "vae.evaluate", str(run / "best.pt"), "--k", "20", "--no-progress")
    assert result.returncode == 0, result.stderr
    scores = json.loads((run / "eval-test-k20.json").read_text())
    assert scores["images"] == 40 and np.isfinite(scores["nll"]) and scores["nll"] <= scores["neg_elbo"] + 1e-3
    pictures = run_cli("-m", "vae.visualize", str(run / "best.pt"))
    assert pictures.returncode == 0, pictures.stderr
    assert {"reconstructions.png", "samples.png", "latent.png"} <= {p.name for p in run.glob("*.png")}
    gaps = run_cli("-m", "vae.gaps", str(run / "best.pt"), "--k", "20", "--steps", "3", "--limit", "6",
                   "--families", "full", "diagonal", "--no-progress")
    assert gaps.returncode == 0, gaps.stderr


def test_vae_fit_trains_a_conv_network_on_an_image_array(tmp_path):
    x = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8)
    model, run = vae.fit(x, out_dir=str(tmp_path), log=quiet, epochs=1, batch_size=16, threads=1, plots=False,
                         **CONV)
    assert isinstance(model.encoder, ConvEncoder) and model.sample(2).shape == (2, 3, 16, 16)
    assert load_checkpoint(run / "last.pt")["config"]["arch"] == "conv"
