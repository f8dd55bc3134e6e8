"""Pretrained ImageNet weights (torchvision's download cache), with one clear message when offline."""

from __future__ import annotations

import os
import urllib.error
from typing import Callable, TypeVar

import torch

from colorization.errors import ColorizationError

T = TypeVar("T")


def load_pretrained(build: Callable[[], T], weights_url: str, what: str, without: str) -> T:
    """Call ``build`` (which loads ``weights_url`` through torchvision's cache); when the file is neither
    cached nor downloadable, stop with what is missing, where it goes, and ``without`` (how to skip it)."""
    try:
        return build()
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights_url))
        raise ColorizationError(
            f"cannot get the {what} ({os.path.basename(weights_url)}; {type(error).__name__}: {error}). It is "
            f"downloaded once from {weights_url} to {cache}: connect to the internet once or copy the file "
            f"there, or {without}."
        ) from None
