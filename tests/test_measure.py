"""One measurement path: what validation logs during training is what evaluate.py reports for the exported
model, on the same images, for all three model families."""

import json
import math

import pytest
import torch

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


class _GaussianSampler:
    """A stochastic colorizer whose samples are known Gaussian draws: normalized ab = a centre that is a function of
    L, plus ``sigma`` times standard normal noise per pixel and channel from the image's own seed."""

    stochastic = True

    def __init__(self, sigma: float):
        self.sigma = sigma

    @staticmethod
    def centre(lightness: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.05 * lightness, 0.03 - 0.04 * lightness], dim=1)  # normalized: a few Lab units

    def colorize_lightness(self, lightness: torch.Tensor, seeds) -> torch.Tensor:
        noise = [torch.randn(2, *lightness.shape[-2:], generator=torch.Generator().manual_seed(s)) for s in seeds]
        return self.centre(lightness) + self.sigma * torch.stack(noise)


def test_diversity_and_spread_skill_of_known_gaussian_samples():
    # The table's diversity and spread-skill ratio for a sampler whose K samples and the truth are draws of one
    # known Gaussian in ab: calibrated (ratio 1), and with half the spread.
    from colorization import color
    from colorization.evaluation import GRAY, TRUTH, summarize
    from colorization.measure import gray_baseline, measure, truth_values

    k, images, sigma = 4, 32, 0.05  # sigma: 5.5 Lab units
    generator = torch.Generator().manual_seed(0)
    lightness = torch.rand(images, 1, 32, 32, generator=generator) * 0.4 - 0.1  # L 45 to 65: room for the colors
    truth_ab = _GaussianSampler.centre(lightness) + sigma * torch.randn(images, 2, 32, 32, generator=generator)
    truth = color.normalized_lab_to_rgb(lightness, truth_ab)
    indices, metrics = torch.arange(images), ("psnr", "ssim")

    def table(sampler) -> dict:
        rows = {
            "Sampler": measure(sampler, truth, indices, 0, metrics)[0],
            GRAY: gray_baseline(truth, metrics)[0],
            TRUTH: truth_values(truth, metrics),
        }
        samples = {"Sampler": measure(sampler, truth, indices, 0, metrics, num_samples=k)[0]}
        values = {row: {**{m: v.numpy() for m, v in x.items()}, "index": indices.numpy()} for row, x in rows.items()}
        samples = {
            row: {**{m: v.numpy() for m, v in x.items()}, "index": indices.numpy()} for row, x in samples.items()
        }
        return summarize(values, 0, samples)["samples"]["Sampler"]

    # two samples' ab differ by N(0, 2 sigma^2) per channel: a Rayleigh distance of mean sigma sqrt(pi)
    rayleigh_mean = color.AB_SCALE * sigma * math.sqrt(math.pi)  # in Lab units
    calibrated = table(_GaussianSampler(sigma))
    assert calibrated["diversity"]["mean"] == pytest.approx(rayleigh_mean, rel=0.01)
    # samples and truth exchangeable: E[error^2] = (1 + 1/K) E[spread^2], in sRGB too (one function of like draws)
    assert calibrated["spread_skill"]["mean"] == pytest.approx(1.0, abs=0.02)
    shrunk = table(_GaussianSampler(sigma / 2))
    assert shrunk["diversity"]["mean"] == pytest.approx(rayleigh_mean / 2, rel=0.01)
    # half the spread around the true centre: sqrt(0.25 (1 + 1/K) / (1 + 0.25/K)) where sRGB is nearly linear in ab
    assert shrunk["spread_skill"]["mean"] == pytest.approx(math.sqrt(0.25 * (1 + 1 / k) / (1 + 0.25 / k)), rel=0.03)


def test_evaluate_measures_in_full_fp32_and_records_it(cnn_run, tmp_path, monkeypatch):
    # On GPUs since Ampere, cuDNN convolutions use TF32 by default: evaluate.py turns TF32 off while it measures,
    # puts back what was set, and records the precision in results.json and the table's note, and a model trained
    # with TF32 in the cost note. (The flags can be set and read without a GPU.)
    import colorization.evaluation as evaluation
    from colorization import report
    from colorization.hardware import fp32_precision, set_tf32

    full, tf32 = {"matmul": "ieee", "convolution": "ieee"}, {"matmul": "tf32", "convolution": "tf32"}
    seen, measure = [], evaluation.measure

    def noted_measure(*args, **kwargs):
        seen.append(fp32_precision("cuda"))
        return measure(*args, **kwargs)

    monkeypatch.setattr(evaluation, "measure", noted_measure)
    data = DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)
    config = EvaluationConfig(
        metrics="psnr", max_images=4, output_dir=str(tmp_path / "eval"), keep_selection_images=True, grid_images=2
    )
    try:
        set_tf32(True)
        result = evaluate([str(cnn_run[0])], ["CNN"], config, data)
        assert fp32_precision("cuda") == tf32
    finally:  # PyTorch's defaults
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    assert seen and all(precision == full for precision in seen)
    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    assert settings["fp32_precision"] == fp32_precision("cpu") == full  # this machine's: a CPU
    assert "The models ran in full fp32 (IEEE)." in (tmp_path / "eval" / "table.md").read_text()
    training = settings["costs"]["CNN"]["training"]
    assert training["fp32_precision"] == full and "TF32" not in report.markdown_table(result["summary"], settings)
    training["fp32_precision"] = {"matmul": "tf32", "convolution": "tf32"}
    assert "mixed precision no, TF32;" in report.markdown_table(result["summary"], settings)


def test_k_samples_are_drawn_as_k_batches_of_the_images_each_with_its_own_seeds():
    # K x N images in one call ran out of a CPU's caches (benchmarks/README.md): the K samples come as K calls of
    # the batch's N images, sample k of image i from seed sample_seed(seed, i, k), so the values are those of the
    # same draws in any batching
    from colorization import color
    from colorization.measure import measure, sample_seed

    calls = []

    class Recording(_GaussianSampler):
        def colorize_lightness(self, lightness, seeds):
            calls.append((len(lightness), list(seeds)))
            return super().colorize_lightness(lightness, seeds)

    lightness = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.1
    truth = color.normalized_lab_to_rgb(lightness, _GaussianSampler.centre(lightness))
    indices = torch.tensor([5, 9, 12])
    values = measure(Recording(0.05), truth, indices, 3, ("psnr",), num_samples=4)[0]
    assert calls == [(3, [sample_seed(3, i, k) for i in (5, 9, 12)]) for k in range(4)]
    assert values["num_samples"].tolist() == [4.0, 4.0, 4.0]
