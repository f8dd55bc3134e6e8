"""Shared test helpers. Tests never touch the network: the Hugging Face libraries are forced offline.

The session fixtures ``cnn_run``, ``gan_run`` and ``diffusion_run`` train one tiny model of each family through
the real entry point (``accelerate launch train_*.py``) once per test session; every test that only needs a
trained model or a finished run folder shares them (and must not change them).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
AFHQ_DIR = ROOT.parent / "shared" / "data" / "afhq_cat"

# Small, fast settings shared by the end-to-end tests: 32 px, the embedded data cut to 256 images.
TINY_DATA = ["--resolution", "32", "--embedded_num_images", "256", "--dataloader_num_workers", "0"]
TINY_CNN = ["--no-pretrained_backbone", "--train_batch_size", "8", "--eval_batch_size", "16"]
TINY_GAN = ["--lambda_perceptual", "0", "--base_channels", "16", "--train_batch_size", "8", "--eval_batch_size", "16"]
TINY_DIFFUSION = [
    "--unet_preset",
    "small",
    "--block_out_channels",
    "16,32",
    "--attention_levels",
    "1",
    "--train_batch_size",
    "8",
    "--eval_batch_size",
    "8",
    "--validation_images",
    "8",
    "--validation_inference_steps",
    "3",
    "--lr_warmup_steps",
    "0",
]
# 12 steps; checkpoints every 4 (two kept), validation every 6; the GAN exports its best validated step
SESSION_RUN = [
    "--max_train_steps",
    "12",
    "--checkpointing_steps",
    "4",
    "--validation_steps",
    "6",
    "--logging_steps",
    "2",
    "--checkpoints_total_limit",
    "2",
]


def run_command(args, env=None, timeout=600, check=True):
    """Run a command from the repository root; on failure show its output. ``env`` values of None unset."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}
    result = subprocess.run(
        [str(a) for a in args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def accelerate_launch(script, args, num_processes=1, env=None, check=True, timeout=600):
    """`accelerate launch` a script; two processes on CPU need ACCELERATE_USE_CPU=1 and --multi_gpu."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes > 1:
        launch += [
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
        ]
        env = {"ACCELERATE_USE_CPU": "1", **(env or {})}
    else:
        launch += ["--config_file", "accelerate_config.yaml"]
    return run_command(launch + [str(script)] + [str(a) for a in args], env=env, check=check, timeout=timeout)


def _session_run(tmp_path_factory, script, model_args):
    output = tmp_path_factory.mktemp(script.removesuffix(".py"))
    result = accelerate_launch(script, TINY_DATA + model_args + SESSION_RUN + ["--output_dir", output])
    return output, result


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """(output folder, the launch's CompletedProcess) of a 12-step CNN run."""
    return _session_run(tmp_path_factory, "train_cnn.py", TINY_CNN)


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory):
    return _session_run(tmp_path_factory, "train_gan.py", TINY_GAN)


@pytest.fixture(scope="session")
def diffusion_run(tmp_path_factory):
    return _session_run(tmp_path_factory, "train_diffusion.py", TINY_DIFFUSION)


@pytest.fixture(scope="session")
def refine_run(tmp_path_factory, gan_run):
    """A 2-step diffusion model refining a copy of the GAN's export, which is deleted once it is trained: the
    refining model's export must stand alone. Shared; must not be changed."""
    from colorization.tasks.diffusion import DiffusionTask

    folder = tmp_path_factory.mktemp("refine")
    regressor = folder / "gan"
    shutil.copytree(gan_run[0], regressor, ignore=shutil.ignore_patterns("checkpoints", "logs", "samples"))
    run = ["--max_train_steps", "2", "--validation_steps", "2", "--report_to", "none"]
    train_in_process(
        DiffusionTask,
        [*TINY_DATA, *TINY_DIFFUSION, *run, "--refine_model", regressor, "--output_dir", folder / "model"],
    )
    shutil.rmtree(regressor)
    return folder / "model"


@pytest.fixture
def afhq_dir():
    if not AFHQ_DIR.is_dir():
        pytest.skip(f"real AFHQ sample photos not present at {AFHQ_DIR}")
    return AFHQ_DIR


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """In-process trainings each get a fresh Accelerate state (it is a process-wide singleton)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train_in_process(task_class, args):
    """Run the training entry point in this process (no launcher start-up) -> its final validation metrics."""
    from accelerate.state import AcceleratorState, GradientState

    from colorization.training import run_training

    try:
        return run_training(task_class, [str(a) for a in args])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


# ----- float tolerances, from the arithmetic -----
FP32_EPS = 2.0**-23  # torch.finfo(torch.float32).eps: one rounding errs by at most FP32_EPS / 2, relative


def fp32_tolerance(network, passes: int = 1, terms: int = 0, scale: float = 1.0) -> float:
    """How far two fp32 computations through ``network`` may drift apart when only the order of their sums
    differs (another batch size, memory layout or CPU kernel: oneDNN blocks its sums by all three and by the
    CPU's instruction set, AVX2, AVX-512 or AMX), for values of size ``scale``.

    A sum of n products rounds n times, by at most FP32_EPS / 2 each, relative; the roundings are independent
    in practice and grow like sqrt(n) (Higham and Mary, SIAM J. Sci. Comput. 2019). A layer's error reaches the
    output at about its own size (the networks normalize their activations) and the layers' errors add: at most
    layers * sqrt(n) * FP32_EPS / 2 for one computation, twice that between two. Layers: every convolution,
    linear layer and normalization of the network (at least its depth); n: the largest fan-in, or ``terms`` when
    larger (e.g. a weight gradient sums over the batch's pixels). ``passes``: network evaluations in sequence,
    each fed the last one's output (a sampler's steps; a backward pass after the forward), whose errors add too.
    The differences measured on an AMX Xeon and with ONEDNN_MAX_CPU_ISA=AVX2 stay 20x or more under this."""
    import math

    import torch

    summing = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
    layers = [m for m in network.modules() if isinstance(m, summing)]
    fan_in = max(
        m.weight[:, 0].numel() if isinstance(m, torch.nn.ConvTranspose2d) else m.weight[0].numel()  # in x kernel
        for m in layers
        if isinstance(m, summing[:3])
    )
    return passes * len(layers) * math.sqrt(max(fan_in, terms)) * FP32_EPS * scale


def assert_same_weights(first: dict, second: dict) -> None:
    import torch

    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-6, msg=name)


def run_in_process(main, argv, capsys):
    """Call a command-line entry point's ``main(argv)`` here (no interpreter start-up) -> (exit code, stdout,
    stderr), as the shell would see them."""
    from accelerate.state import AcceleratorState, GradientState

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    captured = capsys.readouterr()
    return code, captured.out, captured.err
