import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from colorization.data import (
    DataConfig,
    EpochShuffleSampler,
    batch_to_rgb,
    build_datasets,
    collate,
    load_splits,
)
from colorization.embedded import draw_scene, generate_images
from colorization.errors import ColorizationError
from colorization.images import decode_image, to_rgb


def _embedded(**overrides):
    return DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0, **overrides)


def _write_images(folder, count, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"img_{i:03d}.png")


def test_embedded_images_are_deterministic_and_colorful():
    first, again = generate_images(8), generate_images(8)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    lightness, ab = draw_scene(3)
    assert lightness.shape == (128, 128) and ab.shape == (2, 128, 128)
    assert np.abs(ab).mean() > 20  # far from gray: there is color to learn


def test_embedded_colors_follow_from_the_drawn_shape():
    # every pixel's ab is one of the listed colors, so the ab is a function of what the pixel belongs to
    _, ab = draw_scene(5)
    allowed = {(-10.0, -30.0), (12.0, 35.0), (62.0, 48.0), (18.0, -62.0), (-52.0, 44.0), (-4.0, 78.0), (0.0, 0.0)}
    assert {tuple(p) for p in ab.reshape(2, -1).T.tolist()} <= allowed


def test_split_is_deterministic_disjoint_and_independent_of_training_seed():
    train_a, val_a = build_datasets(_embedded(), seed=0)
    train_b, val_b = build_datasets(_embedded(), seed=123)
    assert len(val_a) == round(0.1 * 256) and len(train_a) + len(val_a) == 256
    images = lambda split: [str(h) for h in split.images["hash"]]  # noqa: E731 (a hash of each file's bytes)
    assert images(val_a) == images(val_b)
    assert not set(images(val_a)) & set(images(train_a))
    _, val_other = build_datasets(_embedded(split_seed=1), seed=0)
    assert images(val_other) != images(val_a)


def test_samples_are_resized_cropped_and_flipped_only_for_training():
    train, validation = build_datasets(_embedded(), seed=0)
    sample = train[(0, 3)]
    assert sample["pixels"].shape == (3, 32, 32) and sample["pixels"].dtype == torch.uint8
    flips = [train[(epoch, 3)]["flip"] for epoch in range(12)]
    assert any(flips) and not all(flips)
    assert train[(5, 3)]["flip"] == train[(5, 3)]["flip"]  # a function of (epoch, index)
    assert not any(validation[(e, 0)]["flip"] for e in range(6))
    batch = collate([train[(epoch, 3)] for epoch in range(12)])
    rgb = batch_to_rgb(batch, torch.device("cpu"))  # flips applied where the batch lands
    assert rgb.dtype == torch.float32 and 0.0 <= rgb.min() and rgb.max() <= 1.0
    unflipped = sample["pixels"].float() / 255
    for image, flip in zip(rgb, flips):
        assert torch.equal(image, unflipped.flip(-1) if flip else unflipped)


def test_the_decoded_cache_holds_exactly_what_decoding_gives():
    config = _embedded()
    cached, _ = build_datasets(config, seed=0)
    raw, _ = build_datasets(DataConfig(**{**config.__dict__, "preprocess": False}), seed=0)
    assert cached.decoded and not raw.decoded
    for index in (0, 7, 100):
        assert torch.equal(cached[(2, index)]["pixels"], raw[(2, index)]["pixels"])
        assert cached[(2, index)]["flip"] == raw[(2, index)]["flip"]


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochShuffleSampler(50, seed=7)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(50)) and all(e == 0 for e, _ in first)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]


def test_local_folder_with_nested_folders(tmp_path):
    _write_images(tmp_path / "photos" / "a", 6)
    _write_images(tmp_path / "photos" / "b", 4)
    train, validation = load_splits(DataConfig(train_data_dir=str(tmp_path / "photos"), resolution=32))
    assert len(train) + len(validation) == 10 and len(validation) == 1


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_image_mode_becomes_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert image.mode.startswith("I;16")
    else:
        image = rgb.convert(mode)
    result = to_rgb(image)
    assert result.mode == "RGB" and result.size == (30, 20)
    if mode == "I;16":  # 16-bit gray keeps its brightness (PIL's own conversion would clip to white)
        assert np.abs(np.asarray(result)[..., 0].astype(int) - np.asarray(rgb.convert("L"))).max() <= 1


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image({"bytes": buffer.getvalue(), "path": None}).size == (20, 40)


@pytest.mark.parametrize("preprocess", [True, False])
def test_corrupt_image_is_skipped_counted_and_replaced_in_training_and_flagged_elsewhere(tmp_path, preprocess):
    _write_images(tmp_path, 10)
    (tmp_path / "img_002.png").write_bytes(b"not an image at all")
    config = DataConfig(train_data_dir=str(tmp_path), resolution=32, validation_split=0.2, preprocess=preprocess)
    splits = load_splits(config)
    split = next(s for s in splits if any(s[i]["image"]["path"].endswith("img_002.png") for i in range(len(s))))
    from colorization.data import prepare_split

    corrupt = next(i for i in range(len(split)) if split[i]["image"]["path"].endswith("img_002.png"))
    training = prepare_split(split, config, train=True)
    with pytest.warns(UserWarning, match="img_002.png"):
        sample = training[corrupt]
    assert sample["skipped"] == 1 and sample["pixels"].shape == (3, 32, 32)
    assert training[(corrupt + 1) % len(training)]["skipped"] == 0
    with pytest.warns(UserWarning, match="img_002.png"):
        flagged = prepare_split(split, config, train=False)[corrupt]
    assert not flagged["readable"]


def write_bad_images(folder, tag=b""):
    """A truncated JPEG, an empty file, and a PNG over PIL's decompression-bomb limit (one that raises)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(len(tag)).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:600] + tag)
    (folder / "empty.jpg").write_bytes(b"")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    # 20000 x 10000 one-bit pixels: more than twice Image.MAX_IMAGE_PIXELS, so opening it raises
    header = struct.pack(">IIBBBBB", 20000, 10000, 1, 0, 0, 0, 0)
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"c\x00" + tag) + chunk(b"IEND", b"")
    )


def test_bad_files_are_named_unreadable_bombs_included(tmp_path):
    from colorization.images import UNREADABLE_IMAGE_ERRORS, open_image

    write_bad_images(tmp_path)
    for name in ("truncated.jpg", "empty.jpg", "bomb.png"):
        with pytest.raises(UNREADABLE_IMAGE_ERRORS):
            open_image(tmp_path / name)
    with pytest.raises(Image.DecompressionBombError):
        open_image(tmp_path / "bomb.png")


def test_a_folder_of_unreadable_files_is_an_immediate_error(tmp_path):
    for i in range(3):
        (tmp_path / f"broken_{i}.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(ColorizationError, match="can be read"):
        load_splits(DataConfig(train_data_dir=str(tmp_path)))


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ColorizationError, match="not a folder"):
        load_splits(DataConfig(train_data_dir=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ColorizationError, match="no images"):
        load_splits(DataConfig(train_data_dir=str(tmp_path / "empty")))


def test_hub_data_set_offline_fails_fast_and_names_the_alternative():
    started = time.perf_counter()
    with pytest.raises(ColorizationError) as error:
        load_splits(DataConfig(dataset_name="huggan/AFHQ"))
    assert time.perf_counter() - started < 10
    assert "--train_data_dir" in str(error.value) and "huggan/AFHQ" in str(error.value)


def test_real_afhq_cats(afhq_dir):
    # 32 px: the decoded cache is shared with the learning tests on real cats
    train, validation = build_datasets(DataConfig(train_data_dir=str(afhq_dir), resolution=32), seed=0)
    assert len(train) + len(validation) == len(list((afhq_dir / "train").glob("*.jpg")))
    assert len(validation) == round(0.1 * (len(train) + len(validation)))
    sample = validation[0]["pixels"].float() / 255
    assert sample.shape == (3, 32, 32) and sample.std() > 0.05


def test_label_filter_keeps_one_class_of_a_hub_style_data_set():
    # AFHQ on the Hub has a ClassLabel column "label" with cat / dog / wild; here an in-memory stand-in
    import datasets

    from colorization.data import _filter_label

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "wild"])}
    )
    images = [Image.new("RGB", (4, 4), (i * 20, 0, 0)) for i in range(6)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 2, 0]}, features=features)
    kept = _filter_label(split, DataConfig(dataset_name="huggan/AFHQ", label_filter="cat"))
    assert kept["label"] == [0, 0, 0] and len(kept) == 3
    assert len(_filter_label(split, DataConfig(dataset_name="x", label_filter=None))) == 6
    with pytest.raises(ColorizationError, match="not a class"):
        _filter_label(split, DataConfig(dataset_name="x", label_filter="horse"))


def test_a_data_set_whose_rows_name_files_outside_its_folders_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(repo / "images" / f"{i}.png")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def load(paths):
        (repo / "data").mkdir(exist_ok=True)
        rows = pa.array([{"bytes": None, "path": p} for p in paths], type=image)
        pq.write_table(pa.table({"image": rows}), repo / "data" / "train-00000-of-00001.parquet")
        return load_splits(DataConfig(dataset_name=str(repo), label_filter=None, resolution=8))

    inside = [str(repo / "images" / f"{i}.png") for i in range(3)]
    train, validation = load(inside)  # a local data set's own files
    assert len(train) + len(validation) == 3
    for outside in (str(secret), str(repo / ".." / "secret.png"), "secret.png"):  # relative: from the working folder
        with pytest.raises(ColorizationError, match="points at .*outside the data set's folders"):
            load([*inside[:2], outside])
