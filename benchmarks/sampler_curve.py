"""How a diffusion model's samples change with the sampler and its number of steps: one command, one plot.

    python benchmarks/sampler_curve.py --model results/cpu-small/models/diffusion \\
        --train_data_dir ../shared/data/afhq_cat --resolution 64 --images 64 --output_dir docs/results/sampler-curve

For DDPM, DDIM and DPM-Solver at several step counts, on the first --images held-out images (all through
colorization.measure, as evaluate.py measures): single-sample PSNR, PSNR of the mean of --num_samples samples
(for step counts up to --max_mean_steps; DDPM-1000 gets one sample) with the spread-skill ratio and the PSNR of
the sampler's own posterior mean (K -> infinity; see evaluate.py), the data-set colorfulness gap, the sliced
Wasserstein ab distance to the truth, and the seconds per sample. Writes sampler_curve.json, sampler_curve.md
(the table) and sampler_curve.png (the curves) into --output_dir.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Subset

from colorization.colorizer import read_export_config
from colorization.data import DataConfig, batch_to_rgb, collate, load_splits, prepare_split
from colorization.evaluation import GRAY, TRUTH, summarize
from colorization.hardware import describe_hardware
from colorization.inference import load_colorizer
from colorization.measure import gray_baseline, measure, truth_values

CURVES = "ddpm:50,ddpm:100,ddpm:250,ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,dpm:5,dpm:10,dpm:20,dpm:50"
METRICS = ("psnr", "ssim", "colorfulness", "ab_histogram")


def run(args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = DataConfig(train_data_dir=args.train_data_dir, resolution=args.resolution, dataloader_num_workers=0)
    _, validation = load_splits(data)
    images = prepare_split(validation, data, train=False)
    loader = DataLoader(
        Subset(images, range(min(args.images, len(images)))), batch_size=args.batch_size, collate_fn=collate
    )
    batches = [(batch_to_rgb(batch, device), batch["index"]) for batch in loader]
    values = {GRAY: {}, TRUTH: {}}
    for truth, index in batches:
        for row, found in ((GRAY, gray_baseline(truth, METRICS)[0]), (TRUTH, truth_values(truth, METRICS))):
            for key, value in {**found, "index": index}.items():
                values[row].setdefault(key, []).append(value.cpu())
    rows, samples, timing = {}, {}, {}
    plan = [(name, int(steps)) for name, steps in (e.split(":") for e in args.samplers.split(","))]
    guided = float(read_export_config(args.model).get("condition_dropout", 0.0)) > 0
    scales = [float(w) for w in args.guidance_scales.split(",")] if guided else [1.0]
    for (sampler, steps), scale in ((entry, w) for w in scales for entry in plan):
        name = f"{sampler.upper()}-{steps}" + (f", guidance {scale:g}" if scale != 1.0 else "")
        colorizer = load_colorizer(
            args.model, device, scheduler=sampler, num_inference_steps=steps, guidance_scale=scale
        )
        k = args.num_samples if steps <= args.max_mean_steps else 1
        started = time.perf_counter()
        for truth, index in batches:
            found, _, _ = measure(colorizer, truth, index, args.seed, METRICS, num_samples=k)
            for key, value in {**found, "index": index}.items():
                rows.setdefault(name, {}).setdefault(key, []).append(value.cpu())
        timing[name] = (time.perf_counter() - started) / (sum(len(i) for _, i in batches) * k)
        print(f"{name}: {k} sample(s) per image, {timing[name]:.3f} s per sample", flush=True)
    joined = {row: {k: torch.cat(v).numpy() for k, v in found.items()} for row, found in {**rows, **values}.items()}
    kept = ~joined[TRUTH].pop("gray_truth").astype(bool)  # black-and-white truths are left out, as evaluate.py does
    joined = {row: {k: v[kept] for k, v in found.items()} for row, found in joined.items()}
    for name in rows:
        if "psnr_mean" in joined[name]:
            keys = ("psnr_mean", "ssim_mean", "diversity", "spread2", "error2", "num_samples", "colorfulness_crps")
            samples[name] = {k: joined[name][k] for k in (*keys, "index") if k in joined[name]}
    summary = summarize(joined, args.seed, samples)
    results = []
    for name in rows:
        head, _, guidance = name.partition(", guidance ")
        sampler, _, steps = head.rpartition("-")  # "DPM-SDE-20": the step count follows the last dash
        stats, mean_stats = summary[name], summary.get("samples", {}).get(name, {})
        results.append(
            {
                "sampler": sampler.lower(),
                "steps": int(steps),
                "guidance": float(guidance or 1.0),
                "images": len(joined[TRUTH]["index"]),
                "psnr": stats["psnr"],
                "psnr_vs_gray": stats["psnr_vs_gray"],
                "psnr_mean_of_k": mean_stats.get("psnr_mean"),
                # pooled over the images in the MSE domain (a mean of per-image logs of its estimate is biased)
                "pooled_psnr_posterior_mean": mean_stats.get("pooled_psnr_posterior"),
                "spread_skill_ratio": mean_stats.get("spread_skill"),
                "diversity": mean_stats.get("diversity"),
                # a row with one sample per image has no CRPS: its "forecast" would be a single value
                "colorfulness_crps": mean_stats.get("colorfulness_crps") if name in samples else None,
                "k": args.num_samples if name in samples else 1,
                "colorfulness": stats["colorfulness"],
                "colorfulness_vs_truth": stats["colorfulness_vs_truth"],
                "colorfulness_gap": stats["colorfulness_gap"],
                "ab_distance": stats["ab_distance"],
                "seconds_per_sample": round(timing[name], 4),
            }
        )
    reference = {
        "gray_psnr": summary[GRAY]["psnr"],
        "truth_colorfulness": summary[TRUTH]["colorfulness"],
        "gray_ab_distance": summary[GRAY]["ab_distance"],
    }
    return results, reference


def _cell(stat, digits=2) -> str:
    if stat is None:
        return "—"
    low, high = stat["ci95"]
    interval = "" if low != low else f" [{low:.{digits}f}, {high:.{digits}f}]"  # NaN: no interval
    return f"{stat['mean']:.{digits}f}{interval}"


def write(results: list[dict], reference: dict, args, hardware: str) -> None:
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "sampler_curve.json"), "w") as handle:
        json.dump(
            {
                "results": results,
                "reference": reference,
                "model": os.path.relpath(args.model),
                "model_step": read_export_config(args.model).get("training", {}).get("global_step"),
                "hardware": hardware,
                "seed": args.seed,
            },
            handle,
            indent=2,
        )
    lines = [
        "| Sampler | Steps | Guidance | K | PSNR, one sample | Δ vs gray | PSNR, mean of K | Pooled PSNR, posterior "
        "mean | Spread-skill ratio | Diversity | Colorfulness | Colorfulness − truth | Colorfulness gap ↓ | "
        "Colorfulness CRPS ↓ | ab distance ↓ | s per sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['sampler'].upper()} | {r['steps']} | {r['guidance']:g} | {r['k']} | {_cell(r['psnr'])} | "
            f"{_cell(r['psnr_vs_gray'])} | "
            f"{_cell(r['psnr_mean_of_k'])} | {_cell(r.get('pooled_psnr_posterior_mean'))} | "
            f"{_cell(r.get('spread_skill_ratio'))} | {_cell(r['diversity'])} | {_cell(r['colorfulness'])} | "
            f"{_cell(r['colorfulness_vs_truth'])} | {_cell(r['colorfulness_gap'])} | "
            f"{_cell(r.get('colorfulness_crps'))} | {_cell(r['ab_distance'])} | "
            f"{r['seconds_per_sample']:.3f} |"
        )
    lines += [
        "",
        f"{results[0]['images']} held-out images at {args.resolution}x{args.resolution}; gray (ab = 0) PSNR "
        f"{_cell(reference['gray_psnr'])}, ground-truth colorfulness {_cell(reference['truth_colorfulness'])}, "
        f"gray's ab distance {_cell(reference['gray_ab_distance'])}. Mean [95% bootstrap interval over images]. "
        "K: samples per image; a row with K = 1 has no mean of K, posterior mean, spread or CRPS (its one sample "
        "would be scored as a deterministic guess). Pooled PSNR, posterior mean: 10 log10(1 / MSE) of the "
        "sampler's own posterior mean, its per-image error estimated without bias from the K samples and pooled "
        "over the images before the log. Colorfulness gap: |colorfulness − truth| (its interval is the signed "
        "column's; one of the absolute value would be biased away from zero); "
        f"seconds per sample on {hardware}, fp32, batch {args.batch_size}.",
    ]
    with open(os.path.join(args.output_dir, "sampler_curve.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    _plot(results, reference, args)


def _plot(results: list[dict], reference: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for sampler, style in (("ddpm", "o-"), ("ddim", "s-"), ("dpm", "^-"), ("dpm-sde", "v-")):
        rows = [r for r in results if r["sampler"] == sampler and r["guidance"] == 1.0]
        if not rows:
            continue
        steps = [r["steps"] for r in rows]
        (line,) = axes[0].plot(steps, [r["psnr"]["mean"] for r in rows], style, label=f"{sampler.upper()}, one sample")
        with_mean = [r for r in rows if r["psnr_mean_of_k"]]
        if with_mean:
            axes[0].plot(
                [r["steps"] for r in with_mean],
                [r["psnr_mean_of_k"]["mean"] for r in with_mean],
                style,
                color=line.get_color(),
                alpha=0.5,
                linestyle="--",
                label=f"{sampler.upper()}, mean of {args.num_samples}",
            )
        axes[1].plot(steps, [r["colorfulness_gap"]["mean"] for r in rows], style, label=sampler.upper())
        axes[2].plot(steps, [r["ab_distance"]["mean"] for r in rows], style, label=sampler.upper())
    axes[0].axhline(reference["gray_psnr"]["mean"], color="gray", linestyle=":", label="gray (ab = 0)")
    for axis, title in zip(axes, ("PSNR (dB) ↑", "Colorfulness gap to the truth ↓", "ab distance to the truth ↓")):
        axis.set_xscale("log")
        axis.set_xlabel("sampling steps")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(args.output_dir, "sampler_curve.png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported diffusion model")
    parser.add_argument("--train_data_dir", required=True, help="the model's training folder (its held-out split)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_mean_steps", type=int, default=100, help="mean of K only up to this many steps")
    parser.add_argument("--samplers", default=CURVES, help="SCHEDULER:STEPS, comma-separated (evaluate.py's form)")
    parser.add_argument(
        "--guidance_scales",
        default="1,1.5,2,3",
        help="classifier-free guidance scales, each a row per sampler (models trained with condition dropout)",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="results/sampler-curve")
    args = parser.parse_args()
    results, reference = run(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    write(results, reference, args, describe_hardware(device))
    print(open(os.path.join(args.output_dir, "sampler_curve.md")).read())


if __name__ == "__main__":
    main()
