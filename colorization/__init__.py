"""Automatic image colorization: a CNN, a GAN and a diffusion model trained and compared on equal terms."""

__version__ = "0.1.0"

from colorization.inference import Colorizer, load_colorizer  # noqa: E402

__all__ = ["Colorizer", "load_colorizer", "__version__"]
