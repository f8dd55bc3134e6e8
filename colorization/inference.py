"""``load_colorizer``: any exported model (CNN, GAN, diffusion) -> a :class:`~colorization.colorizer.Colorizer`.

Only the family of the loaded model is imported, so colorizing with a CNN or a GAN imports neither
diffusers nor anything of training (accelerate, datasets, the harness).
"""

from __future__ import annotations

import importlib
from typing import Union

import torch

from colorization.colorizer import Colorizer, default_device, read_export_config
from colorization.errors import ColorizationError

# model type -> the module of its inference half, which defines load_colorizer(path, config, device, **sampling)
FAMILIES = {
    "cnn": "colorization.models.cnn",
    "gan": "colorization.models.gan",
    "diffusion": "colorization.models.diffusion",
}


def load_colorizer(path: str, device: Union[str, torch.device, None] = None, **sampling) -> Colorizer:
    """Load any exported model -> a :class:`Colorizer`.

    ``sampling`` options apply to the diffusion model (``scheduler`` in ddpm/ddim/dpm,
    ``num_inference_steps``, ``seed``); the one-pass models have none and ignore them.
    """
    config = read_export_config(path)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ColorizationError(
            f"{path!r} holds a model of unknown type {model_type!r} (this installation knows {sorted(FAMILIES)})"
        )
    family = importlib.import_module(FAMILIES[model_type])
    device = torch.device(device) if device is not None else default_device()
    return family.load_colorizer(path, config, device, **sampling)
