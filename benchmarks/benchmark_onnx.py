"""Milliseconds per image of the torch backend and of ONNX Runtime for one-pass models, measured side by side.

    python -m colorization.export_onnx results/cpu-small/models/cnn /tmp/onnx-cnn
    python benchmarks/benchmark_onnx.py --model results/cpu-small/models/cnn --onnx /tmp/onnx-cnn \\
        --output benchmarks/results_cpu.jsonl

Two measurements per backend, interleaved (torch, ONNX Runtime, torch, ...) so that both see the same machine:
- ``network``: the network alone on a batch of L at the model's resolution (``predict_ab``), per image;
- ``photo``: ``colorize`` on one photo of ``--photo_size`` px (the whole path: L, the resize to the model,
  the network, ab back to full size, the Lab join), per image.
Both backends run on the CPU with every core: torch with its default threads, ONNX Runtime with its default
intra-op threads. The median of ``--repeats`` timed runs after ``--warmup`` untimed ones is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from records import device_name, median_seconds, record  # noqa: E402

from colorization.inference import load_colorizer  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported model (torch)")
    parser.add_argument("--onnx", required=True, help="its ONNX folder (python -m colorization.export_onnx)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--photo_size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)

    backends = {
        "torch": load_colorizer(args.model, "cpu"),
        "onnxruntime": load_colorizer(args.onnx, backend="onnx"),
    }
    resolution = backends["torch"].resolution
    generator = torch.Generator().manual_seed(0)
    lightness = torch.rand(args.batch_size, 1, resolution, resolution, generator=generator) * 2 - 1
    pixels = np.random.default_rng(0).integers(0, 256, (args.photo_size, args.photo_size, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    seconds = {name: {"network": [], "photo": []} for name in backends}
    for _ in range(3):  # interleaved rounds: a slower moment of the machine hits both backends
        for name, colorizer in backends.items():
            network = median_seconds(lambda c=colorizer: c._predict(lightness, None), args.warmup, args.repeats)
            whole = median_seconds(lambda c=colorizer: c.colorize(photo), 1, max(3, args.repeats // 3))
            seconds[name]["network"].append(network / args.batch_size)
            seconds[name]["photo"].append(whole)
    import onnxruntime

    for measure in ("network", "photo"):
        ms = {name: 1000 * min(found[measure]) for name, found in seconds.items()}
        record(
            {
                "benchmark": "onnx_vs_torch",
                "model_type": backends["torch"].model_type,
                "model": os.path.relpath(args.model),
                "measure": measure,
                "input": f"batch {args.batch_size} at {resolution}px"
                if measure == "network"
                else f"one {args.photo_size}x{args.photo_size} photo",
                "ms_per_image_torch": round(ms["torch"], 3),
                "ms_per_image_onnxruntime": round(ms["onnxruntime"], 3),
                "onnxruntime_speedup": round(ms["torch"] / ms["onnxruntime"], 3),
                "device": device_name(torch.device("cpu")),
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            args.output,
        )


if __name__ == "__main__":
    main()
