"""evaluate.py: metric definitions against independent computations, the tables and files, paired statistics,
training-image and selection checks, determinism, bad input."""

import csv
import json
import math
import os
import shutil
import sys
import urllib.error

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, accelerate_launch, fp32_tolerance, run_command, run_in_process

from colorization import color, load_colorizer
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.evaluation import GRAY, MEAN_AB, TRUTH, EvaluationConfig, evaluate, load_lpips, summarize
from colorization.metrics import (
    PSNR_CAP_DB,
    ab_bin_centres,
    ab_histogram,
    bootstrap_interval,
    colorfulness,
    psnr_per_image,
    resample_counts,
    sliced_wasserstein,
    ssim_per_image,
)


def test_identical_images_score_perfectly():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.all(psnr_per_image(images, images) == PSNR_CAP_DB)
    torch.testing.assert_close(ssim_per_image(images, images), torch.ones(3))


def test_psnr_of_a_known_uniform_error():
    truth = torch.full((2, 3, 16, 16), 0.5)
    expected = 10 * math.log10(1.0 / 0.1**2)  # 20 dB
    torch.testing.assert_close(psnr_per_image(truth + 0.1, truth), torch.full((2,), expected))


def test_colorfulness_of_gray_is_zero_and_of_color_is_not():
    gray = torch.rand(2, 1, 16, 16).expand(-1, 3, -1, -1)
    assert torch.allclose(colorfulness(gray), torch.zeros(2), atol=1e-4)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0  # rg = 255, yb = 127.5, no spread: C = 0.3 * sqrt(255^2 + 127.5^2)
    torch.testing.assert_close(colorfulness(red), torch.tensor([0.3 * math.hypot(255, 127.5)]))


def test_ab_histogram_counts_every_pixel_in_the_bin_of_its_ab():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    histogram = ab_histogram(rgb)
    assert histogram.shape == (2, len(ab_bin_centres())) and torch.all(histogram.sum(dim=1) == 64)
    ab = color.rgb_to_lab(rgb)[0, 1:, 3, 5].numpy()  # one pixel: its bin centre is within 1 unit of its ab
    centres = ab_bin_centres()
    nearest = np.abs(centres - ab).max(axis=1).argmin()
    assert histogram[0, nearest] >= 1 and np.abs(centres[nearest] - ab).max() <= 1.0
    gray = color.gray_rgb(color.rgb_to_normalized_lab(rgb)[0])
    assert (ab_bin_centres()[ab_histogram(gray)[0].numpy() > 0] == 0).all()  # ab = 0 is a bin centre


def test_sliced_wasserstein_against_scipy_and_a_closed_form():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    points = rng.normal(0, 10, (300, 2))
    p, q = rng.random(300), rng.random(300)
    directions = 8
    expected = np.mean(
        [
            wasserstein_distance(points @ [np.cos(a), np.sin(a)], points @ [np.cos(a), np.sin(a)], p, q)
            for a in np.pi * np.arange(directions) / directions
        ]
    )
    assert sliced_wasserstein(p, q, points, directions) == pytest.approx(expected, rel=1e-9)
    # a distribution and its copy shifted by d: 2|d|/pi (the mean |cos| over the half circle), here |d| = 5
    shifted = np.concatenate((points, points + [3.0, 4.0]))
    weights = np.concatenate((np.ones(300), np.zeros(300)))
    assert sliced_wasserstein(weights, weights[::-1], shifted, 360) == pytest.approx(2 * 5 / np.pi, rel=1e-3)
    assert sliced_wasserstein(p, p, points) == pytest.approx(0.0, abs=1e-12)
    # several resamples at once, as the bootstrap uses it
    both = sliced_wasserstein(np.stack([p, q]), np.stack([q, q]), points, directions)
    assert both == pytest.approx([expected, 0.0], abs=1e-9)


def test_lpips_with_a_random_backbone_is_zero_for_identical_images_only():
    # A randomly initialised AlexNet only checks the plumbing (inputs scaled, shapes); never a real score.
    import lpips

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    images = torch.rand(2, 3, 64, 64)
    assert torch.allclose(model(images, images, normalize=True).flatten(), torch.zeros(2), atol=1e-6)
    assert (model(images, images.flip(-1), normalize=True) > 0).all()


def test_offline_lpips_stops_with_the_file_and_the_flag(monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", unreachable)
    with pytest.raises(ColorizationError) as error:
        load_lpips(torch.device("cpu"))
    assert "alexnet-owt-7be5be79.pth" in str(error.value) and "--metrics psnr,ssim" in str(error.value)


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).normal(10, 2, 400)
    low, high = bootstrap_interval(values, seed=0)
    assert low < values.mean() < high and 0.2 < high - low < 0.6  # ~ 2 * 1.96 * 2 / sqrt(400) = 0.39


def test_paired_statistics_see_what_per_row_intervals_hide():
    # A model exactly 0.1 dB above gray on every image: the rows' intervals overlap widely, the paired
    # difference is 0.1 with no spread. The data-set colorfulness gap differs from the mean per-image gap.
    rng = np.random.default_rng(0)
    gray = rng.normal(25, 3, 200)
    truth_colorfulness = rng.uniform(10, 50, 200)
    model_colorfulness = truth_colorfulness + np.where(np.arange(200) % 2, 5.0, -5.0)
    histogram = np.zeros((200, len(ab_bin_centres())))
    histogram[:, 0] = 1
    values = {
        "M": {"psnr": gray + 0.1, "colorfulness": model_colorfulness, "ab_histogram": histogram},
        GRAY: {"psnr": gray, "colorfulness": np.zeros(200), "ab_histogram": histogram},
        TRUTH: {"index": np.arange(200), "colorfulness": truth_colorfulness, "ab_histogram": histogram},
    }
    summary = summarize(values, seed=0)
    low, high = summary["M"]["psnr_vs_gray"]["ci95"]
    assert summary["M"]["psnr_vs_gray"]["mean"] == pytest.approx(0.1) and high - low < 1e-9
    assert summary["M"]["psnr"]["ci95"][0] < summary[GRAY]["psnr"]["mean"]  # overlapping row intervals
    assert summary["M"]["colorfulness_gap"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert summary["M"]["colorfulness_gap_per_image"]["mean"] == pytest.approx(5.0)
    # the signed difference carries the interval: M's brackets its true 0, which an interval of the resampled
    # |difference| never could (it is biased away from zero); the absolute gap has none
    low, high = summary["M"]["colorfulness_vs_truth"]["ci95"]
    assert summary["M"]["colorfulness_vs_truth"]["mean"] == pytest.approx(0.0, abs=1e-9) and low < 0.0 < high
    assert all(math.isnan(x) for x in summary["M"]["colorfulness_gap"]["ci95"])
    low, high = summary[GRAY]["colorfulness_vs_truth"]["ci95"]
    assert low < -truth_colorfulness.mean() < high
    assert summary["M"]["ab_distance"]["mean"] == 0.0


def test_resamples_are_shared_and_reproducible():
    assert np.array_equal(resample_counts(50, 3), resample_counts(50, 3))
    assert np.all(resample_counts(50, 3).sum(axis=1) == 50)


@pytest.fixture(scope="module")
def three_models(cnn_run, gan_run, diffusion_run):
    return {"CNN": cnn_run[0], "GAN": gan_run[0], "Diffusion": diffusion_run[0]}


def _embedded():
    return DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)


# Every metric but the ab distance, which alone takes most of an evaluation's time here (its bootstrap draws
# 1000 sliced Wasserstein distances): the tests that check it ask for it.
WITH_AB_DISTANCE = "psnr,ssim,colorfulness,ab_distance"


def _evaluate(models, output, data, names=("CNN", "GAN"), **config):
    options = {
        "metrics": "psnr,ssim,colorfulness",
        "output_dir": str(output),
        "batch_size": 5,
        "grid_images": 4,
        "keep_selection_images": True,
        **config,
    }
    return evaluate([str(models[n]) for n in names], list(names), EvaluationConfig(**options), data)


def test_table_files_are_written_and_consistent(three_models, tmp_path):
    result = _evaluate(three_models, tmp_path / "eval", _embedded(), metrics=WITH_AB_DISTANCE)
    out = tmp_path / "eval"
    assert {p.name for p in out.iterdir()} >= {
        "table.md",
        "table.csv",
        "results.json",
        "per_image.csv",
        "comparison.png",
    }
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert list(summary) == ["CNN", "GAN", MEAN_AB, GRAY, TRUTH]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 26 * 5  # 26 validation images x (2 models + mean ab + gray + truth)
    for model in ("CNN", "GAN", MEAN_AB, GRAY):
        psnr = [float(r["psnr"]) for r in rows if r["model"] == model]
        assert math.isclose(np.mean(psnr), summary[model]["psnr"]["mean"], rel_tol=1e-6)
        low, high = summary[model]["psnr"]["ci95"]
        assert low <= summary[model]["psnr"]["mean"] <= high
        assert {"colorfulness_gap", "colorfulness_gap_per_image", "ab_distance"} <= set(summary[model])
    assert "psnr_vs_gray" in summary["CNN"] and "psnr_vs_gray" not in summary[GRAY]
    table_csv = {r["model"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert math.isclose(float(table_csv["CNN"]["ssim_mean"]), summary["CNN"]["ssim"]["mean"], rel_tol=1e-9)
    markdown = (out / "table.md").read_text()
    assert "| Gray (ab = 0) |" in markdown and "| Mean training ab |" in markdown and "26 images" in markdown
    assert "Δ PSNR vs gray" in markdown and "ab distance" in markdown and "32x32" in markdown
    from PIL import Image

    assert Image.open(out / "comparison.png").size[0] > 5 * 32  # gray, two models, mean ab, truth side by side
    assert result["settings"]["model_resolutions"] == {"CNN": 32, "GAN": 32}
    # python -m colorization.compare: any two rows, paired, with the table's own resamples
    from colorization.compare import paired_differences

    versus_gray = paired_differences(str(out), "CNN", GRAY)
    assert versus_gray["psnr"]["mean"] == pytest.approx(summary["CNN"]["psnr_vs_gray"]["mean"], abs=1e-5)
    assert versus_gray["psnr"]["ci95"] == pytest.approx(summary["CNN"]["psnr_vs_gray"]["ci95"], abs=1e-5)
    gaps = paired_differences(str(out), "CNN", "GAN")["colorfulness_gap"]
    per_image = {m: summary[m]["colorfulness_gap_per_image"]["mean"] for m in ("CNN", "GAN")}
    assert gaps["mean"] == pytest.approx(per_image["CNN"] - per_image["GAN"], abs=1e-4)
    # --against: a row of another evaluation of the same images (here a copy in which the GAN is called CNN),
    # paired image by image; an evaluation of other images is refused
    other = tmp_path / "other"
    shutil.copytree(out, other)
    per_image_csv = (other / "per_image.csv").read_text()
    (other / "per_image.csv").write_text(per_image_csv.replace(",CNN,", ",old,").replace(",GAN,", ",CNN,"))
    across = paired_differences(str(out), "CNN", "CNN", against=str(other))["psnr"]
    within = paired_differences(str(out), "CNN", "GAN")["psnr"]
    assert across["mean"] == pytest.approx(within["mean"]) and across["ci95"] == pytest.approx(within["ci95"])
    (other / "per_image.csv").write_text(per_image_csv.replace(f",{TRUTH},", ",moved,", 1))
    with pytest.raises(ColorizationError, match="did not evaluate the same images: their ground truths differ"):
        paired_differences(str(out), "CNN", "CNN", against=str(other))


def test_gray_and_mean_ab_rows_are_what_they_say(three_models, tmp_path):
    data = _embedded()
    result = _evaluate(three_models, tmp_path / "eval", data)
    from safetensors.torch import load_file

    from colorization.data import batch_to_rgb, build_datasets, collate

    _, validation = build_datasets(data, 0)
    truth = batch_to_rgb(collate([validation[i] for i in range(len(validation))]), torch.device("cpu"))
    lightness = color.rgb_to_normalized_lab(truth)[0]
    gray = color.normalized_lab_to_rgb(lightness, torch.zeros(len(truth), 2, 32, 32))
    np.testing.assert_allclose(result["values"][GRAY]["psnr"], psnr_per_image(gray, truth).numpy(), rtol=1e-5)
    assert np.all(result["values"][GRAY]["colorfulness"] < 1e-2)
    mean_ab = load_file(three_models["CNN"] / "mean_ab.safetensors")["mean_ab"]
    joined = color.normalized_lab_to_rgb(lightness, color.normalize_ab(mean_ab).expand(len(truth), -1, -1, -1))
    np.testing.assert_allclose(result["values"][MEAN_AB]["psnr"], psnr_per_image(joined, truth).numpy(), rtol=1e-5)
    torch.testing.assert_close(mean_ab, mean_ab.flip(-1))  # training flips: the mean is mirror-symmetric


def _color_rounding(model, passes: int) -> float:
    """How much, relative, a model's colors may change in another batch: the rounding of its sums in ``passes``
    through its network (conftest.fp32_tolerance, 20x or more above what is measured). A table value, the mean over
    images of a smooth function of the colors, moves by about as much relative to its size: PSNR, for one, by
    8.69 dB times the relative change of the error, which for these tiny models (errors as large as the colors) is
    about the colors' relative change times 8.69 dB, about their PSNR."""
    return fp32_tolerance(load_colorizer(str(model), "cpu").network, passes=passes)


def test_same_command_twice_gives_the_same_table_with_sampled_rows(three_models, tmp_path):
    # fp32: the comparison of sample 0 with the single-sample row below allows fp32's rounding across batch sizes;
    # bf16 autocast (auto, on a CPU with AMX or AVX512-BF16) rounds by its own 2^-8 and its kernels by batch size
    options = dict(names=("CNN", "Diffusion"), num_inference_steps=2, num_samples=3, num_samples_images=6)
    options.update(metrics=WITH_AB_DISTANCE, precision="fp32")  # restated below: every column comes back the same
    first = _evaluate(three_models, tmp_path / "a", _embedded(), **options)
    second = _evaluate(three_models, tmp_path / "b", _embedded(), **options)
    assert first["summary"] == second["summary"]
    quality = lambda folder: (folder / "table.md").read_text().split("| Model | Params")[0]  # noqa: E731 (not timings)
    assert quality(tmp_path / "a") == quality(tmp_path / "b")
    samples = first["summary"]["samples"]
    assert samples["num_images"] == 6 and "psnr_mean" in samples["Diffusion"] and "psnr_mean" not in samples["CNN"]
    # the table's diversity and spread-skill ratio are those of the per-image values (whose known answers for
    # known Gaussian samples test_measure.py checks); every image's samples differ (a noise seed each)
    per_image = first["samples"]["Diffusion"]
    assert samples["Diffusion"]["diversity"]["mean"] == pytest.approx(per_image["diversity"].mean(), rel=1e-12)
    assert per_image["diversity"].min() > 0
    # sample 0 of the K is the single-sample row's sample: the same PSNR on those images, up to the rounding of
    # the sampler's 2 passes through the network in a batch K times larger (see _color_rounding)
    single = first["values"]["Diffusion"]["psnr"][:6]
    rounding = _color_rounding(three_models["Diffusion"], passes=2)
    np.testing.assert_allclose(first["samples"]["Diffusion"]["psnr"], single, rtol=rounding)
    assert "mean of 3" in (tmp_path / "a" / "table.md").read_text()
    # calibration: the spread-skill ratio and the sampler's own posterior mean, paired with the CNN and gray
    diffusion = samples["Diffusion"]
    ratio = math.sqrt(
        (1 + 1 / 3) * per_image["spread2"].astype(float).mean() / per_image["error2"].astype(float).mean()
    )
    assert diffusion["spread_skill"]["mean"] == pytest.approx(ratio, rel=1e-12) and "spread_skill" not in samples["CNN"]
    low, high = diffusion["spread_skill"]["ci95"]
    assert low <= diffusion["spread_skill"]["mean"] <= high
    # the posterior mean in the pooled MSE domain: the pooled PSNRs of this table, and their paired differences
    # (recomputed here from the stored float32 values: 1e-4 dB is far above their rounding, ~1e-6 dB)
    spread2, error2 = (first["samples"]["Diffusion"][key].astype(np.float64) for key in ("spread2", "error2"))
    posterior = 10 * math.log10(1 / np.mean(error2 - spread2 / 3))
    assert diffusion["pooled_psnr_posterior"]["mean"] == pytest.approx(posterior, abs=1e-4)
    cnn = 10 * math.log10(1 / np.mean(10 ** (-first["values"]["CNN"]["psnr"][:6].astype(np.float64) / 10)))
    assert samples["CNN"]["pooled_psnr"]["mean"] == pytest.approx(cnn, abs=1e-4)
    assert set(diffusion["posterior_vs"]) == set(diffusion["mean_vs"]) == {"CNN"}
    assert diffusion["posterior_vs"]["CNN"]["mean"] == pytest.approx(posterior - cnn, abs=1e-4)
    gain = diffusion["pooled_psnr_posterior"]["mean"] - diffusion["pooled_psnr_mean"]["mean"]
    assert diffusion["posterior_gain_over_mean"]["mean"] == pytest.approx(gain, abs=1e-6)
    assert "Posterior mean, pooled dB gained" in (tmp_path / "a" / "table.md").read_text()
    assert "Spread-skill ratio" in (tmp_path / "a" / "table.md").read_text()
    # the colorfulness CRPS: from the K samples for the diffusion row, the per-image gap for the CNN
    cnn_gap = np.abs(first["values"]["CNN"]["colorfulness"][:6] - first["values"][TRUTH]["colorfulness"][:6])
    assert samples["CNN"]["colorfulness_crps"]["mean"] == pytest.approx(cnn_gap.mean(), abs=1e-4)
    crps = first["samples"]["Diffusion"]["colorfulness_crps"]
    assert diffusion["colorfulness_crps"]["mean"] == pytest.approx(crps.mean(), abs=1e-4)
    assert diffusion["colorfulness_crps_vs"]["CNN"]["mean"] == pytest.approx(crps.mean() - cnn_gap.mean(), abs=1e-4)
    assert "Colorfulness CRPS against each model before it" in (tmp_path / "a" / "table.md").read_text()
    from colorization.compare import paired_differences

    paired = paired_differences(str(tmp_path / "a"), "Diffusion", "CNN")["colorfulness_crps"]
    assert paired["images"] == 6 and paired["mean"] == pytest.approx(crps.mean() - cnn_gap.mean(), abs=1e-4)
    # restated from its own per_image.csv, the folder's summary comes out the same, number for number
    from colorization.restate import restate

    restate(str(tmp_path / "a"))
    restated = json.loads((tmp_path / "a" / "results.json").read_text())
    assert json.dumps(restated["summary"]) == json.dumps(first["summary"])  # as text: NaN != NaN
    assert "Restated from per_image.csv" in (tmp_path / "a" / "table.md").read_text()


def test_colorfulness_crps_on_cases_with_a_known_answer():
    from colorization.metrics import colorfulness_crps

    rng = np.random.default_rng(0)
    k, images, sigma = 8, 20000, 4.0
    centre = rng.uniform(10, 40, images)
    truth = centre + sigma * rng.standard_normal(images)
    calibrated = centre + sigma * rng.standard_normal((k, images))
    crps = colorfulness_crps(torch.from_numpy(calibrated), torch.from_numpy(truth)).numpy()
    # the CRPS of N(m, s^2) for y ~ N(m, s^2) is s / sqrt(pi) on average (fair estimator: no bias at K = 8)
    assert crps.mean() == pytest.approx(sigma / math.sqrt(math.pi), rel=0.03)
    # a single sample's gap E|c - y| = 2 s / sqrt(pi), worse than the constant centre's E|m - y| = s sqrt(2 / pi)
    assert np.abs(calibrated[0] - truth).mean() > np.abs(centre - truth).mean() * 1.3
    # ... while the CRPS ranks the calibrated samples above the centre (whose CRPS is its gap) and above shrunk ones
    assert crps.mean() < np.abs(centre - truth).mean()
    shrunk = centre + 0.3 * sigma * rng.standard_normal((k, images))
    assert crps.mean() < colorfulness_crps(torch.from_numpy(shrunk), torch.from_numpy(truth)).numpy().mean()
    # a deterministic forecast (all samples alike) scores its gap exactly
    same = torch.from_numpy(np.repeat(centre[None], k, axis=0))
    np.testing.assert_allclose(colorfulness_crps(same, torch.from_numpy(truth)).numpy(), np.abs(centre - truth))


def test_black_and_white_ground_truths_are_left_out_of_every_row(three_models, tmp_path):
    from PIL import Image
    from test_data import _write_images

    folder = tmp_path / "photos"
    _write_images(folder, 6)
    gray = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(gray).convert("RGB").save(folder / "old_photo.jpg", quality=90)  # JPEG chroma noise included
    data = DataConfig(train_data_dir=str(folder), resolution=32, dataloader_num_workers=0)
    result = _evaluate(three_models, tmp_path / "eval", data, names=("CNN",), split="all")
    assert result["settings"]["num_images"] == 6
    assert "1 image(s) whose ground truth is itself black and white" in (tmp_path / "eval" / "table.md").read_text()
    assert max(result["values"]["Gray (ab = 0)"]["psnr"]) < 90  # no ~100 dB gray row left
    kept = _evaluate(three_models, tmp_path / "kept", data, names=("CNN",), split="all", keep_gray_images=True)
    assert kept["settings"]["num_images"] == 7 and max(kept["values"]["Gray (ab = 0)"]["psnr"]) > 40


def test_guidance_scales_give_a_row_each_per_model_and_skip_images_leaves_out_the_first(three_models, tmp_path):
    options = dict(names=("CNN", "Diffusion"), num_inference_steps=2, skip_images=4, max_images=6)
    swept = _evaluate(three_models, tmp_path / "swept", _embedded(), guidance_scale="1,2", **options)
    assert list(swept["summary"])[:3] == ["CNN", "Diffusion (DPM-2)", "Diffusion (DPM-2, guidance 2)"]
    named = _evaluate(three_models, tmp_path / "named", _embedded(), guidance_scale="Diffusion=2", **options)
    assert list(named["summary"])[:2] == ["CNN", "Diffusion"]  # one scale for the model: its plain name
    np.testing.assert_array_equal(
        named["values"]["Diffusion"]["psnr"], swept["values"]["Diffusion (DPM-2, guidance 2)"]["psnr"]
    )
    assert "Diffusion: DPM-2, guidance 2" in (tmp_path / "named" / "table.md").read_text()
    assert not np.array_equal(named["values"]["Diffusion"]["psnr"], swept["values"]["Diffusion (DPM-2)"]["psnr"])
    whole = _evaluate(three_models, tmp_path / "whole", _embedded(), names=("CNN",), max_images=10)
    # the same images in other batches (of 5 from image 0 and from image 4): equal up to rounding (AVX2: 1e-6 dB)
    rounding = _color_rounding(three_models["CNN"], passes=1)
    np.testing.assert_allclose(whole["values"]["CNN"]["psnr"][4:], swept["values"]["CNN"]["psnr"], rtol=rounding)
    assert "The first 4 images are left out" in (tmp_path / "swept" / "table.md").read_text()
    for wrong, message in (("CNN=2", "a cnn model"), ("Difusion=2", "not one of --names")):
        with pytest.raises(ColorizationError, match=message):
            _evaluate(three_models, tmp_path / "wrong", _embedded(), guidance_scale=wrong, **options)
    # a sampler named for one model replaces the shared ones for it alone
    own = _evaluate(three_models, tmp_path / "own", _embedded(), samplers="ddim:3,Diffusion=dpm:2", **options)
    assert list(own["summary"])[:2] == ["CNN", "Diffusion (DPM-2)"]
    np.testing.assert_array_equal(
        own["values"]["Diffusion (DPM-2)"]["psnr"], swept["values"]["Diffusion (DPM-2)"]["psnr"]
    )
    for wrong, message in (("dpm:2,CNN=ddim:2", "a cnn model"), ("Difusion=dpm:2", "not one of --names")):
        with pytest.raises(ColorizationError, match=message):
            _evaluate(three_models, tmp_path / "wrong", _embedded(), samplers=wrong, **options)


def test_spread_skill_ratio_on_cases_with_a_known_answer():
    from colorization.metrics import ensemble_calibration, spread_skill_ratio

    rng = np.random.default_rng(0)
    k, images, pixels, sigma = 8, 4000, 64, 0.05
    mean = rng.uniform(0.3, 0.7, (images, pixels))
    truth = mean + sigma * rng.standard_normal((images, pixels))
    calibrated = mean + sigma * rng.standard_normal((k, images, pixels))  # exchangeable with the truth
    shrunk = mean + 0.5 * sigma * rng.standard_normal((k, images, pixels))  # half the spread around the true mean
    counts = resample_counts(images, 0, samples=200)
    spread2, error2 = (t.numpy() for t in ensemble_calibration(torch.from_numpy(calibrated), torch.from_numpy(truth)))
    ratio = spread_skill_ratio(spread2, error2, k, counts)
    assert ratio["mean"] == pytest.approx(1.0, abs=0.01) and ratio["ci95"][0] < 1.0 < ratio["ci95"][1]
    spread2, error2 = (t.numpy() for t in ensemble_calibration(torch.from_numpy(shrunk), torch.from_numpy(truth)))
    expected = math.sqrt(0.25 * (1 + 1 / k) / (1 + 0.25 / k))
    assert spread_skill_ratio(spread2, error2, k, counts)["mean"] == pytest.approx(expected, rel=0.01)


def test_the_posterior_mean_is_compared_without_the_bias_of_a_mean_of_noisy_logs():
    """A calibrated Gaussian sampler whose posterior mean is known: per image, truth and K = 8 samples are
    exchangeable draws around the same mean, with per-image noise levels spread over a factor 20 and only four
    pixels per image (so each image's estimate of its posterior mean's error is very noisy). A regressor that
    predicts that mean exactly has the posterior mean's error: the true gain of one over the other is 0 dB, and
    the posterior mean sits 10 log10(1 + 1/K) dB over the mean of K."""
    from colorization.metrics import ensemble_calibration

    rng = np.random.default_rng(1)
    k, images, pixels = 8, 20000, 4
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(0.2), images))[:, None]
    mean = rng.uniform(0.3, 0.7, (images, pixels))
    truth = mean + sigma * rng.standard_normal((images, pixels))
    samples = mean + sigma * rng.standard_normal((k, images, pixels))
    spread2, error2 = (t.numpy() for t in ensemble_calibration(torch.from_numpy(samples), torch.from_numpy(truth)))
    psnr = lambda mse: -10 * np.log10(mse)  # noqa: E731 (data range 1)
    values = {
        "Sampler": {"psnr": psnr(((samples[0] - truth) ** 2).mean(1))},
        "Regressor": {"psnr": psnr(((mean - truth) ** 2).mean(1))},
        GRAY: {"psnr": psnr(((0.5 - truth) ** 2).mean(1))},
        TRUTH: {"index": np.arange(images)},
    }
    found = {"index": np.arange(images), "spread2": spread2, "error2": error2, "num_samples": np.full(images, k)}
    found.update(psnr_mean=psnr(error2), ssim_mean=np.ones(images), diversity=np.ones(images))
    summary = summarize(values, seed=0, samples={"Sampler": found})["samples"]
    sampler = summary["Sampler"]
    # The known answers, within the tolerance of 20,000 images: the pooled estimates' own standard error is
    # about 0.01 dB here (their paired intervals say so), so 0.05 dB is five of them.
    gain = sampler["posterior_vs"]["Regressor"]
    assert gain["mean"] == pytest.approx(0.0, abs=0.05) and gain["ci95"][0] < 0.0 < gain["ci95"][1]
    assert gain["ci95"][1] - gain["ci95"][0] < 0.1
    expected = 10 * math.log10(1 / (sigma**2).mean())
    assert sampler["pooled_psnr_posterior"]["mean"] == pytest.approx(expected, abs=0.05)
    assert summary["Regressor"]["pooled_psnr"]["mean"] == pytest.approx(expected, abs=0.05)
    assert sampler["posterior_gain_over_mean"]["mean"] == pytest.approx(10 * math.log10(1 + 1 / k), abs=0.05)
    assert sampler["mean_vs"]["Regressor"]["mean"] == pytest.approx(-10 * math.log10(1 + 1 / k), abs=0.05)
    # The estimator the table used before: the mean over images of -10 log10 of each image's estimate (floored
    # at the PSNR cap's error where the noisy estimate is not positive). On the same data it is far off.
    per_image = np.minimum(10 * np.log10(1 / np.maximum(error2 - spread2 / k, 1e-10)), 100.0)
    assert per_image.mean() - values["Regressor"]["psnr"].mean() > 1.0


def test_a_black_and_white_photo_is_recognised_and_a_pale_color_one_is_not():
    from colorization.metrics import is_gray_truth

    generator = torch.Generator().manual_seed(0)
    gray = torch.rand(1, 1, 32, 32, generator=generator).expand(1, 3, 32, 32)
    noisy_gray = (gray + 0.002 * torch.randn(1, 3, 32, 32, generator=generator)).clamp(0, 1)  # ~0.5 Lab unit noise
    pale = gray.clone()
    pale[:, 0, :8] = (pale[:, 0, :8] + 0.08).clamp(0, 1)  # a faint red band over a quarter of the image
    assert is_gray_truth(torch.cat([gray, noisy_gray, pale])).tolist() == [True, True, False]


def test_same_numbers_on_real_photos_twice(three_models, tmp_path, afhq_dir):
    data = DataConfig(train_data_dir=str(afhq_dir), resolution=32, dataloader_num_workers=0)
    first = _evaluate(three_models, tmp_path / "a", data, max_images=12)
    second = _evaluate(three_models, tmp_path / "b", data, max_images=12)
    assert first["summary"] == second["summary"] and first["settings"]["num_images"] == 12


def test_a_model_is_not_scored_on_its_training_images(three_models, tmp_path):
    with pytest.raises(ColorizationError, match="among CNN's training images"):
        _evaluate(three_models, tmp_path / "eval", _embedded(), split="all")
    assert not (tmp_path / "eval").exists()
    result = _evaluate(
        three_models, tmp_path / "eval", _embedded(), split="all", allow_training_images=True, max_images=40
    )
    assert any("TRAINING images" in note for note in result["settings"]["notes"])
    assert "TRAINING images" in (tmp_path / "eval" / "table.md").read_text()


def test_images_a_checkpoint_was_chosen_on_are_left_out(three_models, tmp_path):
    # the GAN's exported step was chosen on the 26 validation images: nothing would be left
    with pytest.raises(ColorizationError, match="none of the 26 images is left"):
        _evaluate(three_models, tmp_path / "eval", _embedded(), keep_selection_images=False)
    result = _evaluate(three_models, tmp_path / "eval", _embedded(), names=("CNN",), keep_selection_images=False)
    assert result["settings"]["num_images"] == 26  # the CNN was not selected on anything


def test_unreadable_images_are_dropped_and_counted(three_models, tmp_path):
    from test_data import _write_images, write_bad_images

    folder = tmp_path / "photos"
    _write_images(folder, 6)
    write_bad_images(folder, tag=b"eval")
    result = _evaluate(
        three_models,
        tmp_path / "eval",
        DataConfig(train_data_dir=str(folder), resolution=32, dataloader_num_workers=0),
        names=("CNN",),
        split="all",
    )
    assert result["settings"]["num_images"] == 6 and result["settings"]["unreadable_images"] == 3
    assert "3 unreadable image(s) were left out" in (tmp_path / "eval" / "table.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert len({r["image_index"] for r in rows}) == 6  # no duplicated neighbour in place of a bad image


def test_command_line_end_to_end_and_bad_input(three_models, tmp_path, capsys):
    from colorization.evaluation import main

    args = [
        "--checkpoints",
        three_models["CNN"],
        three_models["GAN"],
        "--names",
        "CNN",
        "GAN",
        *TINY_DATA,
        "--metrics",
        "psnr,ssim",
        "--max_images",
        "6",
        "--keep_selection_images",
        "--output_dir",
        tmp_path / "eval",
    ]
    result = run_command([sys.executable, "evaluate.py", *args])  # the real script, once
    assert "| CNN |" in result.stdout and "| Gray (ab = 0) |" in result.stdout
    code, _, error = run_in_process(main, ["--checkpoints", tmp_path / "nowhere"] + args[6:], capsys)
    assert code == 2 and "is neither a folder that exists nor a Hub id" in error and "Traceback" not in error
    (tmp_path / "not_a_model").mkdir()
    code, _, error = run_in_process(
        main, ["--checkpoints", tmp_path / "not_a_model"] + args[6:] + ["--output_dir", tmp_path / "x"], capsys
    )
    assert code == 1 and "not an exported colorization model" in error
    assert not (tmp_path / "x").exists()  # nothing written on failure
    (tmp_path / "empty").mkdir()
    code, _, error = run_in_process(
        main, args + ["--train_data_dir", tmp_path / "empty", "--output_dir", tmp_path / "y"], capsys
    )
    assert code == 1 and "no images" in error and not (tmp_path / "y").exists()


def test_two_processes_give_the_same_table_as_one(three_models, tmp_path, capsys):
    from colorization.evaluation import main

    # the diffusion model's noise is seeded per image, so sharding and batching do not change its colors
    args = [
        "--checkpoints",
        three_models["CNN"],
        three_models["GAN"],
        three_models["Diffusion"],
        *TINY_DATA,
        "--metrics",
        "psnr,ssim,colorfulness,ab_distance",
        "--batch_size",
        "5",
        "--num_inference_steps",
        "2",
        "--keep_selection_images",
    ]
    code, _, error = run_in_process(main, [*args, "--output_dir", tmp_path / "one"], capsys)  # the one, here
    assert code == 0, error
    accelerate_launch("evaluate.py", args + ["--batch_size", "3", "--output_dir", tmp_path / "two"], num_processes=2)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["settings"]["num_images"] == two["settings"]["num_images"] == 26
    # equal up to rounding: the diffusion model's colors (2 sampler passes) change the most in other batches;
    # a difference to gray or to the truth's colorfulness is compared at the size of the row's own metric
    rounding = _color_rounding(three_models["Diffusion"], passes=2)
    of = {"psnr_vs_gray": "psnr", "ssim_vs_gray": "ssim", "colorfulness_gap": "colorfulness"}
    of["colorfulness_vs_truth"] = "colorfulness"
    for row, metrics in one["summary"].items():
        for metric, stats in metrics.items():
            size = abs(metrics[of.get(metric.removesuffix("_per_image"), metric)]["mean"])
            assert two["summary"][row][metric]["mean"] == pytest.approx(stats["mean"], abs=rounding * size), (
                row,
                metric,
            )


def test_an_evaluation_never_deletes_what_it_did_not_write(three_models, tmp_path, capsys):
    from colorization.evaluation import main

    model = three_models["CNN"]
    before = sorted(p.name for p in model.iterdir())
    args = ["--checkpoints", model, *TINY_DATA, "--metrics", "psnr", "--max_images", "4", "--keep_selection_images"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for folder in (mine, model, tmp_path):  # someone's files, the evaluated model's own folder, a parent folder
        code, _, error = run_in_process(main, args + ["--output_dir", folder], capsys)
        assert code == 1 and len(error.strip().splitlines()) == 1 and "Traceback" not in error, error
        assert "--output_dir" in error
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in model.iterdir()) == before

    out = tmp_path / "evaluation"
    assert run_in_process(main, args + ["--output_dir", out], capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())["summary"]
    (out / "my_notes.md").write_text("mine")
    code, _, error = run_in_process(main, args + ["--output_dir", out], capsys)  # an earlier evaluation
    assert code == 1 and "--overwrite_output_dir" in error
    code, _, _ = run_in_process(main, args + ["--output_dir", out, "--overwrite_output_dir"], capsys)
    assert code == 0 and json.loads((out / "results.json").read_text())["summary"] == first
    assert (out / "my_notes.md").read_text() == "mine" and "evaluation_files.json" in os.listdir(out)
    code, _, error = run_in_process(main, args + ["--output_dir", mine, "--overwrite_output_dir"], capsys)
    assert code == 1 and (mine / "notes.txt").read_text() == "keep me"  # overwriting is for evaluations only
    code, _, error = run_in_process(main, args + ["--output_dir", model, "--overwrite_output_dir"], capsys)
    assert code == 1 and "holds a model" in error and sorted(p.name for p in model.iterdir()) == before
