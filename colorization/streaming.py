"""Streaming: training images read shard by shard, never whole on one disk, in an order that resumes exactly.

A source is an ordered list of shard files: the parquet shards of ``python -m colorization.shard`` (with their
manifest), any folder of parquet files with an image column, or webdataset tars.

The order is a function of (seed, epoch) only, so a resumed run sees exactly the images of the uninterrupted one:

- **Shards to processes.** Each epoch permutes the shards with ``default_rng([seed, epoch])``; process r of W
  takes the positions r, r + W, r + 2W, ... of that permutation (whole shards, disjoint between processes and
  machines; :func:`shards_of_rank`). When W does not divide the shard count, some processes get one shard more
  in an epoch: they all still take disjoint shards, but they run through their epochs at slightly different
  rates. Write a multiple of W (x workers) shards of equal size for an even split.
- **Shards to workers.** Loader worker w of K takes every K-th of its process's shards. Each worker's stream is
  endless (epoch after epoch), so the loader takes batches from the workers strictly in turn: batch n of a
  process comes from worker n mod K.
- **Inside a shard**, the rows are permuted with ``default_rng([seed, epoch, shard])``: a shuffle that needs no
  buffer to be restored (a shuffle buffer's content is lost on resume; this permutation is not).
- **Held out by key.** An image is a validation image when the hash of its key (its source file's hash, or the
  hash of its bytes) falls under ``--validation_split`` (:func:`held_out`): the split is the same on any number of
  processes and machines, and never overlaps training. Training streams skip held-out rows.
- **Resume by position.** All processes consume one batch per micro-step, so the position is the number of
  batches n a process has taken; :meth:`StreamedImages.start_at` sets it, and each worker then skips its own
  share of n batches. With a manifest the skipped shards are counted, not read; without one they are read
  (their bytes, not decoded).
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from colorization.errors import ColorizationError
from colorization.images import UNREADABLE_IMAGE_ERRORS, crop_of_stored_pixels, decode_image, resize_and_crop
from colorization.shard import read_manifest

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")  # webdataset image columns


@dataclass(frozen=True)
class Shard:
    path: str  # a local file or a URL datasets can read
    kind: str  # "parquet" or "webdataset"
    keys: Optional[tuple] = None  # the hashes of its rows, in order (from a manifest)


def held_out(key: str, fraction: float, split_seed: int = 0) -> bool:
    """Is the image with this key a validation image? A hash of (split seed, key), uniform in [0, 1), under
    ``fraction``: the same answer on every process, machine and run."""
    digest = hashlib.blake2b(f"{split_seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def find_shards(location: str) -> list[Shard]:
    """The shards of a folder: a ``colorization.shard`` manifest's parquet files (with their keys), else every
    ``*.parquet``, else every ``*.tar`` (webdataset), each sorted by name."""
    manifest = read_manifest(location)
    if manifest is not None:
        shards, start = [], 0
        for entry in manifest["shards"]:
            keys = tuple(manifest["hashes"][start : start + entry["rows"]])
            shards.append(Shard(os.path.join(location, entry["file"]), "parquet", keys))
            start += entry["rows"]
        return shards
    for pattern, kind in (("*.parquet", "parquet"), ("*.tar", "webdataset")):
        files = sorted(glob.glob(os.path.join(location, "**", pattern), recursive=True))
        if files:
            return [Shard(file, kind) for file in files]
    raise ColorizationError(
        f"{location} holds no shards (*.parquet or *.tar): write them with python -m colorization.shard"
    )


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    if path.startswith("hf://"):  # a Hub data set's file, read over HTTP in ranges
        from huggingface_hub import HfFileSystem

        return pq.ParquetFile(HfFileSystem().open(path[len("hf://") :], "rb"))
    return pq.ParquetFile(path)


def _parquet_rows(path: str, image_column: str) -> Iterator[tuple[dict, Optional[str]]]:
    handle = _open_parquet(path)
    names = handle.schema_arrow.names
    if image_column not in names:
        raise ColorizationError(f"{path} has no column {image_column!r} (columns: {names}); set --image_column")
    columns = [image_column] + (["hash"] if "hash" in names else [])
    for batch in handle.iter_batches(batch_size=256, columns=columns):
        for row in batch.to_pylist():
            yield row[image_column], row.get("hash")


def _tar_rows(path: str) -> Iterator[tuple[dict, Optional[str]]]:
    """A webdataset tar's samples (files sharing a key, up to the first dot of the name), each's image."""
    import tarfile

    with tarfile.open(path) as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "." in base and base.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                yield {"bytes": tar.extractfile(member).read(), "path": None}, None


def read_shard(shard: Shard, image_column: str = "image") -> list[dict]:
    """Every row of one shard: ``{"image": {"bytes", "path"}, "key": str}``. Read with pyarrow or tarfile
    directly: ``datasets``' streaming loaders split their shards between torch loader workers by themselves,
    which would leave every worker but one without rows when each worker reads one shard."""
    try:
        found = _parquet_rows(shard.path, image_column) if shard.kind == "parquet" else _tar_rows(shard.path)
        rows = []
        for index, (value, stored_key) in enumerate(found):
            if not isinstance(value, dict):
                raise ColorizationError(f"{shard.path}: column {image_column!r} holds no image")
            data = value.get("bytes")
            if data is None and value.get("path"):
                with open(value["path"], "rb") as handle:
                    data = handle.read()
            if shard.keys is not None:
                key = shard.keys[index] if index < len(shard.keys) else None
            else:
                key = stored_key or hashlib.blake2b(data or b"", digest_size=8).hexdigest()
            rows.append({"image": {"bytes": data, "path": None}, "key": key})
    except (OSError, ValueError) as error:
        raise ColorizationError(f"cannot read the shard {shard.path}: {str(error).splitlines()[0]}") from None
    if shard.keys is not None and len(rows) != len(shard.keys):
        raise ColorizationError(f"{shard.path} holds {len(rows)} rows; its manifest says {len(shard.keys)}")
    return rows


def shards_of_rank(num_shards: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """The shards process ``rank`` of ``world_size`` reads in ``epoch``, in order (disjoint between ranks)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_shards)
    return [int(shard) for shard in order[rank::world_size]]


class StreamedImages(IterableDataset):
    """The training images of a shard list as an endless stream of this process's samples (the dict of
    :class:`colorization.data.ColorizationImages`: pixels, flip, index, skipped, readable).

    ``index`` is the sample's position in this process's stream (it seeds the flip, with the seed and epoch);
    ``len()`` is a nominal epoch: this process's share of the training images (the images held out excluded
    when the keys are known)."""

    def __init__(
        self,
        shards: list[Shard],
        resolution: int,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        validation_split: float,
        split_seed: int = 0,
        image_column: str = "image",
    ):
        if len(shards) < world_size:
            raise ColorizationError(
                f"{len(shards)} shard(s) for {world_size} processes: every process needs shards of its own; write "
                f"at least {world_size} (python -m colorization.shard --shard_size)"
            )
        self.shards, self.resolution, self.seed = shards, resolution, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.validation_split, self.split_seed, self.image_column = validation_split, split_seed, image_column
        self.start_batches = 0

    # ----- the order -----

    def start_at(self, batches: int) -> None:
        """Resume: the next iteration starts after this process's first ``batches`` batches."""
        self.start_batches = int(batches)

    def _worker_shards(self, epoch: int, worker: int, num_workers: int) -> list[int]:
        return shards_of_rank(len(self.shards), self.seed, epoch, self.rank, self.world_size)[worker::num_workers]

    def _training_rows(self, shard_index: int, epoch: int, rows: Optional[list] = None) -> list:
        """The shard's training rows (or, without ``rows``, their keys from the manifest) in the epoch's order."""
        keys = self.shards[shard_index].keys if rows is None else [row["key"] for row in rows]
        order = np.random.default_rng([self.seed, epoch, shard_index]).permutation(len(keys))
        kept = [int(i) for i in order if not held_out(keys[i], self.validation_split, self.split_seed)]
        return kept if rows is None else [rows[i] for i in kept]

    def _count(self, shard_index: int, epoch: int) -> int:
        if self.shards[shard_index].keys is not None:
            return len(self._training_rows(shard_index, epoch))
        return len(self._training_rows(shard_index, epoch, read_shard(self.shards[shard_index], self.image_column)))

    def _stream(self, worker: int, num_workers: int, skip: int) -> Iterator[dict]:
        """Worker ``worker``'s endless sequence of training rows, its first ``skip`` rows left out."""
        epoch = 0
        position = 0  # samples of this worker's stream so far (with the skipped ones)
        while True:
            shards = self._worker_shards(epoch, worker, num_workers)
            if not shards:
                raise ColorizationError(f"loader worker {worker} has no shard: use fewer --dataloader_num_workers")
            for shard_index in shards:
                if skip:
                    count = self._count(shard_index, epoch)
                    if count <= skip:
                        skip, position = skip - count, position + count
                        continue
                rows = self._training_rows(shard_index, epoch, read_shard(self.shards[shard_index], self.image_column))
                for row in rows[skip:]:
                    yield epoch, position + skip, row
                    position += 1
                position += skip
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers = 1 if info is None else info.num_workers
        # Batch n of a process comes from the worker n mod K of its stream. A resumed loader starts again with
        # its first worker, so that one plays the part of the worker whose turn it is, and so on in a circle.
        worker = ((0 if info is None else info.id) + self.start_batches) % num_workers
        done = self.start_batches // num_workers + (1 if worker < self.start_batches % num_workers else 0)
        # One sample per row, always, so that a position counted in rows is one counted in samples: an
        # unreadable image is replaced by this worker's previous readable one (at the very start, the next).
        previous, waiting = None, 0
        for epoch, position, row in self._stream(worker, num_workers, done * self.batch_size):
            index = position * num_workers + worker  # distinct across workers
            try:
                data = row["image"]["bytes"]
                pixels = None if data is None else crop_of_stored_pixels(data, self.resolution)
                if pixels is None:
                    pixels = resize_and_crop(decode_image(row["image"]), self.resolution)
            except UNREADABLE_IMAGE_ERRORS as error:
                warnings.warn(f"skipping unreadable image (key {row['key']}): {error}")
                if previous is None:
                    waiting += 1
                    continue
                yield {**previous, "index": index, "skipped": 1}
                continue
            flip = bool(np.random.default_rng([self.seed, epoch, self.rank, index]).random() < 0.5)
            previous = {"pixels": pixels, "flip": flip, "index": index, "skipped": 0, "readable": True}
            for _ in range(waiting):
                yield {**previous, "skipped": 1}
            waiting = 0
            yield previous

    def __len__(self) -> int:
        """A nominal epoch: this process's share of the training images (estimated from the row counts with
        --validation_split when the keys are not in a manifest)."""
        if all(shard.keys is not None for shard in self.shards):
            total = sum(
                not held_out(key, self.validation_split, self.split_seed) for s in self.shards for key in s.keys
            )
        else:
            total = round(sum(count_rows(shard) for shard in self.shards) * (1 - self.validation_split))
        return max(1, math.floor(total / self.world_size))


def count_rows(shard: Shard) -> int:
    """The rows of a shard without reading its images: the parquet footer, or the tar's member names."""
    if shard.keys is not None:
        return len(shard.keys)
    if shard.kind == "parquet":
        return _open_parquet(shard.path).metadata.num_rows
    import tarfile

    with tarfile.open(shard.path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    return len(
        {name.split("/")[-1].split(".")[0] for name in names if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS}
    )


# ----- the streamed data set's parts: its shards, held-out images, first images, the record of its images -----


def hub_shards(name: str, revision: Optional[str] = None) -> list[Shard]:
    """A Hub data set's parquet files (its own, or the Hub's parquet conversion), as shards read over HTTP."""
    from huggingface_hub import HfFileSystem, constants

    filesystem = HfFileSystem()
    try:
        files = sorted(filesystem.glob(f"datasets/{name}@{revision or 'main'}/**/*.parquet"))
        if not files:
            files = sorted(filesystem.glob(f"datasets/{name}@refs%2Fconvert%2Fparquet/**/*.parquet"))
    except Exception as error:  # the Hub client's errors (offline, not found, HTTP) share no one base class
        offline = " (HF_HUB_OFFLINE is set: streaming needs the network)" if constants.HF_HUB_OFFLINE else ""
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ColorizationError(
            f"cannot list the parquet files of the Hub data set {name!r}{offline}: {text}"
        ) from None
    train = [f for f in files if "/train" in f or "train-" in f.rsplit("/", 1)[-1]] or files
    if not train:
        raise ColorizationError(f"the Hub data set {name!r} has no parquet files to stream")
    return [Shard(f"hf://{file}", "parquet") for file in train]


def streaming_shards(config) -> list[Shard]:
    """The shards of a --streaming data configuration (colorization.data.DataConfig)."""
    if config.train_data_dir:
        return find_shards(config.train_data_dir)
    if config.dataset_name:
        return hub_shards(config.dataset_name)
    raise ColorizationError(
        "--streaming reads shards: give --train_data_dir SHARDS (python -m colorization.shard writes them) or "
        "--dataset_name of a Hub data set in parquet"
    )


def _rows_in_order(shards: list[Shard], image_column: str, keep, limit: Optional[int]) -> list[dict]:
    rows = []
    for shard in shards:
        if shard.keys is not None and not any(keep(key) for key in shard.keys):
            continue  # nothing wanted in it: not read
        rows += [row for row in read_shard(shard, image_column) if keep(row["key"])]
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def streamed_split(shards: list[Shard], config, which: str = "validation", limit: Optional[int] = None):
    """The first ``limit`` images of a split, in shard order, as an undecoded ``datasets.Dataset`` with a ``hash``
    column (their keys) for :func:`colorization.data.prepare_split`. ``which``: "validation" (the held-out
    images), "train" (the others) or "all"."""
    import datasets

    def keep(key: str) -> bool:
        return which == "all" or held_out(key, config.validation_split, config.split_seed) == (which == "validation")

    rows = _rows_in_order(shards, config.image_column, keep, limit)
    if not rows:
        raise ColorizationError(
            f"no {which} image in the {len(shards)} shards (--validation_split {config.validation_split})"
        )
    features = datasets.Features({config.image_column: datasets.Image(decode=False), "hash": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {config.image_column: [row["image"] for row in rows], "hash": [row["key"] for row in rows]}, features=features
    )


def training_keys(shards: list[Shard], config) -> Optional[list[str]]:
    """The keys of every training image when the shards' manifest lists them (None otherwise)."""
    if any(shard.keys is None for shard in shards):
        return None
    return [k for s in shards for k in s.keys if not held_out(k, config.validation_split, config.split_seed)]
