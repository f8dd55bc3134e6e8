"""The CNN's inference half: an ImageNet ResNet-18 trunk on one input channel and an upsampling head.

As in the report this project reproduces: the first six children of ResNet-18 (conv1 with its ImageNet
weights summed over the RGB input channels, bn1, relu, maxpool, layer1, layer2: 128 channels at 1/8 of
the input size) and a head of convolution + batch norm + ReLU blocks with three x2 upsamplings back to
the input size, ending in a 2-channel convolution (no activation): the normalized ab of Lab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from colorization.colorizer import Colorizer, load_feed_forward_colorizer
from colorization.pretrained import load_pretrained


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def load_imagenet_resnet18() -> nn.Module:
    """torchvision's ImageNet ResNet-18, with a clear error when its weights cannot be downloaded."""
    from torchvision.models import ResNet18_Weights, resnet18

    weights = ResNet18_Weights.IMAGENET1K_V1
    return load_pretrained(
        lambda: resnet18(weights=weights),
        weights.url,
        "ImageNet ResNet-18 weights",
        "train from scratch with --no-pretrained_backbone",
    )


class ResNetColorizer(nn.Module):
    """Normalized L (N, 1, H, W) -> normalized ab (N, 2, H, W); H and W multiples of 8."""

    def __init__(self, pretrained_backbone: bool = False):
        super().__init__()
        from torchvision.models import resnet18

        resnet = load_imagenet_resnet18() if pretrained_backbone else resnet18(weights=None)
        gray_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # The first convolution takes the normalized L (L / 50 - 1) alone. Starting from ImageNet weights, the
        # RGB filter summed over its input channels is what it applied to a gray pixel (R = G = B); the input
        # scale differs from ImageNet's normalisation, which the following batch norm absorbs.
        with torch.no_grad():
            gray_conv.weight.copy_(resnet.conv1.weight.sum(dim=1, keepdim=True))
        resnet.conv1 = gray_conv
        self.trunk = nn.Sequential(*list(resnet.children())[:6])
        self.head = nn.Sequential(
            *_conv_block(128, 128),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_block(128, 64),
            *_conv_block(64, 64),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_block(64, 32),
            nn.Conv2d(32, 2, 3, padding=1),
        )

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        ab = self.head(self.trunk(lightness))
        # The report's last x2 is nearest; bilinear avoids 2x2 blocks of identical color at the same cost.
        return F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """The interface of one-pass networks (see colorizer.FeedForwardColorizer)."""
        return self(lightness)


def build_exported(**architecture) -> nn.Module:
    """The network of an export, untrained (the weights are loaded next)."""
    return ResNetColorizer(pretrained_backbone=False, **architecture)


def load_colorizer(path: str, config: dict, device: torch.device, **sampling) -> Colorizer:
    """An exported CNN -> its colorizer (one pass: ``sampling`` options do not apply)."""
    return load_feed_forward_colorizer(path, config, device, build_exported)
