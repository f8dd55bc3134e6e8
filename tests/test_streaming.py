"""Streamed training images: held out by key, whole shards per process, an order that resumes exactly."""

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import _write_images
from torch.utils.data import DataLoader

from colorization.data import collate
from colorization.images import decode_image, resize_and_crop
from colorization.shard import run as write_shards
from colorization.streaming import StreamedImages, find_shards, held_out, read_shard, shards_of_rank


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


def test_held_out_by_key_is_a_stable_fraction_and_shards_go_whole_to_one_process_each_epoch():
    keys = [f"{i:016x}" for i in range(4000)]
    fraction = np.mean([held_out(k, 0.1) for k in keys])
    assert 0.08 < fraction < 0.12 and [held_out(k, 0.1) for k in keys[:50]] == [held_out(k, 0.1) for k in keys[:50]]
    assert [held_out(k, 0.1, split_seed=1) for k in keys[:200]] != [held_out(k, 0.1) for k in keys[:200]]
    for num_shards, world_size in ((8, 2), (6, 3), (7, 2)):
        for epoch in range(3):
            taken = [shards_of_rank(num_shards, 0, epoch, rank, world_size) for rank in range(world_size)]
            assert sorted(sum(taken, [])) == list(range(num_shards))  # disjoint, and every shard once
        assert shards_of_rank(num_shards, 0, 0, 0, world_size) != shards_of_rank(num_shards, 0, 1, 0, world_size)


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
        mine = shards_of_rank(len(shards), 3, 0, rank, 2)
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
