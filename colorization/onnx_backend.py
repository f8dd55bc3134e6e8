"""Colorizers that run an ONNX export (``python -m colorization.export_onnx``) through ONNX Runtime on the CPU.

An ONNX folder holds ``model.onnx`` (the CNN's or the GAN generator's whole network, normalized L in and
normalized ab out; for the diffusion model one UNet step), the export's own ``colorizer.json`` and
``onnx.json`` (the graph's inputs and outputs, the exporter's versions and opset, the parity measured when
it was written); a diffusion model also its training schedule (``scheduler/``) and, when it refines a
one-pass model, that model's ONNX folder in ``regressor/``.

Only the network runs in ONNX Runtime. Everything around it is the torch path's own code: the one resize of
L to the model's resolution, the ab back to the input's size, the Lab join and the gamut handling
(:class:`~colorization.colorizer.Colorizer`), and for the diffusion model the sampler loop of
:meth:`~colorization.models.diffusion.LabColorizationPipeline.sample_ab` on the same diffusers scheduler (as
Hugging Face Optimum runs diffusers pipelines; assembled in :mod:`colorization.models.diffusion`, which
imports this module, not the other way round). So both backends give the same pictures.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np
import torch

from colorization.colorizer import Colorizer
from colorization.errors import ColorizationError

ONNX_MODEL = "model.onnx"
ONNX_RECORD = "onnx.json"
ONNX_FORMAT = "colorization-onnx"
REGRESSOR_DIR = "regressor"  # as in a torch export of a refining model
SCHEDULER_DIR = "scheduler"
BACKENDS = ("torch", "onnx")


def is_onnx_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ONNX_RECORD))


def read_onnx_record(path: str) -> dict:
    file = os.path.join(path, ONNX_RECORD)
    if not os.path.isfile(file):
        raise ColorizationError(
            f"{path!r} is not an ONNX export (no {ONNX_RECORD}); write one with "
            f"python -m colorization.export_onnx {path} ONNX_DIR"
        )
    try:
        with open(file) as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ColorizationError(f"cannot read {file}: {error}") from None
    if record.get("format") != ONNX_FORMAT:
        raise ColorizationError(f"{file} is not a record of this project's ONNX exports")
    return record


def inference_session(file: str):
    """An ONNX Runtime session on the CPU, or one clear error (onnxruntime missing, file missing or damaged)."""
    try:
        import onnxruntime
    except ImportError:
        raise ColorizationError("the ONNX backend needs onnxruntime: pip install -e '.[onnx]'") from None
    if not os.path.isfile(file):
        raise ColorizationError(f"{file} is missing: export the model again with python -m colorization.export_onnx")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(file, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) share no base
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ColorizationError(f"cannot load {file}: {first} (a truncated or damaged file? export it again)") from None


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxFeedForwardColorizer(Colorizer):
    """A one-pass model (CNN, GAN generator) whose network runs in ONNX Runtime."""

    backend = "onnx"

    def __init__(self, model_type: str, session, resolution: int):
        super().__init__(model_type, resolution, torch.device("cpu"))
        self.session = session

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        (ab,) = self.session.run(["ab"], {"lightness": _array(lightness)})
        return torch.from_numpy(ab)


class OnnxUNet:
    """The exported UNet step, called exactly as the sampler loop calls the torch UNet."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, session, config: dict):
        self.session = session
        self.config = SimpleNamespace(**config)  # sample_size, ab_scale, regressor_channels
        self.inputs = {i.name for i in session.get_inputs()}

    def __call__(self, noisy_ab, timestep, lightness, regressor_ab=None) -> torch.Tensor:
        feed = {
            "noisy_ab": _array(noisy_ab),
            "timestep": np.full((noisy_ab.shape[0],), float(timestep), dtype=np.float32),
            "lightness": _array(lightness),
        }
        if regressor_ab is not None:
            feed["regressor_ab"] = _array(regressor_ab)
        (prediction,) = self.session.run(["prediction"], feed)
        return torch.from_numpy(prediction)


def load_feed_forward_onnx(path: str, config: dict, **sampling) -> Colorizer:
    """An ONNX folder of a one-pass model (CNN, GAN) -> its colorizer (sampling options do not apply)."""
    read_onnx_record(path)
    return OnnxFeedForwardColorizer(
        config["model_type"], inference_session(os.path.join(path, ONNX_MODEL)), int(config["resolution"])
    )
