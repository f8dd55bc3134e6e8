"""Defaults are declared once, as dataclasses, and become command-line flags; every flag is checked where it is parsed.

Each field's ``metadata["help"]`` is its flag's help; ``bool`` fields become ``--flag/--no-flag``;
``Optional[...]`` fields accept ``none``; ``metadata["choices"]`` restricts the values and ``metadata["type"]``
(one of the checked types below) parses and checks a value, so that a wrong one ends in argparse's one
``error:`` line at once, not in a traceback an hour into a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from typing import Any, Callable, Optional, Sequence, Union


def field(default: Any, help: str, choices: tuple | None = None, type: Optional[Callable] = None):  # noqa: A002
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "type": type})


# ----- checked types: each parses one flag value or raises argparse.ArgumentTypeError with the reason -----


def _named(name: str):
    def rename(function):
        function.__name__ = name
        return function

    return rename


def _number(text: str, parse, what: str):
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and value != value:  # NaN passes every comparison below
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


@_named("positive_int")
def positive_int(text: str) -> int:
    """A count: a whole number of at least 1."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@_named("non_negative_int")
def non_negative_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


@_named("positive_float")
def positive_float(text: str) -> float:
    """A rate or scale: a finite number above 0."""
    value = _number(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


@_named("non_negative_float")
def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


@_named("fraction")
def fraction(text: str) -> float:
    """A share of something: 0 <= value < 1."""
    value = _number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


@_named("open_fraction")
def open_fraction(text: str) -> float:
    """0 < value < 1 (e.g. the held-out share: neither nothing nor everything)."""
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and below 1, got {text}")
    return value


@_named("decay")
def decay(text: str) -> float:
    """An exponential moving average's decay: 0 < value <= 1."""
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def _int_list(text: str, minimum: int, allow_empty: bool) -> str:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts and not allow_empty:
        raise argparse.ArgumentTypeError("give at least one number, e.g. 32,64")
    for part in parts:
        if not (part.isdigit() or (part.startswith("-") and part[1:].isdigit())) or int(part) < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of whole numbers >= {minimum} ({part!r})"
            )
    return ",".join(parts)


@_named("positive_int_list")
def positive_int_list(text: str) -> str:
    """Comma-separated whole numbers >= 1 (e.g. widths 32,64,64,128), kept as text."""
    return _int_list(text, 1, allow_empty=False)


@_named("index_list")
def index_list(text: str) -> str:
    """Comma-separated indices >= 0, possibly none at all (the empty string)."""
    return _int_list(text, 0, allow_empty=True)


def choice_list(names: tuple, name: str):
    """A checked type: comma-separated names among ``names``, at least one, kept as text."""

    def parse(text: str) -> str:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [part for part in chosen if part not in names]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)}; choose from {','.join(names)}"
                if unknown
                else f"give at least one of {','.join(names)}"
            )
        return ",".join(chosen)

    parse.__name__ = name
    return parse


def parse_ints(text: Optional[str]) -> Optional[tuple]:
    """The numbers of a checked list flag, or None for an unset one."""
    return None if text is None else tuple(int(part) for part in text.split(",") if part.strip())


@_named("sampler_list")
def sampler_list(text: str) -> str:
    """Diffusion samplers as comma-separated SCHEDULER:STEPS for every diffusion model, or NAME=SCHEDULER:STEPS
    for one model (e.g. dpm:20,ddim:50 or "dpm:20,Refiner=ddpm:100"); several for a model, a row each."""
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        name, equals, sampler = entry.rpartition("=")
        scheduler, _, steps = sampler.strip().partition(":")
        if scheduler not in SAMPLER_NAMES or not steps.isdigit() or int(steps) < 1 or (equals and not name.strip()):
            raise argparse.ArgumentTypeError(
                f"{entry!r} is not SCHEDULER:STEPS or NAME=SCHEDULER:STEPS with SCHEDULER in "
                f"{', '.join(SAMPLER_NAMES)} and STEPS >= 1 (e.g. dpm:20 or Refiner=ddpm:100)"
            )
    return ",".join(entries)


def parse_samplers(text: str, names: Sequence[str] = ()) -> dict[str, list[tuple[str, int]]]:
    """A checked --samplers value -> the (scheduler, steps) pairs of each model in ``names`` (NAME=... entries
    replace the plain ones for their model), and under "" the plain ones. An unknown NAME raises ValueError."""

    def sampler(value: str) -> tuple[str, int]:
        scheduler, _, steps = value.partition(":")
        return scheduler, int(steps)

    shared, named = _values_by_name(text, names, "--samplers", sampler)
    return {"": shared} | {name: list(dict.fromkeys(named.get(name) or shared)) for name in names}


@_named("guidance_list")
def guidance_list(text: str) -> str:
    """Classifier-free guidance scales, comma-separated: W for every diffusion model, or NAME=W for the model
    of that --names entry (e.g. 1,2 or "Diffusion=1.5,Refiner=2"); several scales for a model, a row each."""
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        name, equals, scale = entry.rpartition("=")
        try:
            value = _number(scale, float, "")
            valid = 0 < value < float("inf") and not (equals and not name.strip())
        except argparse.ArgumentTypeError:
            valid = False
        if not valid:
            raise argparse.ArgumentTypeError(
                f"{entry!r} is not a positive guidance scale W or NAME=W (e.g. 1.5 or Diffusion=2)"
            )
    return ",".join(entries)


def parse_guidance(text: str, names: Sequence[str]) -> dict[str, list[float]]:
    """A checked --guidance_scale value -> the scales of each model in ``names`` (NAME=W entries win over the
    plain W ones for their model; 1.0 where none is given). An unknown NAME raises ValueError."""
    shared, named = _values_by_name(text, names, "--guidance_scale", float)
    return {name: list(dict.fromkeys(named.get(name) or shared or [1.0])) for name in names}


def _values_by_name(text: str, names: Sequence[str], flag: str, parse: Callable) -> tuple[list, dict[str, list]]:
    """The entries of a checked VALUE / NAME=VALUE list flag -> (the plain values, the values of each NAME)."""
    shared, named = [], {}
    for entry in text.split(","):
        name, _, value = entry.rpartition("=")
        if name and name.strip() not in names:
            raise ValueError(f"{flag} names {name.strip()!r}, which is not one of --names {list(names)}")
        (named.setdefault(name.strip(), []) if name else shared).append(parse(value.strip()))
    return shared, named


# The diffusion samplers by name (the schedulers behind them: colorization.models.diffusion.SAMPLERS, which
# checks that it names exactly these); here so that flags are checked without importing diffusers.
SAMPLER_NAMES = ("dpm", "ddim", "ddpm", "dpm-sde", "euler-a", "edm")
# What a diffusion model's UNet computes in at inference (colorization.colorizer.resolve_precision): auto is bf16
# autocast where the device computes bf16 fast (a CPU with AVX512-BF16 or AMX-BF16, a CUDA GPU of compute
# capability 8 or more), else fp32; the scheduler's arithmetic is always fp32.
PRECISIONS = ("auto", "fp32", "bf16")


@_named("precision_list")
def precision_list(text: str) -> str:
    """Inference precisions of the diffusion models, comma-separated: P for every diffusion model or NAME=P for
    one (e.g. auto, or "fp32,bf16" for a row each); P in PRECISIONS."""
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        name, equals, precision = entry.rpartition("=")
        if precision.strip() not in PRECISIONS or (equals and not name.strip()):
            raise argparse.ArgumentTypeError(
                f"{entry!r} is not PRECISION or NAME=PRECISION with PRECISION in {', '.join(PRECISIONS)} "
                "(e.g. bf16 or Refiner=fp32)"
            )
    return ",".join(entries)


def parse_precisions(text: str, names: Sequence[str]) -> dict[str, list[str]]:
    """A checked --precision value -> the precisions of each model in ``names`` (NAME=P entries win over the plain
    P ones for their model; auto where none is given). An unknown NAME raises ValueError."""
    shared, named = _values_by_name(text, names, "--precision", str.strip)
    return {name: list(dict.fromkeys(named.get(name) or shared or ["auto"])) for name in names}


@_named("existing_folder")
def existing_folder(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a folder" if os.path.exists(text) else f"{text!r} does not exist"
        )
    return text


@_named("existing_path")
def existing_path(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


# a Hugging Face Hub repository id: owner/name
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")


@_named("model_reference")
def model_reference(text: str) -> str:
    """An exported model: a folder, or a Hugging Face Hub id (owner/name; checked when it is loaded)."""
    if os.path.exists(text):
        return text
    if HUB_REPO_ID.match(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a folder that exists nor a Hub id (owner/name)")


@_named("data_source")
def data_source(text: str) -> str:
    """Photos: a folder that exists, or a Hugging Face Hub data set id (owner/name; checked when it is read)."""
    if os.path.isdir(text) or HUB_REPO_ID.match(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a folder that exists nor a Hub data set id (owner/name)")


@_named("hub_repo_id")
def hub_repo_id(text: str) -> str:
    """A Hugging Face Hub repository id: owner/name."""
    if not HUB_REPO_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hub repository id (owner/name)")
    return text


@_named("output_folder")
def output_folder(text: str) -> str:
    """A folder to write into: it may not exist yet, but it must not be a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a folder name")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


@_named("device_name")
def device_name(text: str) -> str:
    """cpu, cuda, cuda:1, mps: a device that this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine (use cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or mps")
    return text


@_named("port")
def port(text: str) -> int:
    value = _number(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


# ----- help -----


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Says each flag's default once, and truly: not when the help text already gives it, not "None", and not
    for a switch (--x or --no-x alone), whose help says what it does."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default in (None, argparse.SUPPRESS)
            or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


# ----- dataclasses <-> flags -----


def _unwrap_optional(annotation) -> tuple[type, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _optional(parse):
    def convert(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    convert.checked_type = parse  # what the value is checked as, for tests generated from the parsers
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class, overrides: dict | None = None) -> None:
    """Add one flag per field of ``config_class`` to ``parser`` (under a group named after the class)."""
    overrides = overrides or {}
    hints = typing.get_type_hints(config_class)
    group = parser.add_argument_group(config_class.__name__)
    for f in dataclasses.fields(config_class):
        default = overrides.get(f.name, f.default)
        kind, optional = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        flag = f"--{f.name}"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        parse = f.metadata.get("type") or kind
        parse = _optional(parse) if optional else parse
        group.add_argument(
            flag, type=parse, default=default, choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text
        )


def build_dataclass(config_class, namespace: argparse.Namespace):
    """Pick the fields of ``config_class`` out of a parsed namespace."""
    return config_class(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_class)})
