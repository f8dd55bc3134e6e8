"""What a colorization is measured by, shared by validation and evaluation.

Per image, on sRGB in [0, 1]: PSNR and SSIM (torchmetrics), Hasler-Suesstrunk colorfulness, and the 2-D
histogram of the image's Lab ab. Over a set of images: the sliced Wasserstein distance between two ab
distributions, and paired bootstrap intervals (the same resampled images for every row).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from colorization import color

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capping keeps means finite (documented)

# ab histograms: bins 2 Lab units wide, centred on even values (so the gray axis a = b = 0 is a bin centre),
# covering [-111, 111), which holds the whole sRGB gamut (a in -86..98, b in -108..95).
AB_BIN_WIDTH = 2.0
AB_LIMIT = 111.0
AB_BINS = int(2 * AB_LIMIT / AB_BIN_WIDTH)  # per axis
BOOTSTRAP_SAMPLES = 1000
SLICED_DIRECTIONS = 32


def _check(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.dim() != 4 or prediction.shape[1] != 3:
        raise ValueError(f"expected two (N, 3, H, W) batches, got {tuple(prediction.shape)} and {tuple(target.shape)}")


def psnr_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image (data range 1), capped at ``PSNR_CAP_DB``."""
    _check(prediction, target)
    psnr = peak_signal_noise_ratio(prediction.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return psnr.clamp(max=PSNR_CAP_DB)


def ssim_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image: 11x11 Gaussian window (sigma 1.5), data range 1, averaged over channels."""
    _check(prediction, target)
    return structural_similarity_index_measure(prediction.float(), target.float(), data_range=1.0, reduction="none")


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk (2003) colorfulness of each image (sRGB in [0, 1], computed on 0..255)."""
    rgb = rgb.float() * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    spread = torch.sqrt(rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.flatten(1).mean(dim=1) ** 2 + yb.flatten(1).mean(dim=1) ** 2)
    return spread + 0.3 * mean


def ab_histogram(rgb: torch.Tensor) -> torch.Tensor:
    """Pixel counts of each image's Lab ab on the fixed ``AB_BINS`` x ``AB_BINS`` grid -> (N, AB_BINS**2) float32."""
    ab = color.rgb_to_lab(rgb)[:, 1:]
    cells = ((ab + AB_LIMIT) / AB_BIN_WIDTH).floor().long().clamp_(0, AB_BINS - 1)
    flat = (cells[:, 0] * AB_BINS + cells[:, 1]).flatten(1)
    counts = torch.zeros(flat.shape[0], AB_BINS * AB_BINS, dtype=torch.float32, device=flat.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))


def ab_bin_centres() -> np.ndarray:
    """(AB_BINS**2, 2) (a, b) of each histogram bin, in the order of :func:`ab_histogram`."""
    centres = -AB_LIMIT + AB_BIN_WIDTH * (np.arange(AB_BINS) + 0.5)
    a, b = np.meshgrid(centres, centres, indexing="ij")
    return np.stack((a.ravel(), b.ravel()), axis=1)


def sliced_wasserstein(
    p: np.ndarray, q: np.ndarray, points: np.ndarray | None = None, directions: int = SLICED_DIRECTIONS
) -> np.ndarray:
    """Sliced Wasserstein-1 distance between weighted point sets, in the points' units (Lab ab units here).

    ``p`` and ``q`` are non-negative weights on the same ``points`` (default: the ab bin centres), of shape
    (..., P); each is normalised to sum 1. The distance is the mean over ``directions`` angles evenly spaced on
    the half circle of the exact 1-D Wasserstein-1 distance between the two projected distributions. It is a
    metric, it grows with how far color has to move (unlike a divergence between histograms, which is the same
    for every pair of disjoint ones), and for two copies of one distribution shifted by d it equals 2|d|/pi.
    """
    points = ab_bin_centres() if points is None else np.asarray(points, dtype=np.float64)
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    support = (p.reshape(-1, p.shape[-1]) > 0).any(axis=0) | (q.reshape(-1, q.shape[-1]) > 0).any(axis=0)
    p, q, points = p[..., support], q[..., support], points[support]
    difference = p / p.sum(axis=-1, keepdims=True) - q / q.sum(axis=-1, keepdims=True)
    angles = np.pi * np.arange(directions) / directions
    total = np.zeros(difference.shape[:-1])
    for angle in angles:
        projected = points @ np.array([np.cos(angle), np.sin(angle)])
        order = np.argsort(projected, kind="stable")
        gaps = np.diff(projected[order])
        cumulative = np.cumsum(difference[..., order], axis=-1)[..., :-1]
        total += np.abs(cumulative) @ gaps
    return total / directions


# ----- stochastic models: is the spread of K samples the size of their error? -----

MSE_FLOOR = 10 ** (-PSNR_CAP_DB / 10)  # the mean squared error at the PSNR cap
# A ground truth whose 99th percentile of chroma (sqrt(a^2 + b^2), Lab units) is under this is a black-and-white
# photo: its gray row scores ~PSNR_CAP_DB and would drag every paired difference to gray. Measured on the 4,653
# AFHQ train cats at 64 px: two have 0 (black-and-white photos), the next lowest 2.8 (a white cat whose only
# color is its blue eyes), then 3.9 and up; noise of ~1 Lab unit in a gray photo stays under 1.2.
GRAY_TRUTH_CHROMA = 2.0


def is_gray_truth(rgb: torch.Tensor) -> torch.Tensor:
    """Which images (N, 3, H, W sRGB in [0, 1]) are themselves black and white -> bool (N,)."""
    ab = color.rgb_to_lab(rgb.float())[:, 1:]
    chroma = ab.norm(dim=1).flatten(1)
    return torch.quantile(chroma, 0.99, dim=1) < GRAY_TRUTH_CHROMA


def ensemble_calibration(samples: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K samples (K, N, ...) of N images and their truth (N, ...) -> per image (spread^2, error^2), each averaged
    over the image's elements: spread^2 = sum_k |s_k - mu|^2 / (K - 1), error^2 = |y - mu|^2, mu the samples' mean.

    If the samples and the truth are exchangeable draws from one distribution (a calibrated sampler),
    E[error^2] = (1 + 1/K) E[spread^2] (the spread-skill relation of ensemble forecasts, Fortin et al. 2014)."""
    k = samples.shape[0]
    if k < 2:
        raise ValueError("the spread of samples needs at least two of them")
    samples, truth = samples.double(), truth.double()
    mean = samples.mean(dim=0)
    spread2 = (samples - mean).pow(2).sum(dim=0).div(k - 1).flatten(1).mean(dim=1)
    error2 = (truth - mean).pow(2).flatten(1).mean(dim=1)
    return spread2, error2


def mse_from_psnr(psnr: np.ndarray) -> np.ndarray:
    """Per-image mean squared error (data range 1) from its PSNR in dB (an image at the PSNR cap gets the
    cap's error, ``MSE_FLOOR``)."""
    return 10.0 ** (-np.asarray(psnr, np.float64) / 10.0)


def posterior_mean_mse(spread2: np.ndarray, error2: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per image, the unbiased estimate of the squared error of the sampler's own posterior mean (K -> infinity):
    error^2 - spread^2 / K. Unbiased, but noisy (it can be negative for one image), so it is only ever averaged
    over images before a log is taken (:func:`pooled_psnr`): a mean of per-image logs of it is biased upward
    (log is concave), the more the noisier the estimate."""
    return np.asarray(error2, np.float64) - np.asarray(spread2, np.float64) / np.asarray(k, np.float64)


def pooled_psnr(mse: np.ndarray, counts: np.ndarray) -> dict:
    """PSNR (data range 1) of the mean squared error pooled over the images, 10 log10(1 / mean MSE), with the
    95% interval from the resamples ``counts`` -> {"mean", "ci95"}. Comparing rows by this (their MSE ratio)
    weighs each image by its error, as one PSNR over the whole set does; it is the form in which an unbiased
    per-image estimate of an MSE stays unbiased (up to the O(1/N) bias of one log of a mean over N images)."""
    mse = np.asarray(mse, np.float64)
    value = 10.0 * np.log10(1.0 / max(mse.mean(), MSE_FLOOR))
    if len(mse) < 2:
        return {"mean": float(value), "ci95": (float("nan"), float("nan"))}
    replicates = 10.0 * np.log10(len(mse) / np.maximum(counts @ mse, MSE_FLOOR * len(mse)))
    return {"mean": float(value), "ci95": percentile_interval(replicates)}


def pooled_gain(mse: np.ndarray, reference_mse: np.ndarray, counts: np.ndarray) -> dict:
    """How many dB a row's pooled MSE is under a reference row's on the same images, 10 log10(mean MSE_reference /
    mean MSE_row) (over 0: the row is better), with its paired 95% interval (both means from the same resamples
    ``counts``) -> {"mean", "ci95"}."""
    mse, reference_mse = np.asarray(mse, np.float64), np.asarray(reference_mse, np.float64)
    floor = MSE_FLOOR * len(mse)
    value = 10.0 * np.log10(max(reference_mse.sum(), floor) / max(mse.sum(), floor))
    if len(mse) < 2:
        return {"mean": float(value), "ci95": (float("nan"), float("nan"))}
    replicates = 10.0 * np.log10(np.maximum(counts @ reference_mse, floor) / np.maximum(counts @ mse, floor))
    return {"mean": float(value), "ci95": percentile_interval(replicates)}


def colorfulness_crps(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """K samples' colorfulness (K, N) and the truth's (N,) -> per image the continuous ranked probability score
    of the samples as a forecast of the truth's colorfulness, in its fair (unbiased for K -> infinity) form:
    mean_k |c_k - y| - sum_{j != k} |c_j - c_k| / (2 K (K - 1)) (Gneiting and Raftery 2007; Ferro 2014).

    It is a proper score: no forecast beats the true distribution's on average. The single-sample per-image gap
    |c_1 - y| is not: a perfect sampler's is E|c - c'|, over the best constant's E|c - median| (a factor
    sqrt(2) for a Gaussian), so it rewards too little spread. For a deterministic model (every sample alike) the
    CRPS is its per-image gap |c - y|, so the two kinds of rows compare on one scale."""
    k = samples.shape[0]
    if k < 2:
        raise ValueError("the fair CRPS needs at least two samples")
    samples, truth = samples.double(), truth.double()
    skill = (samples - truth).abs().mean(dim=0)
    spread = (samples[:, None] - samples[None]).abs().sum(dim=(0, 1)) / (2 * k * (k - 1))
    return skill - spread


def spread_skill_ratio(spread2: np.ndarray, error2: np.ndarray, k: float, counts: np.ndarray) -> dict:
    """sqrt((1 + 1/K) mean spread^2 / mean error^2) over the images: 1 calibrated, < 1 under-dispersed, > 1
    over-dispersed -> {"mean", "ci95"}, the interval from the resamples ``counts`` (those of the whole table)."""
    spread2, error2 = np.asarray(spread2, np.float64), np.asarray(error2, np.float64)
    ratio = float(np.sqrt((1 + 1 / k) * spread2.mean() / error2.mean()))
    replicates = np.sqrt((1 + 1 / k) * (counts @ spread2) / np.maximum(counts @ error2, MSE_FLOOR))
    interval = percentile_interval(replicates) if len(spread2) > 1 else (float("nan"), float("nan"))
    return {"mean": ratio, "ci95": interval}


# ----- intervals over images -----


def resample_counts(num_images: int, seed: int, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """How often each image is drawn in each bootstrap resample -> (samples, num_images) float64.

    Every statistic of one table uses the same resamples, so differences between rows are paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, (samples, num_images))
    return np.stack([np.bincount(row, minlength=num_images) for row in draws]).astype(np.float64)


def percentile_interval(replicates: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap replicates."""
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_mean(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-image ``values`` (NaN, NaN for fewer than 2 images)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    return percentile_interval(counts @ np.asarray(values, dtype=np.float64) / len(values))


def bootstrap_interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    return bootstrap_mean(values, resample_counts(len(values), seed))
