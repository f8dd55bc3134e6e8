"""Wrong input ends in one line: every flag of every command, given a wrong value of its kind, stops at parsing
with one ``error:`` line and no traceback; the combinations of flags that cannot work too; and every
``--help`` states each default once, and truly."""

import argparse
import re

import pytest

from colorization import (
    cli,
    compare,
    config,
    demo,
    evaluation,
    export_onnx,
    push_to_hub,
    reproduce,
    restate,
    shard,
    training,
)
from colorization.tasks.cnn import CNNTask
from colorization.tasks.diffusion import DiffusionTask
from colorization.tasks.gan import GANTask

MISSING = "/nonexistent/colorization-test-path"

# Flags whose value is free text: no value of them is wrong when parsed (a column or class name is checked
# against the data, a Hub id against the Hub, extra flags by the command they are passed to). A new flag must
# be checked by its type, or named here.
FREE_TEXT = {
    "dataset_name",
    "dataset_config_name",
    "dataset_revision",
    "image_column",
    "label_column",
    "label_filter",
    "cache_dir",
    "names",
    "host",
    "revision",
    "license",
    "data_args",
    "refine_args",
    "cnn_args",
    "gan_args",
    "diffusion_args",
    "eval_args",
    "first",
    "second",
}
# Names that say "a number of things": such a flag must be checked as a count.
COUNT_NAME = re.compile(
    r"(^num_|_steps$|_size$|_images$|_samples$|_workers$|_epochs$|^epochs$|_processes$|"
    r"_limit$|_threads$|_per_block$|_channels$|^resolution$)"
)
COUNT_TYPES = {config.positive_int, config.non_negative_int, config.positive_int_list}

# checked type -> wrong values of its kind ({file}: a path to an existing file)
WRONG_VALUES = {
    int: ["x", "1.5"],
    float: ["x"],
    config.positive_int: ["x", "0", "-3"],
    config.non_negative_int: ["x", "-1"],
    config.positive_float: ["x", "0", "-1e-3", "nan", "inf"],
    config.non_negative_float: ["x", "-1", "nan"],
    config.fraction: ["x", "-0.1", "1"],
    config.open_fraction: ["0", "1", "x"],
    config.decay: ["0", "1.5"],
    config.positive_int_list: ["16,x", "16,0", ","],
    config.index_list: ["1,x", "-1"],
    config.sampler_list: ["dpm", "dpm:0", "euler:20", "dpm:20,", "=dpm:20", "Diffusion=dpm"],
    config.guidance_list: ["0", "x", "=2", "Diffusion=", "inf", "1,,2"],
    config.precision_list: ["fp16", "=bf16", "Diffusion=", "fp32,,bf16"],
    config.existing_folder: [MISSING, "{file}"],
    config.existing_path: [MISSING],
    config.output_folder: ["{file}", ""],
    config.device_name: ["cuda:99", "tpu", "gpu!"],
    config.port: ["70000", "-1", "x"],
    evaluation.metric_list: ["psnr,nonsense", ","],
    reproduce.model_list: ["cnn,vae", ""],
    reproduce.slow_sampler_list: ["ddpm", "none:5"],
    reproduce.model_sampler_list: ["dpm:20,Diffusion=ddpm:100", "vae=dpm:20"],
    reproduce.scale_list: ["Diffusion=2", "0", "1,x"],
    training.checkpoint_request: [MISSING, "newest"],
    config.model_reference: [MISSING, "a/b/c", "not a model"],
    config.hub_repo_id: ["no-owner", "a/b/c", "/x"],
    config.data_source: [MISSING, "{file}", "a/b/c"],
}


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    return str(folder)


def _commands(model_dir, photo):
    """name -> (the parser, the function that parses and checks a command line, the required arguments)."""

    def trainer(task):
        return training.build_parser(task), lambda argv: training.parse_args(task, argv), []

    return {
        "train_cnn.py": trainer(CNNTask),
        "train_gan.py": trainer(GANTask),
        "train_diffusion.py": trainer(DiffusionTask),
        "evaluate.py": (evaluation.build_parser(), evaluation.parse_args, ["--checkpoints", model_dir]),
        "colorize": (
            cli.build_parser(),
            lambda argv: cli.build_parser().parse_args(argv),
            [photo, "--model", model_dir],
        ),
        "colorize-demo": (demo.build_parser(), demo.parse_args, ["--models", model_dir]),
        "reproduce": (reproduce.build_parser(), reproduce.parse_args, []),
        "push_to_hub": (push_to_hub.build_parser(), push_to_hub.parse_args, [model_dir, "you/model"]),
        "export_onnx": (
            export_onnx.build_parser(),
            lambda argv: export_onnx.build_parser().parse_args(argv),
            [model_dir, model_dir + "-onnx"],
        ),
        "compare": (
            compare.build_parser(),
            lambda argv: compare.build_parser().parse_args(argv),
            [model_dir, "A", "B"],
        ),
        "restate": (
            restate.build_parser(),
            lambda argv: restate.build_parser().parse_args(argv),
            [model_dir],
        ),
        "shard": (
            shard.build_parser(),
            lambda argv: shard.build_parser().parse_args(argv),
            [model_dir, model_dir + "-x"],
        ),
    }


def _checked_type(action):
    return getattr(action.type, "checked_type", action.type)


def _parse(parse, argv, capsys):
    """-> (exit code, stderr) of parsing ``argv`` as the shell would see them (no traceback may escape)."""
    capsys.readouterr()
    try:
        parse([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def _assert_one_error_line(code, error, what):
    errors = [line for line in error.splitlines() if "error:" in line]
    assert code not in (0, None) and len(errors) == 1 and "Traceback" not in error, (what, code, error)


def test_every_flag_of_every_command_refuses_a_wrong_value_in_one_line(tmp_path, model_dir, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not read while parsing")
    tried, flags, commands = 0, 0, _commands(model_dir, str(photo))
    for name, (parser, parse, required) in commands.items():
        assert _parse(parse, required, capsys)[0] == 0, f"{name}: the required arguments alone must parse"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else None
            if isinstance(
                action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
            ):
                wrong = [[f"{flag}=maybe"]]
            elif action.choices is not None:
                wrong = [[flag, "not-a-choice"]]
            else:
                kind = _checked_type(action)
                if COUNT_NAME.search(action.dest):
                    assert kind in COUNT_TYPES, f"{name} {flag}: a count must be checked as one, not as {kind}"
                if kind in (None, str):
                    assert action.dest in FREE_TEXT, f"{name} {flag or action.dest}: no check and not free text"
                    continue
                assert kind in WRONG_VALUES, f"{name} {flag}: no wrong values known for its type {kind}"
                values = [v.format(file=photo) for v in WRONG_VALUES[kind]]
                wrong = [[flag, v] if flag else [v] for v in values]
            flags += 1
            for arguments in wrong:
                if flag is None:  # a positional argument: the wrong value replaces the right one
                    argv = [a for a in required if a != str(photo)] + arguments
                else:
                    argv = required + arguments
                code, error = _parse(parse, argv, capsys)
                _assert_one_error_line(code, error, f"{name} {' '.join(arguments)}")
                tried += 1
    print(f"tried {tried} wrong values on {flags} flags of {len(commands)} commands")
    assert flags > 120 and tried > 250


@pytest.mark.parametrize(
    "command, argv, message",
    [
        (DiffusionTask, ["--zero_terminal_snr"], "--zero_terminal_snr needs --prediction_type"),
        (GANTask, ["--content_fraction", "0.6", "--discriminator_warmup_fraction", "0.4"], "no adversarial steps"),
        (CNNTask, ["--resolution", "36"], "multiple of 8"),
        (DiffusionTask, ["--resolution", "36", "--unet_preset", "small"], "cannot be halved"),
        (CNNTask, ["--dataset_name", "x/y", "--train_data_dir", "."], "not both"),
    ],
)
def test_combinations_that_cannot_work_are_refused_when_parsed(command, argv, message, capsys):
    code, error = _parse(lambda a: training.parse_args(command, a), argv, capsys)
    _assert_one_error_line(code, error, argv)
    assert message in error


def test_mismatched_names_are_refused_when_parsed(model_dir, capsys):
    code, error = _parse(evaluation.parse_args, ["--checkpoints", model_dir, "--names", "A", "B"], capsys)
    _assert_one_error_line(code, error, "evaluate --names")
    code, error = _parse(demo.parse_args, ["--models", model_dir, "--names", "A", "B"], capsys)
    _assert_one_error_line(code, error, "demo --names")
    code, error = _parse(reproduce.parse_args, ["--cnn_args", "--seed '1"], capsys)
    _assert_one_error_line(code, error, "reproduce unclosed quote")


def test_every_help_states_each_default_once_and_truly(tmp_path, model_dir):
    for name, (parser, _, _) in _commands(model_dir, str(tmp_path)).items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action)
            where = f"{name} {action.option_strings}: {text!r}"
            assert "(default: None)" not in text and text.count("(default:") <= 1, where
            if "default" in action.help.lower():
                assert text == action.help, where  # the text gives its default: nothing is added to it
            if isinstance(action, argparse._StoreFalseAction):  # --no-x: showing "True" reads as "on"
                assert "(default: True)" not in text, where
            if isinstance(action, argparse.BooleanOptionalAction):  # --x/--no-x: say which one is on
                assert f"(default: {action.default})" in text or "default" in action.help.lower(), where


def test_sampler_names_are_the_schedulers_of_the_diffusion_model():
    from colorization.models.diffusion import SAMPLERS

    assert set(SAMPLERS) == set(config.SAMPLER_NAMES)


def test_refining_anything_but_a_one_pass_model_is_refused_when_parsed(tmp_path, capsys):
    import json

    (tmp_path / "colorizer.json").write_text(
        json.dumps({"format": "colorization-model", "format_version": 1, "model_type": "diffusion", "resolution": 32})
    )
    code, error = _parse(lambda a: training.parse_args(DiffusionTask, a), ["--refine_model", str(tmp_path)], capsys)
    _assert_one_error_line(code, error, "--refine_model a diffusion model")
    assert "refines a one-pass model" in error
    code, error = _parse(
        lambda a: training.parse_args(DiffusionTask, a), ["--refine_model", str(tmp_path / "..")], capsys
    )
    _assert_one_error_line(code, error, "--refine_model a folder without a model")
