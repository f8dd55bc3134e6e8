"""Streamed training images: held out by key, whole shards per process, an order that resumes exactly."""

import collections
import io
import itertools
import json
import tarfile
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import _write_images
from torch.utils.data import DataLoader

from colorization.data import collate
from colorization.images import decode_image, resize_and_crop
from colorization.shard import run as write_shards
from colorization.streaming import (
    StreamedImages,
    count_rows,
    find_shards,
    held_out,
    read_shard,
    reader_shards,
    shard_orders,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    _write_images(folder / "photos", 24)
    write_shards([str(folder / "photos"), str(folder / "shards"), "--resolution", "16", "--shard_size", "4"])
    return find_shards(str(folder / "shards"))


def _batches(dataset, count, workers=0):
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate, num_workers=workers)
    return list(itertools.islice(iter(loader), count))


def _stream(shards, rank=0, world_size=1, start=0):
    dataset = StreamedImages(shards, 16, seed=3, rank=rank, world_size=world_size, batch_size=3, validation_split=0.25)
    dataset.start_at(start)
    return dataset


def test_held_out_by_key_is_a_stable_fraction():
    keys = [f"{i:016x}" for i in range(4000)]
    fraction = np.mean([held_out(k, 0.1) for k in keys])
    assert 0.08 < fraction < 0.12 and [held_out(k, 0.1) for k in keys[:50]] == [held_out(k, 0.1) for k in keys[:50]]
    assert [held_out(k, 0.1, split_seed=1) for k in keys[:200]] != [held_out(k, 0.1) for k in keys[:200]]


@pytest.mark.parametrize("num_shards, readers", [(8, 2), (6, 3), (7, 2), (5, 2), (5, 4), (3, 3), (9, 4)])
def test_readers_read_distinct_shards_in_every_round_and_every_shard_once_per_epoch(num_shards, readers):
    epochs = 4
    rounds = epochs * num_shards // readers
    for seed in range(20):
        streams = [list(itertools.islice(reader_shards(num_shards, seed, readers, q), rounds)) for q in range(readers)]
        for entries in zip(*streams):  # one round: every reader's next shard
            assert len({shard for _, shard in entries}) == readers
        sequence = [streams[p % readers][p // readers] for p in range(rounds * readers)]  # the entries in order
        for epoch in range(epochs - 1):
            assert sorted(shard for e, shard in sequence if e == epoch) == list(range(num_shards))
        assert [shard for e, shard in sequence if e == 0] == next(shard_orders(num_shards, seed, readers))
    first, second = itertools.islice(shard_orders(8, 0, 2), 2)
    assert first != second  # each epoch its own order


def test_two_processes_on_uneven_shards_read_different_shards_at_every_step_for_two_epochs(tmp_path):
    # 5 shards of 4 images for 2 processes: one process has a shard more than the other in each epoch. Each
    # reads its shards 2 images per step, so both start a new shard at the same step and must read different ones.
    _write_images(tmp_path / "photos", 20, size=(12, 10))
    write_shards([str(tmp_path / "photos"), str(tmp_path / "shards"), "--resolution", "8", "--shard_size", "4"])
    shards = find_shards(str(tmp_path / "shards"))
    shard_of_pixels = {
        resize_and_crop(decode_image(row["image"]), 8).numpy().tobytes(): index
        for index, shard in enumerate(shards)
        for row in read_shard(shard)
    }
    for seed in range(6):
        steps = []  # per rank, the shard of each step's batch
        for rank in range(2):
            dataset = StreamedImages(shards, 8, seed, rank, 2, batch_size=2, validation_split=0.0)
            loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
            batches = itertools.islice(iter(loader), 10)  # two epochs: 20 images x 2 epochs / 2 per step / 2
            steps.append([[shard_of_pixels[p.numpy().tobytes()] for p in batch["pixels"]] for batch in batches])
        for first, second in zip(*steps):
            assert len(set(first)) == len(set(second)) == 1 and first[0] != second[0]
        read = collections.Counter(shard for rank_steps in steps for batch in rank_steps for shard in batch)
        assert read == {shard: 2 * 4 for shard in range(5)}  # every image once per epoch


def test_a_stream_resumed_at_an_unreadable_image_gives_the_uninterrupted_streams_samples(tmp_path):
    for number in range(2):
        with tarfile.open(tmp_path / f"shard-{number}.tar", "w") as tar:
            for i in range(6):
                buffer = io.BytesIO()
                Image.new("RGB", (10, 9), (40 * i, 80, 120 + number)).save(buffer, format="PNG")
                data = buffer.getvalue() if i not in (2, 3) else b"broken %d" % (10 * number + i)
                info = tarfile.TarInfo(f"sample{number}{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    found = find_shards(str(tmp_path))

    def samples(start, count):
        dataset = StreamedImages(found, 8, seed=1, rank=0, world_size=1, batch_size=1, validation_split=0.0)
        dataset.start_at(start)
        with pytest.warns(UserWarning, match="unreadable"):
            return list(itertools.islice(iter(dataset), count))

    uninterrupted = samples(0, 30)  # two and a half epochs of 12 rows, 4 unreadable in each
    replaced = [position for position, sample in enumerate(uninterrupted) if sample["skipped"]]
    assert len(replaced) == 10 and replaced[0] > 0
    for start in replaced:
        for expected, found_sample in zip(uninterrupted[start:], samples(start, 30 - start)):
            assert torch.equal(expected["pixels"], found_sample["pixels"])
            assert (expected["flip"], expected["index"], expected["skipped"]) == (
                found_sample["flip"],
                found_sample["index"],
                found_sample["skipped"],
            )


def test_a_webdataset_sample_is_one_row_whatever_its_other_members_and_the_count_agrees(tmp_path):
    def png(value):
        buffer = io.BytesIO()
        Image.new("RGB", (6, 6), (value, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    def jpg(value):
        buffer = io.BytesIO()
        Image.new("RGB", (6, 6), (0, value, 0)).save(buffer, format="JPEG")
        return buffer.getvalue()

    members = [
        ("a.jpg", jpg(10)),
        ("a.seg.png", png(11)),  # a segmentation mask of sample a, not a photo of its own
        ("a.cls", b"3"),
        ("b.png", png(20)),
        ("c.seg.png", png(30)),  # a sample without a photo: no row
        ("d.jpg", jpg(40)),
        ("d.png", png(41)),  # two photos: the first extension of the stated order (png) is the photo
        ("sub/a.jpg", jpg(50)),  # another folder, another sample
    ]
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shard,) = find_shards(str(tmp_path))
    rows = read_shard(shard)
    assert [row["image"]["bytes"] for row in rows] == [jpg(10), png(20), png(41), jpg(50)]
    assert count_rows(shard) == len(rows) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_at_batch_k_gives_the_uninterrupted_streams_batches(shards, workers):
    uninterrupted = _batches(_stream(shards), 14, workers)  # past the first epoch (18 training images / 3)
    for start in (1, 5, 8):
        resumed = _batches(_stream(shards, start=start), 14 - start, workers)
        for expected, found in zip(uninterrupted[start:], resumed):
            assert torch.equal(expected["pixels"], found["pixels"]) and torch.equal(expected["flip"], found["flip"])


def test_two_processes_stream_disjoint_training_images_and_never_a_held_out_one(shards):
    key_of_pixels = {
        resize_and_crop(decode_image(row["image"]), 16).numpy().tobytes(): row["key"]
        for shard in shards
        for row in read_shard(shard)
    }
    seen = []
    for rank in range(2):
        # this process's first epoch: the training images of its shards of epoch 0
        mine = [shard for epoch, shard in itertools.islice(reader_shards(len(shards), 3, 2, rank), 3) if epoch == 0]
        assert len(mine) == 3  # 6 shards, 2 processes
        count = sum(not held_out(key, 0.25) for index in mine for key in shards[index].keys)
        samples = [p for b in _batches(_stream(shards, rank=rank, world_size=2), -(-count // 3)) for p in b["pixels"]]
        seen.append([key_of_pixels[p.numpy().tobytes()] for p in samples[:count]])
    first, second = set(seen[0]), set(seen[1])
    assert len(first) == len(seen[0]) and len(second) == len(seen[1])  # no image twice in an epoch
    assert not first & second and not any(held_out(key, 0.25) for key in first | second)
    all_training = {k for shard in shards for k in shard.keys if not held_out(k, 0.25)}
    assert first | second == all_training  # together, every training image once


def test_ppm_shards_stream_the_batches_of_png_shards(tmp_path):
    _write_images(tmp_path / "photos", 12)
    streams = []
    for image_format in ("png", "ppm"):
        out = str(tmp_path / image_format)
        write_shards(
            [str(tmp_path / "photos"), out, "--resolution", "16", "--shard_size", "4", "--image_format", image_format]
        )
        streams.append(_batches(_stream(find_shards(out)), 5))
    for png, ppm in zip(*streams):
        assert torch.equal(png["pixels"], ppm["pixels"]) and torch.equal(png["flip"], ppm["flip"])


def test_webdataset_tars_and_unreadable_images(tmp_path):
    for number in range(2):
        with tarfile.open(tmp_path / f"shard-{number}.tar", "w") as tar:
            for i in range(3):
                buffer = io.BytesIO()
                Image.new("RGB", (20, 18), (40 * i, 80, 120 + number)).save(buffer, format="PNG")
                data = buffer.getvalue() if (number, i) != (1, 1) else b"broken"
                info = tarfile.TarInfo(f"sample{number}{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    found = find_shards(str(tmp_path))
    assert [s.kind for s in found] == ["webdataset", "webdataset"] and len(read_shard(found[0])) == 3
    dataset = StreamedImages(found, 16, seed=0, rank=0, world_size=1, batch_size=3, validation_split=0.0)
    with pytest.warns(UserWarning, match="unreadable"):
        batches = _batches(dataset, 2)
    # one sample per row, always: the broken image is replaced by a readable one and counted
    assert sum(int(b["skipped"]) for b in batches) == 1 and all(len(b["pixels"]) == 3 for b in batches)


def _shards_of_photos(folder, afhq_dir=None, count=96, shard_size=12):
    """Shards at 32 px: the first real cats when present, else generated photos."""
    import shutil

    photos = folder / "photos"
    if afhq_dir is not None and afhq_dir.is_dir():
        photos.mkdir(parents=True)
        for file in sorted((afhq_dir / "train").iterdir())[:count]:
            shutil.copy(file, photos / file.name)
    else:
        _write_images(photos, count, size=(48, 40))
    write_shards([str(photos), str(folder / "shards"), "--resolution", "32", "--shard_size", str(shard_size)])
    return folder / "shards"


STREAMED_CNN = [
    "--streaming",
    "--resolution",
    "32",
    "--no-pretrained_backbone",
    "--train_batch_size",
    "8",
    "--eval_batch_size",
    "16",
    "--validation_images",
    "8",
    "--no-initial_validation",
    "--report_to",
    "none",
    "--checkpoints_total_limit",
    "none",
]


def test_a_streamed_run_resumed_into_a_fresh_folder_ends_with_the_uninterrupted_weights(tmp_path):
    from conftest import AFHQ_DIR, assert_same_weights, train_in_process
    from safetensors.torch import load_file

    from colorization.tasks.cnn import CNNTask

    shards = _shards_of_photos(tmp_path, AFHQ_DIR)
    args = [*STREAMED_CNN, "--train_data_dir", shards, "--dataloader_num_workers", "2", "--max_train_steps", "14"]
    args += ["--checkpointing_steps", "5", "--validation_steps", "14"]
    train_in_process(CNNTask, [*args, "--output_dir", tmp_path / "whole"])  # about 1.3 nominal epochs
    resumed = [*args, "--output_dir", tmp_path / "resumed", "--resume_from_checkpoint"]
    train_in_process(CNNTask, [*resumed, tmp_path / "whole" / "checkpoints" / "checkpoint_5"])
    assert_same_weights(
        load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    )
    record = json.loads((tmp_path / "whole" / "training_images.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    assert set(record["images"]) == {k for k in manifest["hashes"] if not held_out(k, 0.1)}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_on_loopback_train_as_one_machine_with_two_processes_on_disjoint_shards(tmp_path):
    import subprocess
    import sys

    from conftest import AFHQ_DIR, ROOT, accelerate_launch

    shards = _shards_of_photos(tmp_path, AFHQ_DIR)
    args = [*STREAMED_CNN, "--train_data_dir", shards, "--dataloader_num_workers", "0", "--max_train_steps", "8"]
    # one thread per process in both layouts: a machine of one process would otherwise take every core, and
    # another thread count sums in another order (not bit for bit)
    args += ["--checkpointing_steps", "4", "--validation_steps", "8", "--cpu_threads", "1"]
    (tmp_path / "one").mkdir()
    accelerate_launch(
        "tests/streaming_probe.py",
        [*args, "--output_dir", tmp_path / "one_run", "--probe_dir", tmp_path / "one"],
        num_processes=2,
    )
    # the same, as two machines of one process each, started side by side on the loopback address
    (tmp_path / "two").mkdir()
    port = _free_port()
    machines = []
    for rank in range(2):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        launch += ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
        launch += ["--main_process_port", str(port), "--dynamo_backend", "no", "tests/streaming_probe.py"]
        launch += [str(a) for a in [*args, "--output_dir", tmp_path / "two_run", "--probe_dir", tmp_path / "two"]]
        env = {**__import__("os").environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
        machines.append(subprocess.Popen(launch, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [machine.communicate(timeout=600)[0].decode() for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    one = [json.loads((tmp_path / "one" / f"rank_{r}.json").read_text()) for r in range(2)]
    two = [json.loads((tmp_path / "two" / f"rank_{r}.json").read_text()) for r in range(2)]
    assert one[0]["weights_sha256"] == two[0]["weights_sha256"] == two[1]["weights_sha256"]  # bit for bit
    assert [r["streamed"] for r in one] == [r["streamed"] for r in two]  # the same images on the same ranks
    epoch0 = [{key for epoch, key in r["streamed"] if epoch == 0} for r in two]
    assert epoch0[0] and epoch0[1] and not epoch0[0] & epoch0[1]  # the machines' shards are disjoint

    # and a two-process run stopped at its checkpoint and resumed into a fresh folder ends the same
    resumed = [*args, "--output_dir", tmp_path / "resumed", "--probe_dir", tmp_path / "resumed_probe"]
    (tmp_path / "resumed_probe").mkdir()
    checkpoint = tmp_path / "one_run" / "checkpoints" / "checkpoint_4"
    accelerate_launch("tests/streaming_probe.py", [*resumed, "--resume_from_checkpoint", checkpoint], num_processes=2)
    again = json.loads((tmp_path / "resumed_probe" / "rank_0.json").read_text())
    assert again["weights_sha256"] == one[0]["weights_sha256"]


# ----- a Hub data set, streamed: its configuration, --label_filter and the commit it was read at -----

SHA = "1" * 40
MOVED_SHA = "2" * 40


def _png(value: int, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _hub_layout_repo(folder, count=12):
    """A folder laid out as a Hub data set repository, written with datasets as push_to_hub writes it: the default
    configuration's train split in data/train-0000i-of-00002.parquet (label a ClassLabel cat/dog/wild), and a
    configuration "faces" (label stored as text) declared in the README -> {configuration: {label: image hashes}}."""
    import datasets

    from colorization.data import image_hash

    folder.mkdir(parents=True, exist_ok=True)
    classes = ["cat", "dog", "wild"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    images = [{"bytes": _png(i), "path": None} for i in range(count)]
    labels = [i % 3 for i in range(count)]
    half = count // 2
    for part, (first, last) in enumerate([(0, half), (half, count)]):
        rows = {"image": images[first:last], "label": labels[first:last]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / "data" / f"train-{part:05d}-of-00002.parquet")
        )
    faces = [{"bytes": _png(1000 + i), "path": None} for i in range(4)]
    face_labels = ["cat", "dog", "cat", "wild"]
    text = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": faces, "label": face_labels}, features=text).to_parquet(
        str(folder / "faces" / "train-00000-of-00001.parquet")
    )
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "- config_name: faces\n  data_files:\n  - split: train\n    path: faces/train-*\n---\n"
    )
    hashes = {"default": {}, "faces": {}}
    for image, label in zip(images, labels):
        hashes["default"].setdefault(classes[label], set()).add(image_hash(image))
    for image, label in zip(faces, face_labels):
        hashes["faces"].setdefault(label, set()).add(image_hash(image))
    return hashes


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggan/AFHQ served from a local Hub-layout folder: the revision lookup and datasets' reading of the
    repository's layout are replaced, nothing goes to the network. -> (hashes, the calls made)."""
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    hashes = _hub_layout_repo(tmp_path / "hub_repo")
    calls = {"revisions": [], "builders": [], "main": SHA}

    def dataset_info(self, name, revision=None, **kwargs):
        calls["revisions"].append((name, revision))
        return types.SimpleNamespace(sha=revision if revision and len(revision) == 40 else calls["main"])

    load_dataset_builder = datasets.load_dataset_builder

    def builder(name, config_name=None, revision=None, **kwargs):
        assert name == "huggan/AFHQ"
        calls["builders"].append((config_name, revision))
        return load_dataset_builder(str(tmp_path / "hub_repo"), config_name)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return hashes, calls


def _streamed_keys(config):
    from colorization.streaming import streaming_shards

    shards = streaming_shards(config)
    keys = [row["key"] for shard in shards for row in read_shard(shard)]
    assert sum(count_rows(shard) for shard in shards) == len(keys)  # counted without the images, the same
    return set(keys), len(shards)


def test_a_hub_data_set_streams_the_rows_of_its_label_and_configuration_at_a_pinned_commit(fake_hub):
    from colorization.data import DataConfig, describe_source
    from colorization.errors import ColorizationError

    hashes, calls = fake_hub
    config = DataConfig(dataset_name="huggan/AFHQ", streaming=True)  # --label_filter cat, the default
    keys, count = _streamed_keys(config)
    assert keys == hashes["default"]["cat"] and count == 2  # not the dogs and wild animals of the same files
    assert config.dataset_revision == SHA and calls["builders"] == [(None, SHA)]  # the files of that commit
    assert describe_source(config) == f"hub huggan/AFHQ@{SHA} [label = cat]"
    every = DataConfig(dataset_name="huggan/AFHQ", streaming=True, label_filter=None)
    assert _streamed_keys(every)[0] == set().union(*hashes["default"].values())
    faces = DataConfig(dataset_name="huggan/AFHQ", dataset_config_name="faces", streaming=True)
    assert _streamed_keys(faces)[0] == hashes["faces"]["cat"]  # another configuration, its labels as text
    tagged = DataConfig(dataset_name="huggan/AFHQ", dataset_revision="v1.0", streaming=True)
    _streamed_keys(tagged)
    assert calls["revisions"][-1] == ("huggan/AFHQ", "v1.0") and tagged.dataset_revision == SHA
    with pytest.raises(ColorizationError, match="'horse' is not a class of column 'label'"):
        _streamed_keys(DataConfig(dataset_name="huggan/AFHQ", streaming=True, label_filter="horse"))


def test_streaming_a_hub_data_set_offline_is_one_clear_error_at_once(monkeypatch):
    from huggingface_hub import constants

    from colorization.data import DataConfig
    from colorization.errors import ColorizationError
    from colorization.streaming import streaming_shards

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(ColorizationError, match="HF_HUB_OFFLINE is set.*--train_data_dir"):
        streaming_shards(DataConfig(dataset_name="huggan/AFHQ", streaming=True))
    assert time.perf_counter() - started < 2


def test_a_streamed_hub_run_records_its_commit_and_resumes_at_it_after_the_branch_moved(tmp_path, fake_hub):
    from conftest import assert_same_weights, train_in_process
    from safetensors.torch import load_file

    from colorization.tasks.cnn import CNNTask

    _, calls = fake_hub
    args = [*STREAMED_CNN, "--dataset_name", "huggan/AFHQ", "--label_filter", "none", "--validation_split", "0.3"]
    args += ["--dataloader_num_workers", "0", "--max_train_steps", "4", "--checkpointing_steps", "2"]
    args += ["--validation_steps", "4", "--train_batch_size", "2", "--validation_images", "2"]
    train_in_process(CNNTask, [*args, "--output_dir", tmp_path / "whole"])
    for record in (tmp_path / "whole" / "run_config.json", tmp_path / "whole" / "checkpoints" / "checkpoint_2"):
        path = record if record.suffix else record / "run_config.json"
        assert json.loads(path.read_text())["data"]["dataset_revision"] == SHA
    calls["main"] = MOVED_SHA  # a new commit on the data set's main branch since
    checkpoint = tmp_path / "whole" / "checkpoints" / "checkpoint_2"
    train_in_process(CNNTask, [*args, "--output_dir", tmp_path / "resumed", "--resume_from_checkpoint", checkpoint])
    assert calls["builders"][-1] == (None, SHA)  # the recorded commit, not the branch's new one
    assert json.loads((tmp_path / "resumed" / "run_config.json").read_text())["data"]["dataset_revision"] == SHA
    assert_same_weights(
        load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    )


# ----- the files a data set names: read only inside its folder -----


def _parquet_of_paths(file, paths):
    """A parquet shard whose rows name their image files instead of holding them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": p} for p in paths], type=image)}), file)


def test_shards_and_rows_name_files_only_inside_the_data_folder(tmp_path, monkeypatch):
    from colorization.errors import ColorizationError

    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(7))
    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    (data / "photos" / "inside.png").write_bytes(_png(8))
    _parquet_of_paths(data / "train.parquet", ["photos/inside.png", str(data / "photos" / "inside.png")])
    monkeypatch.chdir(tmp_path)  # a relative path is the data folder's, not the working folder's
    rows = read_shard(find_shards(str(data))[0])
    assert [row["image"]["bytes"] for row in rows] == [_png(8), _png(8)]
    for name, path in (("absolute", str(secret)), ("up", "../secret.png"), ("deeper", "photos/../../secret.png")):
        _parquet_of_paths(tmp_path / name / "train.parquet", [path])
        with pytest.raises(ColorizationError, match="outside the data set's folder"):
            read_shard(find_shards(str(tmp_path / name))[0])
    # a manifest that lists a shard outside its folder
    _write_images(tmp_path / "few", 4)
    write_shards([str(tmp_path / "few"), str(tmp_path / "shards"), "--resolution", "8", "--shard_size", "2"])
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    for outside in ("../data/train.parquet", str(data / "train.parquet")):
        manifest["shards"][0]["file"] = outside
        (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ColorizationError, match="manifest.json: a shard points at .*outside the data set's folder"):
            find_shards(str(tmp_path / "shards"))
