"""The one training harness shared by every model, built on Hugging Face Accelerate.

A model family supplies a :class:`TrainingTask` (in :mod:`colorization.tasks`): its networks and optimizers
(by name: the GAN has two), one training step, a :class:`~colorization.colorizer.Colorizer` over its live
networks for validation, and its export. Everything else lives here once: flags, data loaders, mixed
precision, gradient accumulation, several processes, learning-rate schedules, TensorBoard, validation (through
:func:`colorization.measure.measure`, the function ``evaluate.py`` uses), checkpoints, exact resume, model
selection, and export.

Exact resume: a checkpoint holds the models, optimizers, schedulers and every process's RNG states
(accelerate's ``save_state``) plus, as safetensors and JSON (never pickles), the task's own state (e.g. the
EMA weights), the training progress (step, epoch, position in the epoch) and the statistics of the training
data. The data order and the flips are functions of (seed, epoch, index), so a run resumed at step k sees the
same batches and random numbers as one that never stopped, on any number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from colorization import checkpoints, color
from colorization.colorizer import (CONFIG_NAME, MEAN_AB_NAME, TRAINING_IMAGES_NAME, WEIGHTS_NAME, Colorizer,
                                    read_json_if_present, save_export_config, save_module_weights,
                                    save_training_data_record, write_json)
from colorization.config import (HelpFormatter, add_dataclass_arguments, build_dataclass, field, fraction,
                                 non_negative_float, non_negative_int, output_folder, positive_float, positive_int)
from colorization.data import (DataConfig, EpochShuffleSampler, batch_to_rgb, build_datasets, collate,
                               describe_source, split_hashes)
from colorization.errors import ColorizationError, cli_entry_point
from colorization.hardware import count_parameters, describe_hardware, use_all_cores
from colorization.measure import gray_baseline, measure, truth_values

logger = logging.getLogger("colorization")

METRICS_NAME = "validation_metrics.json"
SELECTED_DIR = "selected_model"
PROGRESS_NAME = "training_progress.json"
TASK_STATE_NAME = "task_state.json"
STATISTICS_NAME = "data_statistics.safetensors"
VALIDATION_SEED = 0  # the noise of validation samples: evaluate.py's default --seed, seeded per image alike
VALIDATION_METRICS = ("psnr", "ssim", "colorfulness")
MIN_VALIDATIONS_FOR_SELECTION = 10
SELECTION_PSNR_TOLERANCE_DB = 0.3


def checkpoint_request(text: str) -> str:
    """--resume_from_checkpoint: latest, or a checkpoint folder that exists."""
    if text != "latest" and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'latest' nor a checkpoint folder")
    return text


@dataclass
class TrainConfig:
    output_dir: str = field("runs/model", "Where checkpoints, TensorBoard logs and the exported model go.",
                            type=output_folder)
    seed: int = field(0, "Seed of weights, data order, flips and noise.")
    train_batch_size: int = field(32, "Images per process per step.", type=positive_int)
    eval_batch_size: int = field(32, "Images per process per validation batch.", type=positive_int)
    num_train_epochs: int = field(20, "Epochs to train (ignored when --max_train_steps is set).", type=positive_int)
    max_train_steps: Optional[int] = field(None, "Total optimizer steps; overrides --num_train_epochs.",
                                            type=positive_int)
    gradient_accumulation_steps: int = field(1, "Batches accumulated per optimizer step.", type=positive_int)
    learning_rate: float = field(1e-4, "Peak learning rate.", type=positive_float)
    lr_scheduler: str = field("cosine", "Learning-rate schedule: diffusers' constant, constant_with_warmup, linear "
                                        "or cosine, or constant_then_linear (pix2pix: constant for the first half, "
                                        "then linear decay to zero).",
                              choices=("constant", "constant_with_warmup", "linear", "cosine", "constant_then_linear"))
    lr_warmup_steps: int = field(0, "Linear warm-up steps.", type=non_negative_int)
    adam_beta1: float = field(0.9, "Adam beta1.", type=fraction)
    adam_beta2: float = field(0.999, "Adam beta2.", type=fraction)
    adam_weight_decay: float = field(0.0, "Weight decay (AdamW when non-zero).", type=non_negative_float)
    max_grad_norm: Optional[float] = field(1.0, "Clip gradients to this norm; none: no clipping (still logged).",
                                           type=positive_float)
    mixed_precision: Optional[str] = field(None, "no, fp16 or bf16; none: as set by accelerate launch/config.",
                                           choices=(None, "no", "fp16", "bf16"))
    logging_steps: int = field(10, "Log training scalars every N steps.", type=positive_int)
    validation_steps: int = field(500, "Validate (metrics and image grid) every N steps, and at the end.",
                                  type=positive_int)
    validation_images: Optional[int] = field(64, "Validate on the first N held-out images (the same every time; "
                                                 "none: all of them).", type=positive_int)
    initial_validation: bool = field(True, "Also validate before the first step (the untrained baseline).")
    num_grid_images: int = field(8, "Validation images shown in the gray | prediction | truth grid.",
                                 type=positive_int)
    model_selection: str = field("last", "Which step is exported: last, or best: the last validated step whose "
                                         f"PSNR is within {SELECTION_PSNR_TOLERANCE_DB} dB of the best so far and "
                                         "whose colorfulness is not above the ground truth's (see the README).",
                                 choices=("last", "best"))
    checkpointing_steps: int = field(500, "Save a resumable checkpoint every N steps, and at the end.",
                                     type=positive_int)
    checkpoints_total_limit: Optional[int] = field(3, "Keep at most N complete checkpoints (oldest pruned once a "
                                                      "newer one is complete).", type=positive_int)
    resume_from_checkpoint: Optional[str] = field(None, "latest, or a checkpoint folder, to continue a run.",
                                                  type=checkpoint_request)
    overwrite_output_dir: bool = field(False, "Start over in an --output_dir that holds an earlier run, deleting "
                                              "its checkpoints, logs and exported model.")
    allow_changed_settings: bool = field(False, "Resume even where settings that change the trained weights "
                                                "differ from the checkpoint's (recorded in run_config.json).")
    report_to: str = field("tensorboard", "Where to log.", choices=("tensorboard", "none"))
    cpu_threads: Optional[int] = field(None, "On a CPU: threads per process; none: the machine's cores shared "
                                             "among the processes on it (accelerate launch alone would use 1).",
                                             type=positive_int)
    torch_compile: bool = field(False, "Compile the trained networks with torch.compile (inductor).")
    channels_last: bool = field(False, "Keep convolution inputs and weights in channels-last memory format.")


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

    def colorizer(self) -> Colorizer:
        """The exported kind of :class:`Colorizer` over the live networks (already in eval mode, with the
        weights of :meth:`evaluation_weights`): validation measures exactly what the export will do."""
        raise NotImplementedError

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


def make_optimizer(parameters, config: TrainConfig, learning_rate: Optional[float] = None) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay) from the shared flags; the fused kernel on a GPU."""
    optimizer = torch.optim.AdamW if config.adam_weight_decay else torch.optim.Adam
    return optimizer(parameters, lr=learning_rate or config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                     weight_decay=config.adam_weight_decay, fused=torch.cuda.is_available() or None)


class NonFiniteLossError(ColorizationError):
    pass


@dataclass
class TrainingProgress:
    """Where the run is and what it has cost; saved as JSON with every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    images_skipped: int = 0
    images_seen: int = 0  # summed over resumed runs, like the times
    wall_seconds: float = 0.0  # training loop, validation and checkpoints (not start-up)
    overhead_seconds: float = 0.0  # validation and checkpoints within wall_seconds
    selection: Optional[dict] = None  # --model_selection best: the chosen step and why
    best_validation_psnr: Optional[float] = None  # --model_selection best: among the selectable steps


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
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.grad_norms: dict[str, torch.Tensor] = {}
        self.reference: Optional[dict] = None  # gray baseline and truth's colorfulness on the validation images
        self.last_checkpoint: Optional[str] = None
        self.statistics: dict = {}
        self.changed_settings: list[str] = []
        self.max_steps = 0
        self._first_nonfinite: Optional[torch.Tensor] = None
        self._log_due = False

    # ----- steps the task calls -----

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backward ``loss`` into model ``name`` and, on a synchronizing micro-step, clip and step its optimizer."""
        accelerator = self.accelerator
        self._watch(loss)
        self._backward(name, loss)
        optimizer = self.task.optimizers[name]
        if accelerator.sync_gradients:
            scaler = self.scalers.get(name)
            if scaler is not None:  # unscale this optimizer's gradients exactly once, before clipping
                scaler.unscale_(optimizer.optimizer)
            parameters = self.task.models[name].parameters()
            if self.config.max_grad_norm:
                self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
            elif self._log_due:  # no clipping: the norm is only computed when it is logged
                self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(parameters, float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _backward(self, name: str, loss: torch.Tensor) -> None:
        scaler = self.scalers.get(name)
        if scaler is None:
            self.accelerator.backward(loss)
            return
        # fp16 with several optimizers: each network's loss is scaled by that network's own scaler (each loss
        # reaches one network only), so one network's overflow never rescales the other's accumulated gradients.
        shared, self.accelerator.scaler = self.accelerator.scaler, scaler
        try:
            self.accelerator.backward(loss)
        finally:
            self.accelerator.scaler = shared

    def _watch(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss is not finite, on the device (no host sync every step); the
        harness checks it before every log, checkpoint, validation and export."""
        bad = ~torch.isfinite(loss.detach().float())
        step = torch.full_like(self._first_nonfinite, self.progress.global_step + 1)
        first = self._first_nonfinite
        self._first_nonfinite = torch.where(bad & (first < 0), step, first)

    def _check_finite(self) -> None:
        # the same reduced value on every process, so that all of them stop together
        worst = self.accelerator.reduce(self._first_nonfinite.clone(), reduction="max")
        if worst.item() >= 0:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            error = NonFiniteLossError(
                f"the loss became nan or infinite at step {int(worst.item())}{where}. Lower --learning_rate, keep "
                "--max_grad_norm, or try --mixed_precision no, then resume with --resume_from_checkpoint latest.")
            # Every process stops here together. The message is said once, by the main process, before any
            # process exits: a launcher ends the others as soon as one exits, mid-sentence.
            if self.accelerator.is_main_process:
                tqdm.write(f"error: {error}", file=sys.stderr)  # on a line of its own, under the progress bar
            error.reported = True
            self.accelerator.wait_for_everyone()
            raise error

    # ----- set-up -----

    def _data_loaders(self):
        config, data = self.config, self.data_config
        with self.accelerator.main_process_first():  # the decoded cache is written once per machine
            train_set, validation_set = build_datasets(data, config.seed)
        self.train_set, self.validation_set = train_set, validation_set
        if config.validation_images is not None:
            validation_set = Subset(validation_set, range(min(config.validation_images, len(validation_set))))
        # Own generators: creating an iterator must not draw from the global RNG (exact resume).
        common = dict(num_workers=data.dataloader_num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                      persistent_workers=data.dataloader_num_workers > 0)
        self.train_sampler = EpochShuffleSampler(len(train_set), config.seed)
        train_loader = DataLoader(train_set, batch_size=config.train_batch_size, sampler=self.train_sampler,
                                  drop_last=True, generator=torch.Generator().manual_seed(config.seed), **common)
        validation_loader = DataLoader(validation_set, batch_size=config.eval_batch_size, shuffle=False,
                                       generator=torch.Generator().manual_seed(config.seed), **common)
        return self.accelerator.prepare(train_loader, validation_loader)

    def _data_statistics(self) -> dict:
        """The training images' per-pixel mean ab (Lab units, averaged with its mirror image, since training
        flips half the images) and the standard deviation of their normalized ab, from one pass over them."""
        loader = DataLoader(self.train_set, batch_size=64, shuffle=False, collate_fn=collate,
                            num_workers=self.data_config.dataloader_num_workers)
        total = total_sq = None
        count = 0
        for batch in loader:  # flips change neither statistic (the mean is averaged with its mirror image)
            _, ab = color.rgb_to_normalized_lab(batch_to_rgb(batch, torch.device("cpu")))
            ab = ab.double()
            total = ab.sum(dim=0) if total is None else total + ab.sum(dim=0)
            total_sq = ab.pow(2).sum() if total_sq is None else total_sq + ab.pow(2).sum()
            count += len(ab)
        mean = total / count
        ab_std = math.sqrt(max(float(total_sq / (count * mean.numel())) - float(mean.mean()) ** 2, 0.0))
        mean_ab = color.denormalize_ab(0.5 * (mean + mean.flip(-1))).float()
        return {"mean_ab": mean_ab, "ab_std": torch.tensor(ab_std)}

    def _schedule(self, num_update_steps: int):
        from diffusers.optimization import get_scheduler

        # A prepared scheduler steps once per process per optimizer step, so lengths scale with processes.
        scale = self.accelerator.num_processes
        warmup, total = self.config.lr_warmup_steps * scale, num_update_steps * scale
        schedules = {}
        for name, optimizer in self.task.optimizers.items():
            if self.config.lr_scheduler == "constant_then_linear":
                schedules[name] = torch.optim.lr_scheduler.LambdaLR(optimizer, constant_then_linear(warmup, total))
            else:
                schedules[name] = get_scheduler(self.config.lr_scheduler, optimizer, num_warmup_steps=warmup,
                                                num_training_steps=total)
        return schedules

    def _prepare_models(self, max_steps: int, statistics: Optional[dict] = None) -> None:
        task, accelerator = self.task, self.accelerator
        task.accelerator = accelerator
        self.max_steps = max_steps
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        self.statistics = statistics if statistics is not None else {
            "mean_ab": torch.zeros(2, task.resolution, task.resolution), "ab_std": torch.tensor(0.25)}
        with accelerator.main_process_first():  # pretrained weights are downloaded once per machine
            task.build(self.config, self.statistics)
        if self.config.channels_last:
            for model in task.models.values():
                model.to(memory_format=torch.channels_last)
        schedulers = self._schedule(max_steps)
        # Every schedule follows the global step, also while its optimizer waits (the GAN's discriminator
        # during the warm start); PyTorch warns about exactly that.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        names, opt_names = list(task.models), list(task.optimizers)
        prepared = accelerator.prepare(*task.models.values(), *task.optimizers.values(), *schedulers.values())
        task.models = dict(zip(names, prepared[:len(names)]))
        task.optimizers = dict(zip(opt_names, prepared[len(names):len(names) + len(opt_names)]))
        self.schedulers = dict(zip(opt_names, prepared[len(names) + len(opt_names):]))
        for name in names:
            # The harness enters accelerator.autocast() around each training step itself; without accelerate's
            # own autocast wrapper around forward, validation and export run the networks in fp32 as evaluate.py does.
            accelerator.unwrap_model(task.models[name], keep_fp32_wrapper=False)
        if accelerator.scaler is not None:  # fp16: gradients are unscaled by us, once, before clipping
            shared = accelerator.scaler
            for index, name in enumerate(opt_names):
                scaler = shared if index == 0 else torch.amp.GradScaler(
                    shared._device, init_scale=shared.get_scale(), growth_factor=shared.get_growth_factor(),
                    backoff_factor=shared.get_backoff_factor(), growth_interval=shared.get_growth_interval())
                self.scalers[name] = scaler
                task.optimizers[name].scaler = scaler
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    # ----- checkpoints -----

    def _save_hook(self, models, weights, output_dir: str) -> None:
        """Our state next to accelerate's: JSON and safetensors, written by the main process."""
        if not self.accelerator.is_main_process:
            return
        progress = {**asdict(self.progress), "max_steps": self.max_steps}
        write_json(os.path.join(output_dir, PROGRESS_NAME), progress)
        state = self.task.state_dict()
        tensors = state.pop("tensors", {})
        state["scalers"] = {name: scaler.state_dict() for name, scaler in self.scalers.items()
                            if scaler is not self.accelerator.scaler}
        write_json(os.path.join(output_dir, TASK_STATE_NAME), state)
        if tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                      os.path.join(output_dir, "task_state.safetensors"))
        save_file({k: v.contiguous().cpu() for k, v in self.statistics.items()}, os.path.join(output_dir, STATISTICS_NAME))

    def _load_hook(self, models, input_dir: str) -> None:
        with open(os.path.join(input_dir, PROGRESS_NAME)) as handle:
            progress = json.load(handle)
        progress.pop("max_steps", None)
        vars(self.progress).update(TrainingProgress(**progress).__dict__)  # in place: the loop holds this object
        with open(os.path.join(input_dir, TASK_STATE_NAME)) as handle:
            state = json.load(handle)
        for name, scaler_state in state.pop("scalers", {}).items():
            self.scalers[name].load_state_dict(scaler_state)
        tensors_file = os.path.join(input_dir, "task_state.safetensors")
        if os.path.isfile(tensors_file):
            state["tensors"] = load_file(tensors_file, device=str(self.accelerator.device))
        self.task.load_state_dict(state)

    def save_checkpoint(self) -> None:
        accelerator, config = self.accelerator, self.config
        self._check_finite()
        self._tick()
        path = checkpoints.checkpoint_dir(config.output_dir, self.progress.global_step)
        if accelerator.is_main_process and os.path.exists(path):
            shutil.rmtree(path)  # the remains of an interrupted save, or this run's own, replaced
        accelerator.wait_for_everyone()
        accelerator.save_state(path)  # every process: each saves its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(os.path.join(path, checkpoints.RUN_CONFIG_NAME), self.run_config())
            checkpoints.mark_complete(path, {"global_step": self.progress.global_step})  # last: now it counts
            checkpoints.prune(config.output_dir, config.checkpoints_total_limit)
        self.last_checkpoint = path
        accelerator.wait_for_everyone()

    def _start_or_resume(self) -> Optional[str]:
        """Check the output folder -> the checkpoint to resume from, or None to start a new run there."""
        config, exported = self.config, self.task.exported_files
        request = config.resume_from_checkpoint
        previous = checkpoints.run_files(config.output_dir, exported)
        if not request:
            if previous and not config.overwrite_output_dir:
                raise ColorizationError(
                    f"--output_dir {config.output_dir} holds an earlier run ({', '.join(previous)}). Continue it with "
                    "--resume_from_checkpoint latest, start over with --overwrite_output_dir (deletes that run), or "
                    "choose another --output_dir.")
            if previous:
                self._clear_previous_run(f"--overwrite_output_dir: deleted the earlier run in {config.output_dir}")
            return None
        if request == "latest":
            path, incomplete = checkpoints.latest_complete(config.output_dir)
            for skipped in incomplete:
                self.log(f"skipping {skipped}: incomplete (its save was interrupted)")
            if path is None:
                if any(os.path.exists(os.path.join(config.output_dir, name)) for name in exported):
                    raise ColorizationError(
                        f"--output_dir {config.output_dir} holds an exported model but no complete checkpoint to "
                        "resume; use --overwrite_output_dir to train anew, or another --output_dir.")
                if previous:
                    self._clear_previous_run(f"no complete checkpoint in {config.output_dir}: starting a new run "
                                             "(the earlier attempt's logs were deleted)")
                else:
                    self.log(f"no checkpoint in {config.output_dir}: starting a new run")
                return None
            return path
        if not os.path.isdir(request):
            raise ColorizationError(f"--resume_from_checkpoint {request!r} is not a checkpoint folder")
        if not checkpoints.is_complete(request):
            raise ColorizationError(f"--resume_from_checkpoint {request!r} is incomplete (no "
                                    f"{checkpoints.COMPLETE_MARKER}: its save was interrupted); use an earlier one")
        return request

    def _clear_previous_run(self, message: str) -> None:
        if self.accelerator.is_main_process:
            checkpoints.clear_run_files(self.config.output_dir, self.task.exported_files)
        self.accelerator.wait_for_everyone()
        self.log(message)

    def _check_settings(self, path: str) -> None:
        saved = checkpoints.read_run_config(path)
        if saved is None:
            raise ColorizationError(f"cannot resume from {path!r}: it has no {checkpoints.RUN_CONFIG_NAME}")
        differences = checkpoints.changed_settings(saved, self.run_config())
        if differences and not self.config.allow_changed_settings:
            raise ColorizationError(
                f"cannot resume from {path}: these settings differ from the checkpoint's and would make a different "
                "run:\n  " + "\n  ".join(differences) + "\nResume with the same settings, or add "
                "--allow_changed_settings to go on anyway (recorded in run_config.json).")
        self.changed_settings = saved.get("changed_settings", []) + (
            [f"at step {saved.get('global_step')}: {d}" for d in differences])

    def _resume(self, path: str) -> None:
        try:
            self.accelerator.load_state(path)
        except (FileNotFoundError, KeyError, RuntimeError, ValueError, TypeError) as error:
            raise ColorizationError(f"cannot resume from {path!r}: {str(error).splitlines()[0]} "
                                    "(was it written by a different model or configuration?)") from None
        self.last_checkpoint = path
        self.log(f"resumed from {path} at step {self.progress.global_step}")

    # ----- logging, validation -----

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

    def run_config(self) -> dict:
        config = {"model_type": self.task.model_type, "train": asdict(self.config), "data": asdict(self.data_config),
                  "model": asdict(self.task.config), "num_processes": self.accelerator.num_processes,
                  "mixed_precision": self.accelerator.mixed_precision, "command": " ".join(sys.argv),
                  "global_step": self.progress.global_step}
        if self.changed_settings:
            config["changed_settings"] = self.changed_settings
        return config

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
        self._check_finite()
        task = self.task
        self._broadcast_buffers()
        for model in task.models.values():
            model.eval()
        try:
            with task.evaluation_weights():
                metrics, first_batch = self._validation_pass(task.colorizer())
        finally:
            for model in task.models.values():
                model.train()
        if self.config.model_selection == "best":
            self._select(metrics)
            metrics["selected_step"] = self.progress.selection["step"] if self.progress.selection else float("nan")
        self._log_grid(*first_batch)
        self._track({f"validation/{key}": value for key, value in metrics.items() if not math.isnan(value)})
        self.log(f"step {self.progress.global_step}: validation " +
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "num_images"))
        return metrics

    def _validation_pass(self, colorizer: Colorizer):
        accelerator, task = self.accelerator, self.task
        per_image: dict[str, list] = {}
        first_batch = None
        for batch in self.validation_loader:
            truth = batch_to_rgb(batch, accelerator.device)
            values, prediction, predicted_ab = measure(colorizer, truth, batch["index"], VALIDATION_SEED,
                                                       VALIDATION_METRICS)
            lightness, ab = color.rgb_to_normalized_lab(truth)
            values.update(task.validation_losses(lightness, ab, predicted_ab))
            if self.reference is None:
                gray, _ = gray_baseline(truth, ("psnr", "ssim"))
                values.update({f"{k}_gray": v for k, v in gray.items()})
                values["colorfulness_truth"] = truth_values(truth, ("colorfulness",))["colorfulness"]
            for key, value in accelerator.gather_for_metrics({k: v.float() for k, v in values.items()}).items():
                per_image.setdefault(key, []).append(value.cpu())
            if first_batch is None:
                first_batch = (truth, lightness, prediction)
        metrics = {key: torch.cat(chunks).mean().item() for key, chunks in per_image.items()}
        if self.reference is None:
            self.reference = {k: metrics[k] for k in ("psnr_gray", "ssim_gray", "colorfulness_truth")}
        metrics.update(self.reference)
        metrics["num_images"] = sum(len(c) for c in per_image["psnr"])
        return metrics, first_batch

    def _select(self, metrics: dict) -> None:
        """--model_selection best: the last validated (selectable) step that is still faithful, PSNR within
        SELECTION_PSNR_TOLERANCE_DB of the best so far (validation numbers move that much between neighbouring
        steps), and does not paint more color than the photos have; if no step qualifies, the best PSNR.

        Decided online, at each validation: a step that qualifies replaces the choice, and is exported at once."""
        step = self.progress.global_step
        first, last = self.task.selectable_steps(self.max_steps)
        if not first <= step <= last:
            return
        best, qualified, take = selection_step(self.progress.selection, self.progress.best_validation_psnr, metrics)
        self.progress.best_validation_psnr = best
        if not take:
            return
        validation_images = len(self.validation_loader.dataset)
        rule = (f"the last validated step whose PSNR is within {SELECTION_PSNR_TOLERANCE_DB} dB of the best "
                "validation PSNR so far and whose colorfulness is not above the ground truth's")
        self.progress.selection = {**metrics, "step": step, "qualified": qualified, "best_psnr_so_far": best,
                                   "rule": rule + ("" if qualified else " (no step qualified: best PSNR overall)"),
                                   # evaluate.py leaves these out: a model is not scored on what chose it
                                   "images": split_hashes(self.validation_set)[:validation_images]}
        if self.accelerator.is_main_process:
            # exported beside the previous choice and swapped in: a crash leaves one whole export or none
            folder = os.path.join(self.config.output_dir, SELECTED_DIR)
            partial, previous = folder + checkpoints.PARTIAL_SUFFIX, folder + checkpoints.REPLACED_SUFFIX
            for leftover in (partial, previous):
                shutil.rmtree(leftover, ignore_errors=True)
            self._export(partial, metrics)
            if os.path.isdir(folder):
                os.replace(folder, previous)
            os.replace(partial, folder)
            shutil.rmtree(previous, ignore_errors=True)
        self.accelerator.wait_for_everyone()

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
        resume_path = self._start_or_resume()
        set_seed(config.seed)
        train_loader, self.validation_loader = self._data_loaders()
        if len(train_loader) == 0:
            raise ColorizationError(
                f"the training set has {len(self.train_set)} images, fewer than one batch of "
                f"{config.train_batch_size} x {accelerator.num_processes} processes; lower --train_batch_size")
        steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
        max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        num_epochs = math.ceil(max_steps / steps_per_epoch)
        first, last = task.selectable_steps(max_steps)
        if config.model_selection == "best" and (last - first + 1) // config.validation_steps < MIN_VALIDATIONS_FOR_SELECTION:
            config.validation_steps = max(1, (last - first + 1) // MIN_VALIDATIONS_FOR_SELECTION)
            self.log(f"--model_selection best: validating every {config.validation_steps} steps (at least "
                     f"{MIN_VALIDATIONS_FOR_SELECTION} validations to choose from, steps {first} to {last})")
        if resume_path:  # after the cadence is settled: under --model_selection best it is part of the run
            self._check_settings(resume_path)
        if resume_path:  # the data statistics of the run, not measured again
            statistics = load_file(os.path.join(resume_path, STATISTICS_NAME))
        else:
            statistics = self._data_statistics()
        self._prepare_models(max_steps, statistics)
        if resume_path:
            self._resume(resume_path)
        self._clock = time.perf_counter()
        if accelerator.is_main_process:
            os.makedirs(config.output_dir, exist_ok=True)
            write_json(os.path.join(config.output_dir, checkpoints.RUN_CONFIG_NAME), self.run_config())
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
        images_per_step = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        try:
            while progress.global_step < max_steps and progress.epoch < num_epochs:
                # The prepared loader hands its own epoch counter to the sampler when it starts: set that counter,
                # and the sampler itself, which several processes and a skip put out of the counter's reach.
                loader = train_loader
                if progress.batches_in_epoch:
                    loader = accelerator.skip_first_batches(train_loader, progress.batches_in_epoch)
                loader.set_epoch(progress.epoch)
                self.train_sampler.set_epoch(progress.epoch)
                for batch in loader:
                    rgb = batch_to_rgb(batch, accelerator.device)
                    lightness, ab = color.rgb_to_normalized_lab(rgb)
                    if config.channels_last:
                        lightness = lightness.contiguous(memory_format=torch.channels_last)
                        ab = ab.contiguous(memory_format=torch.channels_last)
                    step = progress.global_step + 1
                    self._log_due = step % config.logging_steps == 0 or step == max_steps
                    # One accumulate context for all models: accelerate counts a micro-step per context entered.
                    with accelerator.accumulate(*task.models.values()), accelerator.autocast():
                        logs = task.training_step(self, lightness, ab)
                    progress.batches_in_epoch += 1
                    micro_steps += 1
                    images_skipped += batch["skipped"].to(accelerator.device)
                    for key, value in logs.items():
                        # NaN means "nothing to report this step" (e.g. no image in a timestep quartile)
                        value = value.detach().float().to(accelerator.device)
                        present = torch.isfinite(value)
                        sums[key] = sums.get(key, 0.0) + torch.where(present, value, 0.0)
                        counts[key] = counts.get(key, 0.0) + present.float()
                    if not accelerator.sync_gradients:
                        continue
                    for scheduler in self.schedulers.values():  # every schedule follows the global step
                        scheduler.step()
                    progress.global_step += 1
                    progress.images_seen += images_per_step
                    bar.update(1)
                    if progress.global_step % config.logging_steps == 0 or progress.global_step == max_steps:
                        self._check_finite()
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
        paused = time.perf_counter()
        if metrics is None or validated_at != progress.global_step:
            metrics = self.validate()
        if saved_at != progress.global_step:
            self.save_checkpoint()
        progress.overhead_seconds += time.perf_counter() - paused
        self._tick()
        return self._finish(metrics)

    def _scalars(self, images_per_second: float) -> dict:
        values = {"train/images_per_second": images_per_second}
        several = len(self.schedulers) > 1
        for name, scheduler in self.schedulers.items():
            suffix = f"_{name}" if several else ""
            values[f"train/lr{suffix}"] = scheduler.get_last_lr()[0]
            if name in self.grad_norms:
                values[f"train/grad_norm{suffix}"] = float(self.grad_norms[name])
        return values

    def _export(self, folder: str, metrics: dict) -> None:
        """Write the exported model, with what it is and how it was trained, into ``folder`` (main process)."""
        os.makedirs(folder, exist_ok=True)
        extra = {"training": {"global_step": self.progress.global_step, "data": describe_source(self.data_config),
                              "data_config": asdict(self.data_config), "resolution": self.data_config.resolution,
                              "validation": metrics, **self.training_costs()}}
        if self.progress.selection:
            extra["selection"] = self.progress.selection
        with self.task.evaluation_weights():
            self.task.export(folder, extra)
        hashes = {"hash": "blake2b-64 of the image file's bytes", "images": split_hashes(self.train_set),
                  "data": describe_source(self.data_config)}
        save_training_data_record(folder, self.statistics["mean_ab"], hashes)

    def _selected_export_ready(self) -> bool:
        """Whether selected_model/ holds the export of the step that the selection chose (and nothing else)."""
        if self.config.model_selection != "best" or not self.progress.selection:
            return False
        try:
            exported = read_json_if_present(os.path.join(self.config.output_dir, SELECTED_DIR, CONFIG_NAME))
        except (OSError, ValueError):
            return False
        return bool(exported) and (exported.get("selection") or {}).get("step") == self.progress.selection["step"]

    def _finish(self, metrics: dict) -> dict:
        """Export (the chosen step's model under --model_selection best) -> the exported model's metrics."""
        accelerator, config = self.accelerator, self.config
        selected = os.path.join(config.output_dir, SELECTED_DIR)
        use_selected = self._selected_export_ready()  # the same answer on every process: one shared folder
        accelerator.wait_for_everyone()
        if config.model_selection == "best" and self.progress.selection and not use_selected:
            # The chosen step's weights are gone (a crash while they were exported): export the weights there
            # are, under their own step's label and metrics, never under the chosen step's.
            self.log(f"warning: the export of the chosen step {self.progress.selection['step']} ({selected}) is "
                     f"missing or incomplete; exporting the last step ({self.progress.global_step}) instead")
            self.progress.selection = None
        if use_selected:
            chosen = {k: v for k, v in self.progress.selection.items() if k != "images"}
            metrics = {**chosen, "validation_at_last_step": metrics}
        if accelerator.is_main_process:
            if use_selected:
                # the chosen step's export, with the whole run's costs
                shutil.copytree(selected, config.output_dir, dirs_exist_ok=True)
                shutil.rmtree(selected)
                exported = os.path.join(config.output_dir, CONFIG_NAME)
                with open(exported) as handle:
                    record = json.load(handle)
                record["training"].update(self.training_costs(), final_step=self.progress.global_step)
                write_json(exported, record)
            else:
                self._export(config.output_dir, metrics)
                shutil.rmtree(selected, ignore_errors=True)  # a stale choice, if any, is not left to mislead
            write_json(os.path.join(config.output_dir, METRICS_NAME),
                       {"step": self.progress.global_step, **metrics, "training": self.training_costs()})
            print(format_metrics(metrics, self.progress.global_step, config.output_dir), flush=True)
        accelerator.wait_for_everyone()
        return metrics


def selection_step(chosen: Optional[dict], best_psnr: Optional[float], metrics: dict) -> tuple[float, bool, bool]:
    """One validation under --model_selection best -> (the best PSNR so far, whether this step qualifies, whether
    it replaces the ``chosen`` one). See Trainer._select."""
    best = max(best_psnr if best_psnr is not None else -math.inf, metrics["psnr"])
    qualified = (metrics["psnr"] >= best - SELECTION_PSNR_TOLERANCE_DB
                 and metrics["colorfulness"] <= metrics["colorfulness_truth"])
    take = qualified or chosen is None or (not chosen["qualified"] and metrics["psnr"] > chosen["psnr"])
    return best, qualified, take


def format_metrics(metrics: dict, step: int, output_dir: str) -> str:
    lines = [f"Validation after {step} steps on {metrics['num_images']} images (model exported to {output_dir}):"]
    if "validation_at_last_step" in metrics:
        lines = [f"Exported the model of step {metrics['step']} of {step} to {output_dir} (--model_selection best: "
                 f"{metrics['rule']}). Its validation on {metrics['num_images']} images:"]
    lines += [f"  {'':<22}{'PSNR (dB)':>10}{'SSIM':>9}{'Colorfulness':>14}",
              f"  {'model':<22}{metrics['psnr']:>10.2f}{metrics['ssim']:>9.4f}{metrics['colorfulness']:>14.2f}",
              f"  {'gray (ab = 0)':<22}{metrics['psnr_gray']:>10.2f}{metrics['ssim_gray']:>9.4f}{0.0:>14.2f}",
              f"  {'ground truth':<22}{'':>10}{'':>9}{metrics['colorfulness_truth']:>14.2f}"]
    return "\n".join(lines)


def constant_then_linear(warmup: int, total: int):
    """pix2pix's schedule as a LambdaLR factor: constant for the first half (after ``warmup``), then linear to 0."""
    half = total // 2

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * (1.0 if step < half else max(0.0, (total - step) / max(1, total - half)))

    return factor


def make_accelerator(config: TrainConfig) -> Accelerator:
    try:
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            dynamo_backend="inductor" if config.torch_compile else None,
            project_config=ProjectConfiguration(project_dir=config.output_dir,
                                                logging_dir=os.path.join(config.output_dir, "logs")))
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


def _check_flag_defaults(task_class: type[TrainingTask]) -> None:
    known = {f.name for c in (TrainConfig, DataConfig, task_class.config_class) for f in dataclasses.fields(c)}
    unknown = set(task_class.flag_defaults) - known
    if unknown:
        raise TypeError(f"{task_class.__name__}.flag_defaults names unknown flags {sorted(unknown)}")


def build_parser(task_class: type[TrainingTask]) -> argparse.ArgumentParser:
    _check_flag_defaults(task_class)
    parser = argparse.ArgumentParser(description=f"Train the {task_class.model_type} colorization model.",
                                     formatter_class=HelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, {"output_dir": f"runs/{task_class.model_type}", **task_class.flag_defaults})
    add_dataclass_arguments(parser, DataConfig, task_class.flag_defaults)
    add_dataclass_arguments(parser, task_class.config_class, task_class.flag_defaults)
    return parser


def parse_args(task_class: type[TrainingTask], argv=None) -> tuple[TrainConfig, DataConfig, object]:
    """The flags, each checked, and the combinations checked too: a wrong value ends here in one line."""
    parser = build_parser(task_class)
    args = parser.parse_args(argv)
    train, data, model = (build_dataclass(TrainConfig, args), build_dataclass(DataConfig, args),
                          build_dataclass(task_class.config_class, args))
    if data.dataset_name and data.train_data_dir:
        parser.error("give either --dataset_name or --train_data_dir, not both")
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
        return trainer.train()
    finally:
        trainer.accelerator.end_training()


def main(task_class: type[TrainingTask], argv=None) -> None:
    """Entry point of the ``train_*.py`` scripts."""
    cli_entry_point(run_training)(task_class, argv)
