"""``load_colorizer``: any exported model (CNN, GAN, diffusion) -> a :class:`~colorization.colorizer.Colorizer`.

Only the family of the loaded model is imported, so colorizing with a CNN or a GAN imports neither
diffusers nor anything of training (accelerate, datasets, the harness).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from colorization.colorizer import Colorizer, default_device, read_export_config
from colorization.errors import ColorizationError
from colorization.families import family
from colorization.hub import resolve
from colorization.onnx_backend import BACKENDS, is_onnx_export, load_feed_forward_onnx, read_onnx_record


def load_colorizer(
    path: str,
    device: Union[str, torch.device, None] = None,
    revision: Optional[str] = None,
    backend: str = "torch",
    **sampling,
) -> Colorizer:
    """Load any exported model, from a folder or by Hugging Face Hub id ("owner/name", at ``revision``; a local
    folder of that name wins) -> a :class:`Colorizer`; ``colorizer.origin`` says where a Hub model came from.

    ``sampling`` options apply to the diffusion model (``scheduler``, ``num_inference_steps``, ``seed``,
    ``guidance_scale``, ``precision``, ``compile``); the one-pass models have none and ignore them.
    ``backend="onnx"``: ``path`` is an ONNX folder (``python -m colorization.export_onnx``), run by ONNX Runtime
    on the CPU with the same pre- and post-processing.
    """
    if backend not in BACKENDS:
        raise ColorizationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    local, origin = resolve(path, revision)
    if backend == "onnx" and device is not None and torch.device(device).type != "cpu":
        raise ColorizationError(f"the ONNX backend runs on the CPU, not on {device}")
    if backend == "onnx":
        read_onnx_record(local)  # an ONNX folder, or one clear error
    elif is_onnx_export(local):
        raise ColorizationError(f"{path!r} is an ONNX export: load it with backend='onnx' (colorize --backend onnx)")
    try:
        config = read_export_config(local)
    except ColorizationError as error:
        if origin is None:
            raise
        raise ColorizationError(f"the Hub model {path} is not an export of this project ({error})") from None
    try:
        known = family(config.get("model_type"))
    except ColorizationError as error:
        raise ColorizationError(f"{path!r} holds a model that cannot be loaded: {error}") from None
    device = torch.device(device) if device is not None else default_device()
    module = known.inference_module()
    if backend == "onnx":  # a family with a sampler loop assembles it itself; one-pass models are one graph
        colorizer = getattr(module, "load_onnx_colorizer", load_feed_forward_onnx)(local, config, **sampling)
    else:
        colorizer = module.load_colorizer(local, config, device, **sampling)
    colorizer.origin = origin
    return colorizer
