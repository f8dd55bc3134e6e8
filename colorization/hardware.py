"""Names of the hardware a number was measured on, the precision of its fp32 arithmetic, and model sizes: every
number we report says where it came from."""

from __future__ import annotations

import contextlib
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


# ----- the precision of fp32 matrix products and convolutions -----
# On NVIDIA GPUs since Ampere, PyTorch's defaults differ by operation: cuDNN convolutions use TF32 (fp32 inputs
# rounded to a 10-bit mantissa, errors of about 1e-3 relative), matrix products do not; and accelerate turns TF32
# on for matrix products under torch.compile without mixed precision. So training sets both itself (off unless
# --allow_tf32), validation and evaluate.py measure in full fp32 always, and each records the precision it used.
# The flags set are the legacy ones (allow_tf32): accelerate and diffusers set those, and mixing them with the
# newer fp32_precision API's "ieee" makes the legacy getters raise.


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for fp32 matrix products and cuDNN convolutions on CUDA GPUs (no effect on a CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def full_fp32():
    """Within: fp32 matrix products and convolutions in full fp32 (TF32 off), whatever was set outside."""
    matmul, convolution = _tf32_flags()
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = convolution


def _tf32_flags() -> tuple[bool, bool]:
    """Whether CUDA matrix products and cuDNN convolutions use TF32 now."""
    precision = fp32_precision("cuda")
    return precision["matmul"] == "tf32", precision["convolution"] == "tf32"


def _first_set(*values) -> str:
    """The first of an operation's fp32_precision settings (its own, its backend's, the generic one) that is set;
    none set: full fp32 ('ieee')."""
    return next((value for value in values if value not in (None, "none")), "ieee")


def fp32_precision(device: torch.device | str) -> dict[str, str]:
    """How fp32 matrix products and convolutions are computed on ``device`` now -> {"matmul": ..., "convolution":
    ...}, each "ieee" (full fp32), "tf32" (CUDA) or "bf16" (oneDNN on a CPU, when told so)."""
    backends = torch.backends
    generic = getattr(backends, "fp32_precision", None)  # None: a torch before the fp32_precision API
    if torch.device(device).type == "cuda":
        if generic is None:
            return {
                "matmul": "tf32" if backends.cuda.matmul.allow_tf32 else "ieee",
                "convolution": "tf32" if backends.cudnn.allow_tf32 else "ieee",
            }
        cudnn = backends.cudnn
        return {
            "matmul": _first_set(backends.cuda.matmul.fp32_precision, generic),
            "convolution": _first_set(cudnn.conv.fp32_precision, cudnn.fp32_precision, generic),
        }
    if generic is None:
        return {"matmul": "ieee", "convolution": "ieee"}
    mkldnn = backends.mkldnn
    return {
        "matmul": _first_set(mkldnn.matmul.fp32_precision, mkldnn.fp32_precision, generic),
        "convolution": _first_set(mkldnn.conv.fp32_precision, mkldnn.fp32_precision, generic),
    }


def describe_fp32_precision(precision: dict[str, str]) -> str:
    """E.g. 'full fp32 (IEEE)' or 'fp32 with matmul tf32, convolution ieee'."""
    if set(precision.values()) == {"ieee"}:
        return "full fp32 (IEEE)"
    return "fp32 with " + ", ".join(f"{op} {value}" for op, value in precision.items())
