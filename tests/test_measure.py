"""One measurement path: what validation logs during training is what evaluate.py reports for the exported
model, on the same images, for all three model families."""

import json

import pytest

from colorization.data import DataConfig
from colorization.evaluation import EvaluationConfig, evaluate


@pytest.mark.parametrize("family", ["cnn", "gan", "diffusion"])
def test_validation_numbers_equal_evaluate_numbers_for_the_exported_model(
    family, cnn_run, gan_run, diffusion_run, tmp_path
):
    output = {"cnn": cnn_run, "gan": gan_run, "diffusion": diffusion_run}[family][0]
    logged = json.loads((output / "validation_metrics.json").read_text())  # of the exported step
    exported = json.loads((output / "colorizer.json").read_text())
    if family == "gan":  # the exported step is the one chosen by validation; its numbers are recorded with it
        assert logged["step"] == exported["selection"]["step"]
    # the same images: the first N held-out ones, at the training resolution, with evaluate.py's defaults
    data = DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)
    config = EvaluationConfig(
        metrics="psnr,ssim,colorfulness",
        max_images=logged["num_images"],
        batch_size=7,
        output_dir=str(tmp_path / "eval"),
        keep_selection_images=True,
    )
    result = evaluate([str(output)], ["model"], config, data)
    summary = result["summary"]["model"]
    assert result["settings"]["num_images"] == logged["num_images"]
    assert summary["psnr"]["mean"] == pytest.approx(logged["psnr"], abs=0.01)
    assert summary["ssim"]["mean"] == pytest.approx(logged["ssim"], abs=1e-4)
    assert summary["colorfulness"]["mean"] == pytest.approx(logged["colorfulness"], abs=0.01)
    assert result["summary"]["Gray (ab = 0)"]["psnr"]["mean"] == pytest.approx(logged["psnr_gray"], abs=0.01)


@pytest.mark.parametrize("family", ["cnn", "gan", "diffusion"])
@pytest.mark.parametrize("size", [(32, 32), (45, 27)])
def test_colorize_resizes_as_the_table_does(family, size, cnn_run, gan_run, diffusion_run):
    # One resize path: colorize() of a photo gives exactly the pixels measure() scores (for a photo at the
    # model's resolution, the table's own pixels; at any other size, the table's path at that size).
    import numpy as np
    import torch
    from PIL import Image

    from colorization import load_colorizer
    from colorization.measure import measure, sample_seed

    output = {"cnn": cnn_run, "gan": gan_run, "diffusion": diffusion_run}[family][0]
    colorizer = load_colorizer(str(output), "cpu", num_inference_steps=3)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    truth = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    _, prediction, _ = measure(colorizer, truth, torch.tensor([7]), 11, ("psnr",))
    table_pixels = (prediction[0].permute(1, 2, 0) * 255.0).round().byte().numpy()
    colorized = np.asarray(colorizer.colorize(Image.fromarray(pixels), seed=sample_seed(11, 7)))
    assert np.array_equal(colorized, table_pixels)
