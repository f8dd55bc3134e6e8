"""Decoding images: any file Pillow reads, any mode, to RGB; and the resize + crop every model is trained with.

Used by the data pipeline and by inference alike, so it imports neither ``datasets`` nor the trainer.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import functional as TF

# What decoding a bad file raises: truncated or corrupt data (OSError, SyntaxError, ValueError), not an image
# at all (UnidentifiedImageError), or more pixels than PIL accepts (DecompressionBombError, an Exception of its
# own: PIL raises it for images over twice Image.MAX_IMAGE_PIXELS, and only warns below that).
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, with EXIF orientation applied and transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) gray: PIL's own conversion clips at 255, so rescale to 8 bits.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def open_image(path_or_file) -> Image.Image:
    """Open and fully decode an image file (so that a truncated file fails here, not later)."""
    image = Image.open(path_or_file)
    image.load()
    return image


def decode_image(value) -> Image.Image:
    """A value of an image column (PIL image, or ``{"bytes", "path"}`` from an undecoded column) -> RGB."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    data, path = value.get("bytes"), value.get("path")
    with open_image(io.BytesIO(data) if data is not None else path) as image:
        return to_rgb(image)


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic, antialiased); an image already that size is kept as
    it is, so that stored shards (``colorization.shard``) crop to the pixels the original gives."""
    return TF.resize(image, resolution, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)


def resize_and_crop(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution`` (bicubic, antialiased), center-crop a square -> uint8 (3, R, R)."""
    image = TF.center_crop(resize_shorter_side(image, resolution), [resolution, resolution])
    return TF.pil_to_tensor(image)


def crop_of_stored_pixels(data: bytes, resolution: int) -> Optional[torch.Tensor]:
    """The ``resolution`` x ``resolution`` center crop of a binary PPM (the raw RGB pixels that
    ``colorization.shard --image_format ppm`` stores) whose shorter side is already ``resolution`` -> uint8
    (3, R, R), read without a decoder: exactly :func:`resize_and_crop`'s pixels (the resize keeps an image of
    that size as it is; the crop offsets are torchvision's). None for any other file, which then takes the
    decoding path."""
    if not data.startswith(b"P6\n"):
        return None
    size = data[3:32].split(b"\n", 1)[0].split(b" ")
    if len(size) != 2 or not all(field.isdigit() for field in size):
        return None
    width, height = int(size[0]), int(size[1])
    header = b"P6\n%d %d\n255\n" % (width, height)  # the header Pillow writes; any other is decoded
    start = len(header)
    if min(width, height) != resolution or len(data) != start + width * height * 3 or data[:start] != header:
        return None
    pixels = np.frombuffer(data, dtype=np.uint8, offset=start).reshape(height, width, 3)
    top, left = int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))
    crop = pixels[top : top + resolution, left : left + resolution]
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))


def to_unit_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (on the pixels' device)."""
    return pixels.float().div_(255.0)
