"""What a run says: messages on the main process, scalars and images to TensorBoard, and the means of the
training values between two logs (reduced over processes)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class Tracker:
    def __init__(self, accelerator, report_to: str):
        self.accelerator = accelerator
        self.enabled = report_to != "none"

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def start(self, run_name: str, run_config: dict) -> None:
        """Open the TensorBoard run with the resolved flags as its hyperparameters."""
        if self.enabled:
            flat = {
                f"{group}/{k}": _plain(v) for group in ("train", "data", "model") for k, v in run_config[group].items()
            }
            self.accelerator.init_trackers(run_name, config=flat)

    def track(self, values: dict, step: int) -> None:
        if self.enabled:
            self.accelerator.log(values, step=step)

    def track_image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.enabled and self.accelerator.is_main_process:
            self.accelerator.get_tracker("tensorboard").log_images({tag: grid[None]}, step=step)


class ScalarWindow:
    """Sums of the values a task's training steps report, between two logs, on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.micro_steps = 0
        self.images_skipped = torch.zeros((), device=self.device)

    def add(self, logs: dict[str, torch.Tensor], images_skipped: torch.Tensor) -> None:
        self.micro_steps += 1
        self.images_skipped += images_skipped.to(self.device)
        for key, value in logs.items():
            # NaN means "nothing to report this step" (e.g. no image in a timestep quartile)
            value = value.detach().float().to(self.device)
            present = torch.isfinite(value)
            self.sums[key] = self.sums.get(key, 0.0) + torch.where(present, value, 0.0)
            self.counts[key] = self.counts.get(key, 0.0) + present.float()

    def values(self, accelerator, batch_size: int, seconds: float) -> tuple[dict[str, float], int]:
        """-> (the window's means and training images per second, the images skipped in it), over every process."""
        values = self.means(accelerator)
        values["train/images_per_second"] = self.micro_steps * batch_size * accelerator.num_processes / seconds
        return values, int(accelerator.reduce(self.images_skipped, "sum").item())

    def means(self, accelerator) -> dict[str, float]:
        """The window's mean of each value over every process. Every process reduces the same keys in the same
        order (tasks report a fixed set); a value absent for the whole window is left out rather than logged as 0."""
        values = {}
        for key in sorted(self.sums):
            count = accelerator.reduce(self.counts[key], "sum")
            total = accelerator.reduce(self.sums[key], "sum")
            if count.item() > 0:
                values[f"train/{key}"] = (total / count).item()
        return values
