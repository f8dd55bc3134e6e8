"""The exported-model format and the :class:`Colorizer` interface every model family implements.

An exported model is a folder with ``colorizer.json`` (which model type it is, the arguments that rebuild
its network, its training resolution, how it was trained, and the version of this package that wrote it)
next to its weights, always safetensors: ``model.safetensors`` for the one-pass CNN and GAN generator, a
diffusers pipeline folder (``unet/``, ``scheduler/``, ``model_index.json``) for the diffusion model. Two
optional files describe the training data: ``mean_ab.safetensors`` (the per-pixel mean ab of the training
images, for the mean-ab baseline row of ``evaluate.py``) and ``training_images.json`` (a hash of every
training image, so that ``evaluate.py`` can refuse to score a model on its own training images).

Inference precision: every colorizer computes in float32, whatever autocast context it is called from, so
validation during training and ``evaluate.py`` measure the same numbers; a diffusion colorizer may run its UNet
in bf16 autocast instead (its ``precision``, :func:`resolve_precision`), and keeps its sampler's arithmetic in
float32. Validation, ``evaluate.py``, ``colorize`` and the demo all ask for ``auto`` by default.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from colorization import color
from colorization.errors import ColorizationError
from colorization.files import atomic_write, read_json_if_present, write_json
from colorization.images import to_rgb
from colorization.version import __version__

CONFIG_NAME = "colorizer.json"
WEIGHTS_NAME = "model.safetensors"
MEAN_AB_NAME = "mean_ab.safetensors"
TRAINING_IMAGES_NAME = "training_images.json"
FORMAT_NAME = "colorization-model"
FORMAT_VERSION = 1


# ----- files -----


def save_export_config(
    output_dir: str, model_type: str, architecture: dict, resolution: int, extra: dict | None = None
) -> None:
    """Write ``colorizer.json``: what the model is, how to rebuild it, at what resolution it was trained."""
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        "architecture": architecture,
        "resolution": resolution,
        "package_version": __version__,
        **(extra or {}),
    }
    write_json(os.path.join(output_dir, CONFIG_NAME), config)


def save_module_weights(output_dir: str, module: torch.nn.Module, model_type: str) -> None:
    """Write ``module``'s weights (parameters and buffers) as ``model.safetensors``."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(
        os.path.join(output_dir, WEIGHTS_NAME), lambda p: save_file(state, p, metadata={"model_type": model_type})
    )


def save_training_data_record(output_dir: str, mean_ab: Optional[torch.Tensor], image_hashes: Optional[dict]) -> None:
    """The training data's per-pixel mean ab (Lab units, (2, R, R)) and the hashes of its images."""
    if mean_ab is not None:
        atomic_write(
            os.path.join(output_dir, MEAN_AB_NAME),
            lambda p: save_file({"mean_ab": mean_ab.detach().float().contiguous().cpu()}, p),
        )
    if image_hashes is not None:
        write_json(os.path.join(output_dir, TRAINING_IMAGES_NAME), image_hashes)


def read_mean_ab(path: str) -> Optional[torch.Tensor]:
    """The mean training ab (Lab units, (2, R, R)) an export carries, or None."""
    file = os.path.join(path, MEAN_AB_NAME)
    return load_file(file)["mean_ab"] if os.path.isfile(file) else None


def read_training_images(path: str) -> Optional[dict]:
    """``{"hash": ..., "images": [...]}`` of the training images an export carries, or None."""
    return read_json_if_present(os.path.join(path, TRAINING_IMAGES_NAME))


def read_export_config(path: str) -> dict:
    if not os.path.exists(path):
        raise ColorizationError(f"model path {path!r} does not exist")
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isdir(path) or not os.path.isfile(config_path):
        hint = (
            " It looks like a training checkpoint; load the run's output folder, where the trained model "
            "is exported when training ends."
            if os.path.isfile(os.path.join(path, WEIGHTS_NAME))
            else ""
        )
        raise ColorizationError(f"{path!r} is not an exported colorization model (no {CONFIG_NAME}).{hint}")
    try:
        with open(config_path) as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ColorizationError(f"cannot read {config_path}: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ColorizationError(f"{config_path} is not a colorization model config")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ColorizationError(
            f"{path!r} was written by colorization {config.get('package_version')} in model format "
            f"{config.get('format_version')}; this installation reads format {FORMAT_VERSION}. Upgrade the package."
        )
    return config


def load_feed_forward_colorizer(path: str, config: dict, device: torch.device, build) -> "Colorizer":
    """Rebuild a one-pass network with ``build(**architecture)``, load its safetensors weights strictly."""
    weights, config_file, model_type = (
        os.path.join(path, WEIGHTS_NAME),
        os.path.join(path, CONFIG_NAME),
        config["model_type"],
    )
    try:
        state = load_file(weights)
    except (OSError, SafetensorError) as error:
        raise ColorizationError(
            f"cannot read {weights}: {_first_line(error)} (a truncated or damaged file? copy or export the model again)"
        ) from None
    try:
        module = build(**config["architecture"])
    except (TypeError, KeyError, ValueError) as error:
        raise ColorizationError(
            f"{config_file} does not describe a {model_type} network: {_first_line(error)}"
        ) from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ColorizationError(
            f"{weights} does not hold the {model_type} network that {config_file} describes "
            f"({_first_line(error)} ...): is one of the two files from another model?"
        ) from None
    return FeedForwardColorizer(config["model_type"], module, int(config["resolution"]), device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which it has no native bf16 kernels: bf16 is then emulated, 65x
# slower than fp32 for the small UNet on an AMX Xeon limited to AVX2 (benchmarks/README.md)
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(device: Union[str, torch.device]) -> bool:
    """Whether ``device`` computes bf16 convolutions faster than fp32: a CUDA GPU of compute capability 8 or more
    (Ampere on), or a CPU with AVX512-BF16 or AMX-BF16 that oneDNN may use (not limited by ONEDNN_MAX_CPU_ISA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return limit not in _ISAS_WITHOUT_BF16 and bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """An inference precision (``config.PRECISIONS``) on ``device`` -> "fp32" or "bf16": auto is bf16 where the
    device computes it fast (:func:`fast_bf16`), else fp32."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ColorizationError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ColorizationError(f"{torch.cuda.get_device_name(device)} does not compute bf16; use --precision fp32")
    return precision


# ----- colorizers -----


class Colorizer:
    """Colorizes images with a trained model, keeping each input's own full-resolution lightness.

    The network sees the L channel resized to its training resolution; its ab is upsampled back to the
    input's size and joined with the input's L (the approach of Zhang et al.), so the output has the
    input's size, aspect ratio, detail and exact luminance.

    Stochastic models (the diffusion model) draw each image's colors from a generator seeded by that
    image's own seed, so an image's colors depend on (model, image, seed) only, never on its batch.
    """

    stochastic = False
    backend = "torch"  # or "onnx": the network runs in ONNX Runtime (colorization.onnx_backend)
    precision = "fp32"  # what the network computes in (a diffusion model's UNet may run in "bf16")

    def __init__(self, model_type: str, resolution: int, device: torch.device, seed: int = 0):
        self.model_type = model_type
        self.resolution = resolution
        self.device = torch.device(device)
        self.seed = seed  # the default seed of colorize()
        self.origin: Optional[dict] = None  # a model loaded by Hub id: its repo id, revision and commit

    @property
    def network(self) -> torch.nn.Module:
        """The network that runs at inference (for its size)."""
        raise NotImplementedError

    def describe_sampling(self) -> str:
        """How outputs are sampled ('' for one-pass models), e.g. 'DPM-20'."""
        return ""

    def predict_ab(self, lightness: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Normalized L (N, 1, R, R) on ``self.device`` -> normalized ab (N, 2, R, R); ``seeds``: one per image
        (stochastic models; default: ``self.seed`` for every image)."""
        raise NotImplementedError

    def _to_model_size(self, lightness: torch.Tensor) -> torch.Tensor:
        """The one resize of the input to the network: normalized L to the model's resolution (bilinear,
        antialiased), for evaluation, validation and colorize alike."""
        if lightness.shape[-2:] == (self.resolution, self.resolution):
            return lightness
        return F.interpolate(
            lightness, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
        )

    @staticmethod
    def _to_input_size(ab: torch.Tensor, size) -> torch.Tensor:
        """The predicted ab back to the input's size (bilinear), to be joined with the input's own L."""
        if ab.shape[-2:] == tuple(size):
            return ab
        return F.interpolate(ab, size=tuple(size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def _predict(self, small: torch.Tensor, seeds: Optional[Sequence[int]]) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):
            return self.predict_ab(small.to(self.device).float(), seeds).float()

    @torch.no_grad()
    def colorize_lightness(self, lightness: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Normalized L of any size (N, 1, H, W) -> ab (N, 2, H, W), predicted at the model's resolution, in fp32."""
        ab = self._predict(self._to_model_size(lightness), seeds)
        return self._to_input_size(ab, lightness.shape[-2:]).to(lightness.device)

    def colorize(
        self, images: Union[Image.Image, Sequence[Image.Image]], batch_size: int = 8, seed: Optional[int] = None
    ):
        """A PIL image -> a colorized PIL image of the same size; a list of images -> a list (any sizes).

        Any mode is accepted (16-bit, CMYK, palette...); EXIF orientation is applied; an alpha channel is
        kept. The model sees the image's L resized exactly as :meth:`colorize_lightness` (the path of validation
        and ``evaluate.py``) resizes it, so a photo at the model's resolution gets the table's pixels; the output
        is joined with the full-resolution L in tiles of rows, so very large images need little memory. ``seed``
        (stochastic models; default: the colorizer's) seeds every image alike: the same photo and seed give the
        same colors in any batch.
        """
        single = isinstance(images, Image.Image)
        items = [images] if single else list(images)
        seed = self.seed if seed is None else seed
        results = []
        for start in range(0, len(items), batch_size):
            prepared = [_split_alpha(image) for image in items[start : start + batch_size]]
            lightness = [_full_lightness(rgb) for rgb, _ in prepared]
            small = torch.cat([self._to_model_size(full) for full in lightness])
            ab_small = self._predict(small, [seed] * len(prepared)).cpu()
            results.extend(
                self._join(full, ab[None], alpha) for full, ab, (_, alpha) in zip(lightness, ab_small, prepared)
            )
        return results[0] if single else results

    def _join(self, lightness: torch.Tensor, ab_small: torch.Tensor, alpha: Optional[Image.Image]) -> Image.Image:
        height, width = lightness.shape[-2:]
        ab = self._to_input_size(ab_small, (height, width))
        output = np.empty((height, width, 3), dtype=np.uint8)
        rows = max(1, _TILE_PIXELS // width)
        for top in range(0, height, rows):
            joined = color.normalized_lab_to_rgb(lightness[..., top : top + rows, :], ab[..., top : top + rows, :])[0]
            output[top : top + rows] = (joined.permute(1, 2, 0) * 255.0).round().byte().numpy()
        result = Image.fromarray(output)
        if alpha is not None:
            result.putalpha(alpha)
        return result


_TILE_PIXELS = 1 << 21  # about 2 megapixels per tile when joining L and ab


def _full_lightness(rgb: Image.Image) -> torch.Tensor:
    """The image's own normalized L (1, 1, H, W) at full resolution, computed in tiles of rows."""
    pixels = np.array(rgb)  # writable, as torch.from_numpy expects
    height, width = pixels.shape[:2]
    lightness = torch.empty(1, 1, height, width)
    rows = max(1, _TILE_PIXELS // width)
    for top in range(0, height, rows):
        tile = torch.from_numpy(pixels[top : top + rows]).permute(2, 0, 1)[None].float().div(255.0)
        lightness[..., top : top + rows, :] = color.rgb_to_normalized_lab(tile)[0]
    return lightness


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Optional[Image.Image]]:
    """-> (RGB image, its alpha channel or None), with EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    alpha = image.convert("RGBA").getchannel("A") if has_alpha else None
    return to_rgb(image), alpha


class FeedForwardColorizer(Colorizer):
    """A network whose ``predict_ab`` maps normalized L to normalized ab in one pass (CNN, GAN generator).

    The network runs in eval mode: batch norm uses its running statistics, so an image's colors never depend
    on the other images of its batch."""

    def __init__(self, model_type: str, module: torch.nn.Module, resolution: int, device: torch.device):
        super().__init__(model_type, resolution, device)
        self.module = module.to(self.device).eval()

    @property
    def network(self) -> torch.nn.Module:
        return self.module

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        return self.module.predict_ab(lightness)
