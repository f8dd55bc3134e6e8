"""The one path from a batch of images to numbers, for validation during training and for ``evaluate.py``.

:func:`measure` takes a :class:`~colorization.colorizer.Colorizer` (an exported model, or the live network
wrapped in the same class during validation) and a batch of ground-truth images: it colorizes their L at the
model's resolution in fp32, brings the ab to the batch's resolution, joins it with the batch's own L, and
measures every image. A stochastic model's noise is seeded per image, from (seed, image index, sample number),
so the numbers do not depend on batching, on the number of processes, or on where they are computed.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from colorization import color
from colorization.colorizer import Colorizer
from colorization.metrics import (
    ab_histogram,
    colorfulness,
    colorfulness_crps,
    ensemble_calibration,
    is_gray_truth,
    psnr_per_image,
    ssim_per_image,
)


def sample_seed(seed: int, index: int, sample: int = 0) -> int:
    """The noise seed of sample ``sample`` of image ``index`` (a data set index) under ``seed``."""
    return int(np.random.SeedSequence([seed, int(index), sample]).generate_state(1)[0])


def image_metrics(
    prediction: torch.Tensor, truth: torch.Tensor, metrics: Sequence[str], lpips=None
) -> dict[str, torch.Tensor]:
    """Per-image values (N,) of each metric (``ab_histogram``: (N, bins)) of sRGB predictions in [0, 1]."""
    values = {}
    if "lpips" in metrics:
        values["lpips"] = lpips(prediction, truth, normalize=True).flatten()  # [0, 1] -> [-1, 1] inside
    if "psnr" in metrics:
        values["psnr"] = psnr_per_image(prediction, truth)
    if "ssim" in metrics:
        values["ssim"] = ssim_per_image(prediction, truth)
    if "colorfulness" in metrics:
        values["colorfulness"] = colorfulness(prediction)
    if "ab_histogram" in metrics:
        values["ab_histogram"] = ab_histogram(prediction)
    return values


@torch.no_grad()
def measure(
    colorizer: Colorizer,
    truth: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    metrics: Sequence[str],
    lpips=None,
    num_samples: int = 1,
    timing: dict | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Colorize and measure a batch -> (per-image values, predicted sRGB (N, 3, H, W), predicted normalized ab).

    ``truth`` is sRGB in [0, 1] at the measuring resolution; ``indices`` are the images' data set indices.
    With ``num_samples`` K > 1 (stochastic models) the values also hold ``psnr_mean``/``ssim_mean`` (of the
    mean ab of K samples joined with L), ``diversity`` (the mean distance in Lab ab units between two samples of
    an image, averaged over pixels and pairs), and ``spread2``/``error2``/``num_samples``: the spread of the K
    samples and the error of their mean in sRGB (:func:`~colorization.metrics.ensemble_calibration`), from which
    the table estimates the spread-skill ratio and the PSNR of the sampler's own posterior mean; with
    ``colorfulness`` in ``metrics`` also ``colorfulness_crps`` (:func:`~colorization.metrics.colorfulness_crps`
    of the K samples against the truth). The prediction is sample 0. ``timing`` (optional): its "seconds" and
    "images" grow by the time the model alone took (no metric, no color conversion) and the images it colorized.
    """
    truth = truth.float()
    lightness, _ = color.rgb_to_normalized_lab(truth)
    count = len(indices)
    samples = num_samples if colorizer.stochastic else 1
    started = _now(truth.device) if timing is not None else 0.0
    # Sample k of every image in one call of the batch's size, not all K x N at once: on a CPU a batch that large
    # runs out of the caches (benchmarks/README.md: a batch of K x N against K batches of N).
    # Each image's noise comes from its own seed, so its colors do not depend on the batch they are drawn in.
    seeds = [[sample_seed(seed, int(i), k) for i in indices] for k in range(samples)]
    ab = torch.stack([colorizer.colorize_lightness(lightness, seeds[k]) for k in range(samples)])
    if timing is not None:
        timing["seconds"] = timing.get("seconds", 0.0) + _now(truth.device) - started
        timing["images"] = timing.get("images", 0) + samples * count
    prediction = color.normalized_lab_to_rgb(lightness, ab[0])
    values = image_metrics(prediction, truth, metrics, lpips)
    if samples > 1:
        # in the space PSNR is computed in: sRGB in [0, 1]
        sample_rgb = torch.stack([color.normalized_lab_to_rgb(lightness, ab[k]) for k in range(samples)])
        spread2, error2 = ensemble_calibration(sample_rgb, truth)
        if "colorfulness" in metrics:  # sample 0's is already measured: it is the prediction
            sample_colorfulness = torch.stack([values["colorfulness"], *map(colorfulness, sample_rgb[1:])])
            values["colorfulness_crps"] = colorfulness_crps(sample_colorfulness, colorfulness(truth)).float()
        values.update(
            spread2=spread2.float(), error2=error2.float(), num_samples=torch.full_like(spread2, samples).float()
        )
        mean = color.normalized_lab_to_rgb(lightness, ab.mean(dim=0))
        values["psnr_mean"] = psnr_per_image(mean, truth)
        values["ssim_mean"] = ssim_per_image(mean, truth)
        pairs = [(j, k) for j in range(samples) for k in range(j + 1, samples)]
        distances = [(ab[j] - ab[k]).mul(color.AB_SCALE).norm(dim=1).mean(dim=(1, 2)) for j, k in pairs]
        values["diversity"] = torch.stack(distances).mean(dim=0)
    return values, prediction, ab[0]


def _now(device: torch.device) -> float:
    if device.type == "cuda":  # the GPU's queued work belongs to the interval it was queued in
        torch.cuda.synchronize(device)
    return time.perf_counter()


def gray_baseline(
    truth: torch.Tensor, metrics: Sequence[str], lpips=None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The gray row: the input's own L with ab = 0 -> (per-image values, its sRGB)."""
    lightness, _ = color.rgb_to_normalized_lab(truth.float())
    gray = color.gray_rgb(lightness)
    return image_metrics(gray, truth.float(), metrics, lpips), gray


def mean_ab_baseline(
    truth: torch.Tensor, mean_ab: torch.Tensor, metrics: Sequence[str], lpips=None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The mean-ab row: each image's own L joined with the per-pixel mean ab of a model's training images
    (Lab units, (2, R, R), resized to the batch's resolution) -> (per-image values, its sRGB)."""
    import torch.nn.functional as F

    truth = truth.float()
    lightness, _ = color.rgb_to_normalized_lab(truth)
    ab = color.normalize_ab(mean_ab.to(truth.device).float())[None]
    if ab.shape[-2:] != lightness.shape[-2:]:
        ab = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    prediction = color.normalized_lab_to_rgb(lightness, ab.expand(len(truth), -1, -1, -1))
    return image_metrics(prediction, truth, metrics, lpips), prediction


def truth_values(truth: torch.Tensor, metrics: Sequence[str]) -> dict[str, torch.Tensor]:
    """The ground truth's own colorfulness and ab histogram (the reference of the distribution metrics), and
    ``gray_truth``: 1 for an image that is itself black and white (left out of the numbers, see metrics)."""
    values = image_metrics(truth.float(), truth.float(), [m for m in metrics if m in ("colorfulness", "ab_histogram")])
    return {**values, "gray_truth": is_gray_truth(truth).float()}
