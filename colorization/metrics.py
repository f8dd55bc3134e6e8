"""Per-image quality metrics on sRGB in [0, 1] (torchmetrics), shared by validation and evaluation."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capping keeps means finite (documented)


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
