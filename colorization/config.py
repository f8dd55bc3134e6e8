"""Defaults are declared once, as dataclasses, and become command-line flags.

Each field's ``metadata["help"]`` is its flag's help; ``bool`` fields become ``--flag/--no-flag``;
``Optional[...]`` fields accept ``none``; ``metadata["choices"]`` restricts the values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Union


def field(default: Any, help: str, choices: tuple | None = None):  # noqa: A002 - mirrors argparse
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _unwrap_optional(annotation) -> tuple[type, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _optional(parse):
    def convert(text: str):
        return None if text.lower() in ("none", "null", "") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
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
        parse = _optional(kind) if optional else kind
        # the parsers use ArgumentDefaultsHelpFormatter, which adds "(default: ...)" to every help text
        group.add_argument(flag, type=parse, default=default, choices=f.metadata.get("choices"),
                           metavar=f.name.upper(), help=help_text)


def build_dataclass(config_class, namespace: argparse.Namespace):
    """Pick the fields of ``config_class`` out of a parsed namespace."""
    return config_class(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_class)})


def to_plain_dict(config) -> dict:
    return dataclasses.asdict(config)
