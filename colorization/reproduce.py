"""Reproduce the whole three-way comparison with one command.

    python -m colorization.reproduce --preset cpu-small --train_data_dir ../shared/data/afhq_cat

trains the CNN, the GAN and the diffusion model on the same data, split, resolution, seed and number of
training images, one after the other (each through ``accelerate launch train_*.py``), then runs
``evaluate.py`` on the same held-out images, and writes everything under one results folder:

    results/<preset>/
      README.md            the table, the grid, what was run, where, when, from which commit
      commands.sh          every command this folder's runs executed, in order, exactly (run from this
                           folder: paths are relative to it; python: the interpreter that ran reproduce)
      reproduce.json       the plan, each model's status and wall-clock, the hardware
      models/<model>/      each training run: exported model, checkpoints, TensorBoard logs, samples
      logs/<step>.log      each command's full output
      evaluation/          table.md, table.csv, results.json, per_image.csv, comparison.png

Run the same command again after an interruption: finished models are not retrained, an unfinished one
resumes from its last checkpoint, and evaluation runs once every model is finished. A model run that fails
stops the whole command with its error and log, before any table is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Optional

from colorization.config import HelpFormatter, choice_list, existing_folder, output_folder, positive_int, sampler_list
from colorization.errors import ColorizationError, cli_entry_point
from colorization.families import FAMILIES
from colorization.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runs of a comparison: each family, and the diffusion model that refines the CNN of the same run.
REFINING = "refine"
MODELS = (*FAMILIES, REFINING)
DISPLAY_NAMES = {**{name: family.display_name for name, family in FAMILIES.items()}, REFINING: "Diffusion refining CNN"}


def family_of(model: str) -> str:
    return "diffusion" if model == REFINING else model


STATE_NAME = "reproduce.json"
# --no-pretrained: every family's flags that download nothing (FAMILIES), and no LPIPS column
METRICS_WITHOUT_PRETRAINED = "psnr,ssim,colorfulness,ab_distance"


@dataclass
class Preset:
    description: str
    resolution: int
    epochs: int
    train_batch_size: int
    mixed_precision: str
    samplers: str  # the diffusion samplers compared in the table; the first one also validates during training
    model_args: dict = dataclass_field(default_factory=dict)  # per model, after the shared flags
    eval_batch_size: int = 32
    num_samples: int = 1  # the diffusion model's mean of K samples ...
    num_samples_images: Optional[int] = None  # ... on the first N held-out images
    slow_samplers: Optional[str] = None  # samplers too slow for every image: a second table ...
    slow_sampler_images: int = 64  # ... on the first N held-out images


PRESETS = {
    "cpu-small": Preset(
        description="AFHQ cats at 64x64, 10 epochs per model, bf16, on one CPU (about an hour on a laptop)",
        resolution=64,
        epochs=10,
        train_batch_size=32,
        mixed_precision="bf16",
        samplers="dpm:20",
        # The small UNet, clean-ab prediction, lr 5e-4 after 100 warm-up steps: measured over 1,300 steps on
        # these cats against v-prediction with min-SNR 5 and zero terminal SNR (docs/models.md, Diffusion). Samplers are
        # compared by benchmarks/sampler_curve.py; the mean of 8 samples on a fixed subset keeps it near an hour.
        model_args={
            "diffusion": [
                "--unet_preset",
                "small",
                "--prediction_type",
                "sample",
                "--learning_rate",
                "5e-4",
                "--lr_warmup_steps",
                "100",
            ]
        },
        num_samples=8,
        num_samples_images=96,
    ),
    "paper": Preset(
        description="AFHQ cats at 256x256, 20 epochs per model, bf16, on the GPUs of this machine",
        resolution=256,
        epochs=20,
        train_batch_size=32,
        mixed_precision="bf16",
        samplers="dpm:20,ddim:50",
        model_args={"diffusion": ["--unet_preset", "base"]},
        num_samples=8,
        num_samples_images=128,
        slow_samplers="ddpm:1000",
    ),  # on the first 64 held-out images (slow_sampler_images)
}


model_list = choice_list(MODELS, "model_list")  # --models


def slow_sampler_list(text: str) -> str:
    return text if text == "none" else sampler_list(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.reproduce",
        formatter_class=HelpFormatter,
        description="Train the CNN, GAN and diffusion model with one budget and compare them in one table.",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu-small",
        help="; ".join(f"{name}: {p.description}" for name, p in PRESETS.items()),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--train_data_dir", type=existing_folder, help="a local folder of images, e.g. ../shared/data/afhq_cat"
    )
    source.add_argument("--dataset_name", help="a Hub data set (default: huggan/AFHQ, its cat images)")
    source.add_argument("--embedded", action="store_true", help="the embedded procedural data (no download)")
    parser.add_argument(
        "--output_dir",
        type=output_folder,
        help="the results folder (default: results/<preset>): new, empty, or an earlier run's",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        type=model_list,
        help=f"comma-separated subset of {','.join(MODELS)} ({REFINING}: the diffusion model refining the CNN; "
        "it needs cnn)",
    )
    parser.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="download nothing: the CNN trunk from scratch, no VGG-16 perceptual loss for the GAN, "
        "no LPIPS column (for machines without internet). Without it, those weights are "
        "downloaded once",
    )
    parser.add_argument(
        "--num_processes", type=positive_int, help="processes per run (default: the number of GPUs, or 1 on a CPU)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every run and of the evaluation")
    budget = parser.add_argument_group("overrides of the preset's budget (the same for every model)")
    budget.add_argument("--resolution", type=positive_int, help="images are resized and cropped to this size")
    budget.add_argument("--epochs", type=positive_int, help="epochs per model")
    budget.add_argument("--max_train_steps", type=positive_int, help="optimizer steps instead of epochs")
    budget.add_argument("--train_batch_size", type=positive_int, help="per process")
    budget.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"))
    budget.add_argument(
        "--samplers",
        type=sampler_list,
        help="diffusion samplers in the table, e.g. dpm:20,ddim:50 (the first one also validates during training)",
    )
    budget.add_argument("--max_eval_images", type=positive_int, help="evaluate on the first N held-out images only")
    budget.add_argument("--num_samples", type=positive_int, help="the diffusion model's mean of K samples (1: none)")
    budget.add_argument("--num_samples_images", type=positive_int, help="... on the first N held-out images")
    budget.add_argument(
        "--slow_samplers",
        type=slow_sampler_list,
        help="samplers evaluated in a second table on a subset, e.g. ddpm:1000 ('none': no second table)",
    )
    budget.add_argument("--slow_sampler_images", type=positive_int, help="... on the first N held-out images")
    extra = parser.add_argument_group("extra flags, appended to the commands (they win over the preset)")
    extra.add_argument("--data_args", default="", help="for every command, e.g. '--dataloader_num_workers 0'")
    for model in MODELS:
        extra.add_argument(f"--{model}_args", default="", help=f"for {FAMILIES[family_of(model)].script}")
    extra.add_argument("--eval_args", default="", help="for evaluate.py")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("data_args", *[f"{model}_args" for model in MODELS], "eval_args"):
        try:
            shlex.split(getattr(args, name))
        except ValueError as error:  # e.g. an unclosed quote
            parser.error(f"argument --{name}: {error}")
    return args


class Reproduction:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.models = sorted(args.models.split(","), key=MODELS.index)  # the CNN before the model refining it
        if REFINING in self.models and "cnn" not in self.models:
            raise ColorizationError(f"--models {REFINING} refines the CNN of the same run: add cnn to --models")
        self.output_dir = os.path.abspath(args.output_dir or os.path.join("results", args.preset))
        self.state_path = os.path.join(self.output_dir, STATE_NAME)
        if os.path.isdir(self.output_dir) and os.listdir(self.output_dir) and not os.path.isfile(self.state_path):
            raise ColorizationError(
                f"{self.output_dir} holds files that reproduce did not write (no {STATE_NAME}); "
                "choose a new or empty --output_dir"
            )
        self.num_processes = args.num_processes or _gpu_count() or 1

    # ----- the commands -----

    def _launcher(self) -> list[str]:
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.num_processes > 1:
            launch += [
                "--multi_gpu",
                "--num_processes",
                str(self.num_processes),
                "--num_machines",
                "1",
                "--dynamo_backend",
                "no",
            ]
        else:
            launch += ["--config_file", self._here(os.path.join(ROOT, "accelerate_config.yaml"))]
        return launch

    def _data_args(self) -> list[str]:
        args = self.args
        if args.embedded:
            source = []
        elif args.train_data_dir:
            source = ["--train_data_dir", self._here(os.path.abspath(args.train_data_dir))]
        else:
            source = ["--dataset_name", args.dataset_name or "huggan/AFHQ"]
        return source + ["--resolution", str(args.resolution or self.preset.resolution)] + shlex.split(args.data_args)

    def model_dir(self, model: str) -> str:
        return os.path.join(self.output_dir, "models", model)

    def _here(self, path: str) -> str:
        """``path`` as the commands name it: they run in the results folder, with paths relative to it, so
        that what is recorded (commands.sh, reproduce.json, the tables) holds no path of this machine."""
        return os.path.relpath(path, self.output_dir)

    def training_command(self, model: str) -> list[str]:
        args, preset = self.args, self.preset
        budget = (
            ["--max_train_steps", str(args.max_train_steps)]
            if args.max_train_steps
            else ["--num_train_epochs", str(args.epochs or preset.epochs)]
        )
        command = [
            *self._launcher(),
            self._here(os.path.join(ROOT, FAMILIES[family_of(model)].script)),
            *self._data_args(),
            *budget,
            "--train_batch_size",
            str(args.train_batch_size or preset.train_batch_size),
            "--eval_batch_size",
            str(preset.eval_batch_size),
            "--mixed_precision",
            args.mixed_precision or preset.mixed_precision,
            "--seed",
            str(args.seed),
            "--output_dir",
            self._here(self.model_dir(model)),
            # an interrupted run continues from its last checkpoint (a fresh run when there is none)
            "--resume_from_checkpoint",
            "latest",
            *preset.model_args.get(family_of(model), []),  # the refining model: the diffusion recipe
        ]
        if family_of(model) == "diffusion":  # validation samples as the table's first sampler does
            scheduler, steps = self.samplers().split(",")[0].split(":")
            command += ["--validation_sampler", scheduler, "--validation_inference_steps", steps]
        if model == REFINING:  # the CNN of this run, finished before (MODELS order)
            command += ["--refine_model", self._here(self.model_dir("cnn"))]
        if not args.pretrained:
            command += list(FAMILIES[family_of(model)].without_pretrained)
        return command + shlex.split(getattr(args, f"{model}_args"))

    def samplers(self) -> str:
        return self.args.samplers or self.preset.samplers

    def slow_samplers(self) -> Optional[str]:
        slow = self.args.slow_samplers or self.preset.slow_samplers
        diffusion = any(family_of(m) == "diffusion" for m in self.models)
        return None if slow in (None, "none") or not diffusion else slow

    def evaluation_command(self, slow: bool = False) -> list[str]:
        """evaluate.py on the held-out images; ``slow``: the slow samplers' table, on the first images only."""
        args, preset = self.args, self.preset
        command = [
            *self._launcher(),
            self._here(os.path.join(ROOT, "evaluate.py")),
            "--checkpoints",
            *[self._here(self.model_dir(m)) for m in self.models],
            "--names",
            *[DISPLAY_NAMES[m] for m in self.models],
            *self._data_args(),
            "--batch_size",
            str(preset.eval_batch_size),
            "--seed",
            str(args.seed),
            "--samplers",
            self.slow_samplers() if slow else self.samplers(),
            # the folder is this command's own: each evaluation replaces the previous one's files
            "--output_dir",
            "evaluation_slow" if slow else "evaluation",
            "--overwrite_output_dir",
        ]
        images = args.slow_sampler_images or preset.slow_sampler_images if slow else args.max_eval_images
        if images:
            command += ["--max_images", str(images)]
        num_samples = args.num_samples or preset.num_samples
        if num_samples > 1 and not slow:
            command += ["--num_samples", str(num_samples)]
            if args.num_samples_images or preset.num_samples_images:
                command += ["--num_samples_images", str(args.num_samples_images or preset.num_samples_images)]
        if not args.pretrained:
            command += ["--metrics", METRICS_WITHOUT_PRETRAINED]
        return command + shlex.split(args.eval_args)

    # ----- state: what is finished, with which command -----

    def _load_state(self) -> dict:
        if not os.path.isfile(self.state_path):
            return {"steps": {}}
        try:
            with open(self.state_path) as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ColorizationError(
                f"cannot read {self.state_path}: {error}; move the folder away to start anew"
            ) from None

    def _save_state(self) -> None:
        write_json(self.state_path, self.state)

    def _finished(self, step: str, command: list[str], outputs: list[str], folder: Optional[str]) -> bool:
        """Was this exact command already run to the end (and are its outputs still there)?

        A training run recorded with other settings is never mixed with new ones: its ``folder`` must be
        removed first. Evaluation is simply run again."""
        record = self.state["steps"].get(step)
        if record is None:
            return False
        if record["command"][1:] != command[1:]:  # the same run, whichever Python starts it
            if folder is None or not os.path.exists(folder):
                del self.state["steps"][step]
                return False
            if record["status"] != "finished" and not _has_checkpoint(folder):
                # a run that failed before its first checkpoint left nothing to keep: start it with the new settings
                print(
                    f"[reproduce] {step}: the earlier attempt failed before its first checkpoint; "
                    "starting anew with the new settings",
                    flush=True,
                )
                shutil.rmtree(folder)
                del self.state["steps"][step]
                return False
            raise ColorizationError(
                f"{folder} holds a {step} run ({record['status']}) with other settings:\n"
                f"  before: {shlex.join(record['command'])}\n  now:    {shlex.join(command)}\n"
                f"Run with the same options as before, use another --output_dir, or delete {folder} to train "
                f"the {step} model anew with the new settings."
            )
        return record.get("status") == "finished" and all(os.path.exists(p) for p in outputs)

    # ----- running -----

    def _run(self, step: str, command: list[str], outputs: list[str], folder: Optional[str] = None) -> bool:
        """Run one step unless it finished earlier; -> whether it ran."""
        if self._finished(step, command, outputs, folder):
            print(f"[reproduce] {step}: finished earlier, skipped", flush=True)
            return False
        # recorded with "python" for the interpreter: the same run, whichever Python starts it
        record = self.state["steps"].setdefault(
            step, {"command": ["python", *command[1:]], "seconds": 0.0, "attempts": 0}
        )
        record.update(status="running", attempts=record["attempts"] + 1, commit=self.state["commit"])
        self._save_state()
        log_path = os.path.join(self.output_dir, "logs", f"{step}.log")
        script_path = os.path.join(self.output_dir, "commands.sh")
        with open(script_path, "a") as script:
            if script.tell() == 0:
                script.write("# Run from this folder: every path is relative to it.\n")
            script.write(f"# {_now()} {step} (attempt {record['attempts']})\n{shlex.join(record['command'])}\n")
        print(f"[reproduce] {step}: {shlex.join(command)}\n[reproduce] output also in {log_path}", flush=True)
        started = time.perf_counter()
        code = _tee(command, log_path, cwd=self.output_dir)
        record["seconds"] += time.perf_counter() - started
        record["status"] = "finished" if code == 0 else f"failed (exit {code})"
        self._save_state()
        if code != 0:
            reason = _last_error(log_path)
            if "--no-pretrained_backbone" in reason or "--lambda_perceptual 0" in reason:
                reason += " (here: --no-pretrained skips every download of weights)"
            raise ColorizationError(
                f"the {step} run failed (exit {code}): {reason}\n  full output: {log_path}\n"
                "No table was written. Fix the cause and run again: finished models are kept "
                "and an interrupted run resumes from its last checkpoint."
            )
        return True

    def run(self) -> None:
        os.makedirs(os.path.join(self.output_dir, "logs"), exist_ok=True)
        self.state = self._load_state()
        self.state.update(
            preset=self.args.preset, argv=sys.argv[1:], num_processes=self.num_processes, commit=_commit()
        )
        for model in self.models:
            folder = self.model_dir(model)
            if self._run(model, self.training_command(model), [os.path.join(folder, "colorizer.json")], folder):
                # a model changed: its tables are out of date, and so is a model that refines it
                self.state["steps"].pop("evaluation", None)
                self.state["steps"].pop("evaluation_slow", None)
                if model == "cnn" and self.state["steps"].pop(REFINING, None):
                    shutil.rmtree(self.model_dir(REFINING), ignore_errors=True)  # this folder's own run
                    print(f"[reproduce] {REFINING}: the CNN it refines was trained again; so is it", flush=True)
        outputs = [os.path.join(self.output_dir, "evaluation", name) for name in ("table.md", "results.json")]
        self._run("evaluation", self.evaluation_command(), outputs)
        if self.slow_samplers():
            outputs = [os.path.join(self.output_dir, "evaluation_slow", name) for name in ("table.md", "results.json")]
            self._run("evaluation_slow", self.evaluation_command(slow=True), outputs)
        self._write_readme()
        print(f"[reproduce] done: {os.path.join(self.output_dir, 'README.md')}", flush=True)

    def _write_readme(self) -> None:
        write_results_readme(
            self.output_dir, self.args.preset, self.preset.description, self.state, self.slow_samplers()
        )


def write_results_readme(output_dir: str, preset: str, description: str, state: dict, slow_samplers: Optional[str]):
    """The results folder's README.md: the command, preset, commit, hardware, costs, the table and the grid."""
    evaluation = os.path.join(output_dir, "evaluation")
    with open(os.path.join(evaluation, "table.md")) as handle:
        table = handle.read().strip()
    with open(os.path.join(evaluation, "results.json")) as handle:
        settings = json.load(handle)["settings"]
    with open(os.path.join(evaluation, "comparison_columns.txt")) as handle:
        columns = handle.read().strip()
    argv = ["python", "-m", "colorization.reproduce", *state["argv"]]
    steps = state["steps"]
    lines = [
        f"# Colorization comparison: preset `{preset}`",
        "",
        f"- Command: `{shlex.join(argv)}`",
        f"- Preset: {description}.",
        f"- Commit: `{state['commit']}`; finished {_now()}." + _earlier_commits(steps, state["commit"]),
        f"- Evaluated on: {settings.get('hardware')}; software: "
        + ", ".join(f"{k} {v}" for k, v in settings.get("versions", {}).items())
        + ".",
        "- Wall-clock of each command (with start-up): "
        + ", ".join(f"{step} {steps[step]['seconds'] / 60:.1f} min" for step in steps),
        "- Exact commands: `commands.sh`; TensorBoard: `tensorboard --logdir models`.",
        "",
        table,
        "",
        "![comparison](evaluation/comparison.png)",
        "",
        "Columns of `evaluation/comparison.png`: " + columns,
        "",
    ]
    slow = os.path.join(output_dir, "evaluation_slow", "table.md")
    if slow_samplers and os.path.isfile(slow):
        with open(slow) as handle:
            lines += [
                f"## Slow samplers ({slow_samplers}) on a subset of the images",
                "",
                handle.read().strip(),
                "",
            ]
    with open(os.path.join(output_dir, "README.md"), "w") as handle:
        handle.write("\n".join(lines))


def _earlier_commits(steps: dict, commit: str) -> str:
    """Name the steps that ran (last) with code of another commit: a skipped step keeps its old results."""
    other = {step: r.get("commit") for step, r in steps.items() if r.get("commit") not in (None, commit)}
    return (
        " Steps run earlier with other code: " + ", ".join(f"{s} at `{c}`" for s, c in other.items()) + "."
        if other
        else ""
    )


def _has_checkpoint(folder: str) -> bool:
    checkpoints = os.path.join(folder, "checkpoints")
    return os.path.isdir(checkpoints) and any(name.startswith("checkpoint_") for name in os.listdir(checkpoints))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _tee(command: list[str], log_path: str, cwd: str) -> int:
    """Run ``command`` in ``cwd``, showing its output and appending it to ``log_path``; -> its exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            while chunk := os.read(process.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        return process.wait()


def _last_error(log_path: str) -> str:
    """The child's own one-line error, or its last line."""
    with open(log_path, errors="replace") as handle:
        lines = [line.strip() for line in handle.read().replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error:")]
    others = [line for line in lines if "Error" in line.split(":")[0] and "CalledProcessError" not in line]
    return (ours or others or lines or ["no output"])[-1]


def run(argv=None) -> None:
    Reproduction(parse_args(argv)).run()


def main(argv=None) -> None:
    cli_entry_point(run)(argv)


if __name__ == "__main__":
    main()
