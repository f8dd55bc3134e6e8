"""Validation during training and the choice of the exported step (``--model_selection best``).

Validation measures the task's exported kind of :class:`~colorization.colorizer.Colorizer` over the live
networks through :func:`colorization.measure.measure`, the function ``evaluate.py`` uses, so a number watched
in TensorBoard means what the published table means.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Callable, Optional

import torch

from colorization import color
from colorization.checkpoints import PARTIAL_SUFFIX, REPLACED_SUFFIX
from colorization.colorizer import CONFIG_NAME, Colorizer
from colorization.data import batch_to_rgb, split_hashes
from colorization.files import read_json_if_present, swap_in_folder, write_json
from colorization.measure import gray_baseline, measure, truth_values
from colorization.metrics import is_gray_truth

SELECTED_DIR = "selected_model"
VALIDATION_SEED = 0  # the noise of validation samples: evaluate.py's default --seed, seeded per image alike
VALIDATION_METRICS = ("psnr", "ssim", "colorfulness")
MIN_VALIDATIONS_FOR_SELECTION = 10
SELECTION_PSNR_TOLERANCE_DB = 0.3
SELECTION_RULE = (
    f"the last validated step whose PSNR is within {SELECTION_PSNR_TOLERANCE_DB} dB of the best "
    "validation PSNR so far and whose colorfulness is not above the ground truth's"
)


def selection_step(chosen: Optional[dict], best_psnr: Optional[float], metrics: dict) -> tuple[float, bool, bool]:
    """One validation under --model_selection best -> (the best PSNR so far, whether this step qualifies, whether
    it replaces the ``chosen`` one). See Validator.select."""
    best = max(best_psnr if best_psnr is not None else -math.inf, metrics["psnr"])
    qualified = (
        metrics["psnr"] >= best - SELECTION_PSNR_TOLERANCE_DB
        and metrics["colorfulness"] <= metrics["colorfulness_truth"]
    )
    take = qualified or chosen is None or (not chosen["qualified"] and metrics["psnr"] > chosen["psnr"])
    return best, qualified, take


def selection_cadence(validation_steps: int, first: int, last: int) -> int:
    """The validation cadence under --model_selection best: at least MIN_VALIDATIONS_FOR_SELECTION validations
    among the selectable steps ``first`` to ``last``."""
    if (last - first + 1) // validation_steps >= MIN_VALIDATIONS_FOR_SELECTION:
        return validation_steps
    return max(1, (last - first + 1) // MIN_VALIDATIONS_FOR_SELECTION)


def format_metrics(metrics: dict, step: int, output_dir: str) -> str:
    lines = [f"Validation after {step} steps on {metrics['num_images']} images (model exported to {output_dir}):"]
    if "validation_at_last_step" in metrics:
        lines = [
            f"Exported the model of step {metrics['step']} of {step} to {output_dir} (--model_selection best: "
            f"{metrics['rule']}). Its validation on {metrics['num_images']} images:"
        ]
    lines += [
        f"  {'':<22}{'PSNR (dB)':>10}{'SSIM':>9}{'Colorfulness':>14}",
        f"  {'model':<22}{metrics['psnr']:>10.2f}{metrics['ssim']:>9.4f}{metrics['colorfulness']:>14.2f}",
        f"  {'gray (ab = 0)':<22}{metrics['psnr_gray']:>10.2f}{metrics['ssim_gray']:>9.4f}{0.0:>14.2f}",
        f"  {'ground truth':<22}{'':>10}{'':>9}{metrics['colorfulness_truth']:>14.2f}",
    ]
    return "\n".join(lines)


class Validator:
    """Validates the live networks on the first held-out images and, under --model_selection best, keeps the
    chosen step's export in ``<output_dir>/selected_model``."""

    def __init__(
        self,
        accelerator,
        task,
        config,
        progress,
        tracker,
        validation_set,
        validation_loader,
        export: Callable[[str, dict], None],
    ):
        self.accelerator, self.task, self.config, self.progress = accelerator, task, config, progress
        self.tracker = tracker
        self.validation_set, self.loader = validation_set, validation_loader
        self.export = export  # writes an export of the live networks with these metrics into a folder
        self.max_steps = 0
        self.reference: Optional[dict] = None  # gray baseline and truth's colorfulness on the validation images

    @property
    def selected_dir(self) -> str:
        return os.path.join(self.config.output_dir, SELECTED_DIR)

    @torch.no_grad()
    def validate(self) -> dict:
        task = self.task
        self._broadcast_buffers()
        for model in task.models.values():
            model.eval()
        try:
            with task.evaluation_weights():
                metrics, first_batch = self._measure(task.colorizer())
        finally:
            for model in task.models.values():
                model.train()
        if self.config.model_selection == "best":
            self.select(metrics)
            metrics["selected_step"] = self.progress.selection["step"] if self.progress.selection else float("nan")
        self._log_grid(*first_batch)
        step = self.progress.global_step
        self.tracker.track(
            {f"validation/{key}": value for key, value in metrics.items() if not math.isnan(value)}, step
        )
        self.tracker.log(
            f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "num_images")
        )
        return metrics

    def _broadcast_buffers(self) -> None:
        """Give every process rank 0's buffers (batch-norm statistics), as DDP does at each training forward:
        after the last step each process holds statistics of its own batches. Validation then judges, on
        every process, the model that checkpoints and the export save (rank 0's)."""
        if self.accelerator.num_processes == 1:
            return
        for name in self.task.models:
            for buffer in self.task.unwrapped(name).buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def _measure(self, colorizer: Colorizer):
        accelerator, task = self.accelerator, self.task
        per_image: dict[str, list] = {}
        first_batch = None
        for batch in self.loader:
            truth = batch_to_rgb(batch, accelerator.device)
            values, prediction, predicted_ab = measure(
                colorizer, truth, batch["index"], VALIDATION_SEED, VALIDATION_METRICS
            )
            lightness, ab = color.rgb_to_normalized_lab(truth)
            values.update(task.validation_losses(lightness, ab, predicted_ab))
            values["gray_truth"] = is_gray_truth(truth).float()  # left out, as evaluate.py leaves them out
            if self.reference is None:
                gray, _ = gray_baseline(truth, ("psnr", "ssim"))
                values.update({f"{k}_gray": v for k, v in gray.items()})
                values["colorfulness_truth"] = truth_values(truth, ("colorfulness",))["colorfulness"]
            for key, value in accelerator.gather_for_metrics({k: v.float() for k, v in values.items()}).items():
                per_image.setdefault(key, []).append(value.cpu())
            if first_batch is None:
                first_batch = (truth, lightness, prediction)
        gray = torch.cat(per_image.pop("gray_truth")).bool()
        kept = ~gray if not gray.all() else torch.ones_like(gray)  # all black and white: nothing to leave out for
        metrics = {key: torch.cat(chunks)[kept].mean().item() for key, chunks in per_image.items()}
        if self.reference is None:
            self.reference = {k: metrics[k] for k in ("psnr_gray", "ssim_gray", "colorfulness_truth")}
        metrics.update(self.reference)
        metrics["num_images"] = int(kept.sum())
        return metrics, first_batch

    def select(self, metrics: dict) -> None:
        """--model_selection best: the last validated (selectable) step that is still faithful, PSNR within
        SELECTION_PSNR_TOLERANCE_DB of the best so far (validation numbers move that much between neighbouring
        steps), and does not paint more color than the photos have; if no step qualifies, the best PSNR.

        Decided online, at each validation: a step that qualifies replaces the choice, and is exported at once."""
        step, progress = self.progress.global_step, self.progress
        first, last = self.task.selectable_steps(self.max_steps)
        if not first <= step <= last:
            return
        best, qualified, take = selection_step(progress.selection, progress.best_validation_psnr, metrics)
        progress.best_validation_psnr = best
        if not take:
            return
        progress.selection = {
            **metrics,
            "step": step,
            "qualified": qualified,
            "best_psnr_so_far": best,
            "rule": SELECTION_RULE + ("" if qualified else " (no step qualified: best PSNR overall)"),
            # evaluate.py leaves these out: a model is not scored on what chose it
            "images": split_hashes(self.validation_set)[: len(self.loader.dataset)],
        }
        if self.accelerator.is_main_process:
            # exported beside the previous choice and swapped in: a crash leaves one whole export or none
            folder = self.selected_dir
            partial = folder + PARTIAL_SUFFIX
            shutil.rmtree(partial, ignore_errors=True)
            self.export(partial, metrics)
            swap_in_folder(partial, folder, folder + REPLACED_SUFFIX)
        self.accelerator.wait_for_everyone()

    def selected_export_ready(self) -> bool:
        """Whether selected_model/ holds the export of the step that the selection chose (and nothing else)."""
        if self.config.model_selection != "best" or not self.progress.selection:
            return False
        try:
            exported = read_json_if_present(os.path.join(self.selected_dir, CONFIG_NAME))
        except (OSError, ValueError):
            return False
        return bool(exported) and (exported.get("selection") or {}).get("step") == self.progress.selection["step"]

    def export_final(self, metrics: dict, training_costs: Callable[[], dict]) -> dict:
        """The run's export into --output_dir: the chosen step's under --model_selection best, else the last
        step's -> the exported model's metrics."""
        accelerator, config, progress = self.accelerator, self.config, self.progress
        use_selected = self.selected_export_ready()  # the same answer on every process: one shared folder
        accelerator.wait_for_everyone()
        if config.model_selection == "best" and progress.selection and not use_selected:
            # The chosen step's weights are gone (a crash while they were exported): export the weights there
            # are, under their own step's label and metrics, never under the chosen step's.
            self.tracker.log(
                f"warning: the export of the chosen step {progress.selection['step']} "
                f"({self.selected_dir}) is missing or incomplete; exporting the last step "
                f"({progress.global_step}) instead"
            )
            progress.selection = None
        if use_selected:
            chosen = {k: v for k, v in progress.selection.items() if k != "images"}
            metrics = {**chosen, "validation_at_last_step": metrics}
        if accelerator.is_main_process:
            if use_selected:  # the chosen step's export, with the whole run's costs
                shutil.copytree(self.selected_dir, config.output_dir, dirs_exist_ok=True)
                shutil.rmtree(self.selected_dir)
                exported = os.path.join(config.output_dir, CONFIG_NAME)
                record = read_json_if_present(exported)
                record["training"].update(training_costs(), final_step=progress.global_step)
                write_json(exported, record)
            else:
                self.export(config.output_dir, metrics)
                shutil.rmtree(self.selected_dir, ignore_errors=True)  # a stale choice, if any, is not left to mislead
        accelerator.wait_for_everyone()
        return metrics

    def _log_grid(self, truth: torch.Tensor, lightness: torch.Tensor, prediction: torch.Tensor) -> None:
        """Rows of gray input | prediction | ground truth, for the first validation images of process 0."""
        if not self.accelerator.is_main_process:
            return
        from torchvision.utils import make_grid, save_image

        count = min(self.config.num_grid_images, truth.shape[0])
        columns = [color.gray_rgb(lightness[:count]), prediction[:count], truth[:count].float()]
        grid = make_grid(torch.stack(columns, dim=1).flatten(0, 1).cpu(), nrow=3, padding=2)
        folder = os.path.join(self.config.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        save_image(grid, os.path.join(folder, f"step_{self.progress.global_step:07d}.png"))
        self.tracker.track_image("validation/gray_prediction_truth", grid, self.progress.global_step)
