"""The GAN: a U-Net generator and a conditional PatchGAN discriminator (Nazeri et al. 2018, pix2pix).

Generator: 4x4 stride-2 convolutions (batch norm, LeakyReLU 0.2) down to 1x1 at 256 px (the depth follows
the resolution), 4x4 stride-2 transposed convolutions (batch norm, ReLU, dropout in the three innermost
decoder blocks) back up, skip connections between mirrored levels, tanh output. It predicts the
normalized ab (default; the image keeps the input's L, like the other models) or, with
``--output_space rgb``, RGB in [-1, 1] as in the report; at inference the chroma of that RGB is joined
with the input's L, so every model is evaluated the same way.

Discriminator: 70x70 PatchGAN (at 256 px) that sees the gray input together with the colors and outputs
a map of real/fake logits, averaged in the loss.

Losses: generator = adversarial + ``lambda_content`` (100) x smooth-L1 (beta 0.01: L1 beyond ~1 Lab unit, as
pix2pix's L1; with beta 1 the normalized ab errors would stay in its weak quadratic part) + ``lambda_perceptual``
(0.5) x MSE between VGG-16 ImageNet features (up to relu3_3) of the RGB images; discriminator = real vs
fake (fake detached), with optional one-sided label smoothing. Adam 2e-4, betas (0.5, 0.999).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from colorization import color
from colorization.config import field
from colorization.errors import ColorizationError
from colorization.pretrained import load_pretrained
from colorization.models.cnn import make_adam
from colorization.training import TrainConfig, TrainingTask

_MAX_CHANNELS_MULTIPLIER = 8
_DROPOUT_BLOCKS = 3
_VGG_RELU3_3 = 16  # torchvision vgg16().features[:16] ends with relu3_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class GANConfig:
    output_space: str = field("ab", "What the generator predicts: ab (joined with the input L) or rgb (the "
                                    "report's variant).", choices=("ab", "rgb"))
    base_channels: int = field(64, "Channels of the first generator and discriminator layer.")
    lambda_content: float = field(100.0, "Weight of the smooth-L1 content loss.")
    smooth_l1_beta: float = field(0.01, "Where the content loss turns from quadratic to linear, in normalized "
                                        "units (0.01 ~ 1 Lab unit). PyTorch's default 1.0 would keep ab errors "
                                        "(~0.1) in the quadratic part, where x100 is weaker than the adversarial "
                                        "loss.")
    lambda_perceptual: float = field(0.5, "Weight of the VGG-16 perceptual loss (0 skips VGG: no download).")
    label_smoothing: float = field(0.0, "One-sided label smoothing: real targets are 1 - this value.")


def generator_depth(resolution: int) -> int:
    """Number of stride-2 levels that take ``resolution`` down to 1x1; refuses what cannot work."""
    depth = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 32 or 2**depth != resolution:
        raise ColorizationError(f"the GAN's U-Net needs --resolution to be a power of two >= 32 (e.g. 64, 128, "
                                f"256), got {resolution}")
    return depth


class UNetGenerator(nn.Module):
    """Normalized L (N, 1, R, R) -> normalized ab (N, 2, R, R), or RGB in [-1, 1] (N, 3, R, R)."""

    def __init__(self, resolution: int = 256, output_space: str = "ab", base_channels: int = 64):
        super().__init__()
        self.output_space = output_space
        depth = generator_depth(resolution)
        widths = [base_channels * min(2**i, _MAX_CHANNELS_MULTIPLIER) for i in range(depth)]
        self.down = nn.ModuleList()
        in_channels = 1
        for level, width in enumerate(widths):
            # no normalization on the first level (pix2pix) nor at 1x1 (batch norm of one value per channel)
            norm = 0 < level < depth - 1
            self.down.append(nn.Sequential(
                nn.Conv2d(in_channels, width, 4, stride=2, padding=1, bias=not norm),
                *([nn.BatchNorm2d(width)] if norm else []),
                nn.LeakyReLU(0.2, inplace=True)))
            in_channels = width
        self.up = nn.ModuleList()
        for level in reversed(range(1, depth)):
            skip = 0 if level == depth - 1 else widths[level]  # the innermost block has no skip input yet
            dropout = (depth - 1 - level) < _DROPOUT_BLOCKS
            self.up.append(nn.Sequential(
                nn.ConvTranspose2d(widths[level] + skip, widths[level - 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[level - 1]), nn.ReLU(inplace=True),
                *([nn.Dropout(0.5)] if dropout else [])))
        out_channels = 2 if output_space == "ab" else 3
        self.out = nn.Sequential(nn.ConvTranspose2d(widths[0] * 2, out_channels, 4, stride=2, padding=1), nn.Tanh())

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
        output = self(lightness)
        if self.output_space == "ab":
            return output
        return color.rgb_to_normalized_lab((output.float() + 1.0) / 2.0)[1]


class PatchDiscriminator(nn.Module):
    """Conditional 70x70 PatchGAN: (normalized L, colors) -> a map of real/fake logits."""

    def __init__(self, color_channels: int = 2, base_channels: int = 64, layers: int = 3):
        super().__init__()
        blocks = [nn.Conv2d(1 + color_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = base_channels
        for level in range(1, layers + 1):
            next_width = base_channels * min(2**level, _MAX_CHANNELS_MULTIPLIER)
            stride = 2 if level < layers else 1
            blocks += [nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(next_width), nn.LeakyReLU(0.2, True)]
            width = next_width
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, lightness: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((lightness, colors), dim=1))


def load_imagenet_vgg16_features() -> nn.Module:
    """VGG-16 ImageNet features up to relu3_3, frozen; a clear error when the weights cannot be downloaded."""
    from torchvision.models import VGG16_Weights, vgg16

    weights = VGG16_Weights.IMAGENET1K_V1
    network = load_pretrained(lambda: vgg16(weights=weights), weights.url,
                              "ImageNet VGG-16 weights for the perceptual loss",
                              "train without the perceptual loss with --lambda_perceptual 0")
    return network.features[:_VGG_RELU3_3].eval().requires_grad_(False)


class PerceptualLoss(nn.Module):
    """MSE between frozen VGG features of two RGB batches in [0, 1]."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        both = (torch.cat((prediction, target)) - self.mean) / self.std
        predicted_features, target_features = self.features(both).float().chunk(2)
        return F.mse_loss(predicted_features, target_features.detach())


class GANTask(TrainingTask):
    model_type = "gan"
    config_class = GANConfig
    # the report: Adam 2e-4, beta1 0.5, constant rate, 20 epochs, no clipping
    flag_defaults = {"learning_rate": 2e-4, "adam_beta1": 0.5, "lr_scheduler": "constant", "max_grad_norm": None}
    exported_model_name = "generator"

    def check_resolution(self, resolution: int) -> None:
        generator_depth(resolution)

    def build(self, train_config: TrainConfig) -> None:
        config = self.config
        generator = UNetGenerator(self.resolution, config.output_space, config.base_channels)
        discriminator = PatchDiscriminator(2 if config.output_space == "ab" else 3, config.base_channels)
        self.models = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {name: make_adam(model.parameters(), train_config) for name, model in self.models.items()}
        self.perceptual = None
        if config.lambda_perceptual > 0:  # frozen, so not prepared by accelerate: move it ourselves
            self.perceptual = PerceptualLoss(load_imagenet_vgg16_features()).to(self.accelerator.device)

    def _target(self, lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """The ground truth in the generator's output space."""
        if self.config.output_space == "ab":
            return ab
        return color.normalized_lab_to_rgb(lightness, ab) * 2.0 - 1.0

    def _rgb(self, lightness: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if self.config.output_space == "ab":
            return color.normalized_lab_to_rgb(lightness, output.float())
        return (output.float() + 1.0) / 2.0

    def _adversarial(self, logits: torch.Tensor, real: bool, smoothing: float = 0.0) -> torch.Tensor:
        target = torch.full_like(logits, (1.0 - smoothing) if real else 0.0)
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def discriminator_step(self, trainer, lightness, target, fake) -> dict:
        discriminator = self.models["discriminator"]
        real_logits = discriminator(lightness, target)
        fake_logits = discriminator(lightness, fake.detach())
        loss_real = self._adversarial(real_logits, True, self.config.label_smoothing)
        loss_fake = self._adversarial(fake_logits, False)
        trainer.optimize("discriminator", 0.5 * (loss_real + loss_fake))
        return {"d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
                "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
                "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}

    def generator_step(self, trainer, lightness, ab, target, fake) -> dict:
        # The discriminator judges the fake without collecting gradients (frozen), and outside its DDP
        # wrapper, whose gradient hooks belong to the discriminator's own step.
        discriminator = self.unwrapped("discriminator")
        discriminator.requires_grad_(False)
        try:
            adversarial = self._adversarial(discriminator(lightness, fake), True)
        finally:
            discriminator.requires_grad_(True)
        content = F.smooth_l1_loss(fake.float(), target.float(), beta=self.config.smooth_l1_beta)
        total = adversarial + self.config.lambda_content * content
        logs = {"g_adversarial": adversarial.detach(), "g_content": content.detach()}
        if self.perceptual is not None:
            perceptual = self.perceptual(self._rgb(lightness, fake), color.normalized_lab_to_rgb(lightness, ab))
            total = total + self.config.lambda_perceptual * perceptual
            logs["g_perceptual"] = perceptual.detach()
        trainer.optimize("generator", total)
        logs["loss"] = total.detach()
        return logs

    def training_step(self, trainer, lightness, ab):
        target = self._target(lightness, ab)
        fake = self.models["generator"](lightness)
        logs = self.discriminator_step(trainer, lightness, target, fake)
        logs.update(self.generator_step(trainer, lightness, ab, target, fake))
        return logs

    def predict_ab(self, lightness, generator):
        return self.unwrapped("generator").predict_ab(lightness)

    def architecture(self) -> dict:
        return {"resolution": self.resolution, "output_space": self.config.output_space,
                "base_channels": self.config.base_channels}


def build_exported(**architecture) -> nn.Module:
    return UNetGenerator(**architecture)
