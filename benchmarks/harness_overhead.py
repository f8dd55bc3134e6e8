"""What the training harness costs: train_diffusion.py against a plain diffusers + accelerate loop, side by side.

    python benchmarks/harness_overhead.py --train_data_dir ../shared/data/afhq_cat --steps 120 --repeats 2

The plain loop is written as the diffusers training examples write theirs (accelerate, AdamW, a cosine
schedule, clipping, an EMA of the weights, DDPM noise), on the same Lab-conditioned UNet, batch, precision
and data loader (the project's decoded cache, 2 workers). The harness runs through the real entry point of
train_diffusion.py (in this process, without validation or checkpoints inside the timed window). Both report
images/s over logging windows of 10 steps after the first window; runs alternate, so that drift of the
machine falls on both. Prints one JSON line per run and a summary line; --output appends them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_loop(args) -> list[float]:
    """images/s per window of 10 steps, as a diffusers example would train this model."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from colorization import color
    from colorization.data import DataConfig, EpochShuffleSampler, batch_to_rgb, build_datasets, collate
    from colorization.models.diffusion import LabConditionedUNet, build_unet

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.set_num_threads(os.cpu_count() or 1)
    train_set, _ = build_datasets(
        DataConfig(train_data_dir=args.train_data_dir, resolution=args.resolution, dataloader_num_workers=2), seed=0
    )
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=EpochShuffleSampler(len(train_set), 0),
        collate_fn=collate,
        num_workers=2,
        drop_last=True,
        persistent_workers=True,
    )
    torch.manual_seed(0)
    unet = build_unet(args.resolution, "small", attention_levels=(3,), ab_scale=10.0)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=args.steps)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    ema = EMAModel(
        unet.parameters(), use_ema_warmup=True, foreach=True, model_cls=LabConditionedUNet, model_config=unet.config
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    ema.to(accelerator.device)
    rates, step, window_start = [], 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            lightness, ab = color.rgb_to_normalized_lab(batch_to_rgb(batch, accelerator.device))
            ab = ab * 10.0
            with accelerator.accumulate(unet):
                noise = torch.randn_like(ab)
                timesteps = torch.randint(0, 1000, (ab.shape[0],), device=ab.device)
                noisy = noise_scheduler.add_noise(ab, noise, timesteps)
                prediction = unet(noisy, timesteps, lightness)
                loss = F.mse_loss(prediction.float(), noise_scheduler.get_velocity(ab, noise, timesteps).float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(unet.parameters())
                step += 1
                if step % 10 == 0:
                    accelerator.log({"loss": loss.detach().item()}, step=step)  # the examples log the loss
                    now = time.perf_counter()
                    rates.append(10 * args.batch_size / (now - window_start))
                    window_start = now
            if step >= args.steps:
                break
    return rates[1:]


def harness(args) -> list[float]:
    """images/s per logging window of train_diffusion.py's own train/images_per_second."""
    from accelerate.state import AcceleratorState, GradientState
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from colorization.tasks.diffusion import DiffusionTask
    from colorization.training import run_training

    with tempfile.TemporaryDirectory() as folder:
        try:
            run_training(
                DiffusionTask,
                [
                    "--train_data_dir",
                    args.train_data_dir,
                    "--resolution",
                    str(args.resolution),
                    "--unet_preset",
                    "small",
                    "--attention_levels",
                    "3",
                    "--prediction_type",
                    "v_prediction",
                    "--learning_rate",
                    "1e-3",
                    "--lr_warmup_steps",
                    "10",
                    "--train_batch_size",
                    str(args.batch_size),
                    "--mixed_precision",
                    args.mixed_precision,
                    "--max_train_steps",
                    str(args.steps),
                    "--logging_steps",
                    "10",
                    "--validation_steps",
                    str(10 * args.steps),
                    "--no-initial_validation",
                    "--validation_images",
                    "8",
                    "--validation_inference_steps",
                    "2",
                    "--checkpointing_steps",
                    str(10 * args.steps),
                    "--dataloader_num_workers",
                    "2",
                    "--output_dir",
                    folder,
                ],
            )
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        events = EventAccumulator(os.path.join(folder, "logs", "diffusion"))
        events.Reload()
        rates = [e.value for e in events.Scalars("train/images_per_second")]
    return rates[1:-1]  # the first window warms up; the last one holds the final, shorter window's bookkeeping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mixed_precision", default="bf16")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="append the results as JSON lines to this file")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    results = {"plain": [], "harness": []}
    lines = []
    for repeat in range(args.repeats):
        for name, run in (("plain", plain_loop), ("harness", harness)):
            rates = run(args)
            results[name].append(statistics.median(rates))
            lines.append(
                {
                    "benchmark": "harness_overhead",
                    "loop": name,
                    "repeat": repeat,
                    "images_per_second": round(statistics.median(rates), 2),
                    "windows": [round(r, 1) for r in rates],
                }
            )
            print(json.dumps(lines[-1]), flush=True)
    plain, ours = statistics.mean(results["plain"]), statistics.mean(results["harness"])
    lines.append(
        {
            "benchmark": "harness_overhead",
            "summary": True,
            "plain_images_per_second": round(plain, 2),
            "harness_images_per_second": round(ours, 2),
            "ratio": round(ours / plain, 3),
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "precision": args.mixed_precision,
            "steps": args.steps,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    print(json.dumps(lines[-1]), flush=True)
    if args.output:
        with open(args.output, "a") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
