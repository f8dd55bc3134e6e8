"""ONNX export and the ONNX Runtime backend: parity with torch per family, the same pictures, clear failures."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import AFHQ_DIR
from PIL import Image

from colorization.errors import ColorizationError
from colorization.export_onnx import DEMO_EXAMPLES, TOLERANCE, export_onnx
from colorization.export_onnx import run as export_command
from colorization.inference import load_colorizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _photos(limit=3):
    """Real photos: the AFHQ cats when present, else the demo's examples (a cat among them)."""
    folder = AFHQ_DIR if AFHQ_DIR.is_dir() else Path(DEMO_EXAMPLES)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:limit]
    return [Image.open(p).convert("RGB") for p in files], str(folder)


def _same_pictures(model, onnx_folder, **sampling):
    photos, _ = _photos()
    photos.append(photos[0].resize((333, 217)))  # another size and aspect ratio than the model's
    torch_colors = load_colorizer(str(model), "cpu", **sampling).colorize(photos)
    onnx_colors = load_colorizer(str(onnx_folder), backend="onnx", **sampling).colorize(photos)
    for expected, found in zip(torch_colors, onnx_colors):
        assert found.size == expected.size
        difference = np.abs(np.asarray(found, dtype=int) - np.asarray(expected, dtype=int)).max()
        assert difference <= 1, difference  # at most one grey level apart


@pytest.mark.parametrize("family", ["cnn", "gan", "diffusion"])
def test_the_onnx_graph_matches_torch_and_colorizes_the_same_pictures(family, request, tmp_path):
    model = request.getfixturevalue(f"{family}_run")[0]
    _, check = _photos(8)
    record = export_onnx(str(model), str(tmp_path / "onnx"), check_photos=[check])
    assert record["parity"]["images"] >= 3 and record["parity"]["max_abs_difference"] <= TOLERANCE
    assert record["opset"] >= 17 and {"torch", "onnx", "onnxruntime"} <= set(record["versions"])
    on_disk = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert json.loads((tmp_path / "onnx" / "colorizer.json").read_text()) == json.loads(
        (model / "colorizer.json").read_text()
    )
    sampling = {"num_inference_steps": 3, "seed": 4} if family == "diffusion" else {}
    _same_pictures(model, tmp_path / "onnx", **sampling)
    if family == "diffusion":
        assert (tmp_path / "onnx" / "scheduler" / "scheduler_config.json").is_file()
        assert set(record["graph"]["inputs"]) == {"noisy_ab", "timestep", "lightness"}
        onnx = load_colorizer(str(tmp_path / "onnx"), backend="onnx", scheduler="ddim", num_inference_steps=2)
        assert onnx.describe_sampling() == "DDIM-2"


def test_a_refining_model_exports_with_its_regressor_and_stands_alone(refine_run, tmp_path):
    record = export_onnx(str(refine_run), str(tmp_path / "onnx"))
    assert set(record["graph"]["inputs"]) == {"noisy_ab", "timestep", "lightness", "regressor_ab"}
    regressor = json.loads((tmp_path / "onnx" / "regressor" / "onnx.json").read_text())
    assert regressor["model_type"] == "gan" and regressor["parity"]["max_abs_difference"] <= TOLERANCE
    _same_pictures(refine_run, tmp_path / "onnx", num_inference_steps=2, guidance_scale=1.5)
    (tmp_path / "onnx" / "regressor" / "mine.txt").write_text("a file of the user's, deeper down")
    with pytest.raises(ColorizationError, match="not an ONNX export \\(e.g. regressor/mine.txt\\)"):
        export_onnx(str(refine_run), str(tmp_path / "onnx"), overwrite=True)
    (tmp_path / "onnx" / "regressor" / "mine.txt").unlink()
    export_onnx(str(refine_run), str(tmp_path / "onnx"), overwrite=True)  # its own earlier export is replaced
    moved = tmp_path / "elsewhere" / "onnx"  # the ONNX folder needs nothing beside it
    moved.parent.mkdir()
    shutil.move(tmp_path / "onnx", moved)
    colorizer = load_colorizer(str(moved), backend="onnx", num_inference_steps=2)
    assert colorizer.regressor.backend == "onnx"
    assert colorizer.colorize(Image.new("RGB", (20, 12), (90, 120, 150))).size == (20, 12)


def test_the_commands_and_their_failures(cnn_run, tmp_path, capsys):
    from colorization.cli import run as colorize_command

    model, onnx_folder = cnn_run[0], tmp_path / "onnx"
    assert export_command([str(model), str(onnx_folder)]) == 0
    assert "max |delta|" in capsys.readouterr().out
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, photo in enumerate(_photos()[0]):
        photo.save(photos / f"{i}.png")
    assert colorize_command([str(photos), "--model", str(model), "--output_dir", str(tmp_path / "torch")]) == 0
    onnx_args = [str(photos), "--model", str(onnx_folder), "--backend", "onnx", "--output_dir", str(tmp_path / "ort")]
    assert colorize_command(onnx_args) == 0
    for file in sorted((tmp_path / "torch").rglob("*.png")):
        found = np.asarray(Image.open(tmp_path / "ort" / file.relative_to(tmp_path / "torch")), dtype=int)
        assert np.abs(found - np.asarray(Image.open(file), dtype=int)).max() <= 1

    failures = [
        (lambda: export_onnx(str(model), str(onnx_folder)), "earlier ONNX export; add --overwrite"),
        (lambda: export_onnx(str(model), str(photos)), "not an ONNX export"),
        (lambda: load_colorizer(str(model), backend="onnx"), "is not an ONNX export"),
        (lambda: load_colorizer(str(onnx_folder)), "is an ONNX export: load it with backend='onnx'"),
        (lambda: load_colorizer(str(onnx_folder), "cuda", backend="onnx"), "runs on the CPU"),
    ]
    for call, message in failures:
        with pytest.raises(ColorizationError, match=message):
            call()
    (onnx_folder / "notes.txt").write_text("mine")  # a file of the user's in an export: never deleted
    with pytest.raises(ColorizationError, match="not an ONNX export \\(e.g. notes.txt\\)"):
        export_onnx(str(model), str(onnx_folder), overwrite=True)
    (onnx_folder / "notes.txt").unlink()
    export_onnx(str(model), str(onnx_folder), overwrite=True)  # an earlier export is replaced on request
    (onnx_folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ColorizationError, match="cannot load .*model.onnx"):
        load_colorizer(str(onnx_folder), backend="onnx")


def test_a_kill_while_an_earlier_export_is_replaced_loses_neither(tmp_path, monkeypatch):
    import os

    import torch

    from colorization.colorizer import save_export_config, save_module_weights
    from colorization.models.gan import UNetGenerator

    model, onnx_folder = tmp_path / "gan", tmp_path / "onnx"
    torch.manual_seed(0)
    save_module_weights(str(model), UNetGenerator(32, "ab", 8), "gan")
    save_export_config(str(model), "gan", {"resolution": 32, "output_space": "ab", "base_channels": 8}, 32)
    export_onnx(str(model), str(onnx_folder))
    earlier = {p.relative_to(onnx_folder): p.read_bytes() for p in onnx_folder.rglob("*") if p.is_file()}

    move = os.replace

    def killed_before_the_new_export_is_in(source, target):
        if os.path.basename(source).startswith(".onnx-export-"):
            raise KeyboardInterrupt  # the kill lands between taking the old export away and moving the new in
        move(source, target)

    monkeypatch.setattr(os, "replace", killed_before_the_new_export_is_in)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(str(model), str(onnx_folder), overwrite=True)
    monkeypatch.undo()
    # the earlier export is whole on disk, and the next export puts it back before it decides anything
    with pytest.raises(ColorizationError, match="add --overwrite"):
        export_onnx(str(model), str(onnx_folder))
    assert {p.relative_to(onnx_folder): p.read_bytes() for p in onnx_folder.rglob("*") if p.is_file()} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan", "onnx"]  # nothing left beside it
    load_colorizer(str(onnx_folder), backend="onnx")
