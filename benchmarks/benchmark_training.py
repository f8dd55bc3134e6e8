"""Training throughput and peak memory of one model's training step, on CPU or GPU.

    python benchmarks/benchmark_training.py --model cnn --resolution 256 --batch_size 32 --mixed_precision bf16

Runs the real harness step (the model family's training_step, its optimizers, gradient clipping and the
Accelerate mixed-precision wrapper) on random images, so data loading is not measured. Prints one JSON
line; --output appends it to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from accelerate import Accelerator

from colorization import color
from colorization.data import DataConfig
from colorization.models import TRAINING_TASKS
from colorization.training import TrainConfig, Trainer


def benchmark(model: str, resolution: int, batch_size: int, mixed_precision: str, steps: int, warmup: int,
              perceptual: float = 0.5, unet_preset: str = "base") -> dict:
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    task_class = TRAINING_TASKS[model]
    options = {"cnn": {"pretrained_backbone": False}, "gan": {"lambda_perceptual": perceptual},
               "diffusion": {"unet_preset": unet_preset}}[model]
    task = task_class(task_class.config_class(**options), resolution)
    task.check_resolution(resolution)
    train_config = TrainConfig(train_batch_size=batch_size, report_to="none",
                               **{k: v for k, v in task_class.flag_defaults.items() if k in TrainConfig.__annotations__})
    trainer = Trainer(task, train_config, DataConfig(resolution=resolution), accelerator=accelerator)
    trainer._prepare_models(max_steps=warmup + steps)
    rgb = torch.rand(batch_size, 3, resolution, resolution, device=accelerator.device)
    lightness, ab = color.rgb_to_normalized_lab(rgb)

    def step():
        with accelerator.accumulate(*task.models.values()), accelerator.autocast():
            task.training_step(trainer, lightness, ab)

    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result = {
        "model": model, "resolution": resolution, "batch_size": batch_size, "mixed_precision": mixed_precision,
        "steps": steps, "images_per_second": round(steps * batch_size / elapsed, 2),
        "seconds_per_step": round(elapsed / steps, 4),
        "parameters": sum(p.numel() for m in task.models.values() for p in m.parameters()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }
    if model == "gan":
        result["lambda_perceptual"] = perceptual
    if torch.cuda.is_available():
        result["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:  # the whole process's peak resident memory (Linux reports KiB)
        result["peak_process_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(TRAINING_TASKS), default="cnn")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lambda_perceptual", type=float, default=0.5,
                        help="GAN: 0 skips the VGG-16 perceptual loss (whose weights need a download)")
    parser.add_argument("--unet_preset", default="base", help="diffusion: small or base")
    parser.add_argument("--untrained_vgg", action="store_true",
                        help="GAN: a randomly initialised VGG-16 for the perceptual loss (the same cost; for "
                             "machines that cannot download its weights)")
    parser.add_argument("--output", help="append the result as one JSON line to this file")
    args = parser.parse_args()
    if args.untrained_vgg:
        from torchvision.models import vgg16

        from colorization.models import gan

        gan.load_imagenet_vgg16_features = lambda: vgg16().features[:gan._VGG_RELU3_3].eval().requires_grad_(False)
    result = benchmark(args.model, args.resolution, args.batch_size, args.mixed_precision, args.steps, args.warmup,
                       args.lambda_perceptual, args.unet_preset)
    line = json.dumps(result)
    print(line)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
