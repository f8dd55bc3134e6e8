"""The embedded default data set: procedurally drawn scenes whose colors follow from their gray content.

Nothing is downloaded. Each image is a function of its index alone, so every run and every process sees
the same data. A scene has a textured background and 1-4 shapes; the hue of every pixel is determined by
what it belongs to, which a network can read from the grayscale image:

| element              | how it looks in gray                  | its color (Lab a, b)    |
|----------------------|---------------------------------------|-------------------------|
| smooth background    | vertical brightness gradient          | sky blue (-10, -30)     |
| speckled background  | fine random grain                     | sand (12, 35)           |
| disk                 | round, filled                         | red (62, 48)            |
| square               | axis-aligned, filled                  | blue (18, -62)          |
| triangle             | three corners, filled                 | green (-52, 44)         |
| ring                 | round outline with a hole             | yellow (-4, 78)         |

Each shape has a random lightness and a dark outline, so the input shows its form but not its hue.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from colorization import color

NATIVE_SIZE = 128
DEFAULT_NUM_IMAGES = 1200
_SKY, _SAND = (-10.0, -30.0), (12.0, 35.0)
_SHAPE_COLORS = {"disk": (62.0, 48.0), "square": (18.0, -62.0), "triangle": (-52.0, 44.0), "ring": (-4.0, 78.0)}


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    if kind == "disk":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if kind == "ring":
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (np.abs(yy - cy) <= 0.85 * r) & (np.abs(xx - cx) <= 0.85 * r)
    # upward triangle: inside the three half-planes of its edges
    top, base = cy - r, cy + 0.8 * r
    half_width = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half_width)


def draw_scene(index: int, size: int = NATIVE_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw scene ``index``: returns Lab lightness (H, W) in [0, 100] and ab (2, H, W)."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:
        top, bottom = rng.uniform(70, 90), rng.uniform(35, 55)
        lightness = top + (bottom - top) * yy / (size - 1)
        ab_background = _SKY
    else:
        grain = rng.normal(0.0, 9.0, (size, size)).astype(np.float32)
        lightness = rng.uniform(50, 70) + grain
        ab_background = _SAND
    a = np.full((size, size), ab_background[0], np.float32)
    b = np.full((size, size), ab_background[1], np.float32)
    for _ in range(rng.integers(1, 5)):
        kind = str(rng.choice(list(_SHAPE_COLORS)))
        r = rng.uniform(0.1, 0.24) * size
        cy, cx = rng.uniform(r, size - r), rng.uniform(r, size - r)
        outline = _shape_mask(kind, yy, xx, cy, cx, r + 0.03 * size)
        inside = _shape_mask(kind, yy, xx, cy, cx, r)
        lightness = np.where(outline, 12.0, lightness)
        lightness = np.where(inside, rng.uniform(35, 85), lightness)
        a = np.where(inside, _SHAPE_COLORS[kind][0], np.where(outline, 0.0, a))
        b = np.where(inside, _SHAPE_COLORS[kind][1], np.where(outline, 0.0, b))
    return np.clip(lightness, 0.0, 100.0).astype(np.float32), np.stack((a, b))


def generate_images(num_images: int = DEFAULT_NUM_IMAGES, size: int = NATIVE_SIZE, seed: int = 0) -> list[Image.Image]:
    """Render ``num_images`` scenes as RGB PIL images (deterministic)."""
    images = []
    for start in range(0, num_images, 64):
        scenes = [draw_scene(i, size, seed) for i in range(start, min(start + 64, num_images))]
        lab = torch.from_numpy(np.stack([np.concatenate((lightness[None], ab)) for lightness, ab in scenes]))
        rgb = color.lab_to_rgb(lab)
        pixels = (rgb.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
        images.extend(Image.fromarray(p) for p in pixels)
    return images
