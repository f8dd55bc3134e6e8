"""evaluate.py: metric definitions, the table and its files, determinism, bad input."""

import csv
import json
import math
import sys
import urllib.error

import numpy as np
import pytest
import torch

from colorization import color
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.evaluation import (GRAY, TRUTH, EvaluationConfig, bootstrap_interval, colorfulness, evaluate,
                                     load_lpips)
from colorization.metrics import PSNR_CAP_DB, psnr_per_image, ssim_per_image
from conftest import TINY_CNN, TINY_DATA, accelerate_launch, run_command

TINY_GAN = ["--lambda_perceptual", "0", "--base_channels", "8", "--train_batch_size", "8"]


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
    assert "alexnet-owt-7be5be79.pth" in str(error.value) and "--metrics psnr,ssim,colorfulness" in str(error.value)


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).normal(10, 2, 400)
    low, high = bootstrap_interval(values, seed=0)
    assert low < values.mean() < high and 0.2 < high - low < 0.6  # ~ 2 * 1.96 * 2 / sqrt(400) = 0.39


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    accelerate_launch("train_cnn.py", TINY_DATA + TINY_CNN + ["--output_dir", root / "cnn", "--max_train_steps", "3",
                                                              "--validation_steps", "3", "--no-initial_validation"])
    accelerate_launch("train_gan.py", TINY_DATA + TINY_GAN + ["--output_dir", root / "gan", "--max_train_steps", "2",
                                                              "--validation_steps", "2", "--no-initial_validation",
                                                              "--resolution", "64"])  # evaluated at 32: resized
    accelerate_launch("train_diffusion.py", TINY_DATA + [
        "--unet_preset", "small", "--block_out_channels", "32,32", "--attention_levels", "", "--train_batch_size", "8",
        "--max_validation_samples", "4", "--validation_inference_steps", "2", "--output_dir", root / "diffusion",
        "--max_train_steps", "2", "--validation_steps", "2", "--no-initial_validation"])
    return root


def _evaluate(models, output, data, **config):
    options = dict(metrics="psnr,ssim,colorfulness", output_dir=str(output), batch_size=5, grid_images=4, **config)
    return evaluate([str(models / "cnn"), str(models / "gan")], ["CNN", "GAN"], EvaluationConfig(**options), data)


def _embedded():
    return DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)


def test_table_files_are_written_and_consistent(two_models, tmp_path):
    result = _evaluate(two_models, tmp_path / "eval", _embedded())
    out = tmp_path / "eval"
    assert {p.name for p in out.iterdir()} >= {"table.md", "table.csv", "results.json", "per_image.csv", "comparison.png"}
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert list(summary) == ["CNN", "GAN", GRAY, TRUTH]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 26 * 4  # 26 validation images x (2 models + gray + truth)
    for model in ("CNN", "GAN", GRAY):
        psnr = [float(r["psnr"]) for r in rows if r["model"] == model]
        assert math.isclose(np.mean(psnr), summary[model]["psnr"]["mean"], rel_tol=1e-6)
        low, high = summary[model]["psnr"]["ci95"]
        assert low <= summary[model]["psnr"]["mean"] <= high
    table_csv = {r["model"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert math.isclose(float(table_csv["CNN"]["ssim_mean"]), summary["CNN"]["ssim"]["mean"], rel_tol=1e-9)
    markdown = (out / "table.md").read_text()
    assert "| Gray (ab = 0) |" in markdown and "26 images" in markdown and "32x32" in markdown
    from PIL import Image

    assert Image.open(out / "comparison.png").size[0] > 4 * 32  # gray, two models, truth side by side
    assert result["settings"]["model_resolutions"] == {"CNN": 32, "GAN": 64}


def test_gray_row_is_the_input_lightness_with_zero_ab(two_models, tmp_path):
    data = _embedded()
    result = _evaluate(two_models, tmp_path / "eval", data)
    from colorization.data import build_datasets

    _, validation = build_datasets(data, 0)
    truth = torch.stack([validation[i]["rgb"] for i in range(len(validation))])
    gray = color.normalized_lab_to_rgb(color.rgb_to_normalized_lab(truth)[0], torch.zeros(len(truth), 2, 32, 32))
    np.testing.assert_allclose(result["values"][GRAY]["psnr"], psnr_per_image(gray, truth).numpy(), rtol=1e-5)
    assert np.all(result["values"][GRAY]["colorfulness"] < 1e-2)


def test_same_command_twice_gives_the_same_numbers_on_real_photos(two_models, tmp_path, afhq_dir):
    data = DataConfig(train_data_dir=str(afhq_dir), resolution=32, dataloader_num_workers=0)
    first = _evaluate(two_models, tmp_path / "a", data, max_images=12)
    second = _evaluate(two_models, tmp_path / "b", data, max_images=12)
    assert first["summary"] == second["summary"]
    assert first["settings"]["num_images"] == 12


def test_command_line_end_to_end_and_bad_input(two_models, tmp_path):
    args = [sys.executable, "evaluate.py", "--checkpoints", two_models / "cnn", two_models / "gan", "--names", "CNN",
            "GAN", *TINY_DATA, "--metrics", "psnr,ssim", "--max_images", "6", "--output_dir", tmp_path / "eval"]
    result = run_command(args)
    assert "| CNN |" in result.stdout and "| Gray (ab = 0) |" in result.stdout
    missing = run_command(args[:3] + [tmp_path / "nowhere"] + args[8:], check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "not_a_model").mkdir()
    not_model = run_command(args[:3] + [tmp_path / "not_a_model"] + args[8:] + ["--output_dir", tmp_path / "x"],
                            check=False)
    assert not_model.returncode == 1 and "not an exported colorization model" in not_model.stderr
    assert not (tmp_path / "x").exists()  # nothing written on failure
    (tmp_path / "empty").mkdir()
    empty = run_command(args + ["--train_data_dir", tmp_path / "empty", "--output_dir", tmp_path / "y"], check=False)
    assert empty.returncode == 1 and "no images" in empty.stderr and not (tmp_path / "y").exists()


def test_two_processes_give_the_same_table_as_one(two_models, tmp_path):
    # the diffusion model's noise is seeded per image, so sharding and batching do not change its colors
    args = ["--checkpoints", two_models / "cnn", two_models / "gan", two_models / "diffusion", *TINY_DATA,
            "--metrics", "psnr,ssim,colorfulness", "--batch_size", "5", "--num_inference_steps", "2"]
    run_command([sys.executable, "evaluate.py", *args, "--output_dir", tmp_path / "one"])
    accelerate_launch("evaluate.py", args + ["--batch_size", "3", "--output_dir", tmp_path / "two"], num_processes=2)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["settings"]["num_images"] == two["settings"]["num_images"] == 26
    for row, metrics in one["summary"].items():
        for metric, stats in metrics.items():
            assert two["summary"][row][metric]["mean"] == pytest.approx(stats["mean"], rel=1e-5), (row, metric)
