"""Images per second of the real training data path alone, to set beside a model's step rate.

    python benchmarks/benchmark_loader.py --train_data_dir ../shared/data/afhq_cat --resolution 256 --workers 0,2,4,8

The harness's own loader: the training split, the epoch-shuffled sampler, batches of --batch_size, the
decoded uint8 cache (or --no-preprocess: decoding JPEGs with PIL in the workers every epoch), pinned memory
on a GPU, and the copy to the device with the flips applied there. Building the cache is timed once
(first use at a resolution; later runs read it). Prints one JSON line per worker count; --output appends them.

With --streaming SHARDS (``python -m colorization.shard`` of the same folder at the same resolution), the
streamed path is measured side by side with the folder path, for each worker count: the same batches,
workers, resize and crop, and copy to the device, from the parquet shards (PNG decoded in the workers).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from records import device_name, record
from torch.utils.data import DataLoader

from colorization.data import DataConfig, EpochShuffleSampler, batch_to_rgb, build_datasets, collate


def measure(train_set, batch_size: int, workers: int, device: torch.device, images: int) -> float:
    streamed = isinstance(train_set, torch.utils.data.IterableDataset)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=None if streamed else EpochShuffleSampler(len(train_set), 0),
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    seen, started = 0, None
    for epoch in range(100):
        if not streamed:
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch_to_rgb(batch, device)
            if started is None:  # from the first batch on: worker start-up is not a rate
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                continue
            seen += len(batch["index"])
            if seen >= images:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return seen / (time.perf_counter() - started)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", default="0,2,4", help="comma-separated numbers of loader workers")
    parser.add_argument("--images", type=int, default=4000, help="images timed per worker count")
    parser.add_argument(
        "--no-preprocess",
        dest="preprocess",
        action="store_false",
        help="decode the files every epoch instead of reading the decoded cache",
    )
    parser.add_argument("--streaming", help="shards of the same images: measure the streamed path beside the folder's")
    parser.add_argument("--output", help="append the results as JSON lines to this file")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = DataConfig(
        train_data_dir=args.train_data_dir,
        resolution=args.resolution,
        preprocess=args.preprocess,
        dataloader_num_workers=max(int(w) for w in args.workers.split(",")),
    )
    started = time.perf_counter()
    train_set, _ = build_datasets(config, seed=0)
    build_seconds = time.perf_counter() - started
    paths = {"folder": train_set}
    if args.streaming:
        from colorization.streaming import StreamedImages, find_shards

        shards = find_shards(args.streaming)
        paths["streaming"] = StreamedImages(shards, args.resolution, 0, 0, 1, args.batch_size, 0.1)
    for workers in (int(w) for w in args.workers.split(",")):
        for path, images in paths.items():
            if path == "streaming" and workers > len(shards):
                continue
            rate = measure(images, args.batch_size, workers, device, args.images)
            record(
                {
                    "benchmark": "loader",
                    "path": path,
                    "resolution": args.resolution,
                    "batch_size": args.batch_size,
                    "workers": workers,
                    "preprocess": args.preprocess if path == "folder" else None,
                    "images_per_second": round(rate, 1),
                    "build_seconds": round(build_seconds, 2) if path == "folder" else None,
                    "train_images": len(train_set),
                    "device": device_name(device),
                    "cpu_cores": os.cpu_count(),
                },
                args.output,
            )


if __name__ == "__main__":
    main()
