"""Write a folder of photos (or a Hub data set) once as parquet shards, for ``--streaming`` training.

    python -m colorization.shard ../shared/data/afhq_cat shards/afhq_cat_256 --resolution 256 --shard_size 512

Every readable image is decoded to RGB (any mode, EXIF orientation applied) and resized to ``--resolution`` on
its shorter side with exactly the resize of training (:func:`colorization.images.resize_shorter_side`), then
stored losslessly (PNG; or, with ``--image_format ppm``, raw pixels that streaming at that resolution crops
without decoding), with the BLAKE2 hash of its source file (the same hash the folder path records, so
``evaluate.py`` recognises a model's training images whichever path it trained through) and its source name.
Training at that resolution then crops the same pixels as the folder path. Shards hold ``--shard_size``
images each (the last one fewer), in the order of the sorted file names; ``manifest.json`` lists them with
their row counts, every image's hash, the settings, and the unreadable files, which are counted and
skipped as training skips them. Each file is written under a temporary name and renamed when complete, and
the manifest last: a folder with a manifest is a complete set of shards.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import warnings
from typing import Iterator, Optional

from tqdm import tqdm

from colorization.config import HelpFormatter, data_source, output_folder, positive_int
from colorization.data import label_matcher, path_inside, read_file_bytes
from colorization.errors import ColorizationError, cli_entry_point
from colorization.files import atomic_write, read_json_if_present, write_json
from colorization.images import UNREADABLE_IMAGE_ERRORS, decode_image, resize_shorter_side
from colorization.version import __version__

MANIFEST_NAME = "manifest.json"
SHARDS_FORMAT = "colorization-shards"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".psd", ".ppm", ".pgm")


def read_manifest(folder: str) -> Optional[dict]:
    """The manifest of a folder of shards, or None when ``folder`` is not one."""
    try:
        manifest = read_json_if_present(os.path.join(folder, MANIFEST_NAME))
    except (OSError, ValueError) as error:
        raise ColorizationError(f"cannot read {os.path.join(folder, MANIFEST_NAME)}: {error}") from None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == SHARDS_FORMAT else None


def _folder_images(folder: str) -> Iterator[tuple[str, bytes]]:
    """(name relative to ``folder``, file bytes) of every image file below it, in sorted order."""
    for root, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    yield os.path.relpath(path, folder), handle.read()


def _hub_images(name: str, config_name: Optional[str], image_column: str, label_column: str, label: Optional[str]):
    """(id, encoded bytes) of a Hub data set's training images, streamed (nothing stored whole)."""
    import datasets

    try:
        stream = datasets.load_dataset(name, config_name, split="train", streaming=True)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
        raise ColorizationError(f"could not stream the data set {name!r} from the Hub: {error}") from None
    stream = stream.cast_column(image_column, datasets.Image(decode=False))
    feature = stream.features.get(label_column) if stream.features else None
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    keeps = label_matcher(label, label_column, names) if label else None
    # a row without the image's bytes names a file: of the data set's own folder or Hub repository, never another
    root = name if os.path.isdir(name) else f"hf://datasets/{name}"
    for index, row in enumerate(stream):
        if keeps is not None and label_column in row and not keeps(row[label_column]):
            continue
        value = row[image_column]
        data = value.get("bytes")
        if data is None and not value.get("path"):
            data = b""  # no image at all: counted as unreadable
        elif data is None:
            path = path_inside(root, value["path"], f"row {index} of the data set {name!r}")
            try:
                data = read_file_bytes(path)
            except OSError as error:
                raise ColorizationError(f"cannot read {path} (row {index} of {name!r}): {error}") from None
        yield f"{name}#{index}", data


IMAGE_FORMATS = ("png", "ppm")


def _encode(data: bytes, resolution: int, image_format: str) -> bytes:
    image = resize_shorter_side(decode_image({"bytes": data, "path": None}), resolution)
    buffer = io.BytesIO()
    if image_format == "ppm":
        image.save(buffer, format="PPM")  # raw RGB behind a short header: read without decoding
    else:
        image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: fast to write, small enough
    return buffer.getvalue()


def write_shards(
    images, output_dir: str, resolution: int, shard_size: int, source: str, image_format: str = "png"
) -> dict:
    """Encode ``images`` ((name, file bytes) pairs) into parquet shards in ``output_dir`` -> the manifest."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "hash": datasets.Value("string"), "source": datasets.Value("string")}
    )
    os.makedirs(output_dir, exist_ok=True)
    shards, hashes, unreadable, rows = [], [], [], {"image": [], "hash": [], "source": []}

    def flush() -> None:
        name = f"train-{len(shards):05d}.parquet"
        table = datasets.Dataset.from_dict(rows, features=features)
        atomic_write(os.path.join(output_dir, name), lambda path: table.to_parquet(path))
        shards.append({"file": name, "rows": len(rows["hash"])})
        for column in rows.values():
            column.clear()

    datasets.disable_progress_bars()  # one bar for the images, not one per shard written
    try:
        for name, data in tqdm(images, desc="sharding", unit="image"):
            try:
                encoded = _encode(data, resolution, image_format)
            except UNREADABLE_IMAGE_ERRORS as error:
                warnings.warn(f"skipping unreadable image {name}: {error}")
                unreadable.append(name)
                continue
            digest = hashlib.blake2b(data, digest_size=8).hexdigest()  # = colorization.data.image_hash of the file
            rows["image"].append({"bytes": encoded, "path": None})
            rows["hash"].append(digest)
            rows["source"].append(name)
            hashes.append(digest)
            if len(rows["hash"]) == shard_size:
                flush()
        if rows["hash"]:
            flush()
    finally:
        datasets.enable_progress_bars()
    if not hashes:
        raise ColorizationError(f"no readable image in {source} ({len(unreadable)} unreadable)")
    manifest = {
        "format": SHARDS_FORMAT,
        "format_version": 1,
        "source": source,
        "count": len(hashes),
        "resolution": resolution,
        "resize": "shorter side to resolution, bicubic, antialiased (not cropped)",
        "image_format": image_format,
        "shard_size": shard_size,
        "shards": shards,
        "hashes": hashes,
        "unreadable": unreadable,
        "package_version": __version__,
    }
    write_json(os.path.join(output_dir, MANIFEST_NAME), manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.shard",
        description="Write a folder of photos (or a Hub data set) once as parquet shards for --streaming.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "source", type=data_source, help="a folder of photos, or a Hub data set id (owner/name) when no such folder"
    )
    parser.add_argument("output_dir", type=output_folder, help="where the shards and manifest.json go (new or empty)")
    parser.add_argument("--resolution", type=positive_int, default=256, help="shorter side of the stored images")
    parser.add_argument("--shard_size", type=positive_int, default=1000, help="images per shard")
    parser.add_argument(
        "--image_format",
        choices=IMAGE_FORMATS,
        default="png",
        help="how each image is stored, both lossless: png (smaller: 0.7x at 64 px) or ppm (raw pixels: streaming at "
        "--resolution crops them without decoding, several times faster to load; see benchmarks/README.md)",
    )
    parser.add_argument("--dataset_config_name", default=None, help="a Hub data set's configuration")
    parser.add_argument("--image_column", default="image", help="a Hub data set's image column")
    parser.add_argument("--label_column", default="label", help="a Hub data set's label column")
    parser.add_argument("--label_filter", default="cat", help="keep only this class of a Hub data set (none: all)")
    return parser


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.path.exists(args.output_dir) and os.listdir(args.output_dir):
        raise ColorizationError(f"{args.output_dir} is not empty: shards go into a new or empty folder")
    if os.path.isdir(args.source):
        images, source = _folder_images(args.source), f"folder {args.source}"
    else:
        label = None if args.label_filter in (None, "none") else args.label_filter
        images = _hub_images(args.source, args.dataset_config_name, args.image_column, args.label_column, label)
        source = f"hub {args.source}" + (f" [{args.label_column} = {label}]" if label else "")
    manifest = write_shards(images, args.output_dir, args.resolution, args.shard_size, source, args.image_format)
    skipped = f"; {len(manifest['unreadable'])} unreadable skipped" if manifest["unreadable"] else ""
    print(
        f"{manifest['count']} images at {args.resolution}px in {len(manifest['shards'])} shards in "
        f"{args.output_dir}{skipped}"
    )
    return 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))


if __name__ == "__main__":
    main()
