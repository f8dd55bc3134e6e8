"""The one training harness shared by every model, built on Hugging Face Accelerate.

A model family supplies a :class:`TrainingTask` (in :mod:`colorization.tasks`): its networks and optimizers
(by name: the GAN has two), one training step, a :class:`~colorization.colorizer.Colorizer` over its live
networks for validation, and its export. Everything else lives once, in the harness's parts:

- this module: the flags, the set-up and the loop (:class:`Trainer`), and the export at the end;
- :mod:`colorization.optimization`: backward, gradient scalers, clipping, schedules, the NaN watch;
- :mod:`colorization.checkpoints`: where a run starts, crash-safe checkpoints, exact resume;
- :mod:`colorization.validation`: validation (through :func:`colorization.measure.measure`, the function
  ``evaluate.py`` uses) and the choice of the exported step;
- :mod:`colorization.tracking`: messages, TensorBoard and the means of the logged values.

Exact resume: a checkpoint holds the models, optimizers, schedulers and every process's RNG states
(accelerate's ``save_state``) plus, as safetensors and JSON (never pickles), the task's own state (e.g. the
EMA weights), the training progress (step, epoch, position in the epoch) and the statistics of the training
data. The data order and the flips are functions of (seed, epoch, index), so a run resumed at step k sees the
same batches and random numbers as one that never stopped, on any number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
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
from colorization.checkpoints import RUN_CONFIG_NAME, Checkpointer, TrainingProgress, read_run_config
from colorization.colorizer import (
    CONFIG_NAME,
    MEAN_AB_NAME,
    TRAINING_IMAGES_NAME,
    WEIGHTS_NAME,
    Colorizer,
    save_export_config,
    save_module_weights,
    save_training_data_record,
)
from colorization.config import (
    HelpFormatter,
    add_dataclass_arguments,
    build_dataclass,
    field,
    fraction,
    hub_repo_id,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)
from colorization.data import (
    MACHINE_PATH_FIELDS,
    DataConfig,
    batch_to_rgb,
    build_datasets,
    collate,
    data_statistics,
    describe_source,
    identify_source,
    keep_recorded_revision,
    make_loaders,
    prepare_split,
    split_hashes,
)
from colorization.errors import ColorizationError, cli_entry_point
from colorization.files import write_json
from colorization.hardware import (
    count_parameters,
    describe_hardware,
    fp32_precision,
    full_fp32,
    set_tf32,
    use_all_cores,
)
from colorization.hub import push
from colorization.optimization import Optimization, prepare_networks
from colorization.tracking import ScalarWindow, Tracker
from colorization.validation import SELECTION_PSNR_TOLERANCE_DB, Validator, format_metrics, selection_cadence

METRICS_NAME = "validation_metrics.json"


def checkpoint_request(text: str) -> str:
    """--resume_from_checkpoint: latest, or a checkpoint folder that exists."""
    if text != "latest" and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'latest' nor a checkpoint folder")
    return text


@dataclass
class TrainConfig:
    output_dir: str = field(
        "runs/model", "Where checkpoints, TensorBoard logs and the exported model go.", type=output_folder
    )
    seed: int = field(0, "Seed of weights, data order, flips and noise.")
    train_batch_size: int = field(32, "Images per process per step.", type=positive_int)
    eval_batch_size: int = field(32, "Images per process per validation batch.", type=positive_int)
    num_train_epochs: int = field(20, "Epochs to train (ignored when --max_train_steps is set).", type=positive_int)
    max_train_steps: Optional[int] = field(
        None, "Total optimizer steps; overrides --num_train_epochs.", type=positive_int
    )
    gradient_accumulation_steps: int = field(1, "Batches accumulated per optimizer step.", type=positive_int)
    learning_rate: float = field(1e-4, "Peak learning rate.", type=positive_float)
    lr_scheduler: str = field(
        "cosine",
        "Learning-rate schedule: diffusers' constant, constant_with_warmup, linear "
        "or cosine, or constant_then_linear (pix2pix: constant for the first half, "
        "then linear decay to zero).",
        choices=("constant", "constant_with_warmup", "linear", "cosine", "constant_then_linear"),
    )
    lr_warmup_steps: int = field(0, "Linear warm-up steps.", type=non_negative_int)
    adam_beta1: float = field(0.9, "Adam beta1.", type=fraction)
    adam_beta2: float = field(0.999, "Adam beta2.", type=fraction)
    adam_weight_decay: float = field(0.0, "Weight decay (AdamW when non-zero).", type=non_negative_float)
    max_grad_norm: Optional[float] = field(
        1.0, "Clip gradients to this norm; none: no clipping (still logged).", type=positive_float
    )
    mixed_precision: Optional[str] = field(
        None, "no, fp16 or bf16; none: as set by accelerate launch/config.", choices=(None, "no", "fp16", "bf16")
    )
    allow_tf32: bool = field(
        False,
        "On NVIDIA GPUs since Ampere: TF32 for the fp32 matrix products and convolutions of training steps (faster, "
        "a 10-bit mantissa); off: full fp32. Validation and evaluate.py always compute in full fp32.",
    )
    logging_steps: int = field(10, "Log training scalars every N steps.", type=positive_int)
    validation_steps: int = field(
        500, "Validate (metrics and image grid) every N steps, and at the end.", type=positive_int
    )
    validation_images: Optional[int] = field(
        64, "Validate on the first N held-out images (the same every time; none: all of them).", type=positive_int
    )
    initial_validation: bool = field(True, "Also validate before the first step (the untrained baseline).")
    num_grid_images: int = field(8, "Validation images shown in the gray | prediction | truth grid.", type=positive_int)
    model_selection: str = field(
        "last",
        "Which step is exported: last, or best: the last validated step whose "
        f"PSNR is within {SELECTION_PSNR_TOLERANCE_DB} dB of the best so far and "
        "whose colorfulness is not above the ground truth's (see docs/models.md).",
        choices=("last", "best"),
    )
    checkpointing_steps: int = field(
        500, "Save a resumable checkpoint every N steps, and at the end.", type=positive_int
    )
    checkpoints_total_limit: Optional[int] = field(
        3, "Keep at most N complete checkpoints (oldest pruned once a newer one is complete).", type=positive_int
    )
    resume_from_checkpoint: Optional[str] = field(
        None, "latest, or a checkpoint folder, to continue a run.", type=checkpoint_request
    )
    overwrite_output_dir: bool = field(
        False,
        "Start over in an --output_dir that holds an earlier run, deleting its checkpoints, logs and exported model.",
    )
    allow_changed_settings: bool = field(
        False,
        "Resume even where settings that change the trained weights "
        "differ from the checkpoint's (recorded in run_config.json).",
    )
    push_to_hub: bool = field(
        False, "At the end, upload the exported model (never the checkpoints) with a model card to --hub_model_id."
    )
    hub_model_id: Optional[str] = field(
        None, "The Hub repository (owner/name) --push_to_hub uploads to.", type=hub_repo_id
    )
    hub_private: bool = field(False, "With --push_to_hub: create the repository private.")
    report_to: str = field("tensorboard", "Where to log.", choices=("tensorboard", "none"))
    cpu_threads: Optional[int] = field(
        None,
        "On a CPU: threads per process; none: the machine's cores shared "
        "among the processes on it (accelerate launch alone would use 1).",
        type=positive_int,
    )
    torch_compile: bool = field(False, "Compile the trained networks with torch.compile (inductor).")
    channels_last: bool = field(
        False, "Keep the trained networks' weights, and so their activations, in channels-last memory format."
    )
    fused_optimizer: bool = field(
        True,
        "Adam's fused kernel (one pass over all parameters) where this torch has one for the parameters' device "
        "(CUDA; CPU from torch 2.4); --no-fused_optimizer: PyTorch's default implementation.",
    )


class TrainingTask:
    """What one model family gives the harness. Subclasses set the class attributes and methods below."""

    model_type: str = ""
    config_class: type = None  # dataclass of the family's own flags
    flag_defaults: dict = {}  # overrides of shared flag defaults (TrainConfig, DataConfig), e.g. learning rate
    exported_model_name = "model"  # the network that is exported
    exported_files: tuple = (WEIGHTS_NAME, CONFIG_NAME, MEAN_AB_NAME, TRAINING_IMAGES_NAME)  # what an export writes

    def __init__(self, config, resolution: int):
        self.config = config
        self.resolution = resolution
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.accelerator: Optional[Accelerator] = None  # set by the harness before build()

    def unwrapped(self, name: str) -> torch.nn.Module:
        """Model ``name`` without its distributed or compiled wrapper."""
        return self.accelerator.unwrap_model(self.models[name], keep_torch_compile=False)

    def check_resolution(self, resolution: int) -> None:
        """Raise ColorizationError for a resolution the networks cannot handle."""

    @classmethod
    def check_flags(cls, config) -> Optional[str]:
        """What is wrong with a combination of the family's own flags, or None (checked when they are parsed)."""
        return None

    def build(self, train_config: TrainConfig, statistics: dict) -> None:
        """Create ``self.models`` and ``self.optimizers`` (one per trained model name). ``statistics`` holds
        the training data's ``mean_ab`` (Lab units, (2, R, R)) and ``ab_std`` (of the normalized ab)."""
        raise NotImplementedError

    def training_step(self, trainer: "Trainer", lightness: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
        """One micro-batch: compute losses and call ``trainer.optimize(name, loss)`` per optimizer.

        Returns scalar tensors to log (detached): the same keys at every step, NaN where a value is absent."""
        raise NotImplementedError

    def after_optimizer_step(self, name: str) -> None:
        """Called after each optimizer step of network ``name`` (not after micro-steps that only accumulate), with
        autocast off: e.g. the diffusion model's EMA update."""

    def colorizer(self) -> Colorizer:
        """The exported kind of :class:`Colorizer` over the live networks (already in eval mode, with the
        weights of :meth:`evaluation_weights`): validation measures exactly what the export will do."""
        raise NotImplementedError

    def measure_data(self, train_set, num_workers: int) -> dict:
        """Statistics of the training data the family needs beyond the harness's (tensors; measured once per run
        and kept in every checkpoint), e.g. a refining diffusion model's residual scale."""
        return {}

    def selectable_steps(self, max_steps: int) -> tuple[int, int]:
        """The first and last step that --model_selection best may choose (the GAN: its adversarial phase)."""
        return 1, max_steps

    def validation_losses(self, lightness, ab, predicted_ab) -> dict[str, torch.Tensor]:
        """Per-image validation losses (N,) of the colorizer's predicted normalized ab, named as in training."""
        return {"loss": torch.nn.functional.mse_loss(predicted_ab.float(), ab, reduction="none").mean(dim=(1, 2, 3))}

    def evaluation_weights(self):
        """Context in which validation and export run (the diffusion model swaps its EMA weights in)."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict:
        """The task's own resumable state beyond models and optimizers: JSON values, tensors under 'tensors'."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def architecture(self) -> dict:
        """Keyword arguments that rebuild the exported network."""
        raise NotImplementedError

    def export(self, output_dir: str, extra: dict) -> None:
        """Write the trained model where ``load_colorizer`` finds it (main process only)."""
        save_module_weights(output_dir, self.unwrapped(self.exported_model_name), self.model_type)
        save_export_config(output_dir, self.model_type, self.architecture(), self.resolution, extra)


@functools.cache
def fused_adam_available() -> bool:
    """Whether this torch's Adam has a fused kernel for parameters on the CPU, where tasks build them (the
    optimizer is made before accelerate moves them to the device): from torch 2.4; older ones refuse."""
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def make_optimizer(parameters, config: TrainConfig, learning_rate: Optional[float] = None) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay) from the shared flags; its fused kernel where there is one (--fused_optimizer:
    on a CPU, PyTorch's default is a loop over the parameters)."""
    optimizer = torch.optim.AdamW if config.adam_weight_decay else torch.optim.Adam
    return optimizer(
        parameters,
        lr=learning_rate or config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        fused=(config.fused_optimizer and fused_adam_available()) or None,
    )


class Trainer:
    """Sets a run up from its flags and trains it: the loop reads top to bottom; every part is a call."""

    def __init__(self, task: TrainingTask, config: TrainConfig, data_config: DataConfig, accelerator=None):
        self.task, self.config, self.data_config = task, config, data_config
        self.accelerator = task.accelerator = accelerator or make_accelerator(config)
        set_tf32(config.allow_tf32)  # after accelerate: it turns TF32 on for matmuls under torch.compile
        self.fp32_precision = fp32_precision(self.accelerator.device)  # of the training steps, for the record
        self.progress = TrainingProgress()
        self.tracker = Tracker(self.accelerator, config.report_to)
        self.checkpointer = Checkpointer(
            self.accelerator, config, task, self.progress, self.run_config, self.tracker.log
        )
        self.optimization = Optimization(self.accelerator, task, config.max_grad_norm)
        self.validator: Optional[Validator] = None
        self.max_steps = 0
        self._clock = self._window_started = time.perf_counter()  # the run's wall clock; the logged window's

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """For the task's training step: backward ``loss`` into network ``name`` and step its optimizer."""
        self.optimization.optimize(name, loss)

    # ----- set-up -----

    def _prepare_data(self):
        """The data sets, and their loaders prepared by accelerate -> the training loader."""
        prepare = prepare_streamed_data if self.data_config.streaming else prepare_data
        self.data = prepare(self.accelerator, self.data_config, self.config)
        self.train_set = self.data.train_set
        self.validator = Validator(
            self.accelerator,
            self.task,
            self.config,
            self.progress,
            self.tracker,
            self.data.validation_set,
            self.data.validation_loader,
            self._export,
        )
        return self.data.train_loader

    def _prepare_models(self, max_steps: int, statistics: Optional[dict] = None) -> None:
        task, accelerator = self.task, self.accelerator
        self.max_steps = self.checkpointer.max_steps = max_steps
        if self.validator is not None:
            self.validator.max_steps = max_steps
        self.checkpointer.statistics = (
            statistics
            if statistics is not None
            else {"mean_ab": torch.zeros(2, task.resolution, task.resolution), "ab_std": torch.tensor(0.25)}
        )
        with accelerator.main_process_first():  # pretrained weights are downloaded once per machine
            task.build(self.config, self.checkpointer.statistics)
        self.optimization.schedulers = prepare_networks(accelerator, task, self.config, max_steps)
        self.optimization.use_scalers()
        self.checkpointer.scalers = self.optimization.scalers
        self.checkpointer.register_hooks()

    def _set_up(self):
        """Data, budget, networks, and the state to resume -> (the training loader, steps, epochs)."""
        config, task = self.config, self.task
        task.check_resolution(self.data_config.resolution)
        resume_path = self.checkpointer.start_or_resume()
        if resume_path:  # a streamed Hub data set at the commit the run recorded
            keep_recorded_revision(self.data_config, read_run_config(resume_path))
        set_seed(config.seed)
        train_loader = self._prepare_data()
        steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
        max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        if config.model_selection == "best":
            first, last = task.selectable_steps(max_steps)
            cadence = selection_cadence(config.validation_steps, first, last)
            if cadence != config.validation_steps:
                config.validation_steps = cadence
                self.tracker.log(
                    f"--model_selection best: validating every {cadence} steps (enough validations "
                    f"to choose from, steps {first} to {last})"
                )
        if resume_path:  # after the cadence is settled: under --model_selection best it is part of the run
            self.checkpointer.check_settings(resume_path)
        workers = self.data_config.dataloader_num_workers
        if resume_path:  # measured once per run
            statistics = self.checkpointer.saved_statistics(resume_path)
        else:
            images = self.data.statistics_set
            statistics = {**data_statistics(images, workers), **task.measure_data(images, workers)}
        self._prepare_models(max_steps, statistics)
        if resume_path:
            self.checkpointer.resume(resume_path)
        return train_loader, max_steps, math.ceil(max_steps / steps_per_epoch)

    # ----- the loop -----

    def train(self) -> dict:
        accelerator, config, task, progress = self.accelerator, self.config, self.task, self.progress
        train_loader, max_steps, num_epochs = self._set_up()
        self._clock = time.perf_counter()
        if accelerator.is_main_process:
            os.makedirs(config.output_dir, exist_ok=True)
            write_json(os.path.join(config.output_dir, RUN_CONFIG_NAME), self.run_config())
        self.tracker.start(task.model_type, self.run_config())
        images_per_step = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        self.tracker.log(
            f"training {task.model_type} on {describe_source(self.data_config)}: {self.data.description}, "
            f"{len(self.data.validation_set)} validation images at {self.data_config.resolution}px, "
            f"{accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}, "
            f"{max_steps} steps of {images_per_step} images"
        )
        metrics = None
        if config.initial_validation and progress.global_step == 0:
            metrics = self._paused(self.validate)
        validated_at = saved_at = progress.global_step
        window = ScalarWindow(accelerator.device)
        self._window_started = time.perf_counter()
        bar = tqdm(
            total=max_steps,
            initial=progress.global_step,
            desc=task.model_type,
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        try:
            while progress.global_step < max_steps and progress.epoch < num_epochs:
                loader = self.data.loader_at(accelerator, progress.epoch, progress.batches_in_epoch)
                for batch in loader:
                    lightness, ab = color.rgb_to_normalized_lab(batch_to_rgb(batch, accelerator.device))
                    step = progress.global_step + 1
                    self.optimization.step_number = step
                    self.optimization.log_due = step % config.logging_steps == 0 or step == max_steps
                    # One accumulate context for all models: accelerate counts a micro-step per context entered.
                    # Autocast: forward passes and losses only (optimize turns it off: colorization/optimization.py).
                    with accelerator.accumulate(*task.models.values()), accelerator.autocast():
                        logs = task.training_step(self, lightness, ab)
                    progress.batches_in_epoch += 1
                    window.add(logs, batch["skipped"])
                    if not accelerator.sync_gradients:
                        continue
                    self.optimization.step_schedules()
                    progress.global_step += 1
                    progress.images_seen += images_per_step
                    bar.update(1)
                    if progress.global_step % config.logging_steps == 0 or progress.global_step == max_steps:
                        self._log_window(window, bar)
                    if progress.global_step % config.checkpointing_steps == 0:
                        self._paused(self.save_checkpoint)
                        saved_at = progress.global_step
                    if progress.global_step % config.validation_steps == 0:
                        metrics = self._paused(self.validate)
                        validated_at = progress.global_step
                    if progress.global_step >= max_steps:
                        break
                else:
                    progress.epoch += 1
                    progress.batches_in_epoch = 0
        finally:
            bar.close()
        if metrics is None or validated_at != progress.global_step:
            metrics = self._paused(self.validate)
        if saved_at != progress.global_step:
            self._paused(self.save_checkpoint)
        self._tick()
        return self._finish(metrics)

    def _paused(self, work):
        """Run validation or a checkpoint: its time counts as overhead, not as training images/s."""
        started = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - started
        self.progress.overhead_seconds += elapsed
        self._window_started += elapsed
        return result

    def _log_window(self, window: ScalarWindow, bar) -> None:
        """Log the means of the training values since the last log, the speed, learning rates and gradient norms."""
        progress = self.progress
        self.optimization.check_finite(self.checkpointer.last_checkpoint)
        seconds = time.perf_counter() - self._window_started
        values, skipped = window.values(self.accelerator, self.config.train_batch_size, seconds)
        values.update(self.optimization.scalars())
        progress.images_skipped += skipped
        values["data/images_skipped"] = progress.images_skipped
        if skipped:
            self.tracker.log(
                f"step {progress.global_step}: skipped {skipped} unreadable image(s), {progress.images_skipped} in all"
            )
        self.tracker.track(values, progress.global_step)
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in values.items() if "loss" in k})
        window.reset()
        self._window_started = time.perf_counter()

    def save_checkpoint(self) -> None:
        self.optimization.check_finite(self.checkpointer.last_checkpoint)
        self._tick()
        self.checkpointer.save()

    def validate(self) -> dict:
        self.optimization.check_finite(self.checkpointer.last_checkpoint)
        with full_fp32():  # what evaluate.py measures, whatever --allow_tf32 lets the training steps use
            return self.validator.validate()

    # ----- what the run cost, how it was set -----

    def _tick(self) -> None:
        """Bring the run's wall-clock total up to now."""
        now = time.perf_counter()
        self.progress.wall_seconds += now - self._clock
        self._clock = now

    def training_costs(self) -> dict:
        return training_costs(self.progress, self.accelerator, self.task, self.fp32_precision)

    def run_config(self) -> dict:
        config = {
            "model_type": self.task.model_type,
            "train": asdict(self.config),
            "data": asdict(self.data_config),
            "model": asdict(self.task.config),
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            "command": " ".join(sys.argv),
            "global_step": self.progress.global_step,
        }
        if self.checkpointer.changed_settings:
            config["changed_settings"] = self.checkpointer.changed_settings
        return config

    # ----- export -----

    def _export(self, folder: str, metrics: dict) -> None:
        """Write the exported model, with what it is and how it was trained, into ``folder`` (main process)."""
        hashes, mean_ab = self.data.training_hashes, self.checkpointer.statistics["mean_ab"]
        export_model(
            folder, self.task, self.progress, self.data_config, hashes, mean_ab, metrics, self.training_costs()
        )

    def _finish(self, metrics: dict) -> dict:
        """Export (the chosen step's model under --model_selection best) -> the exported model's metrics."""
        metrics = self.validator.export_final(metrics, self.training_costs)
        if self.accelerator.is_main_process:
            step, output_dir = self.progress.global_step, self.config.output_dir
            write_json(
                os.path.join(output_dir, METRICS_NAME), {"step": step, **metrics, "training": self.training_costs()}
            )
            print(format_metrics(metrics, step, output_dir), flush=True)
        self.accelerator.wait_for_everyone()
        return metrics


@dataclasses.dataclass
class PreparedData:
    train_set: object  # ColorizationImages, or StreamedImages (--streaming)
    validation_set: object  # ColorizationImages
    train_loader: DataLoader
    validation_loader: DataLoader
    sampler: Optional[object]  # the EpochShuffleSampler; None for a stream, which orders itself
    statistics_set: object  # the images the data statistics are measured on
    training_hashes: Optional[list]  # the record of the training images (None: not known)
    description: str  # how many training images, for the log

    def close(self) -> None:
        """Stop the loaders' persistent worker processes now. Left to the garbage collector, their shutdown
        waits on the workers at interpreter exit (seen: 20 s after two short runs in one process)."""
        for loader in (self.train_loader, self.validation_loader):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def loader_at(self, accelerator, epoch: int, batches: int):
        """The training loader, positioned after ``batches`` batches of ``epoch``."""
        if self.sampler is None:  # --streaming: an endless stream, started at this process's position
            self.train_set.start_at(batches)
            return self.train_loader
        loader = accelerator.skip_first_batches(self.train_loader, batches) if batches else self.train_loader
        # The prepared loader hands its own epoch counter to the sampler when it starts: set that counter,
        # and the sampler itself, which several processes and a skip put out of the counter's reach.
        loader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        return loader


# the data statistics of a streamed run (mean ab, a refining model's residual scale) come from its first images
STREAMED_STATISTICS_IMAGES = 2048


def prepare_streamed_data(accelerator, data: DataConfig, config: TrainConfig) -> PreparedData:
    """--streaming: this process's endless stream of training images (not passed through accelerate, which
    would shard it a second time) and the first held-out images for validation, read once and kept."""
    from colorization.streaming import StreamedImages, streamed_split, streaming_shards, training_keys

    shards = streaming_shards(data)
    train_set = StreamedImages(
        shards,
        data.resolution,
        config.seed,
        accelerator.process_index,
        accelerator.num_processes,
        config.train_batch_size,
        data.validation_split,
        data.split_seed,
        data.image_column,
    )
    wanted = min(n for n in (config.validation_images, data.max_validation_samples, 10**9) if n is not None)
    with accelerator.main_process_first():  # the decoded cache is written once per machine
        validation_set = prepare_split(streamed_split(shards, data, "validation", wanted), data, train=False)
        statistics_set = prepare_split(
            streamed_split(shards, data, "train", STREAMED_STATISTICS_IMAGES), data, train=False
        )
    # each loader worker reads whole shards of its own: no more workers than this process has shards
    workers = min(data.dataloader_num_workers, len(shards) // accelerator.num_processes)
    train_loader = DataLoader(
        train_set,
        batch_size=config.train_batch_size,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    _, validation_loader, _ = make_loaders(
        validation_set, validation_set, 1, config.eval_batch_size, None, config.seed, data.dataloader_num_workers
    )
    validation_loader = accelerator.prepare(validation_loader)
    keys = training_keys(shards, data)
    count = len(keys) if keys is not None else f"about {len(train_set) * accelerator.num_processes}"
    return PreparedData(
        train_set,
        validation_set,
        train_loader,
        validation_loader,
        None,
        statistics_set,
        keys,
        f"{count} training images streamed from {len(shards)} shards",
    )


def prepare_data(accelerator, data: DataConfig, config: TrainConfig) -> PreparedData:
    """The data sets and their loaders, prepared by accelerate (sharded over the processes)."""
    with accelerator.main_process_first():  # the decoded cache is written once per machine
        train_set, validation_set = build_datasets(data, config.seed)
    train_loader, validation_loader, sampler = make_loaders(
        train_set,
        validation_set,
        config.train_batch_size,
        config.eval_batch_size,
        config.validation_images,
        config.seed,
        data.dataloader_num_workers,
    )
    train_loader, validation_loader = accelerator.prepare(train_loader, validation_loader)
    if len(train_loader) == 0:
        raise ColorizationError(
            f"the training set has {len(train_set)} images, fewer than one batch of "
            f"{config.train_batch_size} x {accelerator.num_processes} processes; lower --train_batch_size"
        )
    return PreparedData(
        train_set,
        validation_set,
        train_loader,
        validation_loader,
        sampler,
        train_set,
        split_hashes(train_set),
        f"{len(train_set)} training images",
    )


def export_model(
    folder: str,
    task: TrainingTask,
    progress: TrainingProgress,
    data_config: DataConfig,
    training_hashes: Optional[list],
    mean_ab,
    metrics: dict,
    costs: dict,
) -> None:
    """The live networks as an export in ``folder``, with what they are, how they were trained (``costs``), the
    validation ``metrics``, the selection (if any), and the record of the training data (mean ab, image hashes)."""
    os.makedirs(folder, exist_ok=True)
    # what identifies the data, never this machine's paths: an export travels to other machines and the Hub
    source = describe_source(data_config, path=False)
    settings = {key: value for key, value in asdict(data_config).items() if key not in MACHINE_PATH_FIELDS}
    training = {
        "global_step": progress.global_step,
        "data": source,
        "data_source": identify_source(data_config, training_hashes),
        "data_config": settings,
        "resolution": data_config.resolution,
        "validation": metrics,
        **costs,
    }
    extra = {"training": training, **({"selection": progress.selection} if progress.selection else {})}
    with task.evaluation_weights():
        task.export(folder, extra)
    hashes = None
    if training_hashes is not None:
        hashes = {"hash": "blake2b-64 of the image file's bytes", "images": training_hashes, "data": source}
    save_training_data_record(folder, mean_ab, hashes)


def training_costs(progress: TrainingProgress, accelerator, task: TrainingTask, precision: dict) -> dict:
    """Images seen and time taken, so that runs of different models can be compared, and the arithmetic: mixed
    precision and the ``precision`` of fp32 matrix products and convolutions (see hardware.fp32_precision)."""
    train_seconds = progress.wall_seconds - progress.overhead_seconds
    return {
        "images_seen": progress.images_seen,
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(progress.wall_seconds, 3),
        "images_per_second": round(progress.images_seen / train_seconds, 3) if train_seconds > 0 else None,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "fp32_precision": precision,
        "hardware": describe_hardware(accelerator.device, accelerator.num_processes),
        "parameters": {name: count_parameters(task.unwrapped(name)) for name in task.models},
    }


def make_accelerator(config: TrainConfig) -> Accelerator:
    try:
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            dynamo_backend="inductor" if config.torch_compile else None,
            project_config=ProjectConfiguration(
                project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "logs")
            ),
        )
    except ValueError as error:  # e.g. fp16 without a GPU
        raise ColorizationError(f"cannot set up training: {error}") from None
    check_processes(accelerator)
    use_all_cores(accelerator, config.cpu_threads)
    if accelerator.device.type == "cpu":
        reuse_freed_memory()
    return accelerator


def reuse_freed_memory() -> None:
    """On a CPU with glibc: keep freed blocks of up to 32 MiB in the heap for the next step's activations. glibc's
    defaults hand large freed blocks back to the system, so every step faults fresh zeroed pages in again (the
    small UNet's bf16 step: ~10% of its time on 2 cores, benchmarks/README.md). The process keeps what it freed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): its own allocator, left as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest
    mallopt(m_trim_threshold, 2**30)


def check_processes(accelerator: Accelerator) -> None:
    """Several processes were started but they are not connected: each would train alone as 'rank 0'."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ColorizationError(
            f"{launched} processes were launched but they are not connected (no distributed backend), so each "
            "would train alone. On CPU, launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {launched} ...; on GPUs, check that CUDA is available to every process."
        )


def _check_flag_defaults(task_class: type[TrainingTask]) -> None:
    known = {f.name for c in (TrainConfig, DataConfig, task_class.config_class) for f in dataclasses.fields(c)}
    unknown = set(task_class.flag_defaults) - known
    if unknown:
        raise TypeError(f"{task_class.__name__}.flag_defaults names unknown flags {sorted(unknown)}")


def build_parser(task_class: type[TrainingTask]) -> argparse.ArgumentParser:
    _check_flag_defaults(task_class)
    parser = argparse.ArgumentParser(
        description=f"Train the {task_class.model_type} colorization model.", formatter_class=HelpFormatter
    )
    add_dataclass_arguments(
        parser, TrainConfig, {"output_dir": f"runs/{task_class.model_type}", **task_class.flag_defaults}
    )
    add_dataclass_arguments(parser, DataConfig, task_class.flag_defaults)
    add_dataclass_arguments(parser, task_class.config_class, task_class.flag_defaults)
    return parser


def parse_args(task_class: type[TrainingTask], argv=None) -> tuple[TrainConfig, DataConfig, object]:
    """The flags, each checked, and the combinations checked too: a wrong value ends here in one line."""
    parser = build_parser(task_class)
    args = parser.parse_args(argv)
    train, data, model = (
        build_dataclass(TrainConfig, args),
        build_dataclass(DataConfig, args),
        build_dataclass(task_class.config_class, args),
    )
    if data.dataset_name and data.train_data_dir:
        parser.error("give either --dataset_name or --train_data_dir, not both")
    if train.push_to_hub and not train.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id owner/name")
    try:
        task_class(model, data.resolution).check_resolution(data.resolution)
    except ColorizationError as error:
        parser.error(str(error))
    problem = task_class.check_flags(model)
    if problem:
        parser.error(problem)
    return train, data, model


def run_training(task_class: type[TrainingTask], argv=None) -> dict:
    train_config, data_config, model_config = parse_args(task_class, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trainer = Trainer(task_class(model_config, data_config.resolution), train_config, data_config)
    try:
        metrics = trainer.train()
    finally:
        if getattr(trainer, "data", None) is not None:
            trainer.data.close()
        trainer.accelerator.end_training()
    if train_config.push_to_hub and trainer.accelerator.is_main_process:  # the export, never the checkpoints
        url = push(train_config.output_dir, train_config.hub_model_id, private=train_config.hub_private)
        print(f"pushed the exported model to {url}", flush=True)
    return metrics


def main(task_class: type[TrainingTask], argv=None) -> None:
    """Entry point of the ``train_*.py`` scripts."""
    cli_entry_point(run_training)(task_class, argv)
