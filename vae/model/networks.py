"""The encoder and decoder networks, one pair per architecture: MLPs, or strided convolutions for images.

Both pairs speak the same flat interface, so nothing above them branches on the network. An
encoder maps examples flattened to ``(N, P)`` to a location ``(N, D)`` and the raw entries of a
posterior family ``(N, n_raw)`` (:mod:`vae.model.posteriors` sizes and initializes its
``scale_head``); a decoder maps latents ``(..., D)`` to its likelihood's parameters, flat,
``(..., P * params_per_pixel)`` (:mod:`vae.model.likelihood`), and owns that likelihood.

:data:`NETWORKS` names each pair; :class:`MLPNetworks` and :class:`ConvNetworks` build them and
size their activations (the training step's memory estimate, :mod:`vae.step`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from vae.errors import ArgumentError
from vae.model.likelihood import BernoulliLikelihood

__all__ = [
    "KERNEL", "mlp", "he_init", "conv_sizes", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "MLPNetworks",
    "ConvNetworks", "NETWORKS",
]

KERNEL = 4
"""Every convolution is ``KERNEL x KERNEL`` with stride 2 and padding 1: it halves a side (rounding down), and a
transposed one doubles it back (plus one for an odd side)."""


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and after the last)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


def he_init(layer: nn.Module, relu: bool = True) -> nn.Module:
    """He-normal weights and zero biases for a (transposed) stride-2 convolution; returns ``layer``.

    The weights' variance is 2 (1 for an output layer, ``relu=False``) over the inputs each output sums:
    ``C_in * KERNEL**2`` for a convolution, a quarter of that for a transposed one (stride 2). PyTorch's
    default is a third of that: the decoder then starts by ignoring ``z`` (the KL falls to zero, and
    training waits a few hundred steps on the mean image before it finds the latents again).
    """
    taps = layer.in_channels * KERNEL**2 // (4 if isinstance(layer, nn.ConvTranspose2d) else 1)
    nn.init.normal_(layer.weight, 0.0, math.sqrt((2.0 if relu else 1.0) / taps))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv_sizes(data_shape: Sequence[int], channels: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(H, W)`` of an image and of its feature maps after each stride-2 convolution, one per ``channels``.

    Raises:
        ArgumentError: ``data_shape`` is not an image ``(C, H, W)``, or a side is below ``2 ** len(channels)``
            (the last feature map would be empty).
    """
    if len(data_shape) != 3:
        raise ArgumentError("arch", f"conv needs images (C, H, W); these data are rows of {data_shape[0]} values: "
                                    "use `arch` mlp")
    sizes = [tuple(data_shape[1:])]
    for _ in channels:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    if min(sizes[-1]) < 1:
        side = 2 ** len(channels)
        raise ArgumentError("channels", f"={' '.join(map(str, channels))}: {len(channels)} stride-2 convolutions "
                                        f"need images of at least {side}x{side}, got {data_shape[1]}x{data_shape[2]}; "
                                        "give fewer `channels`, or use `arch` mlp")
    return sizes


class MLPEncoder(nn.Module):
    """x ``(N, P)`` -> ``loc (N, D)`` and the family's raw entries ``(N, n_raw)``, through ReLU MLP layers."""

    def __init__(self, in_dim: int, hidden: Sequence[int], latent_dim: int, n_raw: int):
        super().__init__()
        self.body = mlp([in_dim, *hidden])
        self.loc_head = nn.Linear(hidden[-1], latent_dim)
        self.scale_head = nn.Linear(hidden[-1], n_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (N, H)
        return self.loc_head(h), self.scale_head(h)


class MLPDecoder(nn.Module):
    """z ``(..., D)`` -> the likelihood's parameters ``(..., out_dim * params_per_pixel)``.

    Attributes:
        likelihood: the likelihood its outputs parameterize (:mod:`vae.model.likelihood`), which it owns:
            its parameters and buffers (a Gaussian's variance and standardization) are the decoder's.
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_dim: int, likelihood: Optional[nn.Module] = None):
        super().__init__()
        self.likelihood = BernoulliLikelihood() if likelihood is None else likelihood
        self.body = mlp([latent_dim, *hidden])
        self.head = nn.Linear(hidden[-1], out_dim * self.likelihood.params_per_pixel)

    @property
    def output_bias(self) -> torch.Tensor:
        """The bias of every output ``(P * params_per_pixel,)``: where training starts the data's mean."""
        return self.head.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


class ConvEncoder(nn.Module):
    """Images flattened ``(N, P)`` -> ``loc (N, D)`` and the family's raw entries ``(N, n_raw)``.

    Stride-2 convolutions (ReLU after each) halve the image ``len(channels)`` times; the last feature
    map, flattened, goes through ReLU dense layers of widths ``hidden`` to the two heads.
    """

    def __init__(self, data_shape: Sequence[int], channels: Sequence[int], hidden: Sequence[int], latent_dim: int,
                 n_raw: int):
        super().__init__()
        last = conv_sizes(data_shape, channels)[-1]  # (h, w) of the last feature map
        self.data_shape = tuple(data_shape)
        layers = []
        for c_in, c_out in zip((data_shape[0], *channels), channels):
            layers += [he_init(nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=1)), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.body = mlp([channels[-1] * math.prod(last), *hidden])
        self.loc_head = nn.Linear(hidden[-1], latent_dim)
        self.scale_head = nn.Linear(hidden[-1], n_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = x.reshape(x.shape[0], *self.data_shape).contiguous(memory_format=torch.channels_last)  # (N, C, H, W)
        h = self.body(self.convs(images).flatten(1))  # (N, H)
        return self.loc_head(h), self.scale_head(h)


class ConvDecoder(nn.Module):
    """z ``(..., D)`` -> the likelihood's parameters, flat, ``(..., P * params_per_pixel)``: the encoder mirrored.

    ReLU dense layers of widths ``hidden`` grow ``z`` to the encoder's last feature map; transposed
    stride-2 convolutions double it back through ``channels`` (reversed) to ``params_per_pixel * C``
    maps of the image's size; a learned bias per output (:attr:`output_bias`) ends it. The outputs
    stack the likelihood's parameters on the channel axis, means first, as :meth:`vae.model.VAE.decode`
    shows them.

    Attributes:
        likelihood: the likelihood its outputs parameterize, owned as :class:`MLPDecoder` owns it.
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], channels: Sequence[int], data_shape: Sequence[int],
                 likelihood: Optional[nn.Module] = None):
        super().__init__()
        self.likelihood = BernoulliLikelihood() if likelihood is None else likelihood
        sizes = conv_sizes(data_shape, channels)  # image first, the last feature map last
        self.first = (channels[-1], *sizes[-1])  # (c, h, w) of the last feature map
        self.body = mlp([latent_dim, *hidden, math.prod(self.first)])
        outputs = (*reversed(channels[:-1]), data_shape[0] * self.likelihood.params_per_pixel)
        layers = []
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outputs)):
            (h, w), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            hidden_layer = i < len(channels) - 1  # the last one gives the outputs: no ReLU, and the bias below
            layers.append(he_init(nn.ConvTranspose2d(c_in, c_out, KERNEL, stride=2, padding=1, bias=hidden_layer,
                                                     output_padding=(h_out - 2 * h, w_out - 2 * w)), hidden_layer))
            layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers[:-1])  # no ReLU on the outputs
        self.bias = nn.Parameter(torch.zeros(self.likelihood.params_per_pixel * math.prod(data_shape)))

    @property
    def output_bias(self) -> torch.Tensor:
        """The bias of every output ``(P * params_per_pixel,)``: where training starts the data's mean."""
        return self.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(z.reshape(-1, z.shape[-1]))  # (M, c * h * w), M draws in all
        h = h.view(-1, *self.first).contiguous(memory_format=torch.channels_last)  # (M, c, h, w)
        out = self.deconvs(h).flatten(1) + self.bias  # (M, P * params_per_pixel)
        return out.view(*z.shape[:-1], out.shape[-1])


class MLPNetworks:
    """``arch mlp``: :class:`MLPEncoder` and :class:`MLPDecoder`; ``channels`` is not used."""

    @staticmethod
    def build(data_shape: Sequence[int], hidden: Sequence[int], channels: Sequence[int], latent_dim: int,
              n_raw: int, likelihood: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The encoder and the decoder (which mirrors ``hidden``)."""
        in_dim = math.prod(data_shape)
        return (MLPEncoder(in_dim, hidden, latent_dim, n_raw),
                MLPDecoder(latent_dim, tuple(reversed(hidden)), in_dim, likelihood))

    @staticmethod
    def activations(data_shape: Sequence[int], hidden: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
        """Hidden activations: per image in the encoder, per draw in the decoder (their outputs not counted)."""
        return sum(hidden), sum(hidden)


class ConvNetworks:
    """``arch conv``: :class:`ConvEncoder` and :class:`ConvDecoder`, for images ``(C, H, W)``."""

    @staticmethod
    def build(data_shape: Sequence[int], hidden: Sequence[int], channels: Sequence[int], latent_dim: int,
              n_raw: int, likelihood: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The encoder and the decoder (which mirrors ``channels`` and ``hidden``)."""
        return (ConvEncoder(data_shape, channels, hidden, latent_dim, n_raw),
                ConvDecoder(latent_dim, tuple(reversed(hidden)), channels, data_shape, likelihood))

    @staticmethod
    def activations(data_shape: Sequence[int], hidden: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
        """Hidden activations: per image in the encoder, per draw in the decoder (their outputs not counted)."""
        sizes = conv_sizes(data_shape, channels)
        maps = sum(c * h * w for c, (h, w) in zip(channels, sizes[1:]))
        return maps + sum(hidden), maps + sum(hidden)


NETWORKS = {"mlp": MLPNetworks, "conv": ConvNetworks}
"""``arch`` -> its networks (the names are :data:`vae.choices.ARCHS`)."""
