"""Reproduce the whole three-way comparison with one command.

    python -m colorization.reproduce --preset cpu-small --train_data_dir ../shared/data/afhq_cat

trains the CNN, the GAN and the diffusion model on the same data, split, resolution, seed and number of
training images, one after the other (each through ``accelerate launch train_*.py``), chooses each diffusion
model's sampler and guidance scale on the validation images (the first held-out images, which every run
validated on and no table uses), then runs ``evaluate.py`` on the held-out images after them, and writes
everything under one results folder:

    results/<preset>/
      README.md            the table, the grid, what was run, where, when, from which commit
      commands.sh          every command this folder's runs executed, in order, exactly (run from this
                           folder: paths are relative to it; python: the interpreter that ran reproduce)
      reproduce.json       the plan, each model's status and wall-clock, the hardware
      models/<model>/      each training run: exported model, checkpoints, TensorBoard logs, samples
      logs/<step>.log      each command's full output
      selection/           every choice made on the validation images: README.md and selection.json (what was
                           chosen, among which candidates, on which images, with which numbers), and the
                           evaluations behind them (samplers/, guidance/)
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
SELECTION_DIR = "selection"  # every choice made on the validation images, and the record of it
SAMPLERS_DIR = os.path.join(SELECTION_DIR, "samplers")  # the candidate samplers, each with K samples per image
GUIDANCE_DIR = os.path.join(SELECTION_DIR, "guidance")  # the guidance scales, with each model's chosen sampler
SELECTION_RECORD = os.path.join(SELECTION_DIR, "selection.json")
# A sampler is calibrated when the spread of its K samples matches the error of their mean (spread-skill ratio
# 1); candidates within this band of 1 count as calibrated, and among them the proper score decides.
CALIBRATED_BAND = 0.1
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
    # The candidate diffusion samplers: SCHEDULER:STEPS for every diffusion model, MODEL=SCHEDULER:STEPS for one
    # (a --models key; those replace the plain ones for that model). Each model's table sampler is chosen among
    # its candidates on the validation images (choose_sampler); the first plain one validates during training
    # (a fast one: it runs at every validation).
    samplers: str
    model_args: dict = dataclass_field(default_factory=dict)  # per model, after the shared flags
    eval_batch_size: int = 32
    num_samples: int = 1  # the diffusion model's mean of K samples ...
    num_samples_images: Optional[int] = None  # ... on the first N held-out images
    slow_samplers: Optional[str] = None  # samplers too slow for every image: a second table ...
    slow_sampler_images: int = 64  # ... on the first N held-out images after the validation images
    # torch.compile the diffusion UNets for the table's evaluation (evaluate.py --compile): it draws over a thousand
    # samples per model, enough to pay back the compile (benchmarks/README.md); the selection steps' rows each
    # compile anew for a few hundred samples, so they do not
    compile_table: bool = False
    # Classifier-free guidance scales tried for each diffusion model (trained with condition dropout) with its
    # chosen sampler, on the first guidance_images validation images (none: all); chosen by the scales' rule of
    # choose() (the lowest colorfulness CRPS).
    guidance_scales: Optional[str] = "1,1.5,2,3"
    guidance_images: Optional[int] = None
    # The validation images: the first held-out images, where every run validates, the GAN's exported step, each
    # diffusion model's sampler and guidance scale are chosen (with K = selection_num_samples samples per image);
    # never in a table.
    validation_images: int = 64
    selection_num_samples: int = 8


PRESETS = {
    "cpu-small": Preset(
        description="AFHQ cats at 64x64, 10 epochs per model, bf16, on one CPU (about 80 minutes on 2 cores)",
        resolution=64,
        epochs=10,
        train_batch_size=32,
        mixed_precision="bf16",
        # Candidates of at most 25 UNet passes, chosen among on the validation images (choose_sampler; the record
        # is the results folder's selection/): for the plain model its ODE solver and two stochastic ones, for the
        # refining model the four stochastic kinds (ancestral DDPM, DPM-Solver on the SDE, ancestral Euler, EDM's
        # churn). DPM-20 validates both during training.
        samplers="dpm:20,dpm-sde:20,euler-a:25,refine=ddpm:25,refine=dpm-sde:20,refine=euler-a:25,refine=edm:25",
        # The small UNet, clean-ab prediction, lr 5e-4 after 100 warm-up steps: measured over 1,300 steps on
        # these cats against v-prediction with min-SNR 5 and zero terminal SNR (docs/models.md, Diffusion). Samplers are
        # compared by benchmarks/sampler_curve.py; the mean of 8 samples is taken on a fixed subset of the table.
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
        # Three scales on 24 validation images, against 1,1.5,2,3 on all 64 before (which chose w = 1 for both
        # models at 3afa65b, as this sweep did on the models of 2026-12-03: docs/reproducing.md)
        guidance_scales="1,1.5,2",
        guidance_images=24,
        compile_table=True,
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
        help="candidate diffusion samplers, SCHEDULER:STEPS for every diffusion model or MODEL=SCHEDULER:STEPS "
        "for one, e.g. dpm:20,ddim:50 or dpm:20,refine=ddpm:100; each model's table sampler is chosen among its "
        "candidates on the validation images (the first plain one also validates during training)",
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
        help="the first N held-out images, where every run validates and the GAN's step, each diffusion model's "
        "sampler and guidance scale are chosen; never in a table",
    )
    budget.add_argument(
        "--guidance_scales",
        type=scale_list,
        help="classifier-free guidance scales tried for each diffusion model (with its chosen sampler) on the "
        "validation images; chosen by the same rule as the sampler ('none': no guidance)",
    )
    budget.add_argument(
        "--selection_num_samples",
        type=positive_int,
        help="samples per validation image when choosing samplers and scales (at least 2: the spread needs them)",
    )
    budget.add_argument(
        "--guidance_images", type=positive_int, help="... on the first N validation images only (default: all)"
    )
    extra = parser.add_argument_group("extra flags, appended to the commands (they win over the preset)")
    extra.add_argument("--data_args", default="", help="for every command, e.g. '--dataloader_num_workers 0'")
    for model in MODELS:
        extra.add_argument(f"--{model}_args", default="", help=f"for {FAMILIES[family_of(model)].script}")
    extra.add_argument("--eval_args", default="", help="for evaluate.py")
    extra.add_argument(
        "--compile_table",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the diffusion UNets in the table's evaluation (default: the preset's choice)",
    )
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
        if (args.selection_num_samples or self.preset.selection_num_samples) < 2:
            raise ColorizationError("--selection_num_samples must be at least 2: a sampler's spread needs two samples")

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

    def _for_evaluation(self, samplers: str) -> str:
        """A --samplers value of this command (MODEL=... entries) as evaluate.py's (--names entries), without
        the models this run leaves out."""
        kept = [e for e in samplers.split(",") if "=" not in e or e.rpartition("=")[0] in self.models]
        if not kept:
            return ""
        by_model = parse_samplers(",".join(kept), self.models)
        entries = [f"{scheduler}:{steps}" for scheduler, steps in by_model[""]]
        for model in self.models:
            if family_of(model) == "diffusion" and by_model[model] != by_model[""]:
                entries += [f"{DISPLAY_NAMES[model]}={scheduler}:{steps}" for scheduler, steps in by_model[model]]
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

    def candidates(self) -> dict[str, list[str]]:
        """Each diffusion model's candidate samplers (its display name -> ["scheduler:steps", ...])."""
        kept = [e for e in self.samplers().split(",") if "=" not in e or e.rpartition("=")[0] in self.models]
        by_model = parse_samplers(",".join(kept), self.models)
        return {
            DISPLAY_NAMES[model]: [f"{scheduler}:{steps}" for scheduler, steps in by_model[model]]
            for model in self.models
            if family_of(model) == "diffusion"
        }

    def _validation_only(self, output: str, samplers: dict[str, list[str]], images: Optional[int] = None) -> list[str]:
        """evaluate.py on the first validation images only, K samples each (a selection step's evaluation). The
        table's images come after them: a selection step never measures them (check_validation_only)."""
        count = min(images or self.validation_images, self.validation_images)
        entries = ",".join(f"{name}={sampler}" for name, found in samplers.items() for sampler in found)
        return self._evaluate(output, entries) + [
            "--max_images",
            str(count),
            "--keep_selection_images",  # the GAN's step was chosen on these images too: that is what they are for
            "--num_samples",
            str(self.args.selection_num_samples or self.preset.selection_num_samples),
        ]

    def sampler_selection_command(self) -> Optional[list[str]]:
        """Every candidate sampler of every diffusion model on the validation images (None: each model has one
        candidate, so there is nothing to choose)."""
        candidates = self.candidates()
        if all(len(found) < 2 for found in candidates.values()):
            return None
        return self._validation_only(SAMPLERS_DIR, candidates)

    def chosen_samplers(self) -> dict[str, str]:
        """Each diffusion model's table sampler: its only candidate, or the one chosen on the validation images
        (:func:`choose_sampler`); {} while the selection has not run."""
        candidates = self.candidates()
        chosen = {name: found[0] for name, found in candidates.items() if len(found) == 1}
        if len(chosen) < len(candidates):
            path = os.path.join(self.output_dir, SAMPLERS_DIR, "results.json")
            if not os.path.isfile(path):
                return {}
            found = choose_sampler(path, self.validation_images)
            chosen.update({name: found[name]["chosen"] for name in candidates if name not in chosen})
        return chosen

    def guided_models(self) -> list[str]:
        """The diffusion models whose guidance scale is to be chosen (trained with condition dropout)."""
        if self.guidance_scales() is None:
            return []
        guided = []
        for model in self.models:
            if family_of(model) == "diffusion":
                with open(os.path.join(self.model_dir(model), "colorizer.json")) as handle:
                    if json.load(handle).get("condition_dropout", 0.0) > 0:
                        guided.append(DISPLAY_NAMES[model])
        return guided

    def guidance_command(self) -> Optional[list[str]]:
        """Each guided diffusion model at every scale, with its chosen sampler, on the (first guidance_images)
        validation images (None: no model is guided)."""
        guided = self.guided_models()
        if not guided:
            return None
        samplers = self.chosen_samplers()
        images = self.args.guidance_images or self.preset.guidance_images
        return self._validation_only(GUIDANCE_DIR, {name: [samplers[name]] for name in samplers}, images) + [
            "--guidance_scale",
            ",".join(f"{name}={w:g}" for name in guided for w in self.guidance_scales()),
        ]

    def chosen_guidance(self) -> dict[str, float]:
        """Each guided model's scale chosen on the validation images (:func:`choose_guidance`); {} when none is."""
        path = os.path.join(self.output_dir, GUIDANCE_DIR, "results.json")
        if not os.path.isfile(path) or not self.guided_models():  # the sweep runs once the models are trained
            return {}
        return {name: found["chosen"] for name, found in choose_guidance(path, self.validation_images).items()}

    def evaluation_command(self, slow: bool = False) -> list[str]:
        """evaluate.py on the held-out images after the validation images, each diffusion model with its chosen
        sampler and scale; ``slow``: the slow samplers' table, on the first of them only."""
        args, preset = self.args, self.preset
        if slow:
            samplers = self._for_evaluation(self.slow_samplers())
        else:
            samplers = ",".join(f"{name}={sampler}" for name, sampler in self.chosen_samplers().items())
        command = self._evaluate("evaluation_slow" if slow else "evaluation", samplers)
        # the validation images chose the GAN's exported step, the samplers and the scales: never in a table
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
        compile_table = preset.compile_table if args.compile_table is None else args.compile_table
        if compile_table and not slow and any(family_of(m) == "diffusion" for m in self.models):
            command += ["--compile"]
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
                for step in ("samplers", "guidance", "evaluation", "evaluation_slow"):
                    self.state["steps"].pop(step, None)
                if model == "cnn" and self.state["steps"].pop(REFINING, None):
                    shutil.rmtree(self.model_dir(REFINING), ignore_errors=True)  # this folder's own run
                    print(f"[reproduce] {REFINING}: the CNN it refines was trained again; so is it", flush=True)
        self._select()
        outputs = [os.path.join(self.output_dir, "evaluation", name) for name in ("table.md", "results.json")]
        self._run("evaluation", self.evaluation_command(), outputs)
        if self.slow_samplers():
            outputs = [os.path.join(self.output_dir, "evaluation_slow", name) for name in ("table.md", "results.json")]
            self._run("evaluation_slow", self.evaluation_command(slow=True), outputs)
        self._write_readme()
        print(f"[reproduce] done: {os.path.join(self.output_dir, 'README.md')}", flush=True)

    def _select(self) -> None:
        """Choose each diffusion model's sampler, then its guidance scale, on the validation images, and write the
        selection record (selection/selection.json and README.md)."""
        for step, folder, command in (
            ("samplers", SAMPLERS_DIR, self.sampler_selection_command),
            ("guidance", GUIDANCE_DIR, self.guidance_command),
        ):
            found = command()  # the guidance sweep's needs the samplers chosen by the step before
            if found is not None:
                outputs = [os.path.join(self.output_dir, folder, name) for name in ("table.md", "results.json")]
                self._run(step, found + shlex.split(self.args.eval_args), outputs)
        self.state["samplers"], self.state["guidance"] = self.chosen_samplers(), self.chosen_guidance()
        self._save_state()
        write_selection_record(self.output_dir, self.models, self.candidates(), self.validation_images)

    def _write_readme(self) -> None:
        write_results_readme(
            self.output_dir, self.args.preset, self.preset.description, self.state, self.slow_samplers()
        )


def write_selection_record(output_dir: str, models: list[str], candidates: dict, validation_images: int) -> dict:
    """selection/selection.json and selection/README.md: every choice made on the validation images (the GAN's
    exported step, each diffusion model's sampler and guidance scale): what was chosen, among which candidates,
    on which images, by which rule, with which numbers -> the record."""
    record: dict = {
        "validation_images": (
            f"the first {validation_images} held-out images (every run validated on them; every table leaves them out)"
        ),
        "rule": choose.__doc__.split("->")[0]
        .strip()
        .replace("\n    ", " ")
        .replace("``CALIBRATED_BAND``", f"{CALIBRATED_BAND:g}"),
        "choices": [],
    }
    for model in models:  # an exported step chosen during training (the GAN's --model_selection best)
        with open(os.path.join(output_dir, "models", model, "colorizer.json")) as handle:
            chosen = json.load(handle).get("selection")
        if chosen:
            record["choices"].append(
                {
                    "model": DISPLAY_NAMES[model],
                    "what": "exported step",
                    "chosen": chosen.get("step"),
                    "rule": chosen.get("rule"),
                    "images": len(chosen.get("images", [])),
                    "numbers": {k: v for k, v in chosen.items() if k not in ("images", "step", "rule")},
                }
            )
    sweeps = (("sampler", SAMPLERS_DIR, choose_sampler), ("guidance scale", GUIDANCE_DIR, choose_guidance))
    for what, folder, chooser in sweeps:
        path = os.path.join(output_dir, folder, "results.json")
        found = chooser(path, validation_images) if os.path.isfile(path) else {}
        for model, choice in found.items():
            record["choices"].append({"model": model, "what": what, "evaluation": f"{folder}/table.md", **choice})
    for model, only in candidates.items():
        if len(only) == 1:
            record["choices"].append(
                {"model": model, "what": "sampler", "chosen": only[0], "rule": "the only candidate", "candidates": []}
            )
    write_json(os.path.join(output_dir, SELECTION_RECORD), record)
    lines = [
        "# Every choice, made on the validation images",
        "",
        f"Images: {record['validation_images']}. Rule for samplers and scales: {record['rule']}.",
        "",
    ]
    for choice in record["choices"]:
        lines += [f"## {choice['model']}: {choice['what']} {choice['chosen']}", "", f"Rule: {choice['rule']}."]
        if choice.get("evaluation"):
            table = os.path.relpath(choice["evaluation"], SELECTION_DIR)  # this README is in SELECTION_DIR
            lines += ["", f"Among, on {choice['images']} images with K samples each ([table]({table})):"]
            lines += ["", "| Candidate | Spread-skill ratio | Colorfulness CRPS ↓ | Pooled PSNR, posterior mean (dB) |"]
            lines += ["|---|---|---|---|"]
            for c in choice["candidates"]:
                cells = [_cell(c.get(k)) for k in ("spread_skill", "colorfulness_crps", "pooled_psnr_posterior")]
                lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
        elif choice.get("numbers"):
            numbers = ", ".join(f"{k} {v:.4g}" for k, v in choice["numbers"].items() if isinstance(v, (int, float)))
            lines += ["", f"On {choice['images']} images: {numbers}."]
        lines.append("")
    with open(os.path.join(output_dir, SELECTION_DIR, "README.md"), "w") as handle:
        handle.write("\n".join(lines))
    return record


def _cell(stat: Optional[dict]) -> str:
    if not stat:
        return "—"
    low, high = stat["ci95"]
    return f"{stat['mean']:.2f} [{low:.2f}, {high:.2f}]"


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
    record = os.path.join(output_dir, SELECTION_DIR, "README.md")
    if os.path.isfile(record):
        samplers = state.get("samplers", {})
        guidance = state.get("guidance", {})
        lines += [
            "## Chosen on the validation images",
            "",
            "Each diffusion model's sampler, then its guidance scale, were chosen on the validation images (where "
            "every run validated and the GAN's exported step was chosen; in no table) by the proper scores, with K "
            "samples per image: "
            + (", ".join(f"{m}: {samplers[m]}, w = {guidance.get(m, 1.0):g}" for m in samplers) or "no diffusion model")
            + f". The candidates, the rule and every number: [`{SELECTION_DIR}/README.md`]({SELECTION_DIR}/README.md).",
            "",
        ]
    sweep = os.path.join(output_dir, GUIDANCE_DIR, "results.json")
    if os.path.isfile(sweep):
        figure = os.path.join(output_dir, GUIDANCE_DIR, "perception_distortion.png")
        points = perception_distortion(sweep, figure)
        lines += [
            f"Every row of the guidance sweep on the perception-distortion plane ({_num_images(sweep)} validation "
            f"images; full table: `{GUIDANCE_DIR}/table.md`):",
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


def check_validation_only(settings: dict, validation_images: int) -> None:
    """Refuse to choose anything from an evaluation that measured images other than the first
    ``validation_images`` held-out ones: the table's images come after them and are for the table only."""
    evaluation = settings.get("evaluation", {})
    skipped, images = evaluation.get("skip_images", 0), evaluation.get("max_images")
    if settings.get("split") != "validation" or skipped or images is None or images > validation_images:
        raise ColorizationError(
            f"refusing to choose on this evaluation: it measured split {settings.get('split')!r} with "
            f"--skip_images {skipped} and --max_images {images}, not only the first {validation_images} held-out "
            "(validation) images. Samplers and scales are chosen on the validation images; the table's images "
            "are for the table."
        )


def _candidate(stats: dict) -> dict:
    """A row's numbers that a choice weighs, from its samples table entry."""
    return {
        key: stats[key]
        for key in ("spread_skill", "colorfulness_crps", "pooled_psnr_posterior", "pooled_psnr_mean", "psnr")
        if key in stats
    }


def _candidate_name(name) -> str:
    """A sampler ("dpm:20") or a guidance scale (1.5) as a record names it."""
    return f"{name:g}" if isinstance(name, (int, float)) else str(name)


def choose(candidates: list[dict], calibration_first: bool = True) -> dict:
    """The rule every choice of a sampler or a scale follows, on the validation images, by proper scores: a
    sampler, among the calibrated candidates (spread-skill ratio within ``CALIBRATED_BAND`` of 1), the lowest
    colorfulness CRPS, or if none is calibrated the one whose ratio is closest to 1; a guidance scale, the lowest
    colorfulness CRPS (guidance changes the distribution sampled, and the spread it adds by overshooting the colors
    is not calibration: the CRPS, a proper score, counts both); ties: the higher pooled posterior-mean PSNR, then
    the first, i.e. the cheaper. -> {"chosen", "rule"} (``candidates``: dicts with "name" and the numbers of
    :func:`_candidate`; ``calibration_first``: False for the scales' rule)."""

    def score(c):
        crps = c.get("colorfulness_crps", {}).get("mean", 0.0)
        return (crps, -c["pooled_psnr_posterior"]["mean"])

    if not calibration_first:
        return {"chosen": min(candidates, key=score)["name"], "rule": "the lowest colorfulness CRPS"}
    calibrated = [c for c in candidates if abs(c["spread_skill"]["mean"] - 1.0) <= CALIBRATED_BAND]
    if calibrated:
        best = min(calibrated, key=score)
        rule = (
            f"the lowest colorfulness CRPS among the calibrated candidates (spread-skill ratio within "
            f"{CALIBRATED_BAND:g} of 1: {', '.join(_candidate_name(c['name']) for c in calibrated)})"
        )
    else:
        best = min(candidates, key=lambda c: abs(c["spread_skill"]["mean"] - 1.0))
        rule = f"no candidate is calibrated (spread-skill ratio within {CALIBRATED_BAND:g} of 1): the closest to 1"
    return {"chosen": best["name"], "rule": rule}


def _sampled_rows(results_path: str, validation_images: int) -> tuple[dict, dict]:
    with open(results_path) as handle:
        results = json.load(handle)
    settings, samples = results["settings"], results["summary"].get("samples", {})
    check_validation_only(settings, validation_images)
    return settings, samples


def choose_sampler(results_path: str, validation_images: int) -> dict[str, dict]:
    """The sampler selection's evaluation (results.json) -> per diffusion model {"chosen": "scheduler:steps",
    "rule", "candidates": [{"name", numbers...}], "images"} (:func:`choose`)."""
    settings, samples = _sampled_rows(results_path, validation_images)
    found: dict[str, list[dict]] = {}
    for row, about in settings["rows"].items():
        if row in samples and "spread_skill" in samples[row] and about.get("guidance_scale", 1.0) == 1.0:
            found.setdefault(about["model"], []).append({"name": about["sampler"], **_candidate(samples[row])})
    return {
        model: {**choose(candidates), "candidates": candidates, "images": samples["num_images"]}
        for model, candidates in found.items()
    }


def choose_guidance(results_path: str, validation_images: int) -> dict[str, dict]:
    """The guidance sweep's evaluation (results.json) -> per guided model {"chosen": scale, "rule",
    "candidates", "images"} by the scales' rule of :func:`choose` (ties: the smaller scale, which costs half the
    passes)."""
    settings, samples = _sampled_rows(results_path, validation_images)
    found: dict[str, list[dict]] = {}
    for row, about in settings["rows"].items():
        if row in samples and "spread_skill" in samples[row]:
            found.setdefault(about["model"], []).append({"name": about["guidance_scale"], **_candidate(samples[row])})
    chosen = {}
    for model, candidates in found.items():
        if len(candidates) > 1:
            candidates.sort(key=lambda c: c["name"])
            found_choice = choose(candidates, calibration_first=False)
            chosen[model] = {**found_choice, "candidates": candidates, "images": samples["num_images"]}
    return chosen


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
