"""Automatic image colorization: a CNN, a GAN and a diffusion model trained and compared on equal terms."""

from colorization.colorizer import Colorizer
from colorization.inference import load_colorizer
from colorization.version import __version__

__all__ = ["Colorizer", "load_colorizer", "__version__"]
