"""The CNN's training half: mean squared (or absolute) error on the normalized ab, Adam at 1e-3 (the report's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from colorization.colorizer import Colorizer, FeedForwardColorizer
from colorization.config import field
from colorization.errors import ColorizationError
from colorization.models.cnn import ResNetColorizer
from colorization.training import TrainConfig, TrainingTask, make_optimizer


@dataclass
class CNNConfig:
    pretrained_backbone: bool = field(
        True,
        "Start the ResNet-18 trunk from ImageNet weights (--no-pretrained_backbone trains from scratch, no download).",
    )
    loss: str = field("mse", "Loss on the normalized ab.", choices=("mse", "l1"))


class CNNTask(TrainingTask):
    model_type = "cnn"
    config_class = CNNConfig
    flag_defaults = {"learning_rate": 1e-3}  # the report's Adam learning rate

    def check_resolution(self, resolution: int) -> None:
        if resolution < 32 or resolution % 8:
            raise ColorizationError(
                f"the CNN needs --resolution to be a multiple of 8 and at least 32, got {resolution}"
            )

    def build(self, train_config: TrainConfig, statistics: dict) -> None:
        model = ResNetColorizer(pretrained_backbone=self.config.pretrained_backbone)
        self.models = {"model": model}
        self.optimizers = {"model": make_optimizer(model.parameters(), train_config)}

    def _loss(self, predicted: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        loss = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss(predicted.float(), target, reduction=reduction)

    def training_step(self, trainer, lightness, ab):
        loss = self._loss(self.models["model"](lightness), ab)
        trainer.optimize("model", loss)
        return {"loss": loss.detach()}

    def colorizer(self) -> Colorizer:
        return FeedForwardColorizer(self.model_type, self.unwrapped("model"), self.resolution, self.accelerator.device)

    def validation_losses(self, lightness, ab, predicted_ab):
        return {"loss": self._loss(predicted_ab, ab, reduction="none").mean(dim=(1, 2, 3))}

    def architecture(self) -> dict:
        return {}
