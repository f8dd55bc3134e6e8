"""Automatic image colorization: a CNN, a GAN and a diffusion model trained and compared on equal terms.

The package's face is light: ``import colorization`` (or ``colorization.version``, or the ``reproduce`` command)
imports no torch; ``Colorizer`` and ``load_colorizer`` are imported when first used (PEP 562).
"""

from colorization.version import __version__

__all__ = ["Colorizer", "load_colorizer", "__version__"]
_LAZY = {"Colorizer": "colorization.colorizer", "load_colorizer": "colorization.inference"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'colorization' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
