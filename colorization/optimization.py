"""The optimizer steps of a run: backward through the right gradient scaler, clipping, the step, learning-rate
schedules that follow the global step, and the watch for a loss that is not finite.

A task's training step calls :meth:`Optimization.optimize` once per network it trains (the GAN: two). The harness
runs the training step under autocast for its forward passes and losses; everything :meth:`~Optimization.optimize`
does (backward, unscaling, clipping, the optimizer step and the task's own after-step work such as an EMA update)
runs with autocast off, as PyTorch advises: under autocast the backward ops would be autocast again (the
gradients of an op that ran in fp32, e.g. in a loss computed in fp32, would be computed in bf16).
"""

from __future__ import annotations

import sys
import warnings
from typing import Optional

import torch
from tqdm.auto import tqdm

from colorization.errors import ColorizationError


class NonFiniteLossError(ColorizationError):
    pass


def constant_then_linear(warmup: int, total: int):
    """pix2pix's schedule as a LambdaLR factor: constant for the first half (after ``warmup``), then linear to 0."""
    half = total // 2

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * (1.0 if step < half else max(0.0, (total - step) / max(1, total - half)))

    return factor


def make_schedules(optimizers: dict, kind: str, warmup_steps: int, total_steps: int, num_processes: int) -> dict:
    """A learning-rate schedule per optimizer, in optimizer steps of the whole run."""
    from diffusers.optimization import get_scheduler

    # A prepared scheduler steps once per process per optimizer step, so lengths scale with processes.
    warmup, total = warmup_steps * num_processes, total_steps * num_processes
    # Every schedule follows the global step, also while its optimizer waits (the GAN's discriminator during
    # the warm start); PyTorch warns about exactly that.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    if kind == "constant_then_linear":
        return {
            name: torch.optim.lr_scheduler.LambdaLR(optimizer, constant_then_linear(warmup, total))
            for name, optimizer in optimizers.items()
        }
    return {
        name: get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        for name, optimizer in optimizers.items()
    }


def prepare_networks(accelerator, task, config, max_steps: int) -> dict:
    """The task's built networks and optimizers, with a schedule each, prepared by accelerate (in place in the
    task) -> the prepared schedules by optimizer name."""
    if config.channels_last:
        for model in task.models.values():
            model.to(memory_format=torch.channels_last)
    schedules = make_schedules(
        task.optimizers, config.lr_scheduler, config.lr_warmup_steps, max_steps, accelerator.num_processes
    )
    names, opt_names = list(task.models), list(task.optimizers)
    prepared = accelerator.prepare(*task.models.values(), *task.optimizers.values(), *schedules.values())
    task.models = dict(zip(names, prepared[: len(names)]))
    task.optimizers = dict(zip(opt_names, prepared[len(names) : len(names) + len(opt_names)]))
    for name in names:
        # The harness enters accelerator.autocast() around each training step itself; without accelerate's own
        # autocast wrapper around forward, validation and export run the networks in fp32 as evaluate.py does.
        accelerator.unwrap_model(task.models[name], keep_fp32_wrapper=False)
    return dict(zip(opt_names, prepared[len(names) + len(opt_names) :]))


class Optimization:
    """Backward, clip and step each trained network; remember the first step whose loss was not finite."""

    def __init__(self, accelerator, task, max_grad_norm: Optional[float]):
        self.accelerator = accelerator
        self.task = task
        self.max_grad_norm = max_grad_norm
        self.schedulers: dict[str, object] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.grad_norms: dict[str, torch.Tensor] = {}
        self.log_due = False  # the next optimizer step is logged: compute the gradient norm even without clipping
        self.step_number = 1  # the global step the next optimizer step makes (1-based)
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=accelerator.device)

    def use_scalers(self) -> None:
        """fp16: one gradient scaler per optimizer (the shared one for the first), unscaled by us, once."""
        shared = self.accelerator.scaler
        if shared is None:
            return
        for index, name in enumerate(self.task.optimizers):
            scaler = (
                shared
                if index == 0
                else torch.amp.GradScaler(
                    shared._device,
                    init_scale=shared.get_scale(),
                    growth_factor=shared.get_growth_factor(),
                    backoff_factor=shared.get_backoff_factor(),
                    growth_interval=shared.get_growth_interval(),
                )
            )
            self.scalers[name] = scaler
            self.task.optimizers[name].scaler = scaler

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backward ``loss`` into model ``name`` and, on a synchronizing micro-step, clip and step its optimizer and
        call the task's ``after_optimizer_step``: all with autocast off (see the module's docstring)."""
        self.watch(loss)
        with torch.autocast(self.accelerator.device.type, enabled=False):
            self._backward(name, loss)
            self._step(name)

    def _step(self, name: str) -> None:
        """Clip and step network ``name``'s optimizer, then the task's after-step work, on a synchronizing
        micro-step (accelerate's optimizer does not step on a micro-step that only accumulates)."""
        optimizer = self.task.optimizers[name]
        synchronizing = self.accelerator.sync_gradients
        if synchronizing:
            scaler = self.scalers.get(name)
            if scaler is not None:  # unscale this optimizer's gradients exactly once, before clipping
                scaler.unscale_(optimizer.optimizer)
            parameters = self.task.models[name].parameters()
            if self.max_grad_norm:
                self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            elif self.log_due:  # no clipping: the norm is only computed when it is logged
                self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(parameters, float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if synchronizing:
            self.task.after_optimizer_step(name)

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

    def step_schedules(self) -> None:
        for scheduler in self.schedulers.values():  # every schedule follows the global step
            scheduler.step()

    def watch(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss is not finite, on the device (no host sync every step);
        :meth:`check_finite` reads it before every log, checkpoint, validation and export."""
        bad = ~torch.isfinite(loss.detach().float())
        step = torch.full_like(self._first_nonfinite, self.step_number)
        first = self._first_nonfinite
        self._first_nonfinite = torch.where(bad & (first < 0), step, first)

    def check_finite(self, last_checkpoint: Optional[str]) -> None:
        # the same reduced value on every process, so that all of them stop together
        worst = self.accelerator.reduce(self._first_nonfinite.clone(), reduction="max")
        if worst.item() < 0:
            return
        where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
        error = NonFiniteLossError(
            f"the loss became nan or infinite at step {int(worst.item())}{where}. Lower --learning_rate, keep "
            "--max_grad_norm, or try --mixed_precision no, then resume with --resume_from_checkpoint latest."
        )
        # Every process stops here together. The message is said once, by the main process, before any process
        # exits: a launcher ends the others as soon as one exits, mid-sentence.
        if self.accelerator.is_main_process:
            tqdm.write(f"error: {error}", file=sys.stderr)  # on a line of its own, under the progress bar
        error.reported = True
        self.accelerator.wait_for_everyone()
        raise error

    def scalars(self) -> dict:
        """The learning rates and gradient norms to log (suffixed by network when there are several)."""
        values = {}
        several = len(self.schedulers) > 1
        for name, scheduler in self.schedulers.items():
            suffix = f"_{name}" if several else ""
            values[f"train/lr{suffix}"] = scheduler.get_last_lr()[0]
            if name in self.grad_norms:
                values[f"train/grad_norm{suffix}"] = float(self.grad_norms[name])
        return values
