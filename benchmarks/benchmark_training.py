"""Training throughput, FLOPs, MFU and peak memory of one model's training step, on CPU or GPU.

    python benchmarks/benchmark_training.py --model diffusion --resolution 256 --batch_size 32 --mixed_precision bf16

Runs the real harness step (the model family's training_step, its optimizers, gradient clipping and the
Accelerate mixed-precision wrapper) on random images, so data loading is not measured (see
benchmark_loader.py for that side). The FLOPs of one training image are counted, not estimated: PyTorch's
FlopCounterMode over one whole training step (forward and backward of every network in it, the GAN's
discriminator and VGG loss included), divided by the batch. MFU = counted FLOPs x images/s / the device's
dense peak for the precision (the table below; fp32 rows are compared with the TF32 tensor-core peak: the
benchmark trains with --allow_tf32). The GAN is measured in its adversarial phase (its costliest).
Prints one JSON line; --output appends it to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from typing import Optional

import torch
from accelerate import Accelerator
from records import record
from torch.utils.flop_counter import FlopCounterMode

from colorization import color
from colorization.data import DataConfig
from colorization.tasks import TRAINING_TASKS
from colorization.training import TrainConfig, Trainer

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: bf16 tensor cores, and TF32 tensor cores
# for fp32 training. Matched by substring against torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "no": 494.7}),
    ("H100 PCIe", {"bf16": 756.0, "no": 378.0}),
    ("H100", {"bf16": 989.4, "no": 494.7}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "no": 156.0}),
    ("L40S", {"bf16": 362.1, "no": 183.2}),
    ("L4", {"bf16": 121.0, "no": 60.0}),
    ("A10G", {"bf16": 70.0, "no": 35.0}),
)


def device_peak(device_name: str, mixed_precision: str) -> Optional[float]:
    """The dense peak TFLOP/s of a known GPU for this precision, or None."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks.get(mixed_precision)
    return None


def benchmark(
    model: str,
    resolution: int,
    batch_size: int,
    mixed_precision: str,
    steps: int,
    warmup: int,
    perceptual: float = 0.5,
    unet_preset: str = "base",
    torch_compile: bool = False,
    channels_last: bool = False,
) -> dict:
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available(),
        dynamo_backend="inductor" if torch_compile else None,
    )
    task_class = TRAINING_TASKS[model]
    options = {
        "cnn": {"pretrained_backbone": False},
        "gan": {"lambda_perceptual": perceptual, "content_fraction": 0.0, "discriminator_warmup_fraction": 0.0},
        "diffusion": {"unet_preset": unet_preset},
    }[model]
    task = task_class(task_class.config_class(**options), resolution)
    task.check_resolution(resolution)
    shared = {k: v for k, v in task_class.flag_defaults.items() if k in TrainConfig.__annotations__}
    # TF32 on (the harness's default is off): the fp32 rows are compared with the TF32 tensor-core peak
    train_config = TrainConfig(
        train_batch_size=batch_size, report_to="none", channels_last=channels_last, allow_tf32=True, **shared
    )
    trainer = Trainer(task, train_config, DataConfig(resolution=resolution), accelerator=accelerator)
    trainer._prepare_models(max_steps=warmup + steps + 1)
    rgb = torch.rand(batch_size, 3, resolution, resolution, device=accelerator.device)
    lightness, ab = color.rgb_to_normalized_lab(rgb)
    if channels_last:
        lightness, ab = (t.contiguous(memory_format=torch.channels_last) for t in (lightness, ab))

    def step():
        with accelerator.accumulate(*task.models.values()), accelerator.autocast():
            task.training_step(trainer, lightness, ab)

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops_per_image = counter.get_total_flops() / batch_size
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    images_per_second = steps * batch_size / elapsed
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    peak = device_peak(device, mixed_precision) if torch.cuda.is_available() else None
    achieved = flops_per_image * images_per_second / 1e12
    result = {
        "model": model,
        "resolution": resolution,
        "batch_size": batch_size,
        "mixed_precision": mixed_precision,
        "torch_compile": torch_compile,
        "channels_last": channels_last,
        "steps": steps,
        "images_per_second": round(images_per_second, 2),
        "seconds_per_step": round(elapsed / steps, 4),
        "gflops_per_training_image": round(flops_per_image / 1e9, 2),
        "achieved_tflops": round(achieved, 2),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
        "parameters": sum(p.numel() for m in task.models.values() for p in m.parameters()),
        "device": device,
        "torch": torch.__version__,
    }
    if model == "gan":
        result["lambda_perceptual"] = perceptual
    if model == "diffusion":
        result["unet_preset"] = unet_preset
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
    parser.add_argument(
        "--lambda_perceptual",
        type=float,
        default=0.5,
        help="GAN: 0 skips the VGG-16 perceptual loss (whose weights need a download)",
    )
    parser.add_argument("--unet_preset", default="base", help="diffusion: small or base")
    parser.add_argument(
        "--untrained_vgg",
        action="store_true",
        help="GAN: a randomly initialised VGG-16 for the perceptual loss (the same cost; for "
        "machines that cannot download its weights)",
    )
    parser.add_argument("--torch_compile", action="store_true", help="the harness's --torch_compile")
    parser.add_argument("--channels_last", action="store_true", help="the harness's --channels_last")
    parser.add_argument("--output", help="append the result as one JSON line to this file")
    args = parser.parse_args()
    if args.untrained_vgg:
        from torchvision.models import vgg16

        from colorization.tasks import gan

        gan.load_imagenet_vgg16_features = lambda: vgg16().features[: gan.VGG_RELU3_3].eval().requires_grad_(False)
    result = benchmark(
        args.model,
        args.resolution,
        args.batch_size,
        args.mixed_precision,
        args.steps,
        args.warmup,
        args.lambda_perceptual,
        args.unet_preset,
        args.torch_compile,
        args.channels_last,
    )
    record(result, args.output)


if __name__ == "__main__":
    main()
