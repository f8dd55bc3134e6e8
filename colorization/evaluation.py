"""One honest comparison: every model, the gray baseline and the ground truth on the same images.

All metrics are computed on sRGB in [0, 1] at the evaluation resolution. Ground truth and input go
through the same resize and crop; each model colorizes at its own training resolution and its ab is
brought to the evaluation resolution and joined with the input's own L, as at inference. Each value is
reported as the mean over images with a 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from colorization import color
from colorization.config import add_dataclass_arguments, build_dataclass, field
from colorization.data import DataConfig, ColorizationImages, collate, describe_source, load_splits
from colorization.errors import ColorizationError, cli_entry_point
from colorization.hardware import count_parameters, describe_hardware, use_all_cores
from colorization.inference import load_colorizer, read_export_config
from colorization.metrics import psnr_per_image, ssim_per_image
from colorization.pretrained import load_pretrained

METRICS = ("lpips", "psnr", "ssim", "colorfulness")
HIGHER_IS_BETTER = {"lpips": False, "psnr": True, "ssim": True, "colorfulness": None, "colorfulness_gap": False}
GRAY, TRUTH = "Gray (ab = 0)", "Ground truth"
_BOOTSTRAP_SAMPLES = 1000


@dataclass
class EvaluationConfig:
    split: str = field("validation", "validation: the held-out images training used; all: every image (e.g. a "
                                     "separate folder of test photos).", choices=("validation", "all"))
    max_images: Optional[int] = field(None, "Evaluate only the first N images.")
    batch_size: int = field(16, "Images per batch and process.")
    seed: int = field(0, "Seed of the diffusion model's noise (per image) and of the bootstrap.")
    metrics: str = field("lpips,psnr,ssim,colorfulness", "Comma-separated metrics.")
    num_inference_steps: Optional[int] = field(None, "Diffusion sampling steps (default: the model's, 50).")
    scheduler: Optional[str] = field(None, "Diffusion sampler: ddpm, ddim or dpm (default: the model's, ddim).")
    samplers: Optional[str] = field(None, "Compare diffusion samplers: comma-separated SCHEDULER:STEPS (e.g. "
                                          "ddim:50,dpm:20); each diffusion model gets a row per sampler. "
                                          "Overrides --scheduler and --num_inference_steps.")
    output_dir: str = field("results/evaluation", "Where the table, per-image values and grid are written.")
    grid_images: int = field(8, "Images (rows) in the comparison grid.")


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk (2003) colorfulness of each image (sRGB in [0, 1], computed on 0..255)."""
    rgb = rgb.float() * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    spread = torch.sqrt(rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.flatten(1).mean(dim=1) ** 2 + yb.flatten(1).mean(dim=1) ** 2)
    return spread + 0.3 * mean


def load_lpips(device: torch.device):
    """LPIPS (AlexNet, v0.1). Its AlexNet weights come from torchvision's download cache: offline and not
    cached, stop at once instead of falling back to a random network."""
    import lpips
    from torchvision.models import AlexNet_Weights

    model = load_pretrained(lambda: lpips.LPIPS(net="alex", version="0.1", verbose=False),
                            AlexNet_Weights.IMAGENET1K_V1.url, "ImageNet AlexNet weights that LPIPS needs",
                            "run without LPIPS: --metrics psnr,ssim,colorfulness")
    return model.eval().requires_grad_(False).to(device)


def bootstrap_interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (_BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


class Evaluator:
    def __init__(self, checkpoints: list[str], names: list[str], config: EvaluationConfig, data: DataConfig,
                 accelerator: Optional[Accelerator] = None, lpips_model=None):
        self.config, self.data = config, data
        self.metrics = [m.strip() for m in config.metrics.split(",") if m.strip()]
        unknown = set(self.metrics) - set(METRICS)
        if unknown or not self.metrics:
            raise ColorizationError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
        if len(names) != len(checkpoints):
            raise ColorizationError(f"{len(names)} --names for {len(checkpoints)} --checkpoints")
        if len(set(names)) != len(names) or {GRAY, TRUTH} & set(names):
            raise ColorizationError(f"model names must be distinct and not {GRAY!r} or {TRUTH!r}")
        exports = [read_export_config(path) for path in checkpoints]  # fail before any work on a non-model
        self.accelerator = accelerator or Accelerator()
        use_all_cores(self.accelerator)
        self.colorizers, self.checkpoints, self.trainings = {}, {}, {}
        for name, path, export in zip(names, checkpoints, exports):
            for sampling in self._samplings(export["model_type"]):
                colorizer = load_colorizer(path, self.accelerator.device, seed=None, **sampling)
                row = f"{name} ({colorizer.describe_sampling()})" if config.samplers and sampling else name
                if row in self.colorizers:
                    raise ColorizationError(f"two rows would be named {row!r}: give distinct --names")
                self.colorizers[row], self.checkpoints[row] = colorizer, path
                self.trainings[row] = export.get("training", {})
        self.seconds = {row: 0.0 for row in self.colorizers}  # inference time on this process
        self.lpips = lpips_model if lpips_model is not None or "lpips" not in self.metrics \
            else load_lpips(self.accelerator.device)

    def _samplings(self, model_type: str) -> list[dict]:
        """The sampling settings to evaluate a model with: one per --samplers entry for diffusion."""
        if model_type != "diffusion":
            return [{}]
        if not self.config.samplers:
            sampling = {"scheduler": self.config.scheduler, "num_inference_steps": self.config.num_inference_steps}
            return [{k: v for k, v in sampling.items() if v is not None}]
        samplings = []
        for entry in self.config.samplers.split(","):
            scheduler, _, steps = entry.strip().partition(":")
            if not steps.isdigit() or int(steps) < 1:
                raise ColorizationError(f"--samplers entry {entry!r} is not SCHEDULER:STEPS (e.g. ddim:50)")
            samplings.append({"scheduler": scheduler, "num_inference_steps": int(steps)})
        return samplings

    def _images(self) -> ColorizationImages:
        train, validation = load_splits(self.data)
        if self.config.split == "all":
            import datasets

            images = datasets.concatenate_datasets([validation, train])
        else:
            images = validation
        if self.config.max_images is not None:
            images = images.select(range(min(self.config.max_images, len(images))))
        return ColorizationImages(images, self.data.image_column, self.data.resolution, train=False)

    def _colorize(self, name: str, lightness: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        colorizer = self.colorizers[name]
        if colorizer.model_type == "diffusion":  # noise seeded per image: the same with any batching or sharding
            colorizer.generator = [torch.Generator(colorizer.device).manual_seed(self.config.seed * 1_000_003 + int(i))
                                   for i in indices]
        ab = colorizer.colorize_lightness(lightness)
        return color.normalized_lab_to_rgb(lightness, ab)

    def _measure(self, prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {}
        if "lpips" in self.metrics:
            values["lpips"] = self.lpips(prediction, truth, normalize=True).flatten()  # [0, 1] -> [-1, 1] inside
        if "psnr" in self.metrics:
            values["psnr"] = psnr_per_image(prediction, truth)
        if "ssim" in self.metrics:
            values["ssim"] = ssim_per_image(prediction, truth)
        if "colorfulness" in self.metrics:
            values["colorfulness"] = colorfulness(prediction)
            values["colorfulness_gap"] = (values["colorfulness"] - colorfulness(truth)).abs()
        return values

    def _outputs(self, truth: torch.Tensor, indices: torch.Tensor, timed: bool = False) -> dict[str, torch.Tensor]:
        lightness, _ = color.rgb_to_normalized_lab(truth)
        outputs = {}
        for name in self.colorizers:
            started = self._now()
            outputs[name] = self._colorize(name, lightness, indices)
            if timed:
                self.seconds[name] += self._now() - started
        outputs[GRAY] = color.gray_rgb(lightness)
        outputs[TRUTH] = truth
        return outputs

    def _now(self) -> float:
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def costs(self, num_images: int) -> dict:
        """Per model row: parameters, inference milliseconds per image (mean over processes), training costs."""
        seconds = torch.tensor([self.seconds[row] for row in self.colorizers], dtype=torch.float64,
                               device=self.accelerator.device)
        seconds = self.accelerator.reduce(seconds, "sum").cpu().tolist()
        return {row: {"parameters": count_parameters(colorizer.network),
                      "ms_per_image": 1000.0 * seconds[i] / max(num_images, 1),
                      "training": self.trainings[row]}
                for i, (row, colorizer) in enumerate(self.colorizers.items())}

    @torch.no_grad()
    def run(self) -> dict:
        accelerator, config = self.accelerator, self.config
        dataset = self._images()
        loader = accelerator.prepare(DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                                                num_workers=self.data.dataloader_num_workers, collate_fn=collate))
        per_image: dict[str, dict[str, list]] = {row: {} for row in [*self.colorizers, GRAY, TRUTH]}
        indices = []
        bar = tqdm(total=len(dataset), desc="evaluating", unit="image", disable=not accelerator.is_local_main_process)
        for batch in loader:
            truth = batch["rgb"].float()
            for row, image in self._outputs(truth, batch["index"], timed=True).items():
                for key, value in accelerator.gather_for_metrics(self._measure(image, truth)).items():
                    per_image[row].setdefault(key, []).append(value.float().cpu())
            indices.append(accelerator.gather_for_metrics(batch["index"]).cpu())
            bar.update(len(indices[-1]))
        bar.close()
        index = torch.cat(indices)
        order = index.argsort()  # back to the data set's order, whatever the sharding
        values = {row: {k: torch.cat(v)[order].numpy() for k, v in metrics.items()} for row, metrics in per_image.items()}
        grid = None
        if accelerator.is_main_process:  # the first images, colorized again with the same per-image seeds
            count = min(config.grid_images, len(dataset))
            samples = [dataset[i] for i in range(count)]
            grid = self._outputs(torch.stack([s["rgb"] for s in samples]).to(accelerator.device),
                                 torch.tensor([s["index"] for s in samples]))
        return {"values": values, "index": index[order].numpy(), "grid": grid, "num_images": len(index),
                "costs": self.costs(len(index))}


def summarize(values: dict, seed: int) -> dict:
    """Per row and metric: mean and 95% bootstrap interval."""
    return {row: {metric: {"mean": float(v.mean()), "ci95": bootstrap_interval(v, seed)} for metric, v in metrics.items()}
            for row, metrics in values.items()}


_COLUMN_TITLES = {"lpips": "LPIPS ↓", "psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "colorfulness": "Colorfulness",
                  "colorfulness_gap": "Colorfulness gap ↓"}


def _format(stat: dict, digits: int) -> str:
    low, high = stat["ci95"]
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if not np.isnan(low) else ""
    return f"{stat['mean']:.{digits}f}{interval}"


def _describe_sampling(sampling) -> str:
    if not isinstance(sampling, dict):
        return str(sampling)
    return "; ".join(f"{name}: {s['scheduler']}, {s['num_inference_steps']} steps, seed per image"
                     for name, s in sampling.items())


def _count(value: int) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e5 else f"{value / 1e3:.1f}k" if value >= 1e3 else str(value)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


_COST_TITLES = ("Params", "Train images", "Train img/s", "Train time", "Inference ms/image")


def cost_cells(cost: Optional[dict]) -> list[str]:
    """Parameters of the inference network; images seen in training, training images/s (training steps
    only) and training wall-clock (with validation and checkpoints) from the run; measured inference time."""
    if cost is None:
        return ["—"] * len(_COST_TITLES)
    training = cost.get("training") or {}
    rate = training.get("images_per_second")
    return [_count(cost["parameters"]),
            _count(training["images_seen"]) if "images_seen" in training else "?",
            f"{rate:.1f}" if rate else "?",
            _duration(training["wall_seconds"]) if "wall_seconds" in training else "?",
            f"{cost['ms_per_image']:.1f}"]


def _describe_hardware(settings: dict) -> str:
    costs = settings.get("costs", {})
    trained = {}
    for row, cost in costs.items():
        training = cost.get("training") or {}
        where = training.get("hardware", "unknown hardware")
        if training.get("mixed_precision"):
            where += f", mixed precision {training['mixed_precision']}"
        trained.setdefault(where, []).append(row)
    parts = [f"{', '.join(rows)} trained on {where}" for where, rows in trained.items()]
    parts.append(f"inference measured on {settings.get('hardware', 'unknown hardware')}, batch "
                 f"{settings['evaluation']['batch_size']}, fp32, at each model's own resolution")
    return "; ".join(parts)


def markdown_table(summary: dict, settings: dict) -> str:
    columns = [m for m in _COLUMN_TITLES if any(m in row for row in summary.values())]
    digits = {"lpips": 4, "psnr": 2, "ssim": 4, "colorfulness": 2, "colorfulness_gap": 2}
    costs = settings.get("costs")
    cost_titles = list(_COST_TITLES) if costs else []
    lines = ["| Model | " + " | ".join([_COLUMN_TITLES[c] for c in columns] + cost_titles) + " |",
             "|---|" + "---|" * (len(columns) + len(cost_titles))]
    for row, metrics in summary.items():
        cells = [_format(metrics[c], digits[c]) if c in metrics and not (row == TRUTH and c != "colorfulness")
                 else "—" for c in columns]
        if costs:
            cells += cost_cells(costs.get(row))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean [95% bootstrap interval] over {settings['num_images']} images ({settings['data']}, "
                 f"split {settings['split']}) at {settings['resolution']}x{settings['resolution']}; "
                 f"diffusion sampling: {_describe_sampling(settings['sampling'])}.")
    if costs:
        lines.append(f"Costs: {_describe_hardware(settings)}. Train img/s counts training steps only; train time "
                     "is the run's wall-clock with validation and checkpoints (start-up excluded).")
    return "\n".join(lines)


def write_outputs(result: dict, summary: dict, settings: dict, output_dir: str) -> str:
    """Write every file into a temporary folder, then move it into place: a failure leaves no partial files."""
    from torchvision.utils import make_grid, save_image

    parent = os.path.dirname(os.path.abspath(output_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".evaluation-", dir=parent)
    try:
        table = markdown_table(summary, settings)
        with open(os.path.join(staging, "table.md"), "w") as handle:
            handle.write(table + "\n")
        metrics = sorted({m for row in summary.values() for m in row})
        cost_keys = ("parameters", "ms_per_image")
        training_keys = ("images_seen", "images_per_second", "train_seconds", "wall_seconds", "hardware")
        costs = settings.get("costs", {})
        with open(os.path.join(staging, "table.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["model"] + [f"{m}_{part}" for m in metrics for part in ("mean", "ci95_low", "ci95_high")]
                            + list(cost_keys) + [f"train_{k}" for k in training_keys])
            for row, stats in summary.items():
                cost = costs.get(row, {})
                training = cost.get("training") or {}
                writer.writerow([row] + [x for m in metrics for x in ((stats[m]["mean"], *stats[m]["ci95"])
                                                                       if m in stats else ("", "", ""))]
                                + [cost.get(k, "") for k in cost_keys] + [training.get(k, "") for k in training_keys])
        with open(os.path.join(staging, "per_image.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_index", "model"] + metrics)
            for position, image_index in enumerate(result["index"]):
                for row, values in result["values"].items():
                    writer.writerow([int(image_index), row] + [float(values[m][position]) if m in values else ""
                                                               for m in metrics])
        with open(os.path.join(staging, "results.json"), "w") as handle:
            json.dump({"settings": settings, "summary": summary}, handle, indent=2)
        # rows = images; columns = gray input, each model, ground truth
        order = [GRAY] + [r for r in result["grid"] if r not in (GRAY, TRUTH)] + [TRUTH]
        grid = torch.stack([result["grid"][row].cpu() for row in order], dim=1).flatten(0, 1)
        save_image(make_grid(grid, nrow=len(order), padding=2), os.path.join(staging, "comparison.png"))
        with open(os.path.join(staging, "comparison_columns.txt"), "w") as handle:
            handle.write(" | ".join(order) + "\n")
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
        return table
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _versions() -> dict:
    import accelerate
    import diffusers
    import torchmetrics

    from colorization import __version__

    return {"colorization": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__, "torchmetrics": torchmetrics.__version__, "python": sys.version.split()[0]}


def evaluate(checkpoints: list[str], names: Optional[list[str]], config: EvaluationConfig, data: DataConfig,
             accelerator: Optional[Accelerator] = None, lpips_model=None) -> Optional[dict]:
    names = names or [os.path.basename(os.path.normpath(p)) for p in checkpoints]
    evaluator = Evaluator(checkpoints, names, config, data, accelerator, lpips_model)
    result = evaluator.run()
    if not evaluator.accelerator.is_main_process:
        return None
    summary = summarize(result["values"], config.seed)
    sampling = {name: {"scheduler": type(c.pipeline.scheduler).__name__, "num_inference_steps": c.num_inference_steps}
                for name, c in evaluator.colorizers.items() if c.model_type == "diffusion"}
    device = evaluator.accelerator.device
    settings = {"num_images": result["num_images"], "resolution": data.resolution, "split": config.split,
                "data": describe_source(data), "metrics": evaluator.metrics, "seed": config.seed,
                "sampling": sampling or "none (no diffusion model)",
                "checkpoints": {name: os.path.abspath(path) for name, path in evaluator.checkpoints.items()},
                "model_types": {name: c.model_type for name, c in evaluator.colorizers.items()},
                "model_resolutions": {name: c.resolution for name, c in evaluator.colorizers.items()},
                "evaluation": asdict(config), "data_config": asdict(data), "versions": _versions(),
                "costs": result["costs"], "hardware": describe_hardware(device, evaluator.accelerator.num_processes)}
    table = write_outputs(result, summary, settings, config.output_dir)
    print(table, flush=True)
    return {"summary": summary, "settings": settings, "values": result["values"], "index": result["index"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Compare colorization models on the same images.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="exported model folders (training output_dir)")
    parser.add_argument("--names", nargs="+", help="a name per checkpoint (default: folder names)")
    add_dataclass_arguments(parser, EvaluationConfig)
    add_dataclass_arguments(parser, DataConfig)
    args = parser.parse_args(argv)
    return args.checkpoints, args.names, build_dataclass(EvaluationConfig, args), build_dataclass(DataConfig, args)


def run(argv=None) -> None:
    checkpoints, names, config, data = parse_args(argv)
    evaluate(checkpoints, names, config, data)


def main(argv=None) -> None:
    cli_entry_point(run)(argv)
