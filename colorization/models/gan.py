"""The GAN's inference half: the U-Net generator (Nazeri et al. 2018, after pix2pix).

4x4 stride-2 convolutions (normalization, LeakyReLU 0.2) down to 1x1 at the training resolution (the depth
follows it), x2 upsamplings (normalization, ReLU) back up, skip connections between mirrored levels, tanh
output. Training's defaults differ from pix2pix in two places, each measured on the cats (docs/models.md, GAN):
resize-convolution (bilinear x2, then a 3x3 convolution) instead of 4x4 stride-2 transposed convolutions,
whose checkerboard patterns put high-frequency noise into the chroma, and group norm instead of batch norm,
which computes the same thing in training and at inference. Exports record both choices; the constructor's
defaults (transposed, batch) are what exports written before the choice existed used.

It predicts the normalized ab (default; the image keeps the input's L, like the other models) or, with
``output_space="rgb"``, RGB in [-1, 1] as in the report; at inference the chroma of that RGB is joined with
the input's L, so every model is evaluated the same way.

pix2pix puts dropout in the three innermost decoder blocks as the generator's only noise; it runs at test
time too there. Here the generator has none: inference is deterministic and is exactly the network that
validation measured (batch norm, where chosen, uses its running statistics in eval mode).
The discriminator and the losses are training-only: :mod:`colorization.tasks.gan`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from colorization import color
from colorization.colorizer import Colorizer, load_feed_forward_colorizer
from colorization.errors import ColorizationError

MAX_CHANNELS_MULTIPLIER = 8


def generator_depth(resolution: int) -> int:
    """Number of stride-2 levels that take ``resolution`` down to 1x1; refuses what cannot work."""
    depth = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 32 or 2**depth != resolution:
        raise ColorizationError(
            f"the GAN's U-Net needs --resolution to be a power of two >= 32 (e.g. 64, 128, 256), got {resolution}"
        )
    return depth


class UNetGenerator(nn.Module):
    """Normalized L (N, 1, R, R) -> normalized ab (N, 2, R, R), or RGB in [-1, 1] (N, 3, R, R)."""

    def __init__(
        self,
        resolution: int = 256,
        output_space: str = "ab",
        base_channels: int = 64,
        upsampling: str = "transposed",
        norm: str = "batch",
    ):
        super().__init__()
        self.output_space = output_space
        depth = generator_depth(resolution)
        widths = [base_channels * min(2**i, MAX_CHANNELS_MULTIPLIER) for i in range(depth)]
        self.down = nn.ModuleList()
        in_channels = 1
        for level, width in enumerate(widths):
            # no normalization on the first level (pix2pix) nor at 1x1 (batch norm of one value per channel)
            normalized = 0 < level < depth - 1
            self.down.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, 4, stride=2, padding=1, bias=not normalized),
                    *([_norm(width, norm)] if normalized else []),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            in_channels = width
        self.up = nn.ModuleList()
        for level in reversed(range(1, depth)):
            skip = 0 if level == depth - 1 else widths[level]  # the innermost block has no skip input yet
            self.up.append(
                nn.Sequential(
                    _upsample(widths[level] + skip, widths[level - 1], upsampling, bias=False),
                    _norm(widths[level - 1], norm),
                    nn.ReLU(inplace=True),
                )
            )
        out_channels = 2 if output_space == "ab" else 3
        self.out = nn.Sequential(_upsample(widths[0] * 2, out_channels, upsampling, bias=True), nn.Tanh())

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        skips = []
        x = lightness
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the innermost output is x itself
        for block in self.up:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.out(x)

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """The interface of one-pass networks (see colorizer.FeedForwardColorizer)."""
        output = self(lightness)
        if self.output_space == "ab":
            return output
        return color.rgb_to_normalized_lab((output.float() + 1.0) / 2.0)[1]


def _norm(channels: int, kind: str) -> nn.Module:
    """Batch norm (pix2pix's: batch statistics in training, running statistics at inference), or group norm
    (32 groups, fewer for narrow layers), which computes the same thing in training and at inference."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ColorizationError(f"unknown norm {kind!r}: batch or group")


def _upsample(in_channels: int, out_channels: int, upsampling: str, bias: bool) -> nn.Module:
    """x2: pix2pix's 4x4 stride-2 transposed convolution, or resize-convolution (bilinear x2, then a 3x3
    convolution), which cannot make the checkerboard patterns a transposed convolution does (Odena et al. 2016)."""
    if upsampling == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
    if upsampling == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
        )
    raise ColorizationError(f"unknown upsampling {upsampling!r}: transposed or resize")


def build_exported(**architecture) -> nn.Module:
    """The network of an export, untrained (the weights are loaded next)."""
    return UNetGenerator(**architecture)


def load_colorizer(path: str, config: dict, device: torch.device, **sampling) -> Colorizer:
    """An exported GAN generator -> its colorizer (one pass: ``sampling`` options do not apply)."""
    return load_feed_forward_colorizer(path, config, device, build_exported)
