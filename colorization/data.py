"""Images for training and evaluation, through Hugging Face ``datasets``.

Three sources behind one option set (flag names as in the diffusers examples):

1. a Hub data set: ``--dataset_name huggan/AFHQ`` (its ``label`` column is filtered to ``--label_filter``,
   ``cat`` by default);
2. a local folder of images, through the ``imagefolder`` loader: ``--train_data_dir path/to/photos``;
3. neither: the embedded procedural scenes of :mod:`colorization.embedded`, which need no download.

Validation split: a data set's own ``validation`` split when it has one; otherwise ``--validation_split``
of the images (at least one), picked by a permutation seeded with ``--split_seed`` alone, so it is the same
in every run and every process whatever ``--seed`` is, and only changes when the set of images changes.

Images of any mode (L, LA, P, RGBA, CMYK, 16-bit, EXIF-rotated) become RGB; transparency is flattened
onto white. Each image is resized (shorter side) and center-cropped to ``--resolution``, once: the decoded
uint8 pixels are cached by ``datasets`` (``--no-preprocess`` decodes at every epoch instead). Training images
are flipped horizontally with probability 1/2, decided by (seed, epoch, index) so that a resumed run sees
exactly the same flips; the flip is applied on the accelerator. An unreadable training image is skipped
with a warning: the next readable image takes its place, so batches keep their size and processes stay in
step, and each batch reports how many it skipped. Evaluation drops an unreadable image and counts it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import posixpath
import socket
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from colorization import color
from colorization.config import existing_folder, field, non_negative_int, open_fraction, positive_int
from colorization.errors import ColorizationError
from colorization.images import UNREADABLE_IMAGE_ERRORS, decode_image, resize_and_crop, to_unit_float

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded colored shapes"
_HUB_PROBE_TIMEOUT_S = 3.0
_MAX_REPLACEMENT_TRIES = 64


@dataclass
class DataConfig:
    dataset_name: Optional[str] = field(
        None,
        "Hub data set to train on, e.g. huggan/AFHQ. Neither this nor --train_data_dir: the embedded procedural data.",
    )
    dataset_config_name: Optional[str] = field(None, "Configuration of the Hub data set, if it has several.")
    dataset_revision: Optional[str] = field(
        None,
        "Revision (branch, tag or commit) of the Hub data set; none: main. --streaming resolves it to its commit "
        "and records that in run_config.json; a resumed run keeps the recorded commit.",
    )
    train_data_dir: Optional[str] = field(
        None, "A local folder of images (read with the imagefolder loader).", type=existing_folder
    )
    image_column: str = field("image", "Column that holds the images.")
    label_column: str = field("label", "Column of class labels used by --label_filter (Hub data sets).")
    label_filter: Optional[str] = field(
        "cat", "Keep only this class of a Hub data set's label column (AFHQ: cat, dog or wild); none keeps all."
    )
    cache_dir: Optional[str] = field(None, "Where downloaded data sets are cached (datasets' default if none).")
    resolution: int = field(256, "Training images are resized and center-cropped to this size.", type=positive_int)
    validation_split: float = field(
        0.1,
        "Fraction of the images held out for validation when the data set has no validation split.",
        type=open_fraction,
    )
    split_seed: int = field(0, "Seed of the train/validation split (independent of --seed).")
    max_train_samples: Optional[int] = field(
        None, "Use only the first N training images (quick runs).", type=positive_int
    )
    max_validation_samples: Optional[int] = field(None, "Use only the first N validation images.", type=positive_int)
    embedded_num_images: int = field(1200, "Number of images of the embedded data set.", type=positive_int)
    dataloader_num_workers: int = field(2, "Worker processes that decode images.", type=non_negative_int)
    streaming: bool = field(
        False,
        "Stream the images shard by shard instead of reading the whole data set: --train_data_dir holds the "
        "shards (python -m colorization.shard, parquet files with an image column, or webdataset tars), or "
        "--dataset_name a Hub data set in parquet. Images are held out for validation by a hash of their key.",
    )
    preprocess: bool = field(
        True,
        "Decode, resize and crop every image once into a uint8 cache (datasets' "
        "cache folder), so that loading keeps up with the accelerator; "
        "--no-preprocess decodes the files at every epoch instead.",
    )


# ----------------------------------------------------------------------------------------------------------
# Samples


def image_hash(value) -> str:
    """A 64-bit BLAKE2 hash of an image's file bytes (undecoded column value), to recognise the same image."""
    data, path = value.get("bytes"), value.get("path")
    if data is None:
        with open(path, "rb") as handle:
            data = handle.read()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _decode_batch(batch: dict, image_column: str, resolution: int) -> dict:
    """datasets.map function of the decoded cache: each image resized and cropped once, as uint8."""
    pixels, readable = [], []
    for value in batch[image_column]:
        try:
            pixels.append(resize_and_crop(decode_image(value), resolution).numpy())
            readable.append(True)
        except UNREADABLE_IMAGE_ERRORS:
            pixels.append(np.zeros((3, resolution, resolution), dtype=np.uint8))
            readable.append(False)
    # a streamed split carries its images' keys (their source files' hashes) in a hash column of its own
    hashes = batch["hash"] if "hash" in batch else [image_hash(value) for value in batch[image_column]]
    return {"pixels": pixels, "readable": readable, "hash": hashes, "source": [_source(v) for v in batch[image_column]]}


def _source(value) -> str:
    return str(value.get("path") or "")


def decode_split(split, image_column: str, resolution: int, num_proc: int = 0):
    """The split with every image decoded, resized and center-cropped to ``resolution`` once, as a uint8
    ``pixels`` column (plus ``readable``, ``hash`` and ``source``). ``datasets`` caches the result on disk
    next to the source's cache (keyed by the images and this function), so later runs read arrays instead
    of decoding JPEGs: loading then costs almost nothing next to a training step."""
    import datasets

    features = datasets.Features(
        {
            "pixels": datasets.Array3D((3, resolution, resolution), "uint8"),
            "readable": datasets.Value("bool"),
            "hash": datasets.Value("string"),
            "source": datasets.Value("string"),
        }
    )
    workers = num_proc if num_proc > 1 and len(split) >= 2000 else None
    decoded = split.map(
        _decode_batch,
        batched=True,
        batch_size=64,
        fn_kwargs={"image_column": image_column, "resolution": resolution},
        features=features,
        remove_columns=split.column_names,
        num_proc=workers,
        desc=f"decoding images at {resolution}px (once; cached)",
    )
    return decoded.with_format("numpy", dtype=np.uint8)  # one numpy array per column, as stored


class ColorizationImages(Dataset):
    """Images of a split -> ``{"pixels": uint8 (3, R, R), "flip", "index", "skipped", "readable"}`` samples.

    The split is either undecoded (images decoded here, in the loader's workers) or a :func:`decode_split`
    cache. Training samples (``train=True``) carry a horizontal flip decided by (seed, epoch, index), applied
    by the harness on the accelerator; an unreadable training image is replaced by the next readable one
    (and counted), so batches keep their size. Other samples of an unreadable image come back with
    ``readable`` False, for evaluation to drop and count.
    """

    def __init__(self, images, image_column: str, resolution: int, train: bool, seed: int = 0):
        self.images = images
        self.image_column = image_column
        self.resolution = resolution
        self.train = train
        self.seed = seed
        self.decoded = "pixels" in images.column_names

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> torch.Tensor:
        if self.decoded:
            row = self.images[index]
            if not row["readable"]:
                raise OSError("not a readable image (found when the data set was decoded)")
            return torch.from_numpy(row["pixels"])
        return resize_and_crop(decode_image(self.images[index][self.image_column]), self.resolution)

    def __getitem__(self, key) -> dict:
        """``key`` is an index, or ``(epoch, index)`` from :class:`EpochShuffleSampler` (the epoch seeds the flip)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        tries = min(_MAX_REPLACEMENT_TRIES, len(self)) if self.train else 1
        skipped = 0
        for attempt in range(tries):
            current = (index + attempt) % len(self)
            try:
                pixels = self._load(current)
                break
            except UNREADABLE_IMAGE_ERRORS as error:
                skipped += 1
                warnings.warn(f"skipping unreadable image #{current} ({describe_image(self.images, current)}): {error}")
        else:
            if self.train:
                raise ColorizationError(f"none of the {skipped} images tried from #{index} on could be read")
            pixels = torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8)
        return {
            "pixels": pixels,
            "flip": self._flip(epoch, index),
            "index": index,
            "skipped": skipped,
            "readable": skipped == 0,
        }

    def __getitems__(self, keys: list) -> list[dict]:
        """A whole batch at once (the DataLoader's fetcher calls this): one read of the decoded cache instead of
        one per image, which is what lets loading outrun the training step."""
        if not self.decoded:
            return [self[key] for key in keys]
        keys = [key if isinstance(key, tuple) else (0, key) for key in keys]
        rows = self.images[[index for _, index in keys]]
        return [
            {
                "pixels": torch.from_numpy(rows["pixels"][j]),
                "flip": self._flip(epoch, index),
                "index": index,
                "skipped": 0,
                "readable": True,
            }
            if rows["readable"][j]
            else self[(epoch, index)]
            for j, (epoch, index) in enumerate(keys)
        ]

    def _flip(self, epoch: int, index: int) -> bool:
        return bool(self.train and np.random.default_rng([self.seed, epoch, index]).random() < 0.5)


def describe_image(images, index: int) -> str:
    """The file behind a sample, for messages (Hub images may have no path)."""
    try:
        value = images[index]
        if isinstance(value.get("source"), str) and value["source"]:
            return value["source"]
        for column_value in value.values():
            if isinstance(column_value, dict) and column_value.get("path"):
                return str(column_value["path"])
    except Exception:  # describing must never hide the real error
        pass
    return "no file name"


class EpochShuffleSampler(Sampler[tuple]):
    """A permutation of the data set per epoch, seeded by (seed, epoch): identical on every process (the
    accelerate data loader shards it) and independent of any global random state, so resume is exact.
    It yields ``(epoch, index)`` so that workers need no per-epoch state and can persist.

    The harness sets the epoch on this object itself: after ``skip_first_batches`` on several processes the
    sampler sits three wrappers deep, where accelerate's ``set_epoch`` does not reach."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        return iter([(self.epoch, int(index)) for index in order])

    def __len__(self) -> int:
        return self.length


def collate(samples: list[dict]) -> dict:
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "flip": torch.tensor([s["flip"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "skipped": torch.tensor(sum(s["skipped"] for s in samples)),
        "readable": torch.tensor([s["readable"] for s in samples]),
    }


def batch_to_rgb(batch: dict, device: torch.device) -> torch.Tensor:
    """A collated batch -> float sRGB in [0, 1] on ``device``, training flips applied there (uint8 travels)."""
    rgb = to_unit_float(batch["pixels"].to(device, non_blocking=True))
    flip = batch["flip"].to(device, non_blocking=True)
    if flip.any():
        rgb = torch.where(flip.view(-1, 1, 1, 1), rgb.flip(-1), rgb)
    return rgb


# ----------------------------------------------------------------------------------------------------------
# Sources


def _hub_endpoint_reachable() -> bool:
    from huggingface_hub import constants

    parsed = urllib.parse.urlparse(constants.ENDPOINT)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _go_offline() -> None:
    # Without this, datasets retries an unreachable Hub for ~25 s; offline mode fails (or reads the local
    # cache) at once. Both libraries read these flags at call time.
    import datasets
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def _load_hub(config: DataConfig):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE and not _hub_endpoint_reachable():
        logger.warning(
            "The Hugging Face Hub is unreachable; looking for %s in the local cache only.", config.dataset_name
        )
        _go_offline()
    try:
        return datasets.load_dataset(
            config.dataset_name,
            config.dataset_config_name,
            revision=config.dataset_revision,
            cache_dir=config.cache_dir,
        )
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
        offline = (
            " (offline: the Hub cannot be reached and it is not in the local cache)"
            if datasets.config.HF_HUB_OFFLINE
            else ""
        )
        raise ColorizationError(
            f"could not load the data set {config.dataset_name!r} from the Hugging Face Hub{offline}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n"
            "Use a local folder of images instead with --train_data_dir PATH (for example --train_data_dir "
            "../shared/data/afhq_cat), or the embedded data by giving neither --dataset_name nor --train_data_dir."
        ) from None


def _load_folder(config: DataConfig):
    import datasets

    if not os.path.isdir(config.train_data_dir):
        raise ColorizationError(f"--train_data_dir {config.train_data_dir!r} is not a folder")
    try:
        # drop_labels: subfolder names are not classes here; the data set is every image below the folder.
        return datasets.load_dataset(
            "imagefolder", data_dir=config.train_data_dir, drop_labels=True, cache_dir=config.cache_dir
        )
    except (FileNotFoundError, ValueError) as error:  # raised for a folder without any image file
        raise ColorizationError(f"no images found in --train_data_dir {config.train_data_dir!r}: {error}") from None


def _embedded_generator(num_images: int):
    from colorization.embedded import generate_images

    for image in generate_images(num_images):
        yield {"image": image}


def _load_embedded(config: DataConfig):
    import datasets

    # from_generator caches the rendered images on disk, keyed by the arguments: later runs load in ms.
    features = datasets.Features({"image": datasets.Image()})
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_generator(
                _embedded_generator,
                features=features,
                gen_kwargs={"num_images": config.embedded_num_images},
                cache_dir=config.cache_dir,
            )
        }
    )


# DataConfig fields that hold this machine's paths: a record that leaves the machine (an export) keeps none of them
MACHINE_PATH_FIELDS = ("train_data_dir", "cache_dir")


def folder_name(path: str) -> str:
    """A folder's own name, without where it is on this machine ("." too is named)."""
    return os.path.basename(os.path.normpath(os.path.abspath(path)))


def keep_recorded_revision(config: DataConfig, run_config: Optional[dict]) -> None:
    """Resume: without --dataset_revision, read the Hub data set at the commit the run recorded (``run_config``, a
    checkpoint's), not wherever its branch points now."""
    recorded = (run_config or {}).get("data", {})
    if config.dataset_name and config.dataset_revision is None and recorded.get("dataset_name") == config.dataset_name:
        config.dataset_revision = recorded.get("dataset_revision")


def describe_source(config: DataConfig, path: bool = True) -> str:
    """The data source in words. ``path=False`` names a local folder by its name alone, for records that leave
    this machine (an export, which travels to the Hub; ``results.json``), where its path means nothing."""
    if config.train_data_dir:
        return f"folder {config.train_data_dir if path else folder_name(config.train_data_dir)}"
    if config.dataset_name:
        revision = f"@{config.dataset_revision}" if config.dataset_revision else ""
        label = f" [{config.label_column} = {config.label_filter}]" if config.label_filter else ""
        return f"hub {config.dataset_name}{revision}{label}"
    return EMBEDDED_NAME


def identify_source(config: DataConfig, image_hashes: Optional[list]) -> dict:
    """What identifies the training data on any machine, for an export's record: the kind of source, its name (a
    local folder's name, not its path), and the training images' count and the SHA-256 of their hash list
    (``image_hash`` of each, in order, one a line; None where the images are not known, e.g. a stream without
    a manifest). Two exports with the same hash were trained on the same image files."""
    if config.dataset_name:
        kind, name = "hub", config.dataset_name
    elif config.train_data_dir:
        kind, name = ("shards" if config.streaming else "folder"), folder_name(config.train_data_dir)
    else:
        kind, name = "embedded", EMBEDDED_NAME
    known = image_hashes is not None
    return {
        "kind": kind,
        "name": name,
        "description": describe_source(config, path=False),
        **({"revision": config.dataset_revision} if config.dataset_name else {}),  # a Hub data set's pinned commit
        "num_images": len(image_hashes) if known else None,
        "images_sha256": hashlib.sha256("\n".join(image_hashes).encode()).hexdigest() if known else None,
    }


def label_matcher(label_filter: str, column: str, names: Optional[Sequence[str]] = None) -> Callable[[object], bool]:
    """A test of one label value for ``--label_filter``: with class names (a ``ClassLabel`` column, stored as
    numbers) the number of the named class; without, the label itself or its text (a label stored as text, or a
    class number given as a number)."""
    if names is not None:
        if label_filter not in names:
            raise ColorizationError(
                f"--label_filter {label_filter!r} is not a class of column {column!r}; its classes are {list(names)}"
            )
        wanted = list(names).index(label_filter)
        return lambda value: value == wanted
    return lambda value: value == label_filter or str(value) == label_filter


def _filter_label(split, config: DataConfig):
    import datasets

    if not config.label_filter or config.label_column not in split.column_names:
        return split
    feature = split.features[config.label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    matches = label_matcher(config.label_filter, config.label_column, names)
    labels = split[config.label_column]
    return split.select([i for i, label in enumerate(labels) if matches(label)])


# ----- an image column's paths: read only inside the data set's own folder -----


def _inside(folder: str, path: str) -> Optional[str]:
    """``path`` (relative paths from ``folder``) normalized, or None when it leads out of the local ``folder``."""
    folder = os.path.normpath(os.path.abspath(folder))
    resolved = os.path.normpath(os.path.join(folder, path))  # an absolute path stays itself
    return resolved if resolved == folder or resolved.startswith(folder.rstrip(os.sep) + os.sep) else None


def path_inside(root: Optional[str], path: str, what: str) -> str:
    """The file an image's ``path`` (a row without the image's bytes, or a file a manifest lists) names -> the path
    to read: a relative path is taken from ``root``, the data set's folder (or ``hf://`` repository). Refused, so
    that a data set cannot make training read any file of the machine: an absolute path or ``..`` that leads out
    of ``root``, another URL, and any path when there is no ``root``."""
    refused = ColorizationError(
        f"{what} points at {path!r}, outside the data set's folder {root!r}: only files inside it are read"
    )
    if not root:
        raise refused
    if "://" in root:  # a Hub repository: hf://datasets/owner/name[@revision]
        repository = root.split("@", 1)[0].rstrip("/")
        if "://" in path:  # a URL datasets wrote for a file of the repository (chained for a file in an archive)
            last = path.split("::")[-1]
            if last.startswith((repository + "/", repository + "@")) and ".." not in last.split("/"):
                return path
            raise refused
        relative = posixpath.normpath(path)
        if posixpath.isabs(path) or relative == ".." or relative.startswith("../"):
            raise refused
        return f"{root.rstrip('/')}/{relative}"
    resolved = None if "://" in path else _inside(root, path)
    if resolved is None:
        raise refused
    return resolved


def read_file_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URL from :func:`path_inside` (a Hub repository's file, read over HTTP)."""
    if "://" in path:
        from datasets.utils.file_utils import xopen

        with xopen(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def _data_folders(config: DataConfig) -> list[str]:
    """Where the files a loaded data set's rows point at may be: its folder; for a Hub data set, the caches that
    ``datasets`` downloads and extracts its files into (and its folder, when the name is a local one)."""
    if config.train_data_dir:  # datasets lists a folder's files under its real path (symbolic links resolved)
        return [config.train_data_dir, os.path.realpath(config.train_data_dir)]
    if not config.dataset_name:
        return []  # the embedded images are stored as bytes
    import datasets
    from huggingface_hub import constants

    folders = [
        config.cache_dir,
        str(datasets.config.HF_DATASETS_CACHE),
        str(datasets.config.DOWNLOADED_DATASETS_PATH),
        str(datasets.config.EXTRACTED_DATASETS_PATH),
        constants.HF_HUB_CACHE,
    ]
    if os.path.isdir(config.dataset_name):  # a local data set's folder
        folders += [config.dataset_name, os.path.realpath(config.dataset_name)]
    return [folder for folder in folders if folder]


def _require_paths_inside(split, config: DataConfig) -> None:
    """Refuse a data set whose rows without image bytes name a file outside its folders: the decoder opens such a
    path as it is (relative: from the working folder). Checked once, on the paths alone (no image is read)."""
    folders = _data_folders(config)
    for chunk in split.data.column(config.image_column).chunks:
        fields = dict(zip([f.name for f in chunk.type], chunk.flatten()))
        if "path" not in fields:
            continue
        paths = fields["path"] if "bytes" not in fields else fields["path"].filter(fields["bytes"].is_null())
        for path in paths.drop_null().to_pylist():
            if "://" in path or not any(_inside(f, os.path.abspath(path)) for f in folders):
                raise ColorizationError(
                    f"an image of {describe_source(config)} points at {path!r}, outside the data set's folders "
                    f"({', '.join(folders) or 'none: its images are stored in it'}): only files inside them are read"
                )


def load_splits(config: DataConfig):
    """Load the configured source -> (train, validation) ``datasets.Dataset``s with undecoded images."""
    import datasets

    if config.dataset_name and config.train_data_dir:
        raise ColorizationError("give either --dataset_name or --train_data_dir, not both")
    if config.train_data_dir:
        loaded = _load_folder(config)
    elif config.dataset_name:
        loaded = _load_hub(config)
    else:
        loaded = _load_embedded(config)
    if "train" not in loaded:
        raise ColorizationError(f"{describe_source(config)} has no 'train' split (it has {list(loaded)})")
    train = loaded["train"]
    if config.image_column not in train.column_names:
        raise ColorizationError(
            f"{describe_source(config)} has no column {config.image_column!r} "
            f"(columns: {train.column_names}); set --image_column"
        )
    if config.dataset_name:
        train = _filter_label(train, config)
    if "validation" in loaded:
        validation = loaded["validation"]
        if config.dataset_name:
            validation = _filter_label(validation, config)
    else:
        train, validation = _split(train, config)
    if config.max_train_samples is not None:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if config.max_validation_samples is not None:
        validation = validation.select(range(min(config.max_validation_samples, len(validation))))
    for name, split in (("training", train), ("validation", validation)):
        if len(split) == 0:
            raise ColorizationError(f"{describe_source(config)} has no {name} images")
    # Decode ourselves, so that an unreadable file is skipped instead of crashing the data loader.
    train = train.cast_column(config.image_column, datasets.Image(decode=False))
    validation = validation.cast_column(config.image_column, datasets.Image(decode=False))
    for split in (train, validation):
        _require_paths_inside(split, config)
    _require_readable(train, config)
    return train, validation


def _split(dataset, config: DataConfig):
    if len(dataset) < 2:
        raise ColorizationError(
            f"{describe_source(config)} has {len(dataset)} image(s): need at least 2 to hold one out for validation"
        )
    num_validation = min(len(dataset) - 1, max(1, round(config.validation_split * len(dataset))))
    order = np.random.default_rng(config.split_seed).permutation(len(dataset))
    return dataset.select(np.sort(order[num_validation:])), dataset.select(np.sort(order[:num_validation]))


def _require_readable(split, config: DataConfig, probe: int = 32) -> None:
    """Fail at once when the first images cannot be decoded: such a data set would only skip forever."""
    errors = []
    for index in range(min(probe, len(split))):
        try:
            decode_image(split[index][config.image_column])
            return
        except UNREADABLE_IMAGE_ERRORS as error:
            errors.append(f"#{index} ({describe_image(split, index)}): {error}")
    raise ColorizationError(
        f"none of the first {len(errors)} images of {describe_source(config)} can be read, e.g. {errors[0]}"
    )


def prepare_split(split, config: DataConfig, train: bool, seed: int = 0) -> ColorizationImages:
    """An undecoded split -> samples at ``config.resolution`` (through the decoded cache unless --no-preprocess)."""
    if config.preprocess:
        split = decode_split(split, config.image_column, config.resolution, config.dataloader_num_workers)
    return ColorizationImages(split, config.image_column, config.resolution, train=train, seed=seed)


def build_datasets(config: DataConfig, seed: int) -> tuple[ColorizationImages, ColorizationImages]:
    train, validation = load_splits(config)
    return prepare_split(train, config, train=True, seed=seed), prepare_split(validation, config, train=False)


def split_hashes(images: ColorizationImages) -> list[str]:
    """The :func:`image_hash` of every image of a split, in order."""
    if images.decoded or "hash" in images.images.column_names:
        return [str(h) for h in images.images["hash"]]
    return [image_hash(images.images[i][images.image_column]) for i in range(len(images))]


def make_loaders(
    train_set: ColorizationImages,
    validation_set: ColorizationImages,
    batch_size: int,
    eval_batch_size: int,
    validation_images: Optional[int],
    seed: int,
    num_workers: int,
):
    """-> (train loader, validation loader on the first ``validation_images``, the training sampler), unprepared.

    The training order comes from an :class:`EpochShuffleSampler`; the loaders have their own generators, so
    creating an iterator never draws from the global RNG (exact resume)."""
    if validation_images is not None:
        validation_set = Subset(validation_set, range(min(validation_images, len(validation_set))))
    common = dict(
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    sampler = EpochShuffleSampler(len(train_set), seed)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    validation_loader = DataLoader(
        validation_set,
        batch_size=eval_batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    return train_loader, validation_loader, sampler


def data_statistics(train_set: ColorizationImages, num_workers: int) -> dict:
    """The training images' per-pixel mean ab (Lab units, averaged with its mirror image, since training
    flips half the images) and the standard deviation of their normalized ab, from one pass over them."""
    loader = DataLoader(train_set, batch_size=64, shuffle=False, collate_fn=collate, num_workers=num_workers)
    total = total_sq = None
    count = 0
    for batch in loader:  # flips change neither statistic (the mean is averaged with its mirror image)
        _, ab = color.rgb_to_normalized_lab(batch_to_rgb(batch, torch.device("cpu")))
        ab = ab.double()
        total = ab.sum(dim=0) if total is None else total + ab.sum(dim=0)
        total_sq = ab.pow(2).sum() if total_sq is None else total_sq + ab.pow(2).sum()
        count += len(ab)
    mean = total / count
    ab_std = math.sqrt(max(float(total_sq / (count * mean.numel())) - float(mean.mean()) ** 2, 0.0))
    mean_ab = color.denormalize_ab(0.5 * (mean + mean.flip(-1))).float()
    return {"mean_ab": mean_ab, "ab_std": torch.tensor(ab_std)}
