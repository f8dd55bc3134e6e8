"""Writing an evaluation down: the Markdown tables, CSV, JSON and the comparison grid.

Nothing here measures; :mod:`colorization.evaluation` does. Every file is written into a temporary folder
and moved into place at the end, so a failed run leaves nothing partial. An evaluation only ever replaces
its own files: it writes into a new or empty folder, or (``--overwrite_output_dir``) over an earlier
evaluation, recognised by the record of its files (:data:`FILES_RECORD`) that it leaves there; a folder with
anything else in it, and above all a model or a training run, is refused before anything is measured.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from typing import Optional

import torch

from colorization.colorizer import CONFIG_NAME, WEIGHTS_NAME
from colorization.errors import ColorizationError
from colorization.files import read_json_if_present, write_json
from colorization.hardware import describe_fp32_precision

GRAY, TRUTH = "Gray (ab = 0)", "Ground truth"
# written last into every evaluation folder: which files are the evaluation's own (all it may replace)
FILES_RECORD = "evaluation_files.json"
# what says a folder holds a model or a training run, which an evaluation never writes into
_MODEL_OR_RUN = (CONFIG_NAME, WEIGHTS_NAME, "model_index.json", "checkpoints", "run_config.json", "unet")
# column key -> (title, digits)
QUALITY_COLUMNS = {
    "psnr": ("PSNR (dB) ↑", 2),
    "psnr_vs_gray": ("Δ PSNR vs gray", 2),
    "ssim": ("SSIM ↑", 4),
    "ssim_vs_gray": ("Δ SSIM vs gray", 4),
    "lpips": ("LPIPS ↓", 4),
    "lpips_vs_gray": ("Δ LPIPS vs gray", 4),
    "colorfulness": ("Colorfulness", 2),
    "colorfulness_vs_truth": ("Colorfulness − truth", 2),
    "colorfulness_gap": ("Colorfulness gap ↓", 2),
    "colorfulness_gap_per_image": ("Per-image colorfulness gap ↓", 2),
    "ab_distance": ("ab distance ↓", 2),
}
COST_TITLES = ("Params", "Train images", "Train img/s", "Train time", "Inference ms/image")


def _format(stat: Optional[dict], digits: int) -> str:
    if stat is None:
        return "—"
    low, high = stat["ci95"]
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if not math.isnan(low) else ""
    return f"{stat['mean']:.{digits}f}{interval}"


def _count(value: int) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e5 else f"{value / 1e3:.1f}k" if value >= 1e3 else str(value)


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:.2f} h"
        if seconds >= 5400
        else f"{seconds / 60:.1f} min"
        if seconds >= 90
        else f"{seconds:.0f} s"
    )


def cost_cells(cost: dict) -> list[str]:
    """Parameters of the inference network; images seen in training, training images/s (training steps
    only) and training wall-clock (with validation and checkpoints) from the run; measured inference time."""
    training = cost.get("training") or {}
    rate = training.get("images_per_second")
    return [
        _count(cost["parameters"]),
        _count(training["images_seen"]) if "images_seen" in training else "?",
        f"{rate:.1f}" if rate else "?",
        _duration(training["wall_seconds"]) if "wall_seconds" in training else "?",
        f"{cost['ms_per_image']:.1f}",
    ]


def _describe_hardware(settings: dict) -> str:
    trained: dict[str, list] = {}
    for row, cost in settings.get("costs", {}).items():
        training = cost.get("training") or {}
        where = training.get("hardware", "unknown hardware")
        if training.get("mixed_precision"):
            where += f", mixed precision {training['mixed_precision']}"
        if "tf32" in training.get("fp32_precision", {}).values():
            where += ", TF32"
        trained.setdefault(where, []).append(row)
    parts = [f"{', '.join(rows)} trained on {where}" for where, rows in trained.items()]
    parts.append(
        f"inference measured on {settings.get('hardware', 'unknown hardware')}, batch "
        f"{settings['evaluation']['batch_size']}, {_precision(settings)}, at each model's own resolution"
    )
    return "; ".join(parts)


def _precision(settings: dict) -> str:
    """How the models computed: an evaluation before the record says 'fp32' (TF32 convolutions on a GPU)."""
    precision = settings.get("fp32_precision")
    text = describe_fp32_precision(precision) if precision else "fp32"
    if any(row.get("precision") == "bf16" for row in settings.get("rows", {}).values()):
        text += ", except the diffusion UNets the sampling note names in bf16 autocast"
    return text


def _rows_table(title_cells: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(title_cells) + " |", "|---|" + "---|" * (len(title_cells) - 1)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown_table(summary: dict, settings: dict) -> str:
    rows = {row: stats for row, stats in summary.items() if row != "samples"}
    columns = [c for c in QUALITY_COLUMNS if any(c in stats for stats in rows.values())]
    lines = _rows_table(
        ["Model"] + [QUALITY_COLUMNS[c][0] for c in columns],
        [[row] + [_format(stats.get(c), QUALITY_COLUMNS[c][1]) for c in columns] for row, stats in rows.items()],
    )
    lines += [
        "",
        f"Mean [95% bootstrap interval] over {settings['num_images']} images ({settings['data']}, split "
        f"{settings['split']}) at {settings['resolution']}x{settings['resolution']}. Δ columns: the mean paired "
        "difference to the gray row, its interval from the same resampled images. Colorfulness − truth: the "
        "mean paired difference to the ground truth's colorfulness; colorfulness gap: its absolute value (no "
        "interval: one of the absolute value would be biased away from zero); ab distance: sliced Wasserstein-1 "
        "distance (Lab units) between the row's and the ground truth's ab over all pixels. Sampling: "
        f"{_describe_sampling(settings['sampling'])}. The models ran in {_precision(settings)}.",
    ]
    costs = settings.get("costs")
    if costs:
        lines += [
            "",
            *_rows_table(["Model", *COST_TITLES], [[row, *cost_cells(cost)] for row, cost in costs.items()]),
            "",
            f"Costs: {_describe_hardware(settings)}. Train img/s counts training steps only; train time "
            "is the run's wall-clock with validation and checkpoints (start-up excluded).",
        ]
    samples = summary.get("samples")
    if samples:
        lines += _samples_table(samples, settings["num_samples"])
    if settings.get("notes"):
        lines += ["", "Notes:", *[f"- {note}" for note in settings["notes"]]]
    return "\n".join(lines)


def _samples_table(samples: dict, k: int) -> list[str]:
    """The stochastic models' table: one sample, the mean of K, the sampler's own posterior mean (pooled over the
    images, in the MSE domain), calibration; every row on the same images."""
    table, posterior, means, crps_differences = [], [], [], []
    for row, stats in samples.items():
        if row == "num_images":
            continue
        table.append(
            [row]
            + [_format(stats.get(key), 2) for key in ("psnr", "psnr_vs_gray", "psnr_mean", "psnr_mean_vs_gray")]
            + [_format(stats.get(key), 2) for key in ("pooled_psnr", "pooled_psnr_mean", "pooled_psnr_posterior")]
            + [
                _format(stats.get("spread_skill"), 2),
                _format(stats.get("ssim_mean"), 4),
                _format(stats.get("diversity"), 2),
                _format(stats.get("colorfulness_crps"), 2),
            ]
        )
        if "posterior_gain_over_mean" in stats:
            gain = _format(stats["posterior_gain_over_mean"], 2)
            posterior.append(f"{row} over its own mean of {k}: {gain} dB")
        for other, difference in stats.get("posterior_vs", {}).items():
            posterior.append(f"{row} - {other}: {_format(difference, 2)} dB")
        for other, difference in stats.get("mean_vs", {}).items():
            means.append(f"{row} - {other}: {_format(difference, 2)} dB")
        for other, difference in stats.get("colorfulness_crps_vs", {}).items():
            crps_differences.append(f"{row} - {other}: {_format(difference, 2)}")
    titles = ["Model", "PSNR, one sample (dB)", "Δ vs gray", f"PSNR, mean of {k} (dB)", "Δ vs gray"]
    titles += ["Pooled PSNR, one sample", f"Pooled PSNR, mean of {k}", "Pooled PSNR, posterior mean"]
    titles += ["Spread-skill ratio", f"SSIM, mean of {k}", "Diversity (ab units)", "Colorfulness CRPS ↓"]
    lines = [
        "",
        f"Stochastic models, {k} samples per image, on the first {samples['num_images']} of these images (every "
        "row on those same images):",
        "",
        *_rows_table(titles, table),
        "",
        f"PSNR columns: the mean over images of each image's PSNR. Pooled PSNR: 10 log10(1 / MSE), the MSE "
        f"pooled over the images (a deterministic row's posterior mean is its prediction, so its three pooled "
        f"columns are one). The posterior mean is the sampler's own mean as K grows without limit; its per-image "
        f"squared error is estimated without bias from the {k} samples (error^2 - spread^2 / K in sRGB) and only "
        "ever averaged over the images before the log is taken: a mean of per-image logs of that noisy estimate is "
        "biased upward. A sampler that draws from the true posterior scores about 3 dB under its posterior mean "
        f"with one sample, and its mean of K sits 10 log10(1 + 1/K) dB under it ({10 * math.log10(1 + 1 / k):.2f} "
        "dB here). Spread-skill ratio: sqrt((1 + 1/K) mean spread^2 / mean error^2); 1 is calibrated, under 1 too "
        "little spread for the error, over 1 too much. Diversity: the mean distance between two samples of an "
        f"image. Colorfulness CRPS: how well the {k} samples' colorfulness forecasts the truth's, per image (the "
        "fair continuous ranked probability score, a proper score); for a deterministic row it is its per-image "
        "colorfulness gap. A single sample's per-image gap is not a proper score: even a perfect sampler's is "
        "larger than that of the best single guess, so it rewards too little spread.",
    ]
    if posterior:
        lines += [
            "",
            "Posterior mean, pooled dB gained (over 0: a smaller pooled MSE; paired, same images) over each "
            "deterministic model and each stochastic row before it: " + "; ".join(posterior) + ".",
        ]
    if means:
        lines += ["", f"Mean of {k}, pooled dB gained, likewise: " + "; ".join(means) + "."]
    if crps_differences:
        lines += [
            "",
            "Colorfulness CRPS against each model before it (paired, same images; under 0: the colors' amount lands "
            "in the right photos more often): " + "; ".join(crps_differences) + ".",
        ]
    return lines


def _describe_sampling(sampling) -> str:
    if not isinstance(sampling, dict):
        return str(sampling)
    return "; ".join(f"{row}: {how}" for row, how in sampling.items())


def check_output_dir(output_dir: str, overwrite: bool) -> list[str]:
    """Refuse an --output_dir that holds anything but an earlier evaluation (and that one unless ``overwrite``)
    -> the files of the earlier evaluation there (to be replaced), or [] for a new or empty folder."""
    if not os.path.exists(output_dir):
        return []
    if not os.path.isdir(output_dir):
        raise ColorizationError(f"--output_dir {output_dir} is a file, not a folder")
    entries = sorted(os.listdir(output_dir))
    if not entries:
        return []
    model = [name for name in entries if name in _MODEL_OR_RUN]
    if model:
        raise ColorizationError(
            f"--output_dir {output_dir} holds a model or a training run ({', '.join(model)}); "
            "write the evaluation into a folder of its own, e.g. results/evaluation"
        )
    try:
        record = read_json_if_present(os.path.join(output_dir, FILES_RECORD))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        raise ColorizationError(
            f"--output_dir {output_dir} holds files that evaluate.py did not write (e.g. "
            f"{entries[0]}); choose a new or empty folder"
        )
    if not overwrite:
        raise ColorizationError(
            f"--output_dir {output_dir} holds an earlier evaluation; add --overwrite_output_dir "
            "to replace its files (nothing else there is touched), or choose another folder"
        )
    return [name for name in record["files"] if isinstance(name, str) and os.path.basename(name) == name]


def write_outputs(result: dict, summary: dict, settings: dict, output_dir: str, overwrite: bool = False) -> str:
    """table.md, table.csv, per_image.csv, results.json, comparison.png (+ its column names) -> the table."""
    from torchvision.utils import make_grid, save_image

    check_output_dir(output_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(output_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".evaluation-", dir=parent)
    try:
        table = markdown_table(summary, settings)
        with open(os.path.join(staging, "table.md"), "w") as handle:
            handle.write(table + "\n")
        write_table_csv(os.path.join(staging, "table.csv"), summary, settings.get("costs", {}))
        _write_per_image_csv(os.path.join(staging, "per_image.csv"), result)
        write_results_json(os.path.join(staging, "results.json"), settings, summary)
        # rows = images; columns = gray input, each model, ground truth
        order = [GRAY] + [r for r in result["grid"] if r not in (GRAY, TRUTH)] + [TRUTH]
        grid = torch.stack([result["grid"][row].cpu() for row in order], dim=1).flatten(0, 1)
        save_image(make_grid(grid, nrow=len(order), padding=2), os.path.join(staging, "comparison.png"))
        with open(os.path.join(staging, "comparison_columns.txt"), "w") as handle:
            handle.write(" | ".join(order) + "\n")
        _move_into_place(staging, output_dir, overwrite)
        return table
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: str, output_dir: str, overwrite: bool) -> None:
    """Move the new files into ``output_dir``, replacing only the earlier evaluation's own files there."""
    earlier = check_output_dir(output_dir, overwrite)  # again: the folder may have changed while we measured
    written = sorted(os.listdir(staging))
    os.makedirs(output_dir, exist_ok=True)
    # the record names both sets until the move is over, so an interrupted move leaves a folder that a later
    # evaluation still recognises as its own
    write_json(os.path.join(output_dir, FILES_RECORD), {"files": sorted(set(earlier) | set(written))})
    for name in written:
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    for name in set(earlier) - set(written) - {FILES_RECORD}:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    write_json(os.path.join(output_dir, FILES_RECORD), {"files": written})


def write_results_json(path: str, settings: dict, summary: dict) -> None:
    """results.json: the settings and the summary, rows in the table's order."""
    with open(path, "w") as handle:
        json.dump({"settings": settings, "summary": summary}, handle, indent=2)


def write_table_csv(path: str, summary: dict, costs: dict) -> None:
    rows = {row: stats for row, stats in summary.items() if row != "samples"}
    metrics = [c for c in QUALITY_COLUMNS if any(c in stats for stats in rows.values())]
    cost_keys = ("parameters", "ms_per_image")
    training_keys = ("images_seen", "images_per_second", "train_seconds", "wall_seconds", "hardware")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["model"]
            + [f"{m}_{part}" for m in metrics for part in ("mean", "ci95_low", "ci95_high")]
            + list(cost_keys)
            + [f"train_{k}" for k in training_keys]
        )
        for row, stats in rows.items():
            cost = costs.get(row, {})
            training = cost.get("training") or {}
            writer.writerow(
                [row]
                + [x for m in metrics for x in ((stats[m]["mean"], *stats[m]["ci95"]) if m in stats else ("", "", ""))]
                + [cost.get(k, "") for k in cost_keys]
                + [training.get(k, "") for k in training_keys]
            )


def _write_per_image_csv(path: str, result: dict) -> None:
    values = result["values"]
    metrics = sorted({m for row in values.values() for m in row if m not in ("index", "ab_histogram")})
    samples = result.get("samples") or {}
    # the samples' own one-sample psnr/ssim are the main columns' values for the same image and seed
    sample_metrics = sorted({m for row in samples.values() for m in row if m != "index"} - set(metrics))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_index", "model"] + metrics + sample_metrics)
        index = values[TRUTH]["index"]
        for position, image_index in enumerate(index):
            for row, row_values in values.items():
                extra = samples.get(row)
                where = None
                if extra is not None:
                    found = (extra["index"] == image_index).nonzero()[0]
                    where = int(found[0]) if len(found) else None
                writer.writerow(
                    [int(image_index), row]
                    + [float(row_values[m][position]) if m in row_values else "" for m in metrics]
                    + [float(extra[m][where]) if where is not None else "" for m in sample_metrics]
                )
