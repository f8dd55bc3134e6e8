"""The CNN: an ImageNet ResNet-18 trunk on one input channel and an upsampling head predicting ab.

As in the report this project reproduces: the first six children of ResNet-18 (conv1 with its ImageNet
weights summed over the RGB input channels, bn1, relu, maxpool, layer1, layer2: 128 channels at 1/8 of
the input size) and a head of convolution + batch norm + ReLU blocks with three x2 upsamplings back to
the input size, ending in a 2-channel convolution (no activation): the normalized ab of Lab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from colorization.config import field
from colorization.errors import ColorizationError
from colorization.pretrained import load_pretrained
from colorization.training import TrainConfig, TrainingTask


@dataclass
class CNNConfig:
    pretrained_backbone: bool = field(True, "Start the ResNet-18 trunk from ImageNet weights "
                                            "(--no-pretrained_backbone trains from scratch, no download).")
    loss: str = field("mse", "Loss on the normalized ab.", choices=("mse", "l1"))


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def load_imagenet_resnet18() -> nn.Module:
    """torchvision's ImageNet ResNet-18, with a clear error when its weights cannot be downloaded."""
    from torchvision.models import ResNet18_Weights, resnet18

    weights = ResNet18_Weights.IMAGENET1K_V1
    return load_pretrained(lambda: resnet18(weights=weights), weights.url, "ImageNet ResNet-18 weights",
                           "train from scratch with --no-pretrained_backbone")


class ResNetColorizer(nn.Module):
    """Normalized L (N, 1, H, W) -> normalized ab (N, 2, H, W); H and W multiples of 8."""

    def __init__(self, pretrained_backbone: bool = False):
        super().__init__()
        from torchvision.models import resnet18

        resnet = load_imagenet_resnet18() if pretrained_backbone else resnet18(weights=None)
        gray_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # a gray pixel is R = G = B, so the summed filter sees what the RGB one saw
            gray_conv.weight.copy_(resnet.conv1.weight.sum(dim=1, keepdim=True))
        resnet.conv1 = gray_conv
        self.trunk = nn.Sequential(*list(resnet.children())[:6])
        self.head = nn.Sequential(
            *_conv_block(128, 128), nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_block(128, 64), *_conv_block(64, 64), nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_block(64, 32), nn.Conv2d(32, 2, 3, padding=1),
        )

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        ab = self.head(self.trunk(lightness))
        # The report's last x2 is nearest; bilinear avoids 2x2 blocks of identical color at the same cost.
        return F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)

    predict_ab = forward  # the interface of exported networks (see inference.FeedForwardColorizer)


class CNNTask(TrainingTask):
    model_type = "cnn"
    config_class = CNNConfig
    flag_defaults = {"learning_rate": 1e-3}  # the report's Adam learning rate

    def check_resolution(self, resolution: int) -> None:
        if resolution < 32 or resolution % 8:
            raise ColorizationError(f"the CNN needs --resolution to be a multiple of 8 and at least 32, got {resolution}")

    def build(self, train_config: TrainConfig) -> None:
        model = ResNetColorizer(pretrained_backbone=self.config.pretrained_backbone)
        self.models = {"model": model}
        self.optimizers = {"model": make_adam(model.parameters(), train_config)}

    def _loss(self, predicted: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        loss = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss(predicted.float(), target, reduction=reduction)

    def training_step(self, trainer, lightness, ab):
        loss = self._loss(self.models["model"](lightness), ab)
        trainer.optimize("model", loss)
        return {"loss": loss.detach()}

    def predict_ab(self, lightness, generator):
        return self.unwrapped("model").predict_ab(lightness)

    def validation_losses(self, lightness, ab, predicted_ab):
        return {"loss": self._loss(predicted_ab, ab, reduction="none").mean(dim=(1, 2, 3))}

    def architecture(self) -> dict:
        return {}


def build_exported(**architecture) -> nn.Module:
    return ResNetColorizer(pretrained_backbone=False, **architecture)


def make_adam(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW if config.adam_weight_decay else torch.optim.Adam
    return optimizer(parameters, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                     weight_decay=config.adam_weight_decay)
