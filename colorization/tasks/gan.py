"""The GAN's training half: a conditional PatchGAN discriminator, the losses, and a warm-started schedule.

Generator loss = adversarial + ``lambda_content`` (100) x smooth-L1 to the truth (beta 0.01: L1 beyond ~1
Lab unit, as pix2pix's L1; with beta 1 the normalized ab errors would stay in its weak quadratic part) +
``lambda_perceptual`` (0.5) x MSE of VGG-16 ImageNet features (up to relu3_3) of the RGB images.
Discriminator loss = real vs fake (fake detached), real targets smoothed one-sidedly to 1 - ``label_smoothing``.

How it is trained (what the field does: DeOldify's NoGAN, pix2pix's schedule, spectral norm):

1. **content** (the first ``content_fraction`` of the steps): the generator learns the content loss alone,
   like a regressor; the discriminator waits.
2. **discriminator** (the next ``discriminator_warmup_fraction``): the discriminator learns to tell that
   generator's outputs from real photos; the generator waits.
3. **adversarial** (the rest): both, each step the discriminator first, then the generator with the
   discriminator frozen.

The discriminator has spectral norm on every convolution and no batch norm, so it cannot win on batch
statistics (a colour cast shared by a whole fake batch), and the learning rate follows pix2pix (constant,
then linear to zero). Every step's phase is logged (``train/phase``: 0, 1, 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from colorization import color
from colorization.colorizer import Colorizer, FeedForwardColorizer
from colorization.config import field, fraction, non_negative_float, positive_float, positive_int
from colorization.models.gan import MAX_CHANNELS_MULTIPLIER, UNetGenerator, generator_depth
from colorization.pretrained import load_pretrained
from colorization.training import TrainConfig, TrainingTask, make_optimizer

VGG_RELU3_3 = 16  # torchvision vgg16().features[:16] ends with relu3_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class GANConfig:
    output_space: str = field(
        "ab",
        "What the generator predicts: ab (joined with the input L) or rgb (the report's variant).",
        choices=("ab", "rgb"),
    )
    base_channels: int = field(64, "Channels of the first generator and discriminator layer.", type=positive_int)
    upsampling: str = field(
        "resize",
        "The generator decoder's x2: resize (bilinear x2 + 3x3 convolution) or "
        "transposed (4x4 stride-2 transposed convolutions: pix2pix's and the "
        "report's, whose checkerboard chroma noise costs SSIM).",
        choices=("resize", "transposed"),
    )
    generator_norm: str = field(
        "group",
        "The generator's normalization: group (the same in training and at "
        "inference) or batch (pix2pix's: batch statistics in training, running "
        "statistics at inference).",
        choices=("group", "batch"),
    )
    lambda_content: float = field(100.0, "Weight of the smooth-L1 content loss.", type=non_negative_float)
    smooth_l1_beta: float = field(
        0.01,
        "Where the content loss turns from quadratic to linear, in normalized "
        "units (0.01 ~ 1 Lab unit). PyTorch's default 1.0 would keep ab errors "
        "(~0.1) in the quadratic part, where x100 is weaker than the adversarial "
        "loss.",
        type=positive_float,
    )
    lambda_perceptual: float = field(
        0.5, "Weight of the VGG-16 perceptual loss (0 skips VGG: no download).", type=non_negative_float
    )
    label_smoothing: float = field(0.1, "One-sided label smoothing: real targets are 1 - this value.", type=fraction)
    discriminator_learning_rate: Optional[float] = field(
        None, "The discriminator's learning rate (none: --learning_rate).", type=positive_float
    )
    spectral_norm: bool = field(
        True,
        "Spectral norm on the discriminator's convolutions, and no batch norm "
        "(--no-spectral_norm: batch norm, as in pix2pix and the report).",
    )
    content_fraction: float = field(
        0.4, "Fraction of the steps in which the generator learns the content loss alone (warm start).", type=fraction
    )
    discriminator_warmup_fraction: float = field(
        0.05,
        "Fraction of the steps, after the content phase, in which "
        "only the discriminator learns, on that generator's outputs.",
        type=fraction,
    )


class PatchDiscriminator(nn.Module):
    """Conditional 70x70 PatchGAN (at 256 px): (normalized L, colors) -> a map of real/fake logits."""

    def __init__(self, color_channels: int = 2, base_channels: int = 64, layers: int = 3, spectral_norm: bool = True):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda module: module)

        def conv(in_channels, out_channels, stride, bias):
            return wrap(nn.Conv2d(in_channels, out_channels, 4, stride=stride, padding=1, bias=bias))

        blocks = [conv(1 + color_channels, base_channels, 2, True), nn.LeakyReLU(0.2, True)]
        width = base_channels
        for level in range(1, layers + 1):
            next_width = base_channels * min(2**level, MAX_CHANNELS_MULTIPLIER)
            blocks += [
                conv(width, next_width, 2 if level < layers else 1, spectral_norm),
                *([] if spectral_norm else [nn.BatchNorm2d(next_width)]),
                nn.LeakyReLU(0.2, True),
            ]
            width = next_width
        blocks.append(conv(width, 1, 1, True))
        self.net = nn.Sequential(*blocks)

    def forward(self, lightness: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((lightness, colors.to(lightness.dtype)), dim=1))


def load_imagenet_vgg16_features() -> nn.Module:
    """VGG-16 ImageNet features up to relu3_3, frozen; a clear error when the weights cannot be downloaded."""
    from torchvision.models import VGG16_Weights, vgg16

    weights = VGG16_Weights.IMAGENET1K_V1
    network = load_pretrained(
        lambda: vgg16(weights=weights),
        weights.url,
        "ImageNet VGG-16 weights for the perceptual loss",
        "train without the perceptual loss with --lambda_perceptual 0",
    )
    return network.features[:VGG_RELU3_3].eval().requires_grad_(False)


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
    # Adam 2e-4, beta1 0.5 and no clipping as in the report and pix2pix; pix2pix's schedule; the exported
    # generator is the validated step with the best PSNR that does not over-color (see docs/models.md, GAN)
    flag_defaults = {
        "learning_rate": 2e-4,
        "adam_beta1": 0.5,
        "lr_scheduler": "constant_then_linear",
        "max_grad_norm": None,
        "model_selection": "best",
    }
    exported_model_name = "generator"

    def check_resolution(self, resolution: int) -> None:
        generator_depth(resolution)

    @classmethod
    def check_flags(cls, config: GANConfig):
        if config.content_fraction + config.discriminator_warmup_fraction >= 1:
            return (
                f"--content_fraction {config.content_fraction} + --discriminator_warmup_fraction "
                f"{config.discriminator_warmup_fraction} leave no adversarial steps: their sum must be below 1"
            )
        return None

    def build(self, train_config: TrainConfig, statistics: dict) -> None:
        config = self.config
        generator = UNetGenerator(
            self.resolution, config.output_space, config.base_channels, config.upsampling, config.generator_norm
        )
        discriminator = PatchDiscriminator(
            2 if config.output_space == "ab" else 3, config.base_channels, spectral_norm=config.spectral_norm
        )
        self.models = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {
            "generator": make_optimizer(generator.parameters(), train_config),
            "discriminator": make_optimizer(
                discriminator.parameters(), train_config, config.discriminator_learning_rate
            ),
        }
        self.perceptual = None
        if config.lambda_perceptual > 0:  # frozen, so not prepared by accelerate: move it ourselves
            self.perceptual = PerceptualLoss(load_imagenet_vgg16_features()).to(self.accelerator.device)

    def phase(self, step: int, max_steps: int) -> int:
        """0 content, 1 discriminator warm-up, 2 adversarial, for optimizer step ``step`` (0-based) of ``max_steps``."""
        content_end = round(self.config.content_fraction * max_steps)
        warmup_end = content_end + round(self.config.discriminator_warmup_fraction * max_steps)
        return 0 if step < content_end else 1 if step < warmup_end else 2

    def selectable_steps(self, max_steps: int) -> tuple[int, int]:
        """Only steps of the adversarial phase: the export is a GAN, not the warm start's regressor."""
        first = next((step for step in range(max_steps) if self.phase(step, max_steps) == 2), max_steps - 1)
        return first + 1, max_steps  # validation at step S judges the network after S optimizer steps

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
        target = torch.full_like(logits, (1.0 - smoothing) if real else 0.0, dtype=torch.float32)
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def discriminator_step(self, trainer, lightness, target, fake) -> dict:
        discriminator = self.models["discriminator"]
        real_logits = discriminator(lightness, target)
        fake_logits = discriminator(lightness, fake.detach())
        loss_real = self._adversarial(real_logits, True, self.config.label_smoothing)
        loss_fake = self._adversarial(fake_logits, False)
        trainer.optimize("discriminator", 0.5 * (loss_real + loss_fake))
        return {
            "d_loss_real": loss_real.detach(),
            "d_loss_fake": loss_fake.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    def generator_step(self, trainer, lightness, ab, target, fake, adversarial: bool = True) -> dict:
        content = F.smooth_l1_loss(fake.float(), target.float(), beta=self.config.smooth_l1_beta)
        total = self.config.lambda_content * content
        logs = {"g_content": content.detach()}
        if adversarial:
            # The discriminator judges the fake without collecting gradients (frozen), and outside its DDP
            # wrapper, whose gradient hooks belong to the discriminator's own step.
            discriminator = self.unwrapped("discriminator")
            discriminator.requires_grad_(False)
            try:
                loss = self._adversarial(discriminator(lightness, fake), True)
            finally:
                discriminator.requires_grad_(True)
            total = total + loss
            logs["g_adversarial"] = loss.detach()
        if self.perceptual is not None:
            perceptual = self.perceptual(self._rgb(lightness, fake), color.normalized_lab_to_rgb(lightness, ab))
            total = total + self.config.lambda_perceptual * perceptual
            logs["g_perceptual"] = perceptual.detach()
        trainer.optimize("generator", total)
        logs["loss"] = total.detach()
        return logs

    def training_step(self, trainer, lightness, ab):
        phase = self.phase(trainer.progress.global_step, trainer.max_steps)
        target = self._target(lightness, ab)
        nothing = torch.tensor(float("nan"), device=lightness.device)
        logs = {
            key: nothing
            for key in ("d_loss_real", "d_loss_fake", "d_real", "d_fake", "g_adversarial", "g_content", "loss")
        }
        if self.perceptual is not None:
            logs["g_perceptual"] = nothing
        if phase == 1:  # the generator waits: its outputs, as it makes them in training
            with torch.no_grad():
                fake = self.models["generator"](lightness)
        else:
            fake = self.models["generator"](lightness)
        if phase >= 1:
            logs.update(self.discriminator_step(trainer, lightness, target, fake))
        if phase != 1:
            logs.update(self.generator_step(trainer, lightness, ab, target, fake, adversarial=phase == 2))
        logs["phase"] = torch.tensor(float(phase), device=lightness.device)
        return logs

    def colorizer(self) -> Colorizer:
        return FeedForwardColorizer(
            self.model_type, self.unwrapped("generator"), self.resolution, self.accelerator.device
        )

    def architecture(self) -> dict:
        return {
            "resolution": self.resolution,
            "output_space": self.config.output_space,
            "base_channels": self.config.base_channels,
            "upsampling": self.config.upsampling,
            "norm": self.config.generator_norm,
        }
