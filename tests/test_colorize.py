"""`colorize` and Colorizer.colorize: full resolution, every input kind, every model type, exit codes."""

import sys

import numpy as np
import pytest
import torch
from conftest import run_command, run_in_process
from diffusers import DDPMScheduler
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from colorization import color, load_colorizer
from colorization.colorizer import save_export_config, save_module_weights
from colorization.models.cnn import ResNetColorizer
from colorization.models.diffusion import LabColorizationPipeline, LabConditionedUNet
from colorization.models.gan import UNetGenerator


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One tiny exported model of each type (random weights: the API, not the colors, is under test)."""
    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    for model_type, network, architecture in (
        ("cnn", ResNetColorizer(), {}),
        ("gan", UNetGenerator(32, "ab", 8), {"resolution": 32, "output_space": "ab", "base_channels": 8}),
    ):
        save_module_weights(str(root / model_type), network, model_type)
        save_export_config(str(root / model_type), model_type, architecture, 32)
    unet = LabConditionedUNet(sample_size=32, block_out_channels=(32, 32), layers_per_block=1, attention_levels=())
    LabColorizationPipeline(unet, DDPMScheduler(num_train_timesteps=1000)).save_pretrained(root / "diffusion")
    save_export_config(
        str(root / "diffusion"), "diffusion", {}, 32, {"sampling": {"scheduler": "ddim", "num_inference_steps": 3}}
    )
    return root


def _photo(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(60, 200, (height, width, 3), dtype=np.uint8))


def _lightness(image):
    return color.rgb_to_lab(pil_to_tensor(image.convert("RGB"))[None].float() / 255.0)[0, 0]


@pytest.mark.parametrize("model_type", ["cnn", "gan", "diffusion"])
def test_every_model_type_keeps_size_aspect_and_lightness(models, model_type):
    colorizer = load_colorizer(str(models / model_type), device="cpu")
    assert colorizer.model_type == model_type
    photos = [_photo(77, 31), _photo(13, 40, 1), _photo(1, 1, 2)]
    results = colorizer.colorize(photos, batch_size=2)
    assert [r.size for r in results] == [p.size for p in photos]
    for photo, result in zip(photos, results):
        assert (_lightness(result) - _lightness(photo)).abs().max() < 0.6  # 8-bit rounding only
    assert isinstance(colorizer.colorize(photos[0]), Image.Image)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_every_mode(models, mode):
    colorizer = load_colorizer(str(models / "cnn"), device="cpu")
    base = _photo(24, 18)
    image = (
        Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257) if mode == "I;16" else base.convert(mode)
    )
    result = colorizer.colorize(image)
    assert result.size == (24, 18)
    assert result.mode == ("RGBA" if mode in ("LA", "RGBA") else "RGB")


def test_alpha_is_kept(models):
    rgba = _photo(20, 10).convert("RGBA")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (10, 1)))
    rgba.putalpha(alpha)
    result = load_colorizer(str(models / "gan"), device="cpu").colorize(rgba)
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(alpha))


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "BMP", "TIFF", "WEBP"])
def test_every_format_and_exif_rotation(models, tmp_path, image_format):
    path = tmp_path / f"photo.{image_format.lower()}"
    options = {"exif": _rotation_exif()} if image_format in ("JPEG", "WEBP", "PNG", "TIFF") else {}
    _photo(30, 16).save(path, format=image_format, **options)
    result = load_colorizer(str(models / "cnn"), device="cpu").colorize(Image.open(path))
    assert result.size == ((16, 30) if options else (30, 16))  # EXIF orientation 6: rotated a quarter turn


def _rotation_exif():
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


def test_command_line_end_to_end_with_bad_files(models, tmp_path):
    folder = tmp_path / "scans"
    (folder / "nested").mkdir(parents=True)
    _photo(33, 21).save(folder / "one.jpg")
    _photo(12, 12).convert("RGBA").save(folder / "nested" / "two.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    from test_data import write_bad_images

    (folder / "bad").mkdir()
    write_bad_images(folder / "bad")  # truncated, empty, and a decompression bomb
    single = tmp_path / "single.png"
    _photo(5, 9).save(single)
    args = [
        sys.executable,
        "-m",
        "colorization",
        "--model",
        models / "diffusion",
        folder,
        single,
        "--output_dir",
        tmp_path / "out",
        "--device",
        "cpu",
        "--batch_size",
        "2",
        "--num_inference_steps",
        "2",
        "--scheduler",
        "dpm",
        "--seed",
        "1",
        "--precision",  # the same colors in any batch exactly: fp32 (bf16's rounding depends on the batch's size)
        "fp32",
    ]
    result = run_command(args, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    named = ("broken.jpg", "notes.txt", "truncated.jpg", "empty.jpg", "bomb.png")
    assert len(errors) == 5 and all(any(name in e for e in errors) for name in named), errors
    assert "Traceback" not in result.stderr
    assert Image.open(tmp_path / "out" / "scans" / "one.jpg").size == (33, 21)
    assert Image.open(tmp_path / "out" / "scans" / "nested" / "two.png").mode == "RGBA"
    assert Image.open(tmp_path / "out" / "single.png").size == (5, 9)
    first = np.asarray(Image.open(tmp_path / "out" / "single.png"))
    run_command(args[:5] + [single] + args[7:] + ["--output_dir", tmp_path / "again"])  # all good: exit 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "single.png")))  # same seed, same colors


def test_command_line_never_overwrites_an_input(models, tmp_path):
    source = tmp_path / "photo.png"
    _photo(8, 8).save(source)
    before = source.read_bytes()
    run_command(
        [
            sys.executable,
            "-m",
            "colorization",
            "--model",
            models / "cnn",
            source,
            "--output_dir",
            tmp_path,
            "--device",
            "cpu",
        ]
    )  # the output folder is the input's own folder
    assert source.read_bytes() == before
    assert Image.open(tmp_path / "photo_colorized.png").size == (8, 8)


def test_missing_model_or_input_is_one_line(models, tmp_path, capsys):
    from colorization.cli import main

    code, _, error = run_in_process(main, ["--model", tmp_path / "nope", tmp_path], capsys)
    assert code == 2 and "error: argument --model" in error and "Traceback" not in error
    code, _, error = run_in_process(main, ["--model", models / "cnn", tmp_path / "absent.jpg"], capsys)
    assert code == 2 and "does not exist" in error
    code, _, error = run_in_process(main, ["--model", tmp_path, tmp_path], capsys)  # a folder, but no model
    assert code == 1 and error.strip().startswith("error:") and "Traceback" not in error


def _psd(width, height):
    """A Photoshop file (raw RGB): Pillow reads PSD but cannot write it."""
    import struct

    planes = np.random.default_rng(1).integers(60, 200, (3, height, width), dtype=np.uint8)
    return (
        b"8BPS"
        + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
        + struct.pack(">IIIH", 0, 0, 0, 0)
        + planes.tobytes()
    )


def test_inputs_named_alike_never_share_an_output_and_nothing_is_overwritten(models, tmp_path, capsys):
    from colorization.cli import main

    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        _photo(9, 7, seed).save(tmp_path / folder / "x.png")
    (tmp_path / "b" / "layers.psd").write_bytes(_psd(6, 5))  # read, but not writable as PSD: saved as PNG
    _photo(8, 8, 3).convert("RGBA").save(tmp_path / "b" / "shape.png")
    _photo(8, 8, 4).convert("RGBA").save(tmp_path / "b" / "shape.webp", lossless=True)
    out = tmp_path / "out"
    inputs = [
        tmp_path / "a" / "x.png",
        tmp_path / "b" / "x.png",
        tmp_path / "b" / "layers.psd",
        tmp_path / "b" / "shape.png",
        tmp_path / "b" / "shape.webp",
    ]
    args = ["--model", models / "cnn", *inputs, "--output_dir", out, "--device", "cpu"]
    code, printed, _ = run_in_process(main, args, capsys)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert code == 0 and written == ["a/x.png", "b/layers.png", "b/shape.png", "b/shape.webp", "b/x.png"], written
    assert "5 image(s) colorized" in printed
    first = (out / "a" / "x.png").read_bytes()
    assert first != (out / "b" / "x.png").read_bytes()  # two photos, two outputs
    assert Image.open(out / "b" / "layers.png").size == (6, 5)

    (out / "a" / "x.png").write_bytes(b"someone's file")
    code, _, error = run_in_process(main, args, capsys)  # existing outputs: refused before anything is written
    assert code == 1 and "already exist" in error and "--overwrite" in error and "Traceback" not in error
    assert (out / "a" / "x.png").read_bytes() == b"someone's file"
    code, printed, _ = run_in_process(main, args + ["--overwrite"], capsys)
    assert code == 0 and "5 image(s) colorized" in printed and (out / "a" / "x.png").read_bytes() == first


def test_a_file_that_cannot_be_written_is_one_line_and_the_rest_go_on(models, tmp_path, capsys):
    from colorization.cli import main

    for name in ("one", "two"):
        _photo(8, 8).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    (out / "one.png").mkdir(parents=True)  # a folder where the output file should go: it cannot be written
    code, printed, error = run_in_process(
        main,
        ["--model", models / "gan", tmp_path / "one.png", tmp_path / "two.png", "--output_dir", out, "--overwrite"],
        capsys,
    )
    lines = [line for line in error.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "one.png" in lines[0] and "Traceback" not in error
    assert "1 image(s) colorized" in error and (out / "two.png").is_file()


def test_an_output_never_lands_on_another_input(models, tmp_path, capsys):
    """``a.psd`` is written as PNG: in the inputs' own folder, ``a.png`` is another input, and stays untouched
    even with --overwrite; so does ``b_colorized.png``, an input left by an earlier run."""
    from colorization.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.psd").write_bytes(_psd(6, 5))
    _photo(7, 4, 5).save(scans / "a.png")
    _photo(3, 8, 6).save(scans / "b.png")
    _photo(5, 5, 7).save(scans / "b_colorized.png")
    inputs = {p.name: p.read_bytes() for p in scans.iterdir()}
    args = ["--model", models / "cnn", scans, "--output_dir", tmp_path, "--device", "cpu", "--overwrite"]
    code, printed, _ = run_in_process(main, args, capsys)
    assert code == 0 and "4 image(s) colorized" in printed
    assert all((scans / name).read_bytes() == data for name, data in inputs.items())
    outputs = {p.name: Image.open(p).size for p in scans.iterdir() if p.name not in inputs}
    assert outputs == {
        "a_colorized.png": (7, 4),  # a.png's, beside it
        "a_colorized_2.png": (6, 5),  # a.psd's: a.png is an input, a_colorized.png another output
        "b_colorized_2.png": (3, 8),  # b.png's: b_colorized.png is an input
        "b_colorized_colorized.png": (5, 5),
    }
