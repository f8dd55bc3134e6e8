"""Diffusion sampling time per image, per sampler and inference precision, side by side in one run.

    python benchmarks/benchmark_sampling.py --resolution 64 --unet_preset small --batch_size 32 \
        --samplers dpm:20,ddpm:75 --refining ddpm --variants fp32,bf16,bf16+compile --channels_last_check

Samples through the real colorizer (``colorizer_from_parts``: the pipeline's loop, its clipping, per-image
generators, a refining model's regressor once per image) with randomly initialised networks of the chosen
preset (speed does not depend on the weights) and the cpu-small recipe's clean-ab prediction. Each variant
(fp32, bf16 = the UNet's forward in bf16 autocast, +compile = torch.compile of the UNet) samples the same
images with the same seeds, so the JSON line of each also says how far its ab is from the first variant's
(max and mean |delta ab|, in Lab units). A compiled variant also says how long its first call compiled.

``--channels_last_check``: one bf16 UNet pass with contiguous against channels-last weights, and how far an
image's output moves between its batch and alone in each layout. ``--one_pass``: only one UNet pass per
variant and what ``--precision auto`` resolves to here (e.g. under ONEDNN_MAX_CPU_ISA=AVX2).
``--samples_per_image K``: only K samples of each of ``--batch_size`` images with the first sampler and
variant, drawn in one call of K x N images (as ``measure`` drew them before 2026-12-03) against K calls of N
(as it does now), alternating, and how far their ab are apart.
"""

from __future__ import annotations

import argparse
import time

import diffusers
import torch
from diffusers import DDPMScheduler
from records import device_name, median_seconds, record

from colorization.color import AB_SCALE
from colorization.colorizer import FeedForwardColorizer, resolve_precision
from colorization.hardware import cpu_name
from colorization.models.cnn import ResNetColorizer
from colorization.models.diffusion import build_unet, colorizer_from_parts

DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpm": 20}  # a sampler named without its steps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, device: torch.device):
    _synchronize(device)
    started = time.perf_counter()
    result = call()
    _synchronize(device)
    return result, time.perf_counter() - started


def _networks(args, device: torch.device, refining: bool):
    """A randomly initialised UNet (and, refining, a random CNN regressor) of the benchmark's preset."""
    torch.manual_seed(0)
    unet = build_unet(args.resolution, args.unet_preset, regressor_channels=2 if refining else 0)
    regressor = FeedForwardColorizer("cnn", ResNetColorizer(), args.resolution, device) if refining else None
    return unet.to(device).eval().requires_grad_(False), regressor


def sample_variants(args, device: torch.device) -> None:
    """Every sampler in every variant, on the same images and seeds; one JSON line each."""
    schedule = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False).config
    lightness = torch.rand(args.batch_size, 1, args.resolution, args.resolution, device=device) * 2 - 1
    seeds = list(range(args.batch_size))
    refining = args.refining.split(",") if args.refining else []
    for entry in args.samplers.split(","):
        name, _, steps = entry.partition(":")
        steps = int(steps or DEFAULT_STEPS[name])
        unet, regressor = _networks(args, device, name in refining)
        reference = None
        for variant in args.variants.split(","):
            precision, _, compiled = variant.partition("+")
            colorizer = colorizer_from_parts(
                unet,
                schedule,
                args.resolution,
                name,
                2,
                regressor=regressor,
                precision=precision,
                compile=bool(compiled),
            )
            _, first = _timed(lambda: colorizer.predict_ab(lightness, seeds), device)  # a 2-step warm-up
            _, warm = _timed(lambda: colorizer.predict_ab(lightness, seeds), device)
            colorizer.use_sampler(name, steps)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ab, seconds = _timed(lambda: colorizer.predict_ab(lightness, seeds), device)
            if reference is None:
                reference = (variant, ab)
            delta = (ab - reference[1]).abs() * AB_SCALE  # normalized ab -> Lab units
            record(
                {
                    "benchmark": "sampling",
                    "sampler": name,
                    "steps": steps,
                    "model": "refining" if name in refining else "plain",
                    "resolution": args.resolution,
                    "preset": args.unet_preset,
                    "batch_size": args.batch_size,
                    "precision": colorizer.precision,
                    "compile": bool(compiled),
                    "seconds_per_image": round(seconds / args.batch_size, 4),
                    # the first call's extra time over a warm call of the same 2 steps
                    **({"compile_seconds": round(first - warm, 1)} if compiled else {}),
                    "vs": reference[0],
                    "max_delta_ab": round(float(delta.max()), 4),
                    "mean_delta_ab": round(float(delta.mean()), 5),
                    "device": device_name(device),
                    "cpu": cpu_name(),
                    "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "parameters": sum(p.numel() for p in unet.parameters()),
                    **(
                        {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
                        if device.type == "cuda"
                        else {}
                    ),
                },
                args.output,
            )


def _pass(unet, batch: int, args, device: torch.device, precision: str):
    """One UNet pass of ``batch`` random images -> (a call that runs it, its inputs)."""
    generator = torch.Generator().manual_seed(1)
    shape = (batch, 1, args.resolution, args.resolution)
    inputs = (
        torch.randn(batch, 2, args.resolution, args.resolution, generator=generator).to(device),
        torch.tensor(500, device=device),
        (torch.rand(shape, generator=generator) * 2 - 1).to(device),
    )

    def run(*given):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return unet(*(given or inputs)).float()

    return run, inputs


def one_pass(args, device: torch.device) -> None:
    """One UNet pass per variant (no compile), and what auto resolves to on this machine."""
    unet, _ = _networks(args, device, False)
    for precision in ("fp32", "bf16"):
        run, _ = _pass(unet, args.batch_size, args, device, precision)
        seconds = median_seconds(run, warmup=1, repeats=3)
        record(
            {
                "benchmark": "sampling_one_pass",
                "precision": precision,
                "auto_resolves_to": resolve_precision("auto", device),
                "batch_size": args.batch_size,
                "resolution": args.resolution,
                "preset": args.unet_preset,
                "ms_per_image": round(1000 * seconds / args.batch_size, 2),
                "device": device_name(device),
                "cpu": cpu_name(),
                "torch": torch.__version__,
            },
            args.output,
        )


def channels_last_check(args, device: torch.device) -> None:
    """bf16 UNet passes with contiguous and channels-last weights: time, and an image in its batch vs alone."""
    for layout in ("contiguous", "channels_last"):
        unet, _ = _networks(args, device, False)
        if layout == "channels_last":
            unet = unet.to(memory_format=torch.channels_last)
        run, (noisy, timestep, lightness) = _pass(unet, args.batch_size, args, device, "bf16")
        seconds = median_seconds(run, warmup=2, repeats=5)
        alone = run(noisy[3:4], timestep, lightness[3:4])
        record(
            {
                "benchmark": "sampling_layout",
                "layout": layout,
                "precision": "bf16",
                "batch_size": args.batch_size,
                "resolution": args.resolution,
                "preset": args.unet_preset,
                "ms_per_image": round(1000 * seconds / args.batch_size, 2),
                "batch_vs_alone_max_delta": float((run()[3:4] - alone).abs().max()),
                "device": device_name(device),
                "cpu": cpu_name(),
                "torch": torch.__version__,
            },
            args.output,
        )


def sample_batches(args, device: torch.device) -> None:
    """K samples per image: one call of K x N images against K calls of N, the same seeds; one JSON line."""
    schedule = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False).config
    name, _, steps = args.samplers.split(",")[0].partition(":")
    steps = int(steps or DEFAULT_STEPS[name])
    precision = args.variants.split(",")[0]
    refining = name in (args.refining.split(",") if args.refining else [])
    unet, regressor = _networks(args, device, refining)
    colorizer = colorizer_from_parts(
        unet, schedule, args.resolution, name, steps, regressor=regressor, precision=precision
    )
    count, samples = args.batch_size, args.samples_per_image
    lightness = torch.rand(count, 1, args.resolution, args.resolution, device=device) * 2 - 1
    seeds = [[1000 * k + i for i in range(count)] for k in range(samples)]

    def at_once():
        flat = [seed for per_sample in seeds for seed in per_sample]
        return colorizer.predict_ab(lightness.repeat(samples, 1, 1, 1), flat).view(
            samples, count, 2, *lightness.shape[-2:]
        )

    def one_sample_at_a_time():
        return torch.stack([colorizer.predict_ab(lightness, seeds[k]) for k in range(samples)])

    colorizer.predict_ab(lightness[:2], [0, 1])  # warm-up
    times = {"at_once": [], "per_sample": []}
    for _ in range(args.repeats):  # alternating rounds, the best of each
        first, seconds = _timed(at_once, device)
        times["at_once"].append(seconds)
        second, seconds = _timed(one_sample_at_a_time, device)
        times["per_sample"].append(seconds)
    at_once_s, per_sample_s = min(times["at_once"]), min(times["per_sample"])
    record(
        {
            "benchmark": "sampling_batches",
            "sampler": name,
            "steps": steps,
            "model": "refining" if refining else "plain",
            "resolution": args.resolution,
            "preset": args.unet_preset,
            "images": count,
            "samples_per_image": samples,
            "precision": colorizer.precision,
            "seconds_per_sample_one_call": round(at_once_s / (count * samples), 4),
            "seconds_per_sample_per_sample_calls": round(per_sample_s / (count * samples), 4),
            "speedup": round(at_once_s / per_sample_s, 2),
            "max_delta_ab": round(float((first - second).abs().max() * AB_SCALE), 4),
            "mean_delta_ab": round(float((first - second).abs().mean() * AB_SCALE), 5),
            "device": device_name(device),
            "cpu": cpu_name(),
            "torch": torch.__version__,
        },
        args.output,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--unet_preset", default="base")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--samplers", default="ddpm,ddim,dpm", help="SCHEDULER[:STEPS],... (steps: ddpm 1000, ddim 50, dpm 20)"
    )
    parser.add_argument("--refining", default="", help="the samplers of --samplers sampled with a refining model")
    parser.add_argument(
        "--variants", default=None, help="comma-separated fp32, bf16, fp32+compile, bf16+compile (default: fp32)"
    )
    parser.add_argument(
        "--mixed_precision", choices=("no", "bf16"), default=None, help="the one variant fp32 (no) or bf16"
    )
    parser.add_argument("--channels_last_check", action="store_true", help="also the layout check (bf16)")
    parser.add_argument("--one_pass", action="store_true", help="only one UNet pass per precision")
    parser.add_argument("--samples_per_image", type=int, help="only K samples per image: one call of K x N or K of N")
    parser.add_argument("--repeats", type=int, default=2, help="--samples_per_image: alternating rounds (the best)")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.variants is None:
        args.variants = {"bf16": "bf16"}.get(args.mixed_precision, "fp32")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one_pass:
        one_pass(args, device)
        return
    if args.samples_per_image:
        sample_batches(args, device)
        return
    if args.channels_last_check:
        channels_last_check(args, device)
    sample_variants(args, device)


if __name__ == "__main__":
    main()
