"""The web demo, driven in a real browser (headless Chromium through Playwright), and its arrays against the CLI's.

Where no Chromium is installed the browser test skips with a message saying how to get one, except where
COLORIZATION_REQUIRE_BROWSER=1 (CI sets it after installing Debian's chromium): there it fails.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import ROOT, run_command, run_in_process
from PIL import Image

from colorization import color

CAT = ROOT / "colorization" / "demo_examples" / "cat_chelsea.jpg"  # a real cat photo, CC0
ARTIFACTS = ROOT / "test-artifacts"


def _lightness(image: Image.Image) -> np.ndarray:
    import torch

    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return color.rgb_to_lab(rgb)[0, 0].numpy()


@pytest.fixture(scope="module")
def models(cnn_run, gan_run, diffusion_run):
    return [str(cnn_run[0]), str(gan_run[0]), str(diffusion_run[0])]


def _browser():
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        message = (
            "no Chromium for the browser test: install one (Debian/Ubuntu: apt-get install chromium) "
            "and pip install -e '.[dev]' for Playwright"
        )
        if os.environ.get("COLORIZATION_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def demo_url(models, tmp_path_factory):
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("demo") / "demo.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "colorization.demo",
            "--models",
            *models,
            "--names",
            "CNN",
            "GAN",
            "Diffusion",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"the demo stopped: {open(log.name).read()[-3000:]}") from None
            time.sleep(0.5)
    else:
        process.kill()
        raise AssertionError("the demo did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_page_colorizes_a_cat_with_every_model_and_reports_a_broken_file(demo_url, tmp_path):
    executable = _browser()
    from playwright.sync_api import expect, sync_playwright

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(CAT.read_bytes()[:3000])
    photo = Image.open(CAT)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(demo_url)
        page.locator("#upload input[type=file]").set_input_files(str(CAT))
        expect(page.locator("#status")).to_contain_text("Colorized 451x300 px", timeout=120_000)
        for index, name in enumerate(("CNN", "GAN", "Diffusion")):  # each output downloaded as a user would
            with page.expect_download(timeout=30_000) as download:
                page.locator(f"#output-{index} a[download]").click()  # the image's download button
            assert download.value.suggested_filename == f"cat_chelsea_{name}.png"  # never three "image.png"
            path = tmp_path / f"output-{index}.png"
            download.value.save_as(path)
            result = Image.open(path)
            assert result.size == photo.size and result.format == "PNG"
            assert np.abs(_lightness(result) - _lightness(photo)).max() < 1.0  # the photo's own lightness
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        page.locator("#upload button[aria-label='Clear']").click()  # as a user replaces the photo
        expect(page.locator("#status")).to_contain_text("Upload a photo", timeout=30_000)
        page.locator("#upload input[type=file]").set_input_files(str(truncated))
        expect(page.locator("#status")).to_contain_text("not a readable image", timeout=60_000)
        assert "Traceback" not in page.content()
        browser.close()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_demo_gives_the_same_pixels_as_the_command_line(models, tmp_path, index, capsys):
    from colorization.cli import main
    from colorization.demo import Demo

    source = tmp_path / "photo.png"
    Image.open(CAT).convert("RGB").crop((100, 50, 260, 170)).save(source)
    demo = Demo([models[index]], ["model"], "cpu")
    results, _ = demo.colorize(Image.open(source), sampler="dpm", steps=3, seed=5)
    code, _, error = run_in_process(
        main,
        [
            "--model",
            models[index],
            source,
            "--output_dir",
            tmp_path / "cli",
            "--device",
            "cpu",
            "--scheduler",
            "dpm",
            "--num_inference_steps",
            "3",
            "--seed",
            "5",
        ],
        capsys,
    )
    assert code == 0, error
    cli = np.asarray(Image.open(tmp_path / "cli" / "photo.png"))  # PNG: lossless, the array before encoding
    assert np.array_equal(np.asarray(results["model"]), cli)


def test_a_model_folder_that_does_not_load_stops_the_start(tmp_path, models):
    result = run_command(
        [sys.executable, "-m", "colorization.demo", "--models", models[0], tmp_path, "--names", "CNN", "Broken"],
        check=False,
    )  # a folder, but no model in it
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model 'Broken'")
