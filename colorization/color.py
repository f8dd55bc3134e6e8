"""The one place that converts colors.

RGB here is sRGB in [0, 1]; Lab is CIE L*a*b* under the D65 white point (L in [0, 100], a and b roughly
in [-110, 110]), the same definition as scikit-image's ``rgb2lab``. Every function works on batched
tensors of shape (N, C, H, W) on whatever device they live on, and computes in float32 or float64 even
under autocast, because bf16 has too few bits for the cube roots and powers involved.

Networks see normalized values: L / 50 - 1 in [-1, 1] and ab / 110 in about [-1, 1] (the sRGB gamut
spans a in [-86, 98] and b in [-108, 95]), the scaling of pix2pix's colorization mode.
"""

from __future__ import annotations

import torch

L_SCALE = 50.0
L_OFFSET = 1.0
AB_SCALE = 110.0

# sRGB (linear) -> XYZ, and the D65 reference white, as in scikit-image and kornia.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_EPSILON = (6.0 / 29.0) ** 3  # threshold of the linear segment of the Lab transfer function
_KAPPA = (29.0 / 6.0) ** 2 / 3.0  # its slope (7.787...)


def _working_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _matrix(values, tensor: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=_working_dtype(tensor), device=tensor.device)


def _check_channels(tensor: torch.Tensor, channels: int, name: str) -> None:
    if tensor.dim() != 4 or tensor.shape[1] != channels:
        raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(tensor.shape)}")


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], shape (N, 3, H, W) -> Lab (N, 3, H, W). Values outside [0, 1] are clamped."""
    _check_channels(rgb, 3, "rgb")
    rgb = rgb.to(_working_dtype(rgb)).clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _matrix(_RGB_TO_XYZ, rgb), linear)
    xyz = xyz / _matrix(_D65_WHITE, rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(_EPSILON).pow(1.0 / 3.0), _KAPPA * xyz + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def _lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> linear-light RGB, unclipped (outside [0, 1] where the color is outside the sRGB gamut)."""
    fy = (lab[:, 0] + 16.0) / 116.0
    f = torch.stack((fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0), dim=1)
    xyz = torch.where(f > 6.0 / 29.0, f**3, (f - 4.0 / 29.0) / _KAPPA)
    xyz = xyz * _matrix(_D65_WHITE, lab).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab)), xyz)


def _in_gamut(linear: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    return ((linear >= -tolerance) & (linear <= 1.0 + tolerance)).all(dim=1, keepdim=True)


def _reduce_chroma_into_gamut(lab: torch.Tensor, steps: int = 14) -> torch.Tensor:
    """Scale each out-of-gamut pixel's (a, b) toward 0, keeping L and hue, until it fits in sRGB.

    Bisection on the scale (precision 2^-14); the gray axis (a = b = 0) is in gamut for every L in [0, 100].
    """
    linear = _lab_to_linear_rgb(lab)
    outside = ~_in_gamut(linear)
    if not outside.any():
        return lab
    low = torch.zeros_like(lab[:, :1])
    high = torch.ones_like(lab[:, :1])
    for _ in range(steps):
        middle = (low + high) / 2
        fits = _in_gamut(_lab_to_linear_rgb(torch.cat((lab[:, :1], lab[:, 1:] * middle), dim=1)))
        low = torch.where(fits, middle, low)
        high = torch.where(fits, high, middle)
    scale = torch.where(outside, low, torch.ones_like(low))
    return torch.cat((lab[:, :1], lab[:, 1:] * scale), dim=1)


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def lab_to_rgb(lab: torch.Tensor, keep_lightness: bool = False) -> torch.Tensor:
    """Lab (N, 3, H, W) -> sRGB in [0, 1].

    Colors outside the sRGB gamut are clipped per channel, which changes their lightness; with
    ``keep_lightness`` their chroma is reduced instead, so the result has exactly the given L.
    """
    _check_channels(lab, 3, "lab")
    lab = lab.to(_working_dtype(lab))
    if keep_lightness:
        lab = torch.cat((lab[:, :1].clamp(0.0, 100.0), lab[:, 1:]), dim=1)
        lab = _reduce_chroma_into_gamut(lab)
    linear = _lab_to_linear_rgb(lab).clamp(0.0, 1.0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def normalize_l(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> [-1, 1]."""
    return lightness / L_SCALE - L_OFFSET


def denormalize_l(lightness: torch.Tensor) -> torch.Tensor:
    return (lightness + L_OFFSET) * L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    """ab in about [-110, 110] -> about [-1, 1]."""
    return ab / AB_SCALE


def denormalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab * AB_SCALE


def rgb_to_normalized_lab(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB batch in [0, 1] -> (normalized L (N, 1, H, W), normalized ab (N, 2, H, W)), float32."""
    lab = rgb_to_lab(rgb).float()
    return normalize_l(lab[:, :1]), normalize_ab(lab[:, 1:])


def normalized_lab_to_rgb(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Join a normalized L (N, 1, H, W) with a normalized ab (N, 2, H, W) -> sRGB in [0, 1], float32.

    This is how every model's prediction becomes an image: the L is always the input's own, exactly
    (a predicted color outside the sRGB gamut keeps its L and hue and loses chroma until it fits).
    """
    _check_channels(lightness, 1, "lightness")
    _check_channels(ab, 2, "ab")
    if lightness.shape[-2:] != ab.shape[-2:]:
        raise ValueError(f"L {tuple(lightness.shape)} and ab {tuple(ab.shape)} differ in size")
    lab = torch.cat((denormalize_l(lightness.float()), denormalize_ab(ab.float())), dim=1)
    return lab_to_rgb(lab, keep_lightness=True).float()


def gray_rgb(lightness: torch.Tensor) -> torch.Tensor:
    """The gray baseline: the input's own L with ab = 0, as sRGB."""
    return normalized_lab_to_rgb(lightness, torch.zeros_like(lightness).expand(-1, 2, -1, -1))
