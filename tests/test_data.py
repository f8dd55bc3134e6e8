import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from colorization.data import (ColorizationImages, DataConfig, EpochShuffleSampler, build_datasets, decode_image,
                               load_splits, to_rgb)
from colorization.embedded import draw_scene, generate_images
from colorization.errors import ColorizationError


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
    images = lambda split: [split.images[i]["image"]["bytes"] for i in range(len(split))]  # noqa: E731
    assert images(val_a) == images(val_b)
    assert not set(images(val_a)) & set(images(train_a))
    _, val_other = build_datasets(_embedded(split_seed=1), seed=0)
    assert images(val_other) != images(val_a)


def test_samples_are_resized_cropped_and_flipped_only_for_training():
    train, validation = build_datasets(_embedded(), seed=0)
    sample = train[(0, 3)]
    assert sample["rgb"].shape == (3, 32, 32) and sample["rgb"].dtype == torch.float32
    assert 0.0 <= sample["rgb"].min() and sample["rgb"].max() <= 1.0
    flips = [not torch.equal(train[(epoch, 3)]["rgb"], train[(0, 3)]["rgb"]) for epoch in range(12)]
    assert any(flips) and not all(flips)
    assert torch.equal(train[(5, 3)]["rgb"], train[(5, 3)]["rgb"])  # a function of (epoch, index)
    assert all(torch.equal(validation[(e, 0)]["rgb"], validation[0]["rgb"]) for e in range(6))


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


def test_corrupt_image_is_skipped_counted_and_replaced(tmp_path):
    _write_images(tmp_path, 10)
    (tmp_path / "img_002.png").write_bytes(b"not an image at all")
    splits = load_splits(DataConfig(train_data_dir=str(tmp_path), resolution=32, validation_split=0.2))
    split = next(s for s in splits if any(s[i]["image"]["path"].endswith("img_002.png") for i in range(len(s))))
    dataset = ColorizationImages(split, "image", 32, train=False)
    corrupt = next(i for i in range(len(dataset)) if split[i]["image"]["path"].endswith("img_002.png"))
    with pytest.warns(UserWarning, match="img_002.png"):
        sample = dataset[corrupt]
    assert sample["skipped"] == 1 and sample["rgb"].shape == (3, 32, 32)
    assert dataset[(corrupt + 1) % len(dataset)]["skipped"] == 0


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
    train, validation = build_datasets(DataConfig(train_data_dir=str(afhq_dir), resolution=64), seed=0)
    assert len(train) + len(validation) == len(list((afhq_dir / "train").glob("*.jpg")))
    assert len(validation) == round(0.1 * (len(train) + len(validation)))
    sample = validation[0]["rgb"]
    assert sample.shape == (3, 64, 64) and sample.std() > 0.05


def test_label_filter_keeps_one_class_of_a_hub_style_data_set():
    # AFHQ on the Hub has a ClassLabel column "label" with cat / dog / wild; here an in-memory stand-in
    import datasets

    from colorization.data import _filter_label

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "wild"])})
    images = [Image.new("RGB", (4, 4), (i * 20, 0, 0)) for i in range(6)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 2, 0]}, features=features)
    kept = _filter_label(split, DataConfig(dataset_name="huggan/AFHQ", label_filter="cat"))
    assert kept["label"] == [0, 0, 0] and len(kept) == 3
    assert len(_filter_label(split, DataConfig(dataset_name="x", label_filter=None))) == 6
    with pytest.raises(ColorizationError, match="not a class"):
        _filter_label(split, DataConfig(dataset_name="x", label_filter="horse"))
