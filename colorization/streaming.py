"""Streaming: training images read shard by shard, never whole on one disk, in an order that resumes exactly.

A source is an ordered list of shard files: the parquet shards of ``python -m colorization.shard`` (with their
manifest), any folder of parquet files with an image column, webdataset tars, or a Hub data set's parquet files.

The order is a function of (seed, epoch) only, so a resumed run sees exactly the images of the uninterrupted one:

- **Shards to readers.** Every loader worker of every process is a reader: W processes of K workers make R = W x K
  readers, worker w of process r being reader w x W + r. The shards are read from one endless sequence, the epochs'
  orders one after another: epoch e's order is the permutation ``default_rng([seed, e])`` of the shards, its first
  entries moved when needed so that no R consecutive entries repeat a shard (:func:`shard_orders`). Reader q reads
  the entries q, q + R, q + 2R, ... of it (:func:`reader_shards`): so process r reads the entries r, r + W, ...,
  and its worker w every K-th of those. In round j the R readers read the entries jR to jR + R - 1: always R
  different shards, in every epoch, whether or not R divides the shard count, and every shard once per epoch.
  Processes take one batch per step: with shards of equal size (training rows) they go from round to round
  together, so no two readers ever read one shard at the same time; with unequal sizes they drift apart by the
  difference. The same holds across machines (the rank is global).
- **Batches from workers.** Each worker's stream is endless (epoch after epoch), so the loader takes batches from
  the workers strictly in turn: batch n of a process comes from worker n mod K.
- **Inside a shard**, the rows are permuted with ``default_rng([seed, epoch, shard])``: a shuffle that needs no
  buffer to be restored (a shuffle buffer's content is lost on resume; this permutation is not).
- **Held out by key.** An image is a validation image when the hash of its key (its source file's hash, or the
  hash of its bytes) falls under ``--validation_split`` (:func:`held_out`): the split is the same on any number of
  processes and machines, and never overlaps training. Training streams skip held-out rows.
- **Resume by position.** All processes consume one batch per micro-step, so the position is the number of
  batches n a process has taken; :meth:`StreamedImages.start_at` sets it, and each worker then skips its own
  share of n batches. With a manifest the skipped shards are counted, not read; without one they are read
  (their bytes, not decoded). An unreadable image is replaced by the next readable one of the worker's stream,
  a choice that looks only forward, so a resumed stream gives what the uninterrupted one gave from there.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from colorization.data import _MAX_REPLACEMENT_TRIES, label_matcher, path_inside, read_file_bytes
from colorization.errors import ColorizationError
from colorization.images import UNREADABLE_IMAGE_ERRORS, crop_of_stored_pixels, decode_image, resize_and_crop
from colorization.shard import MANIFEST_NAME, read_manifest

# A webdataset sample's photo is its first member with one of these extensions, in this order.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")


@dataclass(frozen=True)
class LabelFilter:
    """The rows a Hub data set's --label_filter keeps."""

    column: str
    value: str
    names: Optional[tuple] = None  # the column's class names from the data set's features, when it has them


@dataclass(frozen=True)
class Shard:
    path: str  # a local file or an hf:// URL
    kind: str  # "parquet" or "webdataset"
    keys: Optional[tuple] = None  # the hashes of its rows, in order (from a manifest)
    root: Optional[str] = None  # the data set's folder or hf:// repository: a row's image path is read only inside
    label: Optional[LabelFilter] = None  # only the rows of this class (a Hub data set's --label_filter)


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
            path = path_inside(location, entry["file"], f"{os.path.join(location, MANIFEST_NAME)}: a shard")
            shards.append(Shard(path, "parquet", keys, root=location))
            start += entry["rows"]
        return shards
    for pattern, kind in (("*.parquet", "parquet"), ("*.tar", "webdataset")):
        files = sorted(glob.glob(os.path.join(location, "**", pattern), recursive=True))
        if files:
            return [Shard(file, kind, root=location) for file in files]
    raise ColorizationError(
        f"{location} holds no shards (*.parquet or *.tar): write them with python -m colorization.shard"
    )


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    if path.startswith("hf://"):  # a Hub data set's file, read over HTTP in ranges
        from huggingface_hub import HfFileSystem

        return pq.ParquetFile(HfFileSystem().open(path[len("hf://") :], "rb"))
    return pq.ParquetFile(path)


def _class_names(schema, column: str) -> Optional[tuple]:
    """The class names of a ``ClassLabel`` column from a parquet file's ``huggingface`` schema metadata (the
    features ``datasets`` writes into every parquet file it saves), or None."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
        feature = features[column]
        return tuple(feature["names"]) if feature.get("_type") == "ClassLabel" else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _label_test(handle, shard: Shard):
    """The test of a label value for the shard's label filter (None: every row is kept)."""
    import pyarrow as pa

    label = shard.label
    schema = handle.schema_arrow
    if label is None or label.column not in schema.names:
        return None  # as the non-streamed path: a data set without that column is not filtered
    names = _class_names(schema, label.column) or label.names
    if names is None and pa.types.is_integer(schema.field(label.column).type) and not label.value.isdigit():
        raise ColorizationError(
            f"{shard.path}: column {label.column!r} holds class numbers and the data set does not name its classes: "
            f"give --label_filter as a number, not {label.value!r}"
        )
    return label_matcher(label.value, label.column, names)


def _parquet_rows(shard: Shard, image_column: str) -> Iterator[tuple[dict, Optional[str]]]:
    handle = _open_parquet(shard.path)
    names = handle.schema_arrow.names
    if image_column not in names:
        raise ColorizationError(f"{shard.path} has no column {image_column!r} (columns: {names}); set --image_column")
    keeps = _label_test(handle, shard)
    columns = [image_column] + (["hash"] if "hash" in names else [])
    columns += [shard.label.column] if keeps is not None and shard.label.column not in columns else []
    for batch in handle.iter_batches(batch_size=256, columns=columns):
        for row in batch.to_pylist():
            if keeps is None or keeps(row[shard.label.column]):
                yield row[image_column], row.get("hash")


def _tar_samples(tar) -> list:
    """A webdataset tar's samples -> (key, the member that is its photo), in the tar's order. A sample is the files
    that share a key: a name up to the first dot of its last part (``x.jpg``, ``x.seg.png`` and ``x.cls`` are
    one sample, of extensions ``jpg``, ``seg.png`` and ``cls``). Its photo is its member of the first extension of
    :data:`IMAGE_EXTENSIONS` it has; a sample without one is not an image."""
    members: dict[str, dict] = {}
    for member in tar:
        folder, _, name = member.name.rpartition("/")
        if member.isfile() and "." in name:
            stem, extension = name.split(".", 1)
            members.setdefault(f"{folder}/{stem}", {}).setdefault(extension.lower(), member)
    found = ((key, next((of[e] for e in IMAGE_EXTENSIONS if e in of), None)) for key, of in members.items())
    return [(key, member) for key, member in found if member is not None]


def _tar_rows(path: str) -> Iterator[tuple[dict, Optional[str]]]:
    """A webdataset tar's rows: one per sample (:func:`_tar_samples`), its photo's bytes."""
    import tarfile

    with tarfile.open(path) as tar:
        for _, member in _tar_samples(tar):
            yield {"bytes": tar.extractfile(member).read(), "path": None}, None


def read_shard(shard: Shard, image_column: str = "image") -> list[dict]:
    """Every row of one shard: ``{"image": {"bytes", "path"}, "key": str}``. Read with pyarrow or tarfile
    directly: ``datasets``' streaming loaders split their shards between torch loader workers by themselves,
    which would leave every worker but one without rows when each worker reads one shard."""
    try:
        found = _parquet_rows(shard, image_column) if shard.kind == "parquet" else _tar_rows(shard.path)
        rows = []
        for index, (value, stored_key) in enumerate(found):
            if not isinstance(value, dict):
                raise ColorizationError(f"{shard.path}: column {image_column!r} holds no image")
            data = value.get("bytes")
            if data is None and value.get("path"):  # a row that names its file instead of holding it
                data = read_file_bytes(path_inside(shard.root, value["path"], f"{shard.path}: row {index}'s image"))
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


def shard_orders(num_shards: int, seed: int, readers: int) -> Iterator[list[int]]:
    """The order of the shards in epoch 0, 1, 2, ...: the permutation ``default_rng([seed, epoch])``, except that
    when the readers' round that crosses into the epoch began in the last one, the epoch's first shards are the
    first of its permutation that this round has not read (then the rest in permutation order). So no ``readers``
    consecutive entries of the epochs' orders, one after another, repeat a shard."""
    if not 0 < readers <= num_shards:
        raise ValueError(f"{readers} readers of {num_shards} shards: at most one reader per shard")
    previous: list[int] = []
    for epoch in itertools.count():
        order = [int(shard) for shard in np.random.default_rng([seed, epoch]).permutation(num_shards)]
        begun = epoch * num_shards % readers  # entries of the crossing round that the last epoch holds
        if begun:
            read = set(previous[-begun:])
            first = [shard for shard in order if shard not in read][: readers - begun]
            moved = set(first)
            order = first + [shard for shard in order if shard not in moved]
        previous = order
        yield order


def reader_shards(num_shards: int, seed: int, readers: int, reader: int) -> Iterator[tuple[int, int]]:
    """(epoch, shard) of every entry reader ``reader`` of ``readers`` reads, in order: the entries reader,
    reader + readers, reader + 2 readers, ... of the epochs' orders (:func:`shard_orders`) one after another."""
    position = reader
    for epoch, order in enumerate(shard_orders(num_shards, seed, readers)):
        while position < (epoch + 1) * num_shards:
            yield epoch, order[position - epoch * num_shards]
            position += readers


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

    def _stream(self, worker: int, num_workers: int, skip: int) -> Iterator[tuple[int, int, dict]]:
        """Worker ``worker``'s endless sequence of (epoch, position, training row), its first ``skip`` rows left out
        (the position counts them)."""
        readers = self.world_size * num_workers
        if readers > len(self.shards):
            raise ColorizationError(
                f"{len(self.shards)} shards for {self.world_size} process(es) x {num_workers} loader workers: every "
                "worker reads shards of its own; use fewer --dataloader_num_workers"
            )
        position = 0  # samples of this worker's stream so far (with the skipped ones)
        reader = worker * self.world_size + self.rank
        for epoch, shard_index in reader_shards(len(self.shards), self.seed, readers, reader):
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

    def _sample(self, pixels, epoch: int, index: int, skipped: int) -> dict:
        flip = bool(np.random.default_rng([self.seed, epoch, self.rank, index]).random() < 0.5)
        return {"pixels": pixels, "flip": flip, "index": index, "skipped": skipped, "readable": True}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers = 1 if info is None else info.num_workers
        # Batch n of a process comes from the worker n mod K of its stream. A resumed loader starts again with
        # its first worker, so that one plays the part of the worker whose turn it is, and so on in a circle.
        worker = ((0 if info is None else info.id) + self.start_batches) % num_workers
        done = self.start_batches // num_workers + (1 if worker < self.start_batches % num_workers else 0)
        # One sample per row, always, so that a position counted in rows is one counted in samples: an unreadable
        # image takes the pixels of the next readable one of this worker's stream, with its own index and flip (as
        # the folder path does). Looking only forward, the choice is the same whether the stream began at the
        # start or at a resumed position.
        waiting: list[tuple[int, int]] = []  # (epoch, index) of the unreadable rows since the last readable one
        for epoch, position, row in self._stream(worker, num_workers, done * self.batch_size):
            index = position * num_workers + worker  # distinct across workers
            try:
                data = row["image"]["bytes"]
                pixels = None if data is None else crop_of_stored_pixels(data, self.resolution)
                if pixels is None:
                    pixels = resize_and_crop(decode_image(row["image"]), self.resolution)
            except UNREADABLE_IMAGE_ERRORS as error:
                warnings.warn(f"skipping unreadable image (key {row['key']}): {error}")
                waiting.append((epoch, index))
                if len(waiting) == _MAX_REPLACEMENT_TRIES:
                    raise ColorizationError(
                        f"none of {len(waiting)} images in a row could be read (the last: key {row['key']})"
                    ) from None
                continue
            for waiting_epoch, waiting_index in waiting:
                yield self._sample(pixels, waiting_epoch, waiting_index, skipped=1)
            waiting = []
            yield self._sample(pixels, epoch, index, skipped=0)

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
    """The rows of a shard without reading its images: the parquet footer (or, under a label filter, its label
    column), or the tar's member names."""
    if shard.keys is not None:
        return len(shard.keys)
    if shard.kind == "parquet":
        handle = _open_parquet(shard.path)
        keeps = _label_test(handle, shard)
        if keeps is None:
            return handle.metadata.num_rows
        return sum(keeps(label) for label in handle.read(columns=[shard.label.column]).column(0).to_pylist())
    import tarfile

    with tarfile.open(shard.path) as tar:
        return len(_tar_samples(tar))


# ----- the streamed data set's parts: its shards, held-out images, first images, the record of its images -----


def resolve_revision(name: str, revision: Optional[str]) -> str:
    """The commit (sha) that revision ``revision`` (a branch, tag or commit; None: main) of the Hub data set
    ``name`` is at now: what a run records, so that a resumed run reads the same files."""
    import datasets
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        raise ColorizationError(
            f"--streaming reads the Hub data set {name!r} over the network, and HF_HUB_OFFLINE is set: unset it, or "
            f"write its shards once where the Hub is reachable (python -m colorization.shard {name} SHARDS) and "
            "stream --train_data_dir SHARDS"
        )
    try:
        return HfApi().dataset_info(name, revision=revision or "main").sha
    except Exception as error:  # the Hub client's errors (unreachable, not found, HTTP) share no one base class
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ColorizationError(
            f"cannot find revision {revision or 'main'!r} of the Hub data set {name!r}: {text}"
        ) from None


def hub_shards(config) -> list[Shard]:
    """A Hub data set's training files as shards read over HTTP: the files of its ``train`` split in the
    configuration ``datasets`` itself loads (--dataset_config_name), at the commit --dataset_revision is at now
    (written into ``config``: the run records it, and a resumed run reads that commit), keeping the rows of
    --label_filter as the non-streamed path keeps them. A local folder laid out as a Hub data set has no revision."""
    import datasets

    name = config.dataset_name
    local = os.path.isdir(name)
    if not local:
        config.dataset_revision = resolve_revision(name, config.dataset_revision)
    try:
        builder = datasets.load_dataset_builder(
            name,
            config.dataset_config_name,
            revision=None if local else config.dataset_revision,
            cache_dir=config.cache_dir,
        )
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ColorizationError(f"cannot read the layout of the Hub data set {name!r}: {text}") from None
    splits = builder.config.data_files or {}
    files = [str(file) for file in splits.get("train", [])]
    if not files:
        raise ColorizationError(f"the Hub data set {name!r} has no train split to stream (it has {list(splits)})")
    if not all(file.endswith(".parquet") for file in files):
        raise ColorizationError(
            f"the Hub data set {name!r} is not stored as parquet files, which streaming reads: write its shards once "
            f"(python -m colorization.shard {name} SHARDS) and stream --train_data_dir SHARDS"
        )
    label = None
    if config.label_filter:
        feature = (builder.info.features or {}).get(config.label_column)
        names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        label = LabelFilter(config.label_column, config.label_filter, names)
    root = name if local else f"hf://datasets/{name}@{config.dataset_revision}"
    return [Shard(file, "parquet", root=root, label=label) for file in files]


def streaming_shards(config) -> list[Shard]:
    """The shards of a --streaming data configuration (colorization.data.DataConfig)."""
    if config.train_data_dir:
        return find_shards(config.train_data_dir)
    if config.dataset_name:
        return hub_shards(config)
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
