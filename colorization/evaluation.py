"""``evaluate.py``: every model, the baselines and the ground truth, measured on the same images.

All metrics are computed on sRGB in [0, 1] at the evaluation resolution, through
:func:`colorization.measure.measure` (the function validation uses): ground truth and input go through the
same resize and crop; each model colorizes at its own training resolution in fp32 (a diffusion model's UNet
in ``--precision``, bf16 autocast where the device computes it fast) and its ab is brought to the evaluation
resolution and joined with the input's own L, as at inference.

Rows: each model (one per sampler for a diffusion model), the mean training ab of the models (each image's
own L with the per-pixel average ab of the training images), gray (L with ab = 0) and the ground truth.
Statistics (:func:`summarize`) are paired: every interval comes from the same bootstrap resamples of the
images, so the difference of two rows has an interval of its own. Writing the table and files is
:mod:`colorization.report`'s job.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from colorization import report
from colorization.colorizer import read_export_config, read_mean_ab, read_training_images
from colorization.config import (
    SAMPLER_NAMES,
    HelpFormatter,
    add_dataclass_arguments,
    build_dataclass,
    choice_list,
    field,
    guidance_list,
    model_reference,
    non_negative_int,
    output_folder,
    parse_guidance,
    parse_precisions,
    parse_samplers,
    positive_int,
    precision_list,
    sampler_list,
)
from colorization.data import (
    DataConfig,
    batch_to_rgb,
    collate,
    describe_source,
    load_splits,
    prepare_split,
    split_hashes,
)
from colorization.errors import ColorizationError, cli_entry_point
from colorization.hardware import count_parameters, describe_hardware, fp32_precision, full_fp32, use_all_cores
from colorization.hub import resolve
from colorization.inference import load_colorizer
from colorization.measure import gray_baseline, mean_ab_baseline, measure, truth_values
from colorization.metrics import (
    GRAY_TRUTH_CHROMA,
    bootstrap_mean,
    mse_from_psnr,
    percentile_interval,
    pooled_gain,
    pooled_psnr,
    posterior_mean_mse,
    resample_counts,
    sliced_wasserstein,
    spread_skill_ratio,
)
from colorization.pretrained import load_pretrained
from colorization.report import GRAY, TRUTH
from colorization.version import __version__

METRICS = ("lpips", "psnr", "ssim", "colorfulness", "ab_distance")
metric_list = choice_list(METRICS, "metric_list")  # --metrics
MEAN_AB = "Mean training ab"


@dataclass
class EvaluationConfig:
    split: str = field(
        "validation",
        "validation: the held-out images training used; all: every image (e.g. a separate folder of test photos).",
        choices=("validation", "all"),
    )
    max_images: Optional[int] = field(None, "Evaluate only the first N images.", type=positive_int)
    batch_size: int = field(16, "Images per batch and process.", type=positive_int)
    seed: int = field(0, "Seed of the diffusion model's noise (per image) and of the bootstrap.")
    metrics: str = field(",".join(METRICS), "Comma-separated metrics.", type=metric_list)
    num_inference_steps: Optional[int] = field(
        None, "Diffusion sampling steps (default: the model's, 20).", type=positive_int
    )
    scheduler: Optional[str] = field(
        None, "Diffusion sampler (default: the model's, dpm).", choices=(None, *SAMPLER_NAMES)
    )
    guidance_scale: str = field(
        "1",
        "Classifier-free guidance of the diffusion models: unconditional + w (conditional - unconditional); 1: none "
        "(needs a model trained with --condition_dropout). Comma-separated: W for every diffusion model or NAME=W "
        "for one (a --names entry); several scales for a model give a row each (e.g. 1,1.5,2,3).",
        type=guidance_list,
    )
    skip_images: int = field(
        0,
        "Leave out the first N images (e.g. those that sampling settings were tuned on); --max_images counts "
        "from there.",
        type=non_negative_int,
    )
    samplers: Optional[str] = field(
        None,
        "Compare diffusion samplers: comma-separated SCHEDULER:STEPS for every diffusion model or "
        "NAME=SCHEDULER:STEPS for one (a --names entry; e.g. dpm:20,ddim:50 or dpm:20,Refiner=ddpm:100); each "
        "diffusion model gets a row per sampler. Overrides --scheduler and --num_inference_steps.",
        type=sampler_list,
    )
    precision: str = field(
        "auto",
        "What the diffusion models' UNets compute in: auto (bf16 autocast where the device computes bf16 fast, e.g. "
        "a CPU with AVX512-BF16 or AMX, else fp32), fp32 or bf16; the sampler's own arithmetic is always fp32. "
        "Comma-separated: P for every diffusion model or NAME=P for one; several give a row each (e.g. fp32,bf16).",
        type=precision_list,
    )
    compile: bool = field(
        False,
        "torch.compile the diffusion UNets (frozen weights, one compiled batch shape). The first batch of each row "
        "then compiles for about half a minute on a 2-core CPU (its inference time includes it); on the cpu-small "
        "models it pays back only over long samplings (benchmarks/README.md).",
    )
    num_samples: int = field(
        1,
        "Stochastic models: also colorize each image K times and report the PSNR/SSIM "
        "of the mean of the K samples and their diversity.",
        type=positive_int,
    )
    num_samples_images: Optional[int] = field(
        None, "The mean of K samples on the first N images only (none: all).", type=positive_int
    )
    allow_training_images: bool = field(
        False, "Score a model on images it was trained on (refused by default; the table then says so)."
    )
    keep_gray_images: bool = field(
        False,
        "Keep the images whose ground truth is itself black and white (left out of every row by default: gray "
        "scores ~100 dB on them).",
    )
    keep_selection_images: bool = field(
        False, "Keep the images a model's checkpoint was chosen on (left out of every row by default)."
    )
    revision: Optional[str] = field(
        None, "Revision (branch, tag or commit) of the --checkpoints given as Hub ids (none: main)."
    )
    output_dir: str = field(
        "results/evaluation",
        "Where the tables, per-image values and grid are written: a new "
        "or empty folder, or an earlier evaluation's (with "
        "--overwrite_output_dir).",
        type=output_folder,
    )
    overwrite_output_dir: bool = field(
        False,
        "Replace the files of an earlier evaluation in --output_dir (only "
        "those: other files stay, and a folder with a model is refused).",
    )
    grid_images: int = field(8, "Images (rows) in the comparison grid.", type=positive_int)


def load_lpips(device: torch.device):
    """LPIPS (AlexNet, v0.1). Its AlexNet weights come from torchvision's download cache: offline and not
    cached, stop at once instead of falling back to a random network."""
    import lpips
    from torchvision.models import AlexNet_Weights

    model = load_pretrained(
        lambda: lpips.LPIPS(net="alex", version="0.1", verbose=False),
        AlexNet_Weights.IMAGENET1K_V1.url,
        "ImageNet AlexNet weights that LPIPS needs",
        "run without LPIPS: --metrics psnr,ssim,colorfulness,ab_distance",
    )
    return model.eval().requires_grad_(False).to(device)


def samplings(
    config: EvaluationConfig,
    model_type: str,
    guidance_scales: list[float],
    samplers: list[tuple[str, int]],
    precisions: Sequence[str] = ("auto",),
) -> list[dict]:
    """The sampling settings to evaluate a model with: for diffusion, one per sampler (its --samplers entries;
    none: --scheduler and --num_inference_steps), scale and precision."""
    if model_type != "diffusion":
        return [{}]
    samplers = samplers or [(config.scheduler, config.num_inference_steps)]
    found = []
    for scheduler, steps in samplers:
        for scale in guidance_scales:
            for precision in precisions:
                sampling = {"scheduler": scheduler, "num_inference_steps": steps, "guidance_scale": scale}
                sampling = {k: v for k, v in sampling.items() if v is not None}
                found.append({**sampling, "precision": precision, "compile": config.compile})
    return found


def mean_ab_rows(paths: dict[str, str]) -> dict[str, torch.Tensor]:
    """One mean-ab baseline row per distinct map among the models' exports (name -> folder)."""
    maps = {name: m for name in paths if (m := read_mean_ab(paths[name])) is not None}
    rows: dict[str, torch.Tensor] = {}
    for name, mean_ab in maps.items():
        if any(m.shape == mean_ab.shape and torch.equal(m, mean_ab) for m in rows.values()):
            continue
        rows[name] = mean_ab
    if len(rows) == 1:
        return {MEAN_AB: next(iter(rows.values()))}
    return {f"{MEAN_AB} ({name})": mean_ab for name, mean_ab in rows.items()}


class Evaluator:
    def __init__(
        self,
        checkpoints: list[str],
        names: list[str],
        config: EvaluationConfig,
        data: DataConfig,
        accelerator: Optional[Accelerator] = None,
        lpips_model=None,
    ):
        self.config, self.data = config, data
        self.metrics = [m.strip() for m in config.metrics.split(",") if m.strip()]
        unknown = set(self.metrics) - set(METRICS)
        if unknown or not self.metrics:
            raise ColorizationError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
        if len(names) != len(checkpoints):
            raise ColorizationError(f"{len(names)} --names for {len(checkpoints)} --checkpoints")
        if len(set(names)) != len(names) or {GRAY, TRUTH} & set(names) or any(n.startswith(MEAN_AB) for n in names):
            raise ColorizationError(f"model names must be distinct and not {GRAY!r}, {TRUTH!r} or {MEAN_AB!r}")
        if config.num_samples < 1:
            raise ColorizationError("--num_samples must be at least 1")
        # Hub ids resolved to their cached snapshot (downloaded once), every export read before anything runs
        located = {name: resolve(reference, config.revision) for name, reference in zip(names, checkpoints)}
        self.paths = {name: path for name, (path, _) in located.items()}
        self.origins = {name: origin for name, (_, origin) in located.items() if origin is not None}
        self.exports = {name: read_export_config(path) for name, path in self.paths.items()}
        self.accelerator = accelerator or Accelerator()
        use_all_cores(self.accelerator)
        self.colorizers, self.checkpoints, self.trainings, self.models_of_rows = {}, {}, {}, {}
        self.guidance_of_rows: dict[str, float] = {}
        try:
            guidance = parse_guidance(config.guidance_scale, names)
            samplers = parse_samplers(config.samplers, names) if config.samplers else {}
            precisions = parse_precisions(config.precision, names)
        except ValueError as error:
            raise ColorizationError(str(error)) from None
        for name, path in self.paths.items():
            model_type = self.exports[name]["model_type"]
            for flag, value in (
                ("--guidance_scale", config.guidance_scale),
                ("--samplers", config.samplers or ""),
                ("--precision", config.precision),
            ):
                if model_type != "diffusion" and name in {e.rpartition("=")[0].strip() for e in value.split(",")}:
                    raise ColorizationError(f"{flag} names {name!r}, a {model_type} model (not a diffusion model)")
            rows = samplings(config, model_type, guidance[name], samplers.get(name, []), precisions[name])
            for sampling in rows:
                colorizer = load_colorizer(path, self.accelerator.device, **sampling)
                named_by_sampling = sampling and (len(rows) > 1 or config.samplers)
                # a model sampled in several precisions: the row says which (auto says what it resolved to)
                label = colorizer.describe_sampling()
                label += f", {colorizer.precision}" if len(precisions[name]) > 1 else ""
                row = f"{name} ({label})" if named_by_sampling else name
                if row in self.colorizers:
                    raise ColorizationError(f"two rows would be named {row!r}: give distinct --names")
                given = self.origins[name]["repo_id"] if name in self.origins else os.path.relpath(path)
                self.colorizers[row], self.checkpoints[row], self.models_of_rows[row] = colorizer, given, name
                self.guidance_of_rows[row] = sampling.get("guidance_scale", 1.0)
                self.trainings[row] = self.exports[name].get("training", {})
        self.mean_abs = mean_ab_rows(self.paths)
        # per row, the model's own time on this process and the images it colorized (measure's timing)
        self.timings = {row: {"seconds": 0.0, "images": 0} for row in self.colorizers}
        self.lpips = (
            lpips_model
            if lpips_model is not None or "lpips" not in self.metrics
            else load_lpips(self.accelerator.device)
        )
        self.notes: list[str] = []

    # ----- which images -----

    def _images(self):
        if self.data.streaming:  # the held-out images of the shards (or all), read in shard order
            from colorization.streaming import streamed_split, streaming_shards

            wanted = None if self.config.max_images is None else self.config.skip_images + self.config.max_images
            images = streamed_split(streaming_shards(self.data), self.data, self.config.split, wanted)
        else:
            train, validation = load_splits(self.data)
            if self.config.split == "all":
                import datasets

                images = datasets.concatenate_datasets([validation, train])
            else:
                images = validation
        first = min(self.config.skip_images, len(images))
        last = len(images) if self.config.max_images is None else min(first + self.config.max_images, len(images))
        if (first, last) != (0, len(images)):
            images = images.select(range(first, last))
        if first:
            self.notes.append(f"The first {first} images are left out of every row (--skip_images).")
        with self.accelerator.main_process_first():  # the decoded cache is written once per machine
            dataset = prepare_split(images, self.data, train=False)
        hashes = split_hashes(dataset)
        keep = images_to_evaluate(hashes, self.paths, self.exports, self.config, self.notes)
        if not keep:
            raise ColorizationError(
                f"none of the {len(hashes)} images is left to evaluate: a model's exported step "
                "was chosen on all of them. Evaluate on other images, or add "
                "--keep_selection_images."
            )
        return (dataset if len(keep) == len(dataset) else Subset(dataset, keep)), hashes

    # ----- measuring -----

    def _rows(self, truth: torch.Tensor, indices: torch.Tensor, timed: bool) -> dict[str, tuple[dict, torch.Tensor]]:
        """Every row's per-image values and sRGB output for one batch."""
        metrics = [m for m in self.metrics if m != "ab_distance"] + (
            ["ab_histogram"] if "ab_distance" in self.metrics else []
        )
        rows = {}
        for row, colorizer in self.colorizers.items():
            timing = self.timings[row] if timed else None
            values, prediction, _ = measure(colorizer, truth, indices, self.config.seed, metrics, self.lpips, 1, timing)
            rows[row] = (values, prediction)
        for row, mean_ab in self.mean_abs.items():
            rows[row] = mean_ab_baseline(truth, mean_ab, metrics, self.lpips)
        rows[GRAY] = gray_baseline(truth, metrics, self.lpips)
        rows[TRUTH] = (truth_values(truth, metrics), truth)
        return rows

    def _loader(self, dataset) -> DataLoader:
        return self.accelerator.prepare(
            DataLoader(
                dataset,
                batch_size=self.config.batch_size,
                shuffle=False,
                num_workers=self.data.dataloader_num_workers,
                collate_fn=collate,
            )
        )

    def _gather(self, per_image: dict, values: dict, readable: torch.Tensor) -> None:
        gathered = self.accelerator.gather_for_metrics(
            {**{k: v.float() for k, v in values.items()}, "_readable": readable.float()}
        )
        for key, value in gathered.items():
            per_image.setdefault(key, []).append(value.cpu())

    @torch.no_grad()
    def run(self) -> dict:
        accelerator, config = self.accelerator, self.config
        dataset, hashes = self._images()
        loader = self._loader(dataset)
        per_image: dict[str, dict[str, list]] = {}
        bar = tqdm(total=len(dataset), desc="evaluating", unit="image", disable=not accelerator.is_local_main_process)
        for batch in loader:
            truth = batch_to_rgb(batch, accelerator.device)
            for row, (values, _) in self._rows(truth, batch["index"], timed=True).items():
                self._gather(per_image.setdefault(row, {}), {**values, "index": batch["index"]}, batch["readable"])
            bar.update(len(batch["index"]) * accelerator.num_processes)
        bar.close()
        values = {row: _in_order(chunks) for row, chunks in per_image.items()}
        unreadable = int((~values[TRUTH]["_readable"].astype(bool)).sum())
        if unreadable:
            self.notes.append(f"{unreadable} unreadable image(s) were left out (see the warnings above).")
        order = values[TRUTH]["index"]  # the data set's order: an image's index grows with its position
        values = _readable_only(values)
        if len(values[TRUTH]["index"]) == 0:
            raise ColorizationError("none of the images to evaluate could be read")
        values = self._leave_out_gray_truths(values)
        kept = Subset(dataset, np.searchsorted(order, values[TRUTH]["index"]).tolist())  # what every row scores
        samples = self._samples(kept) if config.num_samples > 1 else None
        grid = self._grid(kept) if accelerator.is_main_process else None
        return {
            "values": values,
            "samples": samples,
            "grid": grid,
            "num_images": len(values[TRUTH]["index"]),
            "costs": self.costs(),
            "unreadable": unreadable,
            "hashes_checked": len(hashes),
        }

    def _leave_out_gray_truths(self, values: dict) -> dict:
        """Leave out, from every row, the images whose ground truth is itself black and white: its gray row
        scores ~100 dB and would drag every paired difference to gray (unless --keep_gray_images)."""
        gray = values[TRUTH].pop("gray_truth").astype(bool)
        if not gray.any():
            return values
        count = int(gray.sum())
        if self.config.keep_gray_images:
            self.notes.append(f"{count} image(s) whose ground truth is black and white are kept (--keep_gray_images).")
            return values
        if gray.all():
            raise ColorizationError(
                f"all {count} images to evaluate are black and white: there are no colors to "
                "compare (add --keep_gray_images to score them anyway)"
            )
        self.notes.append(
            f"{count} image(s) whose ground truth is itself black and white (99th-percentile chroma "
            f"under {GRAY_TRUTH_CHROMA:g} Lab units) are left out of every row (--keep_gray_images "
            "keeps them)."
        )
        return {row: {key: value[~gray] for key, value in metrics.items()} for row, metrics in values.items()}

    def _samples(self, dataset) -> dict:
        """The mean of K samples of each stochastic row, and their diversity, on the first images."""
        count = min(self.config.num_samples_images or len(dataset), len(dataset))
        loader = self._loader(Subset(dataset, range(count)))
        per_image: dict[str, dict[str, list]] = {}
        stochastic = {row: c for row, c in self.colorizers.items() if c.stochastic}
        if not stochastic:
            return {}
        for batch in tqdm(
            loader,
            desc=f"{self.config.num_samples} samples per image",
            unit="batch",
            disable=not self.accelerator.is_local_main_process,
        ):
            truth = batch_to_rgb(batch, self.accelerator.device)
            for row, colorizer in stochastic.items():
                values, _, _ = measure(
                    colorizer,
                    truth,
                    batch["index"],
                    self.config.seed,
                    ("psnr", "ssim", *(["colorfulness"] if "colorfulness" in self.metrics else [])),
                    num_samples=self.config.num_samples,
                )
                self._gather(per_image.setdefault(row, {}), {**values, "index": batch["index"]}, batch["readable"])
        return _readable_only({row: _in_order(chunks) for row, chunks in per_image.items()})

    def _grid(self, dataset) -> dict[str, torch.Tensor]:
        """The first images, colorized again by every row with the same per-image seeds."""
        count = min(self.config.grid_images, len(dataset))
        samples = collate([dataset[i] for i in range(count)])
        truth = batch_to_rgb(samples, self.accelerator.device)
        return {row: output for row, (_, output) in self._rows(truth, samples["index"], timed=False).items()}

    def costs(self) -> dict:
        """Per model row: parameters, inference milliseconds per image (the model alone, without metrics or
        color conversion: its seconds summed over processes / the images it colorized there, padding
        included; the main pass only, one sample per image), training costs."""
        totals = torch.tensor(
            [[self.timings[row]["seconds"], self.timings[row]["images"]] for row in self.colorizers],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        totals = self.accelerator.reduce(totals, "sum").cpu().tolist()
        return {
            row: {
                "parameters": count_parameters(colorizer.network),
                "ms_per_image": 1000.0 * seconds / max(images, 1),
                "training": self.trainings[row],
            }
            for (seconds, images), (row, colorizer) in zip(totals, self.colorizers.items())
        }


def images_to_evaluate(
    hashes: list[str], paths: dict, exports: dict, config: EvaluationConfig, notes: list
) -> list[int]:
    """Refuse a model's own training images; leave out the images a model's checkpoint was chosen on (each
    said in ``notes``) -> the positions of the images to evaluate."""
    positions = {h: i for i, h in enumerate(hashes)}
    dropped: set[int] = set()
    for name, path in paths.items():
        record = read_training_images(path)
        if record is None:
            notes.append(
                f"{name} carries no record of its training images: this evaluation could not "
                "check that none of these images was trained on."
            )
            continue
        overlap = [positions[h] for h in record.get("images", []) if h in positions]
        if overlap and not config.allow_training_images:
            raise ColorizationError(
                f"{len(overlap)} of the {len(hashes)} images to evaluate are among {name}'s training images "
                f"(e.g. image #{overlap[0]}): a model is not scored on what it was trained on. Evaluate on "
                "its held-out images (--split validation with its data options), or add "
                "--allow_training_images to do it anyway (the table then says so)."
            )
        if overlap:
            notes.append(
                f"{len(overlap)} of these images were among {name}'s TRAINING images (--allow_training_images)."
            )
        selection = exports[name].get("selection", {}).get("images", [])
        chosen_on = [positions[h] for h in selection if h in positions]
        if chosen_on and not config.keep_selection_images:
            dropped.update(chosen_on)
            notes.append(
                f"{len(chosen_on)} images that {name}'s exported step was chosen on "
                "(--model_selection best) are left out of every row."
            )
        elif chosen_on:
            notes.append(f"{len(chosen_on)} of these images chose {name}'s exported step (--keep_selection_images).")
    return [i for i in range(len(hashes)) if i not in dropped]


def _in_order(chunks: dict[str, list]) -> dict[str, np.ndarray]:
    """Concatenated per-image values, sorted by image index (whatever the sharding)."""
    joined = {k: torch.cat(v).numpy() for k, v in chunks.items()}
    order = joined["index"].argsort(kind="stable")
    return {k: v[order] for k, v in joined.items()}


def _readable_only(rows: dict) -> dict:
    """Drop the images that could not be read (each row carries the same ``_readable`` flags)."""
    return {
        row: {k: v[metrics["_readable"].astype(bool)] for k, v in metrics.items() if k != "_readable"}
        for row, metrics in rows.items()
    }


# ----- statistics -----


def summarize(values: dict, seed: int, samples: Optional[dict] = None) -> dict:
    """Means and paired 95% bootstrap intervals of every row (the same resampled images for all rows).

    Per row: each per-image metric; ``psnr_vs_gray``/``ssim_vs_gray``/``lpips_vs_gray``: the mean paired
    difference to the gray row; ``colorfulness_vs_truth``: the mean paired difference of colorfulness to the
    truth's, with its interval; ``colorfulness_gap``: its absolute value (no interval: one of |difference|
    resampled would be biased away from zero); ``colorfulness_gap_per_image``: the mean per-image |difference|;
    ``ab_distance``: the sliced Wasserstein distance between the row's ab distribution over all pixels and the
    truth's (Lab units).
    """
    counts = resample_counts(len(values[TRUTH]["index"]), seed)
    truth = values[TRUTH]
    summary = {}
    for row, metrics in values.items():
        stats = {}
        for metric in ("lpips", "psnr", "ssim", "colorfulness"):
            if metric in metrics and not (row == TRUTH and metric != "colorfulness"):
                stats[metric] = _stat(metrics[metric], counts)
        if row not in (GRAY, TRUTH):
            for metric in ("psnr", "ssim", "lpips"):
                if metric in metrics:
                    stats[f"{metric}_vs_gray"] = _stat(metrics[metric] - values[GRAY][metric], counts)
        if row != TRUTH and "colorfulness" in metrics:
            ours, theirs = metrics["colorfulness"], truth["colorfulness"]
            # the signed difference carries the interval: an interval of |difference| resampled is biased away
            # from zero (a gap of 0.46 reads "[0.03, 2.11]" when the signed one is [-2.11, 1.20])
            stats["colorfulness_vs_truth"] = _stat(ours - theirs, counts)
            stats["colorfulness_gap"] = {"mean": float(abs(ours.mean() - theirs.mean())), "ci95": _NO_INTERVAL}
            stats["colorfulness_gap_per_image"] = _stat(np.abs(ours - theirs), counts)
        if row != TRUTH and "ab_histogram" in metrics:
            mine, reference = metrics["ab_histogram"].astype(np.float64), truth["ab_histogram"].astype(np.float64)
            distance = float(sliced_wasserstein(mine.sum(0), reference.sum(0)))
            # the same resamples: reweight the images' histograms by how often each was drawn
            replicates = sliced_wasserstein(counts @ mine, counts @ reference)
            stats["ab_distance"] = {"mean": distance, "ci95": percentile_interval(replicates)}
        summary[row] = stats
    if samples:
        summary["samples"] = _summarize_samples(values, samples, seed)
    return summary


def _summarize_samples(values: dict, samples: dict, seed: int) -> dict:
    """The mean-of-K table: every row on the images that have K samples, paired with gray.

    Beside the per-image means of PSNR, every row gets ``pooled_psnr``, the PSNR of its MSE pooled over these
    images, and a stochastic row also ``pooled_psnr_mean`` (its mean of K) and ``pooled_psnr_posterior`` (its
    own posterior mean, K -> infinity, from the unbiased per-image estimate error^2 - spread^2 / K, which is
    averaged before any log is taken). Comparisons of the posterior mean are made in that pooled form only, each
    with its paired interval: ``posterior_vs`` (against every deterministic model and every stochastic row
    before it), ``mean_vs`` (the mean of K, likewise) and ``posterior_gain_over_mean``."""
    indices = next(iter(samples.values()))["index"]
    positions = np.searchsorted(values[TRUTH]["index"], indices)
    counts = resample_counts(len(indices), seed)
    gray = values[GRAY]
    result = {"num_images": len(indices)}
    rows = [row for row, metrics in values.items() if row != TRUTH and "psnr" in metrics]
    # per row, the per-image MSE of its posterior mean: a deterministic row's is its prediction's
    posterior_mse = {row: mse_from_psnr(values[row]["psnr"][positions]) for row in rows}
    for row in rows:
        if "spread2" in samples.get(row, {}):
            found = samples[row]
            posterior_mse[row] = posterior_mean_mse(found["spread2"], found["error2"], found["num_samples"])
    for row in rows:
        metrics = values[row]
        one = mse_from_psnr(metrics["psnr"][positions])
        entry = {
            "psnr": _stat(metrics["psnr"][positions], counts),
            "psnr_vs_gray": _stat(metrics["psnr"][positions] - gray["psnr"][positions], counts),
            "pooled_psnr": pooled_psnr(one, counts),
        }
        crps = _colorfulness_crps(values, samples, row, positions)
        if crps is not None:
            entry["colorfulness_crps"] = _stat(crps, counts)
        if row in samples:
            mean_of_k = samples[row]
            entry.update(
                psnr_mean=_stat(mean_of_k["psnr_mean"], counts),
                ssim_mean=_stat(mean_of_k["ssim_mean"], counts),
                psnr_mean_vs_gray=_stat(mean_of_k["psnr_mean"] - gray["psnr"][positions], counts),
                pooled_psnr_mean=pooled_psnr(mse_from_psnr(mean_of_k["psnr_mean"]), counts),
                diversity=_stat(mean_of_k["diversity"], counts),
            )
        if row in samples and "spread2" in samples[row]:
            regressors = [r for r in values if r not in (GRAY, TRUTH, *samples) and not r.startswith(MEAN_AB)]
            # against every deterministic model and every stochastic row listed before this one
            others = regressors + [r for r in samples if list(samples).index(r) < list(samples).index(row)]
            entry.update(_calibration(samples[row], {other: posterior_mse[other] for other in others}, counts))
            if crps is not None:
                entry["colorfulness_crps_vs"] = {
                    other: _stat(crps - theirs, counts)
                    for other in others
                    if (theirs := _colorfulness_crps(values, samples, other, positions)) is not None
                }
        result[row] = entry
    return result


def _colorfulness_crps(values: dict, samples: dict, row: str, positions: np.ndarray) -> Optional[np.ndarray]:
    """A row's per-image colorfulness CRPS on the images with K samples: a stochastic row's from its K samples, a
    deterministic row's its per-image gap |colorfulness - the truth's| (the CRPS of a single value); None
    without colorfulness."""
    if row in samples:
        return samples[row].get("colorfulness_crps")
    if "colorfulness" not in values[row] or "colorfulness" not in values[TRUTH]:
        return None
    return np.abs(values[row]["colorfulness"][positions] - values[TRUTH]["colorfulness"][positions])


def _calibration(mean_of_k: dict, others: dict, counts: np.ndarray) -> dict:
    """A stochastic row's spread-skill ratio and its own posterior mean (K -> infinity) in the MSE domain: its
    pooled PSNR, and the pooled dB it gains over each of ``others`` (row -> the per-image MSE of that row's
    posterior mean: a deterministic row's is its prediction's) and over its own mean of K, and its mean of K's
    gain over each of ``others``."""
    spread2, error2, k = mean_of_k["spread2"], mean_of_k["error2"], mean_of_k["num_samples"]
    posterior = posterior_mean_mse(spread2, error2, k)
    mean_mse = mse_from_psnr(mean_of_k["psnr_mean"])
    return {
        "spread_skill": spread_skill_ratio(spread2, error2, float(k[0]), counts),
        "pooled_psnr_posterior": pooled_psnr(posterior, counts),
        "posterior_gain_over_mean": pooled_gain(posterior, mean_mse, counts),
        "posterior_vs": {other: pooled_gain(posterior, theirs, counts) for other, theirs in others.items()},
        "mean_vs": {other: pooled_gain(mean_mse, theirs, counts) for other, theirs in others.items()},
    }


_NO_INTERVAL = (float("nan"), float("nan"))


def _stat(values: np.ndarray, counts: np.ndarray) -> dict:
    return {"mean": float(np.mean(values)), "ci95": bootstrap_mean(values, counts)}


def _versions() -> dict:
    import sys

    import accelerate
    import diffusers
    import torchmetrics

    return {
        "colorization": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "torchmetrics": torchmetrics.__version__,
        "python": sys.version.split()[0],
    }


def evaluate(
    checkpoints: list[str],
    names: Optional[list[str]],
    config: EvaluationConfig,
    data: DataConfig,
    accelerator: Optional[Accelerator] = None,
    lpips_model=None,
) -> Optional[dict]:
    names = names or [os.path.basename(os.path.normpath(p)) for p in checkpoints]
    report.check_output_dir(config.output_dir, config.overwrite_output_dir)  # before an hour of measuring
    evaluator = Evaluator(checkpoints, names, config, data, accelerator, lpips_model)
    with full_fp32():  # on a GPU too: cuDNN convolutions would use TF32 by default
        result = evaluator.run()
        precision = fp32_precision(evaluator.accelerator.device)
    if not evaluator.accelerator.is_main_process:
        return None
    summary = summarize(result["values"], config.seed, result["samples"])
    sampling = {
        row: f"{c.describe_sampling()}, {c.describe_precision()}, seed per image"
        for row, c in evaluator.colorizers.items()
        if c.stochastic
    }
    device = evaluator.accelerator.device
    settings = {
        "num_images": result["num_images"],
        "resolution": data.resolution,
        "split": config.split,
        "data": describe_source(data, path=False),  # as an export records its data: the folder's name, no path
        "metrics": evaluator.metrics,
        "seed": config.seed,
        "sampling": sampling or "none (no stochastic model)",
        "num_samples": config.num_samples,
        "notes": evaluator.notes,
        "unreadable_images": result["unreadable"],
        "checkpoints": evaluator.checkpoints,
        "hub_models": evaluator.origins,  # repo id, revision and the commit that was evaluated
        "model_types": {name: c.model_type for name, c in evaluator.colorizers.items()},
        "rows": {  # which model (--names), guidance scale, (diffusion) sampler and inference precision each row is
            row: {
                "model": evaluator.models_of_rows[row],
                "guidance_scale": evaluator.guidance_of_rows[row],
                **({"sampler": colorizer.sampler} if hasattr(colorizer, "sampler") else {}),
                "precision": colorizer.precision,
            }
            for row, colorizer in evaluator.colorizers.items()
        },
        "model_resolutions": {name: c.resolution for name, c in evaluator.colorizers.items()},
        "selections": {
            name: export["selection"] for name, export in evaluator.exports.items() if "selection" in export
        },
        "evaluation": asdict(config),
        "data_config": asdict(data),
        "versions": _versions(),
        "costs": result["costs"],
        "hardware": describe_hardware(device, evaluator.accelerator.num_processes),
        "fp32_precision": precision,  # of the models' matrix products and convolutions
    }
    table = report.write_outputs(result, summary, settings, config.output_dir, config.overwrite_output_dir)
    print(table, flush=True)
    return {"summary": summary, "settings": settings, "values": result["values"], "samples": result["samples"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="Compare colorization models on the same images.", formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        type=model_reference,
        help="exported models: folders (a training output_dir) or Hugging Face Hub ids (owner/name)",
    )
    parser.add_argument("--names", nargs="+", help="a name per checkpoint (default: folder names)")
    add_dataclass_arguments(parser, EvaluationConfig)
    add_dataclass_arguments(parser, DataConfig)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    config, data = build_dataclass(EvaluationConfig, args), build_dataclass(DataConfig, args)
    if args.names is not None and len(args.names) != len(args.checkpoints):
        parser.error(f"{len(args.names)} --names for {len(args.checkpoints)} --checkpoints")
    if data.dataset_name and data.train_data_dir:
        parser.error("give either --dataset_name or --train_data_dir, not both")
    return args.checkpoints, args.names, config, data


def run(argv=None) -> None:
    checkpoints, names, config, data = parse_args(argv)
    evaluate(checkpoints, names, config, data)


def main(argv=None) -> None:
    cli_entry_point(run)(argv)
