"""Training throughput, FLOPs, MFU and peak memory of one model's training step, on CPU or GPU.

    python benchmarks/benchmark_training.py --model diffusion --resolution 256 --batch_size 32 --mixed_precision bf16

Runs the real harness step (the model family's training_step, its optimizers, gradient clipping and the
Accelerate mixed-precision wrapper) on random images, so data loading is not measured (see
benchmark_loader.py for that side). The FLOPs of one training image are counted, not estimated: PyTorch's
FlopCounterMode over one whole training step (forward and backward of every network in it, the GAN's
discriminator and VGG loss included), divided by the batch. MFU = counted FLOPs x images/s / the device's
dense peak for the precision (the table below; fp32 rows are compared with the TF32 tensor-core peak: the
benchmark trains with --allow_tf32). The GAN is measured in its adversarial phase (its costliest).
Prints one JSON line; --output appends it to a JSON-lines file. --profile N adds where the step's time goes:
torch.profiler's self time over N steps, by kind of operator.

--loop compares whole training runs instead, each a fresh process: the `reproduce --preset cpu-small`
command of each model (data loading, Lab conversion, logging and all), cut to --steps steps, under each
--setting (a checkout of the code, e.g. the commit before a change, and extra training flags):

    git archive COMMIT | tar -x -C /tmp/before
    python benchmarks/benchmark_training.py --loop --train_data_dir ../shared/data/afhq_cat \
        --setting before=/tmp/before --setting after=. --repeats 2 --output benchmarks/results_cpu.jsonl

It reports each run's steady rate (images/s over the logged windows after the first), its start-up inside the
training time (the first window's excess: torch.compile's compilation shows here), and what a cpu-small run's
10 epochs would take at that rate, every family's settings run one after another, alternating.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch
from accelerate import Accelerator
from records import device_name, record
from torch.utils.flop_counter import FlopCounterMode

from colorization import color
from colorization.data import DataConfig
from colorization.hardware import cpu_name
from colorization.tasks import TRAINING_TASKS
from colorization.training import TrainConfig, Trainer

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: bf16 tensor cores, and TF32 tensor cores
# for fp32 training. Matched by substring against torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "no": 494.7}),
    ("H100 PCIe", {"bf16": 756.0, "no": 378.0}),
    ("H100", {"bf16": 989.4, "no": 494.7}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "no": 156.0}),
    ("L40S", {"bf16": 362.1, "no": 183.2}),
    ("L4", {"bf16": 121.0, "no": 60.0}),
    ("A10G", {"bf16": 70.0, "no": 35.0}),
)


def device_peak(device_name: str, mixed_precision: str) -> Optional[float]:
    """The dense peak TFLOP/s of a known GPU for this precision, or None."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks.get(mixed_precision)
    return None


def benchmark(
    model: str,
    resolution: int,
    batch_size: int,
    mixed_precision: str,
    steps: int,
    warmup: int,
    perceptual: float = 0.5,
    unet_preset: str = "base",
    torch_compile: bool = False,
    channels_last: bool = False,
    profile_steps: int = 0,
) -> dict:
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available(),
        dynamo_backend="inductor" if torch_compile else None,
    )
    task_class = TRAINING_TASKS[model]
    options = {
        "cnn": {"pretrained_backbone": False},
        "gan": {"lambda_perceptual": perceptual, "content_fraction": 0.0, "discriminator_warmup_fraction": 0.0},
        "diffusion": {"unet_preset": unet_preset},
    }[model]
    task = task_class(task_class.config_class(**options), resolution)
    task.check_resolution(resolution)
    shared = {k: v for k, v in task_class.flag_defaults.items() if k in TrainConfig.__annotations__}
    # TF32 on (the harness's default is off): the fp32 rows are compared with the TF32 tensor-core peak
    train_config = TrainConfig(
        train_batch_size=batch_size, report_to="none", channels_last=channels_last, allow_tf32=True, **shared
    )
    trainer = Trainer(task, train_config, DataConfig(resolution=resolution), accelerator=accelerator)
    trainer._prepare_models(max_steps=warmup + steps + 1)
    rgb = torch.rand(batch_size, 3, resolution, resolution, device=accelerator.device)
    lightness, ab = color.rgb_to_normalized_lab(rgb)

    def step():
        with accelerator.accumulate(*task.models.values()), accelerator.autocast():
            task.training_step(trainer, lightness, ab)

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops_per_image = counter.get_total_flops() / batch_size
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    images_per_second = steps * batch_size / elapsed
    shares = profile_shares(step, profile_steps) if profile_steps else None
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    peak = device_peak(device, mixed_precision) if torch.cuda.is_available() else None
    achieved = flops_per_image * images_per_second / 1e12
    result = {
        "model": model,
        "resolution": resolution,
        "batch_size": batch_size,
        "mixed_precision": mixed_precision,
        "torch_compile": torch_compile,
        "channels_last": channels_last,
        "steps": steps,
        "images_per_second": round(images_per_second, 2),
        "seconds_per_step": round(elapsed / steps, 4),
        "gflops_per_training_image": round(flops_per_image / 1e9, 2),
        "achieved_tflops": round(achieved, 2),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
        "parameters": sum(p.numel() for m in task.models.values() for p in m.parameters()),
        "device": device,
        "torch": torch.__version__,
    }
    if shares:
        result["profile_steps"] = profile_steps
        result["time_shares"] = shares
    if model == "gan":
        result["lambda_perceptual"] = perceptual
    if model == "diffusion":
        result["unet_preset"] = unet_preset
    if torch.cuda.is_available():
        result["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:  # the whole process's peak resident memory (Linux reports KiB)
        result["peak_process_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


# Operators by kind, for --profile: the first pattern an operator's name contains names its kind.
OPERATOR_KINDS = (
    ("convolution", ("convolution", "conv2d", "conv_transpose")),
    ("normalization", ("norm",)),
    ("attention", ("attention", "softmax", "bmm", "baddbmm")),
    ("copies and casts", ("copy", "contiguous", "_to_copy", "clone")),
    ("optimizer", ("adam", "optimizer", "lerp", "addcdiv", "addcmul", "sqrt", "_foreach")),
    ("resampling and pooling", ("upsample", "pool", "interpolate")),
    (
        "elementwise and reductions",
        (
            "add",
            "mul",
            "div",
            "sub",
            "relu",
            "silu",
            "tanh",
            "sigmoid",
            "where",
            "sum",
            "mean",
            "cat",
            "pow",
            "neg",
            "exp",
            "threshold",
            "fill",
            "binary_cross",
            "loss",
        ),
    ),
)


def profile_shares(step, steps: int) -> dict:
    """Where ``steps`` calls of ``step`` spend their time: torch.profiler's self CPU time by operator kind
    (OPERATOR_KINDS; "other" for the rest), as shares of the total, and the five costliest operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
    # on a GPU the kernels' device time is what counts; on a CPU the operators' own time
    attribute = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    events = [(event.key, getattr(event, attribute)) for event in profiler.key_averages()]
    events = [(name, micros) for name, micros in events if micros > 0 and not name.startswith(("##", "autograd::"))]
    total = sum(micros for _, micros in events)
    kinds = collections.Counter()
    for name, micros in events:
        lowered = name.lower()
        kind = next((kind for kind, patterns in OPERATOR_KINDS if any(p in lowered for p in patterns)), "other")
        kinds[kind] += micros
    top = sorted(events, key=lambda event: -event[1])[:5]
    return {
        "by_kind": {kind: round(micros / total, 3) for kind, micros in kinds.most_common()},
        "top_operators": {name: round(micros / total, 3) for name, micros in top},
    }


# ----- --loop: whole training runs, one code version or flag set against another -----

LOOP_MODELS = ("cnn", "gan", "diffusion", "refine")  # reproduce's models: refine is the diffusion model on the CNN
# the images of a cpu-small run: 10 epochs of 130 steps of 32 (4,188 training cats)
CPU_SMALL_IMAGES = 10 * (4188 // 32) * 32
LOOP_WINDOW_STEPS = 10  # --logging_steps of the runs: the rate is measured over windows of this many steps


def loop_run(spec: dict) -> dict:
    """One training run in this process (the colorization package that is importable here: the --setting's code):
    the cpu-small preset's command for spec["model"], cut to spec["steps"] steps -> its logged windows and costs.

    Only APIs older than this script are used (reproduce's Plan, run_training, Tracker.track), so that a checkout
    of the code before a change can be measured with it."""
    started = time.perf_counter()
    from colorization import reproduce, tracking
    from colorization.families import FAMILIES
    from colorization.training import run_training

    windows = []
    track = tracking.Tracker.track

    def recording_track(self, values, step):
        if "train/images_per_second" in values:
            windows.append((step, values["train/images_per_second"]))
        track(self, values, step)

    tracking.Tracker.track = recording_track
    model, folder = spec["model"], spec["folder"]
    plan = reproduce.Plan(
        reproduce.parse_args(
            ["--preset", "cpu-small", "--train_data_dir", spec["data"], "--no-pretrained", "--output_dir", folder]
            + ["--max_train_steps", str(spec["steps"])]
        )
    )
    family = FAMILIES[reproduce.family_of(model)]
    command = plan.training_command(model)
    script = next(i for i, part in enumerate(command) if part.endswith(family.script))
    argv = command[script + 1 :] + [
        "--logging_steps",
        str(LOOP_WINDOW_STEPS),
        "--validation_steps",
        "1000000",
        "--checkpointing_steps",
        "1000000",
        "--no-initial_validation",
        "--validation_images",
        "8",
        "--model_selection",
        "last",
        "--report_to",
        "none",
        *shlex.split(spec["flags"]),
    ]
    os.makedirs(plan.output_dir, exist_ok=True)
    os.chdir(plan.output_dir)  # the command's paths are relative to the results folder
    run_training(family.task_class(), argv)
    output_dir = argv[argv.index("--output_dir") + 1]
    with open(os.path.join(output_dir, "colorizer.json")) as handle:
        costs = json.load(handle)["training"]
    with open(os.path.join(output_dir, "run_config.json")) as handle:
        train_config = json.load(handle)["train"]
    return {
        "windows": windows,
        "train_seconds": costs["own"]["train_seconds"] if "own" in costs else costs["train_seconds"],
        "images_seen": costs["own"]["images_seen"] if "own" in costs else costs["images_seen"],
        "process_seconds": round(time.perf_counter() - started, 2),
        "settings": {
            key: train_config.get(key)
            for key in ("channels_last", "torch_compile", "fused_optimizer", "mixed_precision", "train_batch_size")
        },
        "dataloader_num_workers": argv[argv.index("--dataloader_num_workers") + 1]
        if "--dataloader_num_workers" in argv
        else None,
    }


def steady_rate(windows: list, batch_size: int) -> tuple[float, float]:
    """(images/s over the logged windows after the first, seconds of the first window)."""
    spans = []
    previous = 0
    for step, rate in windows:
        images = (step - previous) * batch_size
        spans.append((images, images / rate))
        previous = step
    later = spans[1:]
    return sum(i for i, _ in later) / sum(s for _, s in later), spans[0][1]


def machine_busy_seconds() -> float:
    """CPU seconds every process of this Linux machine has used (user + nice + system), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return float("nan")
    return sum(int(value) for value in fields[:3]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_setting(model: str, name: str, code: str, flags: str, folder: str, data: str, steps: int) -> dict:
    """One run of ``model`` with the code at ``code`` (a fresh process, a fresh compile cache) -> its numbers."""
    spec = {"model": model, "folder": folder, "data": data, "steps": steps, "flags": flags}
    environment = {**os.environ, "PYTHONPATH": os.path.abspath(code), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    busy, own = machine_busy_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # torch.compile starts cold, as in a first run
        environment["TORCHINDUCTOR_CACHE_DIR"] = cache
        process = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--loop_run", json.dumps(spec)],
            env=environment,
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - started
    # what other processes used of the machine meanwhile: a share near 0 means the run had the cores to itself
    others = (machine_busy_seconds() - busy - (children_cpu_seconds() - own)) / (wall * (os.cpu_count() or 1))
    if process.returncode != 0:
        raise SystemExit(f"{model} under {name} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    run = json.loads(process.stdout.strip().splitlines()[-1])
    batch = run["settings"]["train_batch_size"]
    steady, first_window = steady_rate(run["windows"], batch)
    start_up = run["train_seconds"] - run["images_seen"] / steady  # compilation and anything else not steady
    return {
        "benchmark": "training_loop",
        "model": model,
        "setting": name,
        "extra_flags": flags,
        "steps": steps,
        "steady_images_per_second": round(steady, 2),
        "first_window_seconds": round(first_window, 2),
        "train_seconds": run["train_seconds"],
        "start_up_in_train_seconds": round(start_up, 2),
        "cpu_small_run_seconds": round(start_up + CPU_SMALL_IMAGES / steady, 1),
        "process_seconds": run["process_seconds"],
        "other_processes_cpu_share": round(max(others, 0.0), 3),
        **run["settings"],
        "device": device_name(torch.device("cuda")) if torch.cuda.is_available() else f"CPU: {cpu_name()}",
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
    }


def compare_loops(settings: list, models: list, data: str, steps: dict, repeats: int, output: Optional[str]) -> list:
    """Every model under every setting, ``repeats`` times, the settings alternating within each model (the runs
    of one repeat share a results folder, so the refining model refines that setting's CNN)."""
    root = tempfile.mkdtemp(prefix="loop_benchmark_")
    results = []
    for model in models:
        for repeat in range(repeats):
            for name, code, flags in settings:
                folder = os.path.join(root, f"{name}-{repeat}")
                result = run_setting(model, name, code, flags, folder, os.path.abspath(data), steps[model])
                result["repeat"] = repeat
                record(result, output)
                results.append(result)
    print(loop_table(results, [name for name, _, _ in settings]))
    return results


def loop_table(results: list, names: list) -> str:
    """Markdown: per model, each setting's steady images/s (mean of the repeats), its ratio to the first setting
    (geometric mean of the paired repeats), and a cpu-small run's projected seconds."""
    lines = [
        "| model | "
        + " | ".join(f"{n} images/s" for n in names)
        + " | "
        + " | ".join(f"{n} / {names[0]}" for n in names[1:])
        + " | "
        + " | ".join(f"{n}: 10 epochs (s)" for n in names)
        + " |",
        "|---" * (1 + len(names) * 2 + len(names) - 1) + "|",
    ]
    for model in dict.fromkeys(r["model"] for r in results):
        runs = {n: [r for r in results if r["model"] == model and r["setting"] == n] for n in names}
        rates = {n: [r["steady_images_per_second"] for r in runs[n]] for n in names}
        ratios = [
            math.exp(sum(math.log(a / b) for a, b in zip(rates[n], rates[names[0]])) / len(rates[n])) for n in names[1:]
        ]
        projected = {n: sum(r["cpu_small_run_seconds"] for r in runs[n]) / len(runs[n]) for n in names}
        lines.append(
            f"| {model} | "
            + " | ".join("/".join(f"{v:.1f}" for v in rates[n]) for n in names)
            + " | "
            + " | ".join(f"{ratio:.2f}x" for ratio in ratios)
            + " | "
            + " | ".join(f"{projected[n]:.0f}" for n in names)
            + " |"
        )
    return "\n".join(lines)


def parse_setting(text: str) -> tuple[str, str, str]:
    """NAME=PATH [FLAGS...] -> (name, code folder, extra training flags)."""
    head, _, flags = text.strip().partition(" ")
    name, equals, code = head.partition("=")
    if not equals or not os.path.isdir(os.path.join(code, "colorization")):
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH [FLAGS], PATH a checkout of the code")
    return name, code, flags.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(TRAINING_TASKS), default="cnn")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--lambda_perceptual",
        type=float,
        default=0.5,
        help="GAN: 0 skips the VGG-16 perceptual loss (whose weights need a download)",
    )
    parser.add_argument("--unet_preset", default="base", help="diffusion: small or base")
    parser.add_argument(
        "--untrained_vgg",
        action="store_true",
        help="GAN: a randomly initialised VGG-16 for the perceptual loss (the same cost; for "
        "machines that cannot download its weights)",
    )
    parser.add_argument("--torch_compile", action="store_true", help="the harness's --torch_compile")
    parser.add_argument("--channels_last", action="store_true", help="the harness's --channels_last")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS", help="profile STEPS more steps")
    parser.add_argument("--output", help="append the result as one JSON line to this file")
    loop = parser.add_argument_group("--loop: whole cpu-small training runs, one setting against another")
    loop.add_argument("--loop", action="store_true", help="compare training runs (see the top of this file)")
    loop.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        help="NAME=PATH [FLAGS]: the code at PATH (e.g. . or an older checkout), with extra training flags; the "
        "first is the baseline",
    )
    loop.add_argument("--train_data_dir", help="the photos (e.g. ../shared/data/afhq_cat)")
    loop.add_argument("--models", default=",".join(LOOP_MODELS), help="comma-separated, of " + ",".join(LOOP_MODELS))
    loop.add_argument(
        "--loop_steps",
        default="cnn=150,gan=60,diffusion=60,refine=60",
        help="steps per run of each model (MODEL=STEPS,...)",
    )
    loop.add_argument("--repeats", type=int, default=2, help="runs of each model under each setting")
    loop.add_argument("--loop_run", help=argparse.SUPPRESS)  # one run, in a fresh process (run_setting)
    args = parser.parse_args()
    if args.loop_run:
        print(json.dumps(loop_run(json.loads(args.loop_run))), flush=True)
        return
    if args.loop:
        if not args.setting or not args.train_data_dir:
            parser.error("--loop needs --train_data_dir and at least one --setting")
        steps = {key: int(value) for key, value in (item.split("=") for item in args.loop_steps.split(","))}
        compare_loops(args.setting, args.models.split(","), args.train_data_dir, steps, args.repeats, args.output)
        return
    if args.untrained_vgg:
        from torchvision.models import vgg16

        from colorization.tasks import gan

        gan.load_imagenet_vgg16_features = lambda: vgg16().features[: gan.VGG_RELU3_3].eval().requires_grad_(False)
    result = benchmark(
        args.model,
        args.resolution,
        args.batch_size,
        args.mixed_precision,
        args.steps,
        args.warmup,
        args.lambda_perceptual,
        args.unet_preset,
        args.torch_compile,
        args.channels_last,
        args.profile,
    )
    record(result, args.output)


if __name__ == "__main__":
    main()
