"""``load_colorizer``: any exported model (CNN, GAN, diffusion) -> a :class:`~colorization.colorizer.Colorizer`.

Only the family of the loaded model is imported, so colorizing with a CNN or a GAN imports neither
diffusers nor anything of training (accelerate, datasets, the harness).
"""

from __future__ import annotations

from typing import Union

import torch

from colorization.colorizer import Colorizer, default_device, read_export_config
from colorization.errors import ColorizationError
from colorization.families import family


def load_colorizer(path: str, device: Union[str, torch.device, None] = None, **sampling) -> Colorizer:
    """Load any exported model -> a :class:`Colorizer`.

    ``sampling`` options apply to the diffusion model (``scheduler`` in ddpm/ddim/dpm,
    ``num_inference_steps``, ``seed``); the one-pass models have none and ignore them.
    """
    config = read_export_config(path)
    try:
        known = family(config.get("model_type"))
    except ColorizationError as error:
        raise ColorizationError(f"{path!r} holds a model that cannot be loaded: {error}") from None
    device = torch.device(device) if device is not None else default_device()
    return known.inference_module().load_colorizer(path, config, device, **sampling)
