"""What every benchmark script shares: the name of the device it measured, one JSON line per result,
printed and (with --output) appended to a results file such as results_cpu.jsonl, and a median timer."""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Optional

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def record(result: dict, output: Optional[str]) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if output:
        with open(output, "a") as handle:
            handle.write(line + "\n")


def median_seconds(call: Callable[[], object], warmup: int, repeats: int) -> float:
    """The median wall-clock of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
