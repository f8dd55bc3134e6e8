"""What every benchmark script shares: the name of the device it measured, and one JSON line per result,
printed and (with --output) appended to a results file such as results_cpu.jsonl."""

from __future__ import annotations

import json
from typing import Optional

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
