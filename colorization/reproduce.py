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

from colorization.config import (
    HelpFormatter,
    choice_list,
    existing_folder,
    guidance_list,
    output_folder,
    parse_samplers,
    positive_int,
    sampler_list,
)
from colorization.errors import ColorizationError, cli_entry_point
from colorization.families import FAMILIES
from colorization.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runs of a comparison: each family, and the diffusion model that refines the CNN of the same run.
REFINING = "refine"
GUIDANCE_DIR = "evaluation_guidance"  # the guidance scales tried on the validation images
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
    # The diffusion samplers of the table: SCHEDULER:STEPS for every diffusion model, MODEL=SCHEDULER:STEPS for
    # one (a --models key). Each model's first one chooses its guidance scale; the first plain one validates
    # during training (a fast one: it runs at every validation).
    samplers: str
    model_args: dict = dataclass_field(default_factory=dict)  # per model, after the shared flags
    eval_batch_size: int = 32
    num_samples: int = 1  # the diffusion model's mean of K samples ...
    num_samples_images: Optional[int] = None  # ... on the first N held-out images
    slow_samplers: Optional[str] = None  # samplers too slow for every image: a second table ...
    slow_sampler_images: int = 64  # ... on the first N held-out images after the validation images
    # Classifier-free guidance scales tried for each diffusion model on the training runs' validation images
    # (the first validation_images held-out images, never in a table); each model's table row uses the scale
    # whose samples come closest to the true colors there (the smallest ab distance).
    guidance_scales: Optional[str] = "1,1.5,2,3"
    validation_images: int = 64


PRESETS = {
    "cpu-small": Preset(
        description="AFHQ cats at 64x64, 10 epochs per model, bf16, on one CPU (about three hours on 2 cores)",
        resolution=64,
        epochs=10,
        train_batch_size=32,
        mixed_precision="bf16",
        # DDPM-75 for the refining model, chosen on the 64 validation images (K = 8; docs/reproducing.md): the one
        # sampler there with both its spread matching its error (spread-skill 0.90) and a per-image colorfulness
        # gap clearly under the CNN's and the plain model's. DDPM-100 spreads more (0.95 in the table of 8b97b5b)
        # but its single samples' colors missed the right photos; on these images so did DPM-20 and DPM-SDE-20
        # (0.90 too), and DDPM-50 spreads too little (0.82). The plain model keeps DPM-20 (DDPM-100 is calibrated
        # for it on the curve, but would add another hour here).
        samplers="dpm:20,refine=ddpm:75",
        # The small UNet, clean-ab prediction, lr 5e-4 after 100 warm-up steps: measured over 1,300 steps on
        # these cats against v-prediction with min-SNR 5 and zero terminal SNR (docs/models.md, Diffusion). Samplers are
        # compared by benchmarks/sampler_curve.py; the mean of 8 samples on a fixed subset keeps it near three hours.
        # Channels-last convolutions: the CNN and the GAN train 1.3-1.5x as fast in bf16 on a CPU
        # (benchmarks/README.md); the UNet's group norm is far slower in that format, so it keeps the default.
        model_args={
            "cnn": ["--channels_last"],
            "gan": ["--channels_last"],
            "diffusion": [
                "--unet_preset",
                "small",
                "--prediction_type",
                "sample",
                "--learning_rate",
                "5e-4",
                "--lr_warmup_steps",
                "100",
            ],
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
    ),  # on 64 held-out images (slow_sampler_images)
}


model_list = choice_list(MODELS, "model_list")  # --models


def model_sampler_list(text: str) -> str:
    """--samplers of reproduce: sampler_list with --models keys as the NAMEs (e.g. dpm:20,refine=ddpm:100)."""
    text = sampler_list(text)
    unknown = [e for e in text.split(",") if "=" in e and e.rpartition("=")[0].strip() not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} names no model: NAME is one of {', '.join(MODELS)}")
    return text


def slow_sampler_list(text: str) -> str:
    return text if text == "none" else model_sampler_list(text)


def scale_list(text: str) -> str:
    """--guidance_scales: comma-separated positive scales, or none."""
    if text == "none":
        return text
    if "=" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: give scales only (e.g. 1,1.5,2), one list for every model")
    return guidance_list(text)


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
        type=model_sampler_list,
        help="diffusion samplers in the table, SCHEDULER:STEPS for every diffusion model or MODEL=SCHEDULER:STEPS "
        "for one, e.g. dpm:20,ddim:50 or dpm:20,refine=ddpm:100 (the first plain one also validates during "
        "training)",
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
    budget.add_argument(
        "--validation_images",
        type=positive_int,
        help="the first N held-out images, where every run validates, the GAN's step and each diffusion model's "
        "guidance scale are chosen; never in a table",
    )
    budget.add_argument(
        "--guidance_scales",
        type=scale_list,
        help="classifier-free guidance scales tried for each diffusion model on the validation images; the table "
        "uses the one with the smallest ab distance there ('none': no guidance)",
    )
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


class Plan:
    """What a comparison runs: each step's command line, from the preset and the options."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.models = sorted(args.models.split(","), key=MODELS.index)  # the CNN before the model refining it
        if REFINING in self.models and "cnn" not in self.models:
            raise ColorizationError(f"--models {REFINING} refines the CNN of the same run: add cnn to --models")
        self.output_dir = os.path.abspath(args.output_dir or os.path.join("results", args.preset))
        self.num_processes = args.num_processes or _gpu_count() or 1
        self.validation_images = args.validation_images or self.preset.validation_images

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
            "--validation_images",
            str(self.validation_images),
            "--output_dir",
            self._here(self.model_dir(model)),
            # an interrupted run continues from its last checkpoint (a fresh run when there is none)
            "--resume_from_checkpoint",
            "latest",
            *preset.model_args.get(family_of(model), []),  # the refining model: the diffusion recipe
        ]
        shared = [entry for entry in self.samplers().split(",") if "=" not in entry]
        if family_of(model) == "diffusion" and shared:  # validation samples as the table's first plain sampler
            scheduler, steps = shared[0].split(":")
            command += ["--validation_sampler", scheduler, "--validation_inference_steps", steps]
        if model == REFINING:  # the CNN of this run, finished before (MODELS order)
            command += ["--refine_model", self._here(self.model_dir("cnn"))]
        if not args.pretrained:
            command += list(FAMILIES[family_of(model)].without_pretrained)
        return command + shlex.split(getattr(args, f"{model}_args"))

    def samplers(self) -> str:
        return self.args.samplers or self.preset.samplers

    def _for_evaluation(self, samplers: str, first_only: bool = False) -> str:
        """A --samplers value of this command (MODEL=... entries) as evaluate.py's (--names entries), without
        the models this run leaves out; ``first_only``: each model's first sampler."""
        kept = [e for e in samplers.split(",") if "=" not in e or e.rpartition("=")[0] in self.models]
        if not kept:
            return ""
        by_model, count = parse_samplers(",".join(kept), self.models), 1 if first_only else None
        entries = [f"{scheduler}:{steps}" for scheduler, steps in by_model[""][:count]]
        for model in self.models:
            if family_of(model) == "diffusion" and by_model[model] != by_model[""]:
                entries += [
                    f"{DISPLAY_NAMES[model]}={scheduler}:{steps}" for scheduler, steps in by_model[model][:count]
                ]
        return ",".join(entries)

    def slow_samplers(self) -> Optional[str]:
        slow = self.args.slow_samplers or self.preset.slow_samplers
        diffusion = any(family_of(m) == "diffusion" for m in self.models)
        return None if slow in (None, "none") or not diffusion else slow

    def guidance_scales(self) -> Optional[list[float]]:
        """The scales tried on the validation images (None: no diffusion model, or --guidance_scales none)."""
        scales = self.args.guidance_scales or self.preset.guidance_scales
        diffusion = any(family_of(m) == "diffusion" for m in self.models)
        return None if scales in (None, "none") or not diffusion else [float(w) for w in scales.split(",")]

    def _evaluate(self, output: str, samplers: str) -> list[str]:
        """evaluate.py on every model, with what every evaluation of this folder shares."""
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
            *(["--samplers", samplers] if samplers else []),
            # the folder is this command's own: each evaluation replaces the previous one's files
            "--output_dir",
            output,
            "--overwrite_output_dir",
        ]
        if not args.pretrained:
            command += ["--metrics", METRICS_WITHOUT_PRETRAINED]
        return command

    def guidance_command(self) -> list[str]:
        """Every model on the validation images (those the GAN's step was chosen on too), each diffusion model
        at every guidance scale its training allows (condition dropout), with the table's first sampler."""
        scales = {}
        for model in self.models:
            if family_of(model) == "diffusion":
                with open(os.path.join(self.model_dir(model), "colorizer.json")) as handle:
                    guided = json.load(handle).get("condition_dropout", 0.0) > 0
                scales[DISPLAY_NAMES[model]] = self.guidance_scales() if guided else [1.0]
        return self._evaluate(GUIDANCE_DIR, self._for_evaluation(self.samplers(), first_only=True)) + [
            "--guidance_scale",
            ",".join(f"{name}={w:g}" for name, ws in scales.items() for w in ws),
            "--max_images",
            str(self.validation_images),
            "--keep_selection_images",
        ]

    def chosen_guidance(self) -> dict[str, float]:
        """Each diffusion model's scale with the smallest ab distance on the validation images (ties: the
        smaller scale); ``{}`` when no guidance was tried."""
        path = os.path.join(self.output_dir, GUIDANCE_DIR, "results.json")
        if self.guidance_scales() is None or not os.path.isfile(path):
            return {}
        return choose_guidance(path)

    def evaluation_command(self, slow: bool = False) -> list[str]:
        """evaluate.py on the held-out images after the validation images; ``slow``: the slow samplers'
        table, on the first of them only."""
        args, preset = self.args, self.preset
        command = self._evaluate(
            "evaluation_slow" if slow else "evaluation",
            self._for_evaluation(self.slow_samplers() if slow else self.samplers()),
        )
        # the validation images chose the GAN's exported step and the guidance scales: never in a table
        command += ["--skip_images", str(self.validation_images)]
        chosen = self.chosen_guidance()
        if chosen:
            command += ["--guidance_scale", ",".join(f"{name}={w:g}" for name, w in chosen.items())]
        images = args.slow_sampler_images or preset.slow_sampler_images if slow else args.max_eval_images
        if images:
            command += ["--max_images", str(images)]
        num_samples = args.num_samples or preset.num_samples
        if num_samples > 1 and not slow:
            command += ["--num_samples", str(num_samples)]
            if args.num_samples_images or preset.num_samples_images:
                command += ["--num_samples_images", str(args.num_samples_images or preset.num_samples_images)]
        return command + shlex.split(args.eval_args)


class Reproduction(Plan):
    """Runs a :class:`Plan` step by step in its results folder, skipping what finished with the same command."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.state_path = os.path.join(self.output_dir, STATE_NAME)
        if os.path.isdir(self.output_dir) and os.listdir(self.output_dir) and not os.path.isfile(self.state_path):
            raise ColorizationError(
                f"{self.output_dir} holds files that reproduce did not write (no {STATE_NAME}); "
                "choose a new or empty --output_dir"
            )

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
                for step in ("guidance", "evaluation", "evaluation_slow"):
                    self.state["steps"].pop(step, None)
                if model == "cnn" and self.state["steps"].pop(REFINING, None):
                    shutil.rmtree(self.model_dir(REFINING), ignore_errors=True)  # this folder's own run
                    print(f"[reproduce] {REFINING}: the CNN it refines was trained again; so is it", flush=True)
        if self.guidance_scales() is not None:
            outputs = [os.path.join(self.output_dir, GUIDANCE_DIR, name) for name in ("table.md", "results.json")]
            self._run("guidance", self.guidance_command() + shlex.split(self.args.eval_args), outputs)
            self.state["guidance"] = self.chosen_guidance()
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
    sweep = os.path.join(output_dir, GUIDANCE_DIR, "results.json")
    if os.path.isfile(sweep):
        figure = os.path.join(output_dir, GUIDANCE_DIR, "perception_distortion.png")
        points = perception_distortion(sweep, figure)
        chosen = state.get("guidance", {})
        lines += [
            "## Guidance scale, chosen on the validation images",
            "",
            f"Each diffusion model sampled at every guidance scale on the {_num_images(sweep)} validation images "
            "(where every run validated and the GAN's exported step was chosen; in no table); the table uses the "
            "scale with the smallest ab distance there: "
            + (", ".join(f"{model}: w = {w:g}" for model, w in chosen.items()) or "none was guided")
            + ". Every row on the perception-distortion plane (full table: "
            f"`{GUIDANCE_DIR}/table.md`):",
            "",
            "| Row | PSNR (dB) | ab distance |",
            "|---|---|---|",
            *[f"| {p['row']} | {p['psnr']:.2f} | {p['ab_distance']:.2f} |" for p in points],
            "",
        ]
        if os.path.isfile(figure):
            lines += [f"![perception-distortion]({GUIDANCE_DIR}/perception_distortion.png)", ""]
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


def choose_guidance(results_path: str) -> dict[str, float]:
    """An evaluation's guidance sweep (results.json) -> each guided model's scale with the smallest mean ab
    distance (ties: the smaller scale)."""
    with open(results_path) as handle:
        results = json.load(handle)
    candidates: dict[str, list[tuple[float, float]]] = {}
    for row, about in results["settings"]["rows"].items():
        if row in results["summary"] and results["settings"]["model_types"][row] == "diffusion":
            distance = results["summary"][row]["ab_distance"]["mean"]
            candidates.setdefault(about["model"], []).append((distance, about["guidance_scale"]))
    return {model: min(found)[1] for model, found in candidates.items() if len(found) > 1}


def perception_distortion(results_path: str, figure_path: str) -> list[dict]:
    """Every row of an evaluation on the perception-distortion plane (Blau and Michaeli 2018): PSNR against
    the ab distance to the true colors. Writes the figure where matplotlib is installed; -> the points."""
    with open(results_path) as handle:
        results = json.load(handle)
    rows = results["settings"].get("rows", {})
    points = [
        {
            "row": row,
            "model": rows.get(row, {}).get("model", row),
            "guidance_scale": rows.get(row, {}).get("guidance_scale"),
            "psnr": stats["psnr"]["mean"],
            "ab_distance": stats["ab_distance"]["mean"],
        }
        for row, stats in results["summary"].items()
        if isinstance(stats, dict) and "psnr" in stats and "ab_distance" in stats
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[reproduce] matplotlib is not installed: no perception-distortion figure (pip install matplotlib)")
        return points
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for model in dict.fromkeys(p["model"] for p in points):
        mine = [p for p in points if p["model"] == model]
        line = axes.plot([p["ab_distance"] for p in mine], [p["psnr"] for p in mine], "o-", label=model)[0]
        for p in mine if len(mine) > 1 else []:  # each guidance scale a point, labelled with its w
            axes.annotate(
                f"w={p['guidance_scale']:g}",
                (p["ab_distance"], p["psnr"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
                color=line.get_color(),
            )
    axes.set_xlabel("ab distance to the true colors (sliced Wasserstein, Lab) ← more realistic")
    axes.set_ylabel("PSNR (dB) ↑ less distortion")
    axes.set_title(f"Perception-distortion plane, {results['settings']['num_images']} validation images")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(figure_path, dpi=120)
    plt.close(figure)
    return points


def _num_images(results_path: str) -> int:
    with open(results_path) as handle:
        return json.load(handle)["settings"]["num_images"]


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
