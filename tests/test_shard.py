"""python -m colorization.shard: photos written once as parquet shards give the folder path's pixels."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import _write_images

from colorization.data import image_hash
from colorization.errors import ColorizationError
from colorization.images import crop_of_stored_pixels, decode_image, resize_and_crop
from colorization.shard import read_manifest, run
from colorization.streaming import find_shards, read_shard


def test_shards_hold_every_readable_photo_with_the_folder_paths_pixels_and_hashes(tmp_path, capsys):
    import datasets

    photos = tmp_path / "photos"
    _write_images(photos / "a", 5)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(photos / "wide.png")
    (photos / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipping unreadable image a/broken.jpg"):
        assert run([str(photos), str(tmp_path / "shards"), "--resolution", "32", "--shard_size", "4"]) == 0
    out = capsys.readouterr().out
    assert "6 images at 32px in 2 shards" in out and "1 unreadable skipped" in out
    manifest = read_manifest(str(tmp_path / "shards"))
    assert manifest["count"] == 6 and [s["rows"] for s in manifest["shards"]] == [4, 2]
    assert manifest["unreadable"] == ["a/broken.jpg"] and manifest["resolution"] == 32
    files = [str(tmp_path / "shards" / s["file"]) for s in manifest["shards"]]
    rows = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(rows.features["image"], datasets.Image)
    rows = rows.cast_column("image", datasets.Image(decode=False))
    assert [row["hash"] for row in rows] == manifest["hashes"]
    for row in rows:
        source = {"bytes": None, "path": str(photos / row["source"])}
        assert row["hash"] == image_hash(source)  # what evaluate.py compares with a model's training record
        assert torch.equal(resize_and_crop(decode_image(row["image"]), 32), resize_and_crop(decode_image(source), 32))
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["format"] == "colorization-shards"
    with pytest.raises(ColorizationError, match="not empty"):
        run([str(photos), str(tmp_path / "shards")])


def test_ppm_shards_are_cropped_without_a_decoder_to_exactly_the_folder_paths_pixels(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    for name, (height, width) in {"wide": (40, 67), "tall": (75, 42), "odd": (41, 58), "square": (33, 33)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    args = ["--resolution", "24", "--shard_size", "3"]
    assert run([str(photos), str(tmp_path / "ppm"), *args, "--image_format", "ppm"]) == 0
    assert read_manifest(str(tmp_path / "ppm"))["image_format"] == "ppm"
    rows = [row for shard in find_shards(str(tmp_path / "ppm")) for row in read_shard(shard)]
    assert len(rows) == 4
    for row in rows:
        data = row["image"]["bytes"]
        fast = crop_of_stored_pixels(data, 24)
        assert fast is not None and fast.dtype == torch.uint8 and fast.shape == (3, 24, 24)
        assert torch.equal(fast, resize_and_crop(decode_image(row["image"]), 24))  # what decoding would give
        source = next(p for p in photos.iterdir() if image_hash({"bytes": None, "path": str(p)}) == row["key"])
        assert torch.equal(fast, resize_and_crop(decode_image({"bytes": None, "path": str(source)}), 24))
        assert crop_of_stored_pixels(data, 16) is None  # another resolution: resized through the decoder
        assert crop_of_stored_pixels(data[:-1], 24) is None  # truncated: left to the decoder, which reports it
    png = io.BytesIO()
    Image.open(io.BytesIO(rows[0]["image"]["bytes"])).save(png, format="PNG")
    assert crop_of_stored_pixels(png.getvalue(), 24) is None


def test_a_hub_data_sets_rows_name_files_only_inside_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from colorization.shard import _hub_images

    (tmp_path / "secret.png").write_bytes(b"private")
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(repo / "images" / "a.png")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def images(path):
        (repo / "data").mkdir(exist_ok=True)
        rows = pa.array([{"bytes": None, "path": path}], type=image)
        pq.write_table(pa.table({"image": rows}), repo / "data" / "train-00000-of-00001.parquet")
        return list(_hub_images(str(repo), None, "image", "label", None))

    assert images("images/a.png")[0][1] == (repo / "images" / "a.png").read_bytes()  # the data set's own file
    for outside in (str(tmp_path / "secret.png"), "../secret.png", "images/../../secret.png"):
        with pytest.raises(ColorizationError, match="outside the data set's folder"):
            images(outside)
