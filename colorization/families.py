"""The model families, in one place: what loading, training, ``reproduce`` and the tables know of each.

Modules and classes are named here, not imported, so that reading the registry imports nothing heavy
(``python -m colorization.reproduce --help`` imports no torch) and loading a CNN never imports diffusers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from colorization.errors import ColorizationError


@dataclass(frozen=True)
class Family:
    name: str  # the model_type of its exports (colorizer.json) and of its flags
    display_name: str  # its row in reproduce's table
    inference: str  # the module of its inference half: load_colorizer(path, config, device, **sampling)
    training: str  # "module:Class" of its training half, a TrainingTask on the harness
    colorizer: str  # "module:Class": the Colorizer its exports load as (validation measures that class too)
    without_pretrained: tuple = ()  # training flags that download no pretrained weights

    def inference_module(self):
        return importlib.import_module(self.inference)

    def task_class(self) -> type:
        return _attribute(self.training)

    def colorizer_class(self) -> type:
        return _attribute(self.colorizer)

    @property
    def script(self) -> str:
        return f"train_{self.name}.py"


def _attribute(reference: str):
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "cnn",
            "CNN",
            "colorization.models.cnn",
            "colorization.tasks.cnn:CNNTask",
            "colorization.colorizer:FeedForwardColorizer",
            ("--no-pretrained_backbone",),
        ),
        Family(
            "gan",
            "GAN",
            "colorization.models.gan",
            "colorization.tasks.gan:GANTask",
            "colorization.colorizer:FeedForwardColorizer",
            ("--lambda_perceptual", "0"),
        ),
        Family(
            "diffusion",
            "Diffusion",
            "colorization.models.diffusion",
            "colorization.tasks.diffusion:DiffusionTask",
            "colorization.models.diffusion:DiffusionColorizer",
        ),
    )
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ColorizationError(f"unknown model type {name!r} (this installation knows {', '.join(FAMILIES)})")
    return FAMILIES[name]
