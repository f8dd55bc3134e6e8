"""Shared test helpers. Tests never touch the network: the Hugging Face libraries are forced offline."""

import os
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


def run_command(args, env=None, timeout=600, check=True):
    """Run a command from the repository root; on failure show its output. ``env`` values of None unset."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}
    result = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                             f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def accelerate_launch(script, args, num_processes=1, env=None, check=True, timeout=600):
    """`accelerate launch` a script; two processes on CPU need ACCELERATE_USE_CPU=1 and --multi_gpu."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes > 1:
        launch += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                   "--dynamo_backend", "no", "--main_process_port", "0"]
        env = {"ACCELERATE_USE_CPU": "1", **(env or {})}
    else:
        launch += ["--config_file", "accelerate_config.yaml"]
    return run_command(launch + [str(script)] + [str(a) for a in args], env=env, check=check, timeout=timeout)


def six_step_run(tmp_path_factory, script, model_args):
    """Train ``script`` for 6 tiny steps (checkpoints and validation at 3 and 6) -> its output folder."""
    output = tmp_path_factory.mktemp(script.removesuffix(".py"))
    accelerate_launch(script, TINY_DATA + model_args + [
        "--output_dir", output, "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_steps", "3",
        "--logging_steps", "2"])
    return output


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
