import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from colorization import color


def _to_numpy_image(batch):
    return batch.permute(0, 2, 3, 1).numpy()


def test_rgb_to_lab_matches_scikit_image():
    rgb = torch.rand(3, 3, 17, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(np.stack([rgb2lab(image) for image in _to_numpy_image(rgb)])).permute(0, 3, 1, 2)
    # scikit-image rounds two CIE constants (0.008856, 7.787); we use the exact ones, hence 2e-4 not 1e-12.
    assert torch.allclose(color.rgb_to_lab(rgb), expected, atol=2e-4)
    assert torch.allclose(color.rgb_to_lab(rgb.float()).double(), expected, atol=2e-4)


def test_lab_to_rgb_matches_scikit_image_inside_the_gamut():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lab = color.rgb_to_lab(rgb)
    expected = torch.from_numpy(np.stack([lab2rgb(image) for image in _to_numpy_image(lab)])).permute(0, 3, 1, 2)
    assert torch.allclose(color.lab_to_rgb(lab), expected, atol=1e-5)


@pytest.mark.parametrize(
    "rgb, lab",
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),  # textbook sRGB red under D65
        ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ],
)
def test_known_colors(rgb, lab):
    got = color.rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)).flatten()
    # 1e-2: the standard sRGB matrix's rows do not sum exactly to the D65 white (white has a, b ~ 0.005)
    assert torch.allclose(got, torch.tensor(lab, dtype=torch.float64), atol=1e-2)


def test_round_trip_and_normalized_round_trip():
    rgb = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert (color.lab_to_rgb(color.rgb_to_lab(rgb)) - rgb).abs().max() < 1e-5
    lightness, ab = color.rgb_to_normalized_lab(rgb)
    assert lightness.shape == (4, 1, 16, 16) and ab.shape == (4, 2, 16, 16)
    assert lightness.min() >= -1 and lightness.max() <= 1 and ab.abs().max() <= 1
    assert (color.normalized_lab_to_rgb(lightness, ab) - rgb).abs().max() < 1e-5


def test_normalization_covers_the_whole_srgb_cube_within_unit_range():
    grid = torch.linspace(0, 1, 33)
    cube = torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij")).reshape(1, 3, -1, 1)
    lightness, ab = color.rgb_to_normalized_lab(cube)
    assert lightness.min() >= -1 - 1e-6 and lightness.max() <= 1 + 1e-6
    assert ab.abs().max() <= 1.0


def test_gray_baseline_keeps_lightness_and_has_no_chroma():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    lightness, _ = color.rgb_to_normalized_lab(rgb)
    gray = color.gray_rgb(lightness)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-4) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-4)
    assert torch.allclose(color.rgb_to_normalized_lab(gray)[0], lightness, atol=1e-4)


def test_computes_in_float32_under_bf16_autocast():
    rgb = torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = color.rgb_to_lab(rgb)
        back = color.lab_to_rgb(lab)
    assert lab.dtype == torch.float32 and back.dtype == torch.float32
    assert (back - rgb).abs().max() < 1e-5


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        color.rgb_to_lab(torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        color.normalized_lab_to_rgb(torch.rand(1, 1, 8, 8), torch.rand(1, 2, 4, 4))


def test_joining_keeps_lightness_exactly_even_for_colors_outside_the_gamut():
    generator = torch.Generator().manual_seed(4)
    lightness = torch.rand(2, 1, 16, 16, generator=generator) * 2 - 1  # L from 0 to 100
    ab = (torch.rand(2, 2, 16, 16, generator=generator) * 2 - 1) * 1.2  # much of it outside sRGB
    rgb = color.normalized_lab_to_rgb(lightness, ab)
    assert 0 <= rgb.min() and rgb.max() <= 1
    back_lightness, back_ab = color.rgb_to_normalized_lab(rgb)
    assert (back_lightness - lightness).abs().max() < 2e-3  # 0.1 L unit; clipping moves L by up to ~30 units
    clipped = color.lab_to_rgb(torch.cat((color.denormalize_l(lightness), color.denormalize_ab(ab)), dim=1))
    assert (color.rgb_to_normalized_lab(clipped)[0] - lightness).abs().max() > 0.05
    # hue kept: the reduced chroma points the same way
    cosine = torch.nn.functional.cosine_similarity(back_ab, ab, dim=1)
    assert cosine[back_ab.norm(dim=1) > 0.05].min() > 0.99


def test_in_gamut_colors_are_not_changed_by_joining():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    lightness, ab = color.rgb_to_normalized_lab(rgb)
    assert (color.normalized_lab_to_rgb(lightness, ab) - rgb).abs().max() < 1e-5
