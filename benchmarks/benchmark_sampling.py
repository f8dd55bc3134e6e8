"""Diffusion sampling time per image: DDPM-1000, DDIM-50 and DPM-Solver-20, on CPU or GPU.

    python benchmarks/benchmark_sampling.py --resolution 256 --unet_preset base --batch_size 8 --mixed_precision bf16

Uses the real LabColorizationPipeline with a randomly initialised UNet of the chosen preset (speed does
not depend on the weights). Prints one JSON line per sampler; --output appends them to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from diffusers import DDPMScheduler
from records import device_name, record

from colorization.models.diffusion import LabColorizationPipeline, build_unet, make_sampler

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm", 20))  # the sampler and its steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--unet_preset", default="base")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--samplers", default="ddpm,ddim,dpm", help="which of ddpm (1000 steps), ddim (50), dpm (20)")
    parser.add_argument("--output")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet = build_unet(args.resolution, args.unet_preset).to(device).eval()
    training_schedule = DDPMScheduler(num_train_timesteps=1000)
    pipeline = LabColorizationPipeline(unet, training_schedule)
    pipeline.set_progress_bar_config(disable=True)
    lightness = torch.rand(args.batch_size, 1, args.resolution, args.resolution, device=device) * 2 - 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    for name, steps in SAMPLERS:
        if name not in args.samplers.split(","):
            continue
        pipeline.scheduler = make_sampler(name, training_schedule.config)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with autocast:
            pipeline.sample_ab(lightness, 2, torch.Generator(device).manual_seed(0))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            pipeline.sample_ab(lightness, steps, torch.Generator(device).manual_seed(0))
            if device.type == "cuda":
                torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        record(
            {
                "sampler": name,
                "steps": steps,
                "resolution": args.resolution,
                "preset": args.unet_preset,
                "batch_size": args.batch_size,
                "mixed_precision": args.mixed_precision,
                "seconds_per_image": round(elapsed / args.batch_size, 4),
                "device": device_name(device),
                "parameters": sum(p.numel() for p in unet.parameters()),
                **(
                    {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
                    if device.type == "cuda"
                    else {}
                ),
            },
            args.output,
        )


if __name__ == "__main__":
    main()
