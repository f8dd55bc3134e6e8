"""Names of the hardware a number was measured on, and model sizes: every cost we report says where it came from."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_hardware(device: torch.device | str, num_processes: int = 1) -> str:
    """E.g. '1 x NVIDIA H200' or 'CPU: Intel(R) Xeon(R) ... (2 cores)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{num_processes} x {torch.cuda.get_device_name(device)}"
    processes = f", {num_processes} processes" if num_processes > 1 else ""
    return f"CPU: {cpu_name()} ({os.cpu_count()} cores{processes})"


def use_all_cores(accelerator, threads: int | None = None) -> int:
    """On a CPU, give each process its share of this machine's cores (or ``threads``) -> the thread count.

    ``accelerate launch`` sets OMP_NUM_THREADS=1 unless its config says use_cpu, so a config written for
    GPUs (like this repository's) would otherwise train on one core of a CPU-only machine."""
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = threads or max(1, cores // max(local_processes, 1))
    torch.set_num_threads(threads)
    return threads


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
