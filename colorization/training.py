"""The one training harness shared by every model, built on Hugging Face Accelerate.

A model family supplies a :class:`TrainingTask`: its networks and optimizers (by name: the GAN has two),
one training step, a prediction for validation, and its export. Everything else lives here once: flags,
data loaders, mixed precision, gradient accumulation, several processes, learning-rate schedules,
TensorBoard, validation metrics and image grids, checkpoints, exact resume, and export.

Exact resume: ``save_state`` stores models, optimizers, schedulers, every process's RNG states and a
:class:`TrainingProgress` (step, epoch, position in the epoch). The data order and the flips are functions of
(seed, epoch, index) and the data loaders own their generators, so a run resumed at step k sees the same
batches and random numbers as one that never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from colorization import color
from colorization.config import add_dataclass_arguments, build_dataclass, field
from colorization.data import DataConfig, EpochShuffleSampler, build_datasets, collate, describe_source
from colorization.errors import ColorizationError, cli_entry_point
from colorization.hardware import count_parameters, describe_hardware, use_all_cores
from colorization.inference import save_exported_model
from colorization.metrics import psnr_per_image, ssim_per_image

logger = logging.getLogger("colorization")

CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG_NAME = "run_config.json"
METRICS_NAME = "validation_metrics.json"


@dataclass
class TrainConfig:
    output_dir: str = field("runs/model", "Where checkpoints, TensorBoard logs and the exported model go.")
    seed: int = field(0, "Seed of weights, data order, flips and noise.")
    train_batch_size: int = field(32, "Images per process per step.")
    eval_batch_size: int = field(32, "Images per process per validation batch.")
    num_train_epochs: int = field(20, "Epochs to train (ignored when --max_train_steps is set).")
    max_train_steps: Optional[int] = field(None, "Total optimizer steps; overrides --num_train_epochs.")
    gradient_accumulation_steps: int = field(1, "Batches accumulated per optimizer step.")
    learning_rate: float = field(1e-4, "Peak learning rate.")
    lr_scheduler: str = field("cosine", "Learning-rate schedule (diffusers.optimization.get_scheduler).",
                              choices=("constant", "constant_with_warmup", "linear", "cosine"))
    lr_warmup_steps: int = field(0, "Linear warm-up steps.")
    adam_beta1: float = field(0.9, "Adam beta1.")
    adam_beta2: float = field(0.999, "Adam beta2.")
    adam_weight_decay: float = field(0.0, "Weight decay (AdamW when non-zero).")
    max_grad_norm: Optional[float] = field(1.0, "Clip gradients to this norm; none: no clipping (still logged).")
    mixed_precision: Optional[str] = field(None, "no, fp16 or bf16; none: as set by accelerate launch/config.",
                                           choices=(None, "no", "fp16", "bf16"))
    logging_steps: int = field(10, "Log training scalars every N steps.")
    validation_steps: int = field(500, "Validate (metrics and image grid) every N steps, and at the end.")
    initial_validation: bool = field(True, "Also validate before the first step (the untrained baseline).")
    num_grid_images: int = field(8, "Validation images shown in the gray | prediction | truth grid.")
    checkpointing_steps: int = field(500, "Save a resumable checkpoint every N steps, and at the end.")
    checkpoints_total_limit: Optional[int] = field(3, "Keep at most N checkpoints (oldest pruned).")
    resume_from_checkpoint: Optional[str] = field(None, "latest, or a checkpoint folder, to continue a run.")
    report_to: str = field("tensorboard", "Where to log.", choices=("tensorboard", "none"))
    cpu_threads: Optional[int] = field(None, "On a CPU: threads per process; none: the machine's cores shared "
                                             "among the processes on it (accelerate launch alone would use 1).")


class TrainingTask:
    """What one model family gives the harness. Subclasses set the class attributes and methods below."""

    model_type: str = ""
    config_class: type = None  # dataclass of the family's own flags
    flag_defaults: dict = {}  # overrides of shared flag defaults (TrainConfig, DataConfig), e.g. learning rate

    def __init__(self, config, resolution: int):
        self.config = config
        self.resolution = resolution
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.accelerator: Optional[Accelerator] = None  # set by the harness before build()

    def unwrapped(self, name: str) -> torch.nn.Module:
        """Model ``name`` without its distributed wrapper (mixed-precision forward kept)."""
        return self.accelerator.unwrap_model(self.models[name])

    def check_resolution(self, resolution: int) -> None:
        """Raise ColorizationError for a resolution the networks cannot handle."""

    def inspect_data(self, train_set) -> None:
        """Look at the training images before build() (the diffusion model measures its ab scale)."""

    def build(self, train_config: TrainConfig) -> None:
        """Create ``self.models`` and ``self.optimizers`` (one per model name that is trained)."""
        raise NotImplementedError

    def training_step(self, trainer: "Trainer", lightness: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
        """One micro-batch: compute losses and call ``trainer.optimize(name, loss)`` per optimizer.

        Returns scalar tensors to log (detached): the same keys at every step, NaN where a value is absent."""
        raise NotImplementedError

    def predict_ab(self, lightness: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Normalized L -> normalized ab, in eval mode (for validation)."""
        raise NotImplementedError

    def validation_losses(self, lightness, ab, predicted_ab) -> dict[str, torch.Tensor]:
        """Per-image validation losses (N,), named as in training."""
        return {"loss": torch.nn.functional.mse_loss(predicted_ab.float(), ab, reduction="none").mean(dim=(1, 2, 3))}

    def checkpoint_objects(self) -> list:
        """Extra stateful objects (e.g. EMA) to save and restore with every checkpoint."""
        return []

    def evaluation_weights(self):
        """Context in which validation runs (the diffusion model swaps its EMA weights in)."""
        return contextlib.nullcontext()

    def architecture(self) -> dict:
        """Keyword arguments that rebuild the exported network."""
        raise NotImplementedError

    def export(self, accelerator: Accelerator, output_dir: str, extra: dict) -> None:
        """Write the trained model where ``load_colorizer`` finds it (main process only)."""
        module = self.unwrapped(self.exported_model_name)
        save_exported_model(output_dir, self.model_type, module, self.architecture(), self.resolution, extra)

    exported_model_name = "model"


class NonFiniteLossError(ColorizationError):
    pass


class TrainingProgress:
    """Where the run is; saved with every checkpoint (accelerate's custom state)."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.images_skipped = 0
        # what the run has cost so far, summed over resumed runs (a finished run reports them)
        self.images_seen = 0
        self.wall_seconds = 0.0  # training loop, validation and checkpoints (not start-up)
        self.overhead_seconds = 0.0  # validation and checkpoints within wall_seconds

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class Trainer:
    def __init__(self, task: TrainingTask, train_config: TrainConfig, data_config: DataConfig,
                 accelerator: Optional[Accelerator] = None):
        self.task = task
        self.config = train_config
        self.data_config = data_config
        self.accelerator = accelerator or make_accelerator(train_config)
        self.progress = TrainingProgress()
        self.schedulers: dict[str, object] = {}
        self.grad_norms: dict[str, float] = {}
        self.gray_metrics: Optional[dict] = None
        self.last_checkpoint: Optional[str] = None

    # ----- steps the task calls -----

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backward ``loss`` into model ``name`` and, on a synchronizing micro-step, clip and step."""
        accelerator = self.accelerator
        # The same reduced value on every process, so all of them stop together.
        total = accelerator.reduce(loss.detach().float().reshape(1), reduction="sum")
        if not torch.isfinite(total).all():
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise NonFiniteLossError(
                f"the {name} loss became {total.item()} at step {self.progress.global_step + 1}{where}. "
                "Lower --learning_rate, keep --max_grad_norm, or try --mixed_precision no, then resume with "
                "--resume_from_checkpoint latest.")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            max_norm = self.config.max_grad_norm if self.config.max_grad_norm else float("inf")
            norm = accelerator.clip_grad_norm_(self.task.models[name].parameters(), max_norm)
            self.grad_norms[name] = float(norm)
        optimizer = self.task.optimizers[name]
        optimizer.step()
        self.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)

    # ----- set-up -----

    def _data_loaders(self):
        config, data = self.config, self.data_config
        with self.accelerator.main_process_first():
            train_set, validation_set = build_datasets(data, config.seed)
        self.train_set, self.validation_set = train_set, validation_set
        # Own generators: creating an iterator must not draw from the global RNG (exact resume).
        common = dict(num_workers=data.dataloader_num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                      persistent_workers=data.dataloader_num_workers > 0)
        train_loader = DataLoader(train_set, batch_size=config.train_batch_size,
                                  sampler=EpochShuffleSampler(len(train_set), config.seed), drop_last=True,
                                  generator=torch.Generator().manual_seed(config.seed), **common)
        validation_loader = DataLoader(validation_set, batch_size=config.eval_batch_size, shuffle=False,
                                       generator=torch.Generator().manual_seed(config.seed), **common)
        return self.accelerator.prepare(train_loader, validation_loader)

    def _schedule(self, num_update_steps: int):
        from diffusers.optimization import get_scheduler

        # A prepared scheduler steps once per process per optimizer step, so lengths scale with processes.
        scale = self.accelerator.num_processes
        return {name: get_scheduler(self.config.lr_scheduler, optimizer, num_warmup_steps=self.config.lr_warmup_steps * scale,
                                    num_training_steps=num_update_steps * scale)
                for name, optimizer in self.task.optimizers.items()}

    def _prepare_models(self, max_steps: int) -> None:
        task, accelerator = self.task, self.accelerator
        task.accelerator = accelerator
        with accelerator.main_process_first():  # pretrained weights are downloaded once per machine
            task.build(self.config)
        schedulers = self._schedule(max_steps)
        names = list(task.models)
        opt_names = list(task.optimizers)
        prepared = accelerator.prepare(*task.models.values(), *task.optimizers.values(), *schedulers.values())
        task.models = dict(zip(names, prepared[:len(names)]))
        task.optimizers = dict(zip(opt_names, prepared[len(names):len(names) + len(opt_names)]))
        self.schedulers = dict(zip(opt_names, prepared[len(names) + len(opt_names):]))
        accelerator.register_for_checkpointing(self.progress)
        for item in task.checkpoint_objects():
            accelerator.register_for_checkpointing(item)

    def _resume(self) -> None:
        request = self.config.resume_from_checkpoint
        if not request:
            return
        folder = os.path.join(self.config.output_dir, CHECKPOINTS_DIR)
        if request == "latest":
            found = sorted((d for d in os.listdir(folder) if d.startswith("checkpoint_")),
                           key=lambda d: int(d.split("_")[-1])) if os.path.isdir(folder) else []
            if not found:
                self.log(f"no checkpoint in {folder}: starting a new run")
                return
            path = os.path.join(folder, found[-1])
        else:
            path = request
            if not os.path.isdir(path):
                raise ColorizationError(f"--resume_from_checkpoint {path!r} is not a checkpoint folder")
        try:
            self.accelerator.load_state(path)
        except (FileNotFoundError, KeyError, RuntimeError, ValueError) as error:
            raise ColorizationError(f"cannot resume from {path!r}: {str(error).splitlines()[0]} "
                                    "(was it written by a different model or configuration?)") from None
        # accelerate does not restore the checkpoint counter: continue numbering after the loaded one.
        name = os.path.basename(os.path.normpath(path))
        if name.startswith("checkpoint_") and name.split("_")[-1].isdigit():
            self.accelerator.project_configuration.iteration = int(name.split("_")[-1]) + 1
        self.last_checkpoint = path
        self.log(f"resumed from {path} at step {self.progress.global_step}")

    # ----- logging, checkpoints, validation -----

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def _track(self, values: dict) -> None:
        if self.config.report_to != "none":
            self.accelerator.log(values, step=self.progress.global_step)

    def _tick(self) -> None:
        """Bring the run's wall-clock total up to now."""
        now = time.perf_counter()
        self.progress.wall_seconds += now - self._clock
        self._clock = now

    def training_costs(self) -> dict:
        """Images seen and time taken, so that runs of different models can be compared."""
        progress = self.progress
        train_seconds = progress.wall_seconds - progress.overhead_seconds
        return {"images_seen": progress.images_seen, "train_seconds": round(train_seconds, 3),
                "wall_seconds": round(progress.wall_seconds, 3),
                "images_per_second": round(progress.images_seen / train_seconds, 3) if train_seconds > 0 else None,
                "num_processes": self.accelerator.num_processes, "mixed_precision": self.accelerator.mixed_precision,
                "hardware": describe_hardware(self.accelerator.device, self.accelerator.num_processes),
                "parameters": {name: count_parameters(self.task.unwrapped(name)) for name in self.task.models}}

    def save_checkpoint(self) -> None:
        accelerator = self.accelerator
        self._tick()
        accelerator.save_state()  # every process: each saves its own RNG state
        folder = os.path.join(self.config.output_dir, CHECKPOINTS_DIR)
        self.last_checkpoint = os.path.join(folder, f"checkpoint_{accelerator.save_iteration - 1}")
        if accelerator.is_main_process:
            self._write_run_config(os.path.join(self.last_checkpoint, RUN_CONFIG_NAME))
        accelerator.wait_for_everyone()

    def run_config(self) -> dict:
        return {"model_type": self.task.model_type, "train": asdict(self.config), "data": asdict(self.data_config),
                "model": asdict(self.task.config), "num_processes": self.accelerator.num_processes,
                "mixed_precision": self.accelerator.mixed_precision, "command": " ".join(sys.argv),
                "global_step": self.progress.global_step}

    def _write_run_config(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(self.run_config(), handle, indent=2)

    def _broadcast_buffers(self) -> None:
        """Give every process rank 0's buffers (batch-norm statistics), as DDP does at each training forward:
        after the last step each process holds statistics of its own batches. Validation then judges, on
        every process, the model that checkpoints and the export save (rank 0's)."""
        if self.accelerator.num_processes == 1:
            return
        for name in self.task.models:
            for buffer in self.task.unwrapped(name).buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    @torch.no_grad()
    def validate(self) -> dict:
        task = self.task
        self._broadcast_buffers()
        for model in task.models.values():
            model.eval()
        with task.evaluation_weights():
            metrics, first_batch = self._validation_pass()
        for model in task.models.values():
            model.train()
        self._log_grid(*first_batch)
        self._track({f"validation/{key}": value for key, value in metrics.items()})
        self.log(f"step {self.progress.global_step}: validation " +
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "num_images"))
        return metrics

    def _validation_pass(self):
        accelerator, task = self.accelerator, self.task
        generator = torch.Generator(accelerator.device).manual_seed(self.config.seed)
        per_image: dict[str, list] = {}
        first_batch = None
        for batch in self.validation_loader:
            lightness, ab = color.rgb_to_normalized_lab(batch["rgb"])
            with accelerator.autocast():
                predicted = task.predict_ab(lightness, generator)
                losses = task.validation_losses(lightness, ab, predicted)
            prediction = color.normalized_lab_to_rgb(lightness, predicted.float())
            values = {f"{k}": v.float() for k, v in losses.items()}
            values["psnr"] = psnr_per_image(prediction, batch["rgb"])
            values["ssim"] = ssim_per_image(prediction, batch["rgb"])
            if self.gray_metrics is None:
                gray = color.gray_rgb(lightness)
                values["psnr_gray"] = psnr_per_image(gray, batch["rgb"])
                values["ssim_gray"] = ssim_per_image(gray, batch["rgb"])
            for key, value in accelerator.gather_for_metrics(values).items():
                per_image.setdefault(key, []).append(value.cpu())
            if first_batch is None:
                first_batch = (batch["rgb"], lightness, prediction)
        metrics = {key: torch.cat(chunks).mean().item() for key, chunks in per_image.items()}
        if self.gray_metrics is None:
            self.gray_metrics = {k: metrics[k] for k in ("psnr_gray", "ssim_gray")}
        metrics.update(self.gray_metrics)
        metrics["num_images"] = sum(len(c) for c in per_image["psnr"])
        return metrics, first_batch

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
        if self.config.report_to == "tensorboard":
            self.accelerator.get_tracker("tensorboard").log_images(
                {"validation/gray_prediction_truth": grid[None]}, step=self.progress.global_step)

    # ----- the loop -----

    def train(self) -> dict:
        accelerator, config, task, progress = self.accelerator, self.config, self.task, self.progress
        task.check_resolution(self.data_config.resolution)
        set_seed(config.seed)
        train_loader, self.validation_loader = self._data_loaders()
        if len(train_loader) == 0:
            raise ColorizationError(
                f"the training set has {len(self.train_set)} images, fewer than one batch of "
                f"{config.train_batch_size} x {accelerator.num_processes} processes; lower --train_batch_size")
        task.inspect_data(self.train_set)
        steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
        max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        num_epochs = math.ceil(max_steps / steps_per_epoch)
        self._prepare_models(max_steps)
        self._resume()
        self._clock = time.perf_counter()
        if accelerator.is_main_process:
            os.makedirs(config.output_dir, exist_ok=True)
            self._write_run_config(os.path.join(config.output_dir, RUN_CONFIG_NAME))
        if config.report_to == "tensorboard":
            flat = {f"{group}/{k}": _plain(v) for group in ("train", "data", "model")
                    for k, v in self.run_config()[group].items()}
            accelerator.init_trackers(task.model_type, config=flat)
        self.log(f"training {task.model_type} on {describe_source(self.data_config)}: {len(self.train_set)} train / "
                 f"{len(self.validation_set)} validation images at {self.data_config.resolution}px, "
                 f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}, "
                 f"{max_steps} steps of {config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps} images")

        metrics = None
        if config.initial_validation and progress.global_step == 0:
            paused = time.perf_counter()
            metrics = self.validate()
            progress.overhead_seconds += time.perf_counter() - paused
        bar = tqdm(total=max_steps, initial=progress.global_step, desc=task.model_type,
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        micro_steps, images_skipped, started = 0, torch.zeros((), device=accelerator.device), time.perf_counter()
        validated_at = saved_at = progress.global_step
        try:
            while progress.global_step < max_steps and progress.epoch < num_epochs:
                loader = train_loader
                if progress.batches_in_epoch:
                    loader = accelerator.skip_first_batches(train_loader, progress.batches_in_epoch)
                # The prepared loader hands its own epoch counter to the sampler at every iteration: set it here,
                # or a loader created on resume would restart the data order at epoch 0.
                loader.set_epoch(progress.epoch)
                for batch in loader:
                    lightness, ab = color.rgb_to_normalized_lab(batch["rgb"])
                    # One accumulate context for all models: accelerate counts a micro-step per context entered.
                    with accelerator.accumulate(*task.models.values()), accelerator.autocast():
                        logs = task.training_step(self, lightness, ab)
                    progress.batches_in_epoch += 1
                    micro_steps += 1
                    images_skipped += batch["skipped"]
                    for key, value in logs.items():
                        # NaN means "nothing to report this step" (e.g. no image in a timestep quartile)
                        value = value.detach().float().to(accelerator.device)
                        present = torch.isfinite(value)
                        sums[key] = sums.get(key, 0.0) + torch.where(present, value, 0.0)
                        counts[key] = counts.get(key, 0.0) + present.float()
                    if not accelerator.sync_gradients:
                        continue
                    progress.global_step += 1
                    progress.images_seen += (config.train_batch_size * accelerator.num_processes
                                             * config.gradient_accumulation_steps)
                    bar.update(1)
                    if progress.global_step % config.logging_steps == 0 or progress.global_step == max_steps:
                        elapsed = time.perf_counter() - started
                        # every process reduces the same keys in the same order (tasks report a fixed set);
                        # a value absent for the whole window is left out rather than logged as 0
                        values = {}
                        for key in sorted(sums):
                            count = accelerator.reduce(counts[key], "sum")
                            total = accelerator.reduce(sums[key], "sum")
                            if count.item() > 0:
                                values[f"train/{key}"] = (total / count).item()
                        values.update(self._scalars(micro_steps * config.train_batch_size * accelerator.num_processes / elapsed))
                        skipped = int(accelerator.reduce(images_skipped, "sum").item())
                        progress.images_skipped += skipped
                        values["data/images_skipped"] = progress.images_skipped
                        if skipped:
                            self.log(f"step {progress.global_step}: skipped {skipped} unreadable image(s), "
                                     f"{progress.images_skipped} in all")
                        self._track(values)
                        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in values.items() if k.startswith("train/")
                                         and "loss" in k})
                        sums, counts, micro_steps = {}, {}, 0
                        images_skipped, started = torch.zeros_like(images_skipped), time.perf_counter()
                    paused = time.perf_counter()
                    if progress.global_step % config.checkpointing_steps == 0:
                        self.save_checkpoint()
                        saved_at = progress.global_step
                    if progress.global_step % config.validation_steps == 0:
                        metrics = self.validate()
                        validated_at = progress.global_step
                    started += time.perf_counter() - paused  # images/s counts training time only
                    progress.overhead_seconds += time.perf_counter() - paused
                    if progress.global_step >= max_steps:
                        break
                else:
                    progress.epoch += 1
                    progress.batches_in_epoch = 0
        finally:
            bar.close()
        if saved_at != progress.global_step:
            paused = time.perf_counter()
            self.save_checkpoint()
            progress.overhead_seconds += time.perf_counter() - paused
        if metrics is None or validated_at != progress.global_step:
            paused = time.perf_counter()
            metrics = self.validate()
            progress.overhead_seconds += time.perf_counter() - paused
        self._tick()
        self._finish(metrics)
        return metrics

    def _scalars(self, images_per_second: float) -> dict:
        values = {"train/images_per_second": images_per_second}
        several = len(self.schedulers) > 1
        for name, scheduler in self.schedulers.items():
            suffix = f"_{name}" if several else ""
            values[f"train/lr{suffix}"] = scheduler.get_last_lr()[0]
            if name in self.grad_norms:
                values[f"train/grad_norm{suffix}"] = self.grad_norms[name]
        return values

    def _finish(self, metrics: dict) -> None:
        accelerator, config = self.accelerator, self.config
        if accelerator.is_main_process:
            costs = self.training_costs()
            extra = {"training": {"global_step": self.progress.global_step, "data": describe_source(self.data_config),
                                  "resolution": self.data_config.resolution, "validation": metrics, **costs}}
            self.task.export(accelerator, config.output_dir, extra)
            with open(os.path.join(config.output_dir, METRICS_NAME), "w") as handle:
                json.dump({"step": self.progress.global_step, **metrics, "training": costs}, handle, indent=2)
            print(format_metrics(metrics, self.progress.global_step, config.output_dir), flush=True)
        accelerator.wait_for_everyone()


def format_metrics(metrics: dict, step: int, output_dir: str) -> str:
    lines = [f"Validation after {step} steps on {metrics['num_images']} images (model exported to {output_dir}):",
             f"  {'':<22}{'PSNR (dB)':>10}{'SSIM':>9}",
             f"  {'model':<22}{metrics['psnr']:>10.2f}{metrics['ssim']:>9.4f}",
             f"  {'gray (ab = 0)':<22}{metrics['psnr_gray']:>10.2f}{metrics['ssim_gray']:>9.4f}"]
    return "\n".join(lines)


def make_accelerator(config: TrainConfig) -> Accelerator:
    try:
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(project_dir=config.output_dir,
                                                logging_dir=os.path.join(config.output_dir, "logs"),
                                                automatic_checkpoint_naming=True,
                                                total_limit=config.checkpoints_total_limit))
    except ValueError as error:  # e.g. fp16 without a GPU
        raise ColorizationError(f"cannot set up training: {error}") from None
    check_processes(accelerator)
    use_all_cores(accelerator, config.cpu_threads)
    return accelerator


def check_processes(accelerator: Accelerator) -> None:
    """Several processes were started but they are not connected: each would train alone as 'rank 0'."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ColorizationError(
            f"{launched} processes were launched but they are not connected (no distributed backend), so each "
            "would train alone. On CPU, launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {launched} ...; on GPUs, check that CUDA is available to every process.")


def parse_args(task_class: type[TrainingTask], argv=None) -> tuple[TrainConfig, DataConfig, object]:
    parser = argparse.ArgumentParser(description=f"Train the {task_class.model_type} colorization model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, {"output_dir": f"runs/{task_class.model_type}", **task_class.flag_defaults})
    add_dataclass_arguments(parser, DataConfig, task_class.flag_defaults)
    add_dataclass_arguments(parser, task_class.config_class)
    args = parser.parse_args(argv)
    return build_dataclass(TrainConfig, args), build_dataclass(DataConfig, args), build_dataclass(task_class.config_class, args)


def run_training(task_class: type[TrainingTask], argv=None) -> dict:
    train_config, data_config, model_config = parse_args(task_class, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trainer = Trainer(task_class(model_config, data_config.resolution), train_config, data_config)
    try:
        return trainer.train()
    finally:
        trainer.accelerator.end_training()


def main(task_class: type[TrainingTask], argv=None) -> None:
    """Entry point of the ``train_*.py`` scripts."""
    cli_entry_point(run_training)(task_class, argv)
