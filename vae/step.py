"""The training step, eager or compiled: fresh pixels, the surrogate and its gradient, the optimizer's update.

:class:`TrainStep` runs one optimizer step in two calls, with the epoch loop's
bookkeeping between them (:mod:`vae.epoch`):

- :meth:`TrainStep.loss`: dynamic binarization of the batch, the model's
  forward pass with its posterior draws, and the surrogate of
  :func:`vae.model.objectives.training_loss` (its mean over the global batch);
- :meth:`TrainStep.update`: the backward pass, gradient clipping, and Adam.

With ``--compile`` both are ``torch.compile``'d: the forward pass with its
draws, the backward pass that AOTAutograd derives from it, and the optimizer
update. Gradient clipping runs between them, eagerly: it scales the gradients
in place, and a compiled graph that mutates its inputs cannot run as a CUDA
graph. On CUDA they run as CUDA graphs (inductor's
``triton.cudagraphs``, what ``mode="reduce-overhead"`` sets). The learning
rate and the KL weight then live in device tensors that the step fills, so a
schedule never recompiles it. Inductor draws its random numbers with the
eager operators (``fallback_random``), so a compiled step draws what the
eager one does: on the CPU the two agree to float rounding, same seed, same
numbers.

On CUDA the binarization draws from the global CUDA generator, eager or compiled
(:func:`binarizes_from_global`): CUDA graphs can replay only that one, and one
source for both keeps a resume that turns ``--compile`` on or off exact. Each
compiled CUDA step marks its beginning
(``torch.compiler.cudagraph_mark_step_begin``), so its forward, backward and
update graphs are one generation of CUDA-graph memory: none frees what a later
one of the same step still reads.

Before any data is loaded, :func:`check_step_memory` refuses a ``--k`` and
``--batch-size`` whose step would need more than :data:`STEP_MEMORY_FRACTION`
of the device's memory, from an estimate of what this step holds
(:func:`step_memory_bytes`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from vae.config import TrainConfig
from vae.data import binarize
from vae.devices import device_memory
from vae.errors import ArgumentError
from vae.model import FAMILIES, VAE
from vae.model.likelihood import LIKELIHOODS
from vae.model.networks import NETWORKS
from vae.model.objectives import training_loss
from vae.run.checkpoint import model_fields
from vae.run.distributed import Ranks, current

__all__ = ["TrainStep", "compile_options", "binarizes_from_global", "STEP_MEMORY_FRACTION", "step_memory_bytes",
           "check_step_memory"]


def binarizes_from_global(device: torch.device, config: TrainConfig) -> bool:
    """Whether a step of ``config`` on ``device`` draws its dynamic binarization from the global RNG, compiled or
    not (CUDA)."""
    return device.type == "cuda" and config.binarizes


def compile_options(device: torch.device) -> dict:
    """Inductor's options for ``--compile``: the eager RNG, and CUDA graphs on CUDA (``mode="reduce-overhead"``).

    ``fallback_random`` makes inductor call the eager random operators, so a compiled step draws
    the eager step's numbers; as an option of these two compilations, not a global setting.
    """
    return {"fallback_random": True, **({"triton.cudagraphs": True} if device.type == "cuda" else {})}


class TrainStep:
    """One optimizer step of ``config``'s objective, eager or (``config.compile``) compiled.

    Args:
        model: the VAE (its parameters are clipped and updated); optimizer: its Adam.
        config: the run's configuration (objective, ``k``, estimator, binarization, clipping, ``compile``).
        device: where it trains. ranks: the processes sharing each batch (default: this one alone).
        step_model: what the forward pass calls, ``model`` or its DistributedDataParallel wrapper.
    """

    def __init__(self, model: VAE, optimizer: torch.optim.Optimizer, config: TrainConfig, device: torch.device,
                 ranks: Optional[Ranks] = None, step_model: Optional[torch.nn.Module] = None):
        self.model, self.optimizer, self.config, self.device = model, optimizer, config, device
        self.ranks = current() if ranks is None else ranks
        self.step_model = model if step_model is None else step_model
        self.compiled = config.compile
        self._binarize_global = binarizes_from_global(device, config)
        self._binarize_in_graph = self.compiled and self._binarize_global  # CUDA graphs replay the global generator
        self._cuda_graphs = self.compiled and device.type == "cuda"
        self._loss, self._update = self._loss_eager, self._update_eager
        if self.compiled:
            for group in optimizer.param_groups:  # a tensor learning rate: a schedule never recompiles the update
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            self._beta = torch.ones((), device=device)
            options = compile_options(device)
            self._loss = torch.compile(self._loss_eager, options=options, dynamic=False)
            self._update = torch.compile(self._update_eager, options=options, dynamic=False)

    @property
    def learning_rate(self) -> float:
        """The optimizer's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    def loss(self, images: torch.Tensor, generator: Optional[torch.Generator], beta: float = 1.0,
             batch_rows: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The surrogate to differentiate, and the step's sums for the metrics.

        Args:
            images: this process's rows of the batch, intensities ``(b, 784)``.
            generator: draws the binarization (``--binarize dynamic``; on CUDA the global generator does,
                see :func:`binarizes_from_global`); beta: the KL weight.
            batch_rows: the global batch's ``B`` (default ``b``).

        Returns:
            the scalar surrogate (its DDP average is the mean over the global batch), and
            ``(4,)``: the sums of the bound at beta = 1, its recon and KL terms, and the surrogate.
        """
        batch_rows = images.shape[0] if batch_rows is None else batch_rows
        x = images  # (b, 784)
        if self.config.binarizes and not self._binarize_in_graph:
            # outside a compiled graph: Dynamo cannot trace a generator
            x = binarize(images, None if self._binarize_global else generator)
        if not self.compiled:
            return self._loss_eager(x, beta, batch_rows)
        if self._cuda_graphs:  # the step's graphs are one generation of CUDA-graph memory
            torch.compiler.cudagraph_mark_step_begin()
        beta = self._beta.fill_(beta)  # a tensor, 1 included: the warm-up and the rest share one graph
        loss, stats = self._loss(x, beta, batch_rows)
        return loss, stats.clone()  # a CUDA graph's outputs are overwritten by its next replay

    def update(self, loss: torch.Tensor) -> None:
        """Backward from ``loss`` (DDP averages the gradients here), clip, and take the optimizer's step."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.ranks.communicating():
            loss.backward()
        if self.config.grad_clip is not None:
            # outside the compiled update: it scales the gradients in place, and a compiled graph that mutates
            # its inputs does not run as a CUDA graph; the norm stays on the device (no host sync)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self._update()

    def _loss_eager(self, x, beta, batch_rows):
        config = self.config
        if self._binarize_in_graph:
            x = binarize(x)  # (b, 784)
        surrogate, bound = training_loss(self.step_model, x, config.objective, config.k, config.estimator, beta)
        loss = self.ranks.mean(surrogate, batch_rows)
        with torch.no_grad():
            stats = torch.stack([bound.loss.sum(), bound.recon.sum(), bound.kl.sum(), loss.detach()])
        return loss, stats

    def _update_eager(self):
        self.optimizer.step()


# ---------------------------------------------------------------- how much memory one step takes

STEP_MEMORY_FRACTION = 0.25
"""One training step may need at most this share of the device's memory (the GPU's for CUDA, else the RAM)."""


def _step_memory_parts(config) -> tuple[int, int]:
    """``(fixed, per_image)`` bytes of one training step: ``fixed + batch_size * per_image`` is the estimate.

    Fixed: the parameters, their gradients and Adam's two moments, 4 float32 copies of every weight,
    counted on a model built on the meta device, the scale head's ``hidden[-1] x head`` included (head:
    D(D+1)/2 raw entries for the full family, D for the diagonal, D(R+1) for the low-rank). Per image: the
    encoder's activations and their gradients, the raw head, and 4 copies of the family's factor (the full family's (D, D) L, its
    gradient and the triangular solves' temporaries); and per draw (``k`` of them) the likelihood's
    float32 parameters, their loss terms and gradients (3 values per output; a two-parameter likelihood
    has twice the outputs) and the decoder's activations and gradients (2 x its hidden activations,
    :meth:`vae.model.networks.MLPNetworks.activations`):
    measured peaks on the CPU were 2,374 to 3,449 floats per draw for MNIST and hidden 16 to 500-500,
    against 2,390 to 4,544 here. The test set is not counted.
    """
    model = model_fields(config)
    dim, rank = config.latent_dim, config.rank
    family = FAMILIES[config.posterior]  # each family sizes its own raw head and factor
    head, factor = family.head_size(dim, rank), family.factor_size(dim, rank)
    outputs = math.prod(model["data_shape"]) * LIKELIHOODS[model["likelihood"]].params_per_pixel
    with torch.device("meta"):  # the exact weights of any network, none allocated
        params = sum(p.numel() for p in VAE(**model).parameters())
    encoder, decoder = NETWORKS[config.arch].activations(model["data_shape"], config.hidden, config.channels)
    per_draw = 3 * outputs + 2 * decoder + 3 * dim
    per_image = 2 * (2 * encoder + dim + head) + 4 * factor + config.k * per_draw
    return 4 * 4 * params, 4 * per_image


def step_memory_bytes(config) -> int:
    """Estimated peak memory of one training step of ``config`` (a :class:`vae.config.TrainConfig`), in bytes.

    Parameters, gradients and Adam's state, and the activations of each posterior family (see
    :func:`_step_memory_parts`).
    """
    fixed, per_image = _step_memory_parts(config)
    return fixed + config.batch_size * per_image


def check_step_memory(config, device: torch.device, total: Optional[int] = None) -> None:
    """Refuse a step that needs more than :data:`STEP_MEMORY_FRACTION` of ``total`` (default: the device's memory).

    Raises:
        ValueError: one line with the estimate, the limit, and the largest ``--batch-size`` that fits,
            or, where the weights alone are too many, the largest ``--latent-dim``.
    """
    total = device_memory(device) if total is None else total
    need, limit = step_memory_bytes(config), STEP_MEMORY_FRACTION * (total or 0)
    if total is None or need <= limit:
        return
    fixed, per_image = _step_memory_parts(config)
    fits = int((limit - fixed) // per_image) if fixed < limit else 0  # the largest batch size within the limit
    gib = 2.0**30
    over = f"over {STEP_MEMORY_FRACTION:.0%} of the {total / gib:.1f} GiB of {device.type} memory"
    if fixed < limit:  # the weights fit: fewer images (or draws) per step do
        hint = f"lower `batch_size` to {fits} or `k`" if fits >= 1 else "lower `k`"
        raise ArgumentError(
            "k", f"{config.k} with `batch_size` {config.batch_size}: one training step needs about "
            f"{need / gib:.1f} GiB ({config.batch_size} x {config.k} draws of logits, their gradients and the "
            f"decoder's activations, {fixed / gib:.1f} GiB of weights, gradients and Adam state), {over}; {hint}"
        )
    dims = _largest_latent_dim(config, limit)
    hint = f"lower `latent_dim` to {dims}" if dims >= 1 else "lower `hidden`"
    raise ArgumentError(
        "latent_dim", f"{config.latent_dim} with the {config.posterior} posterior and `hidden` "
        f"{' '.join(map(str, config.hidden))}: one training step needs about {need / gib:.1f} GiB "
        f"({fixed / gib:.1f} GiB of weights, gradients and Adam state; the rest the batch's factors and "
        f"activations), {over}; {hint}"
    )


def _largest_latent_dim(config, limit: float) -> int:
    """The largest ``latent_dim`` up to ``config``'s whose step fits in ``limit`` bytes (0: none)."""
    low, high = 0, config.latent_dim  # fits(low) (or low is 0), the answer is at most high
    while low < high:
        mid = (low + high + 1) // 2
        rank = min(config.rank, mid)
        if step_memory_bytes(dataclasses.replace(config, latent_dim=mid, rank=rank)) <= limit:
            low = mid
        else:
            high = mid - 1
    return low
