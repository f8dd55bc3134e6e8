import re

from setuptools import find_packages, setup

# the version lives in one place, colorization/version.py (read as text: installing imports nothing)
with open("colorization/version.py", encoding="utf-8") as handle:
    VERSION = re.search(r'^__version__ = "([^"]+)"', handle.read(), re.M).group(1)

setup(
    # "colorization" on the package index is someone else's (0.1.1, a terminal text-color library whose wheel
    # installs a package named lib); this distribution's name is free there. The import name stays colorization.
    name="colorization-suite",
    version=VERSION,
    description="Train, compare and serve CNN, GAN and diffusion models for automatic image colorization.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["colorization", "colorization.*"]),
    # Each floor is the oldest release with every API the package calls (CI installs these floors of the
    # pure-Python dependencies in a second environment and runs the fast tests there; see .ci/run):
    install_requires=[
        "torch>=2.3",  # torch.amp.GradScaler (only 2.14 is tested: older wheels are not installed here)
        "torchvision>=0.18",  # the release that goes with torch 2.3
        "accelerate>=1.3",  # unwrap_model(keep_torch_compile=...)
        "diffusers>=0.30",  # EMAModel(foreach=...)
        "safetensors>=0.4.3",  # what accelerate 1.x needs
        "datasets>=2.21",  # with_format("numpy", dtype=...) under numpy 2
        "huggingface_hub>=0.23.2",  # imported directly (constants); what diffusers 0.30 needs
        "lpips>=0.1.4",
        "torchmetrics>=1.2.1",  # the first 1.x that imports without distutils (Python 3.12)
        "tensorboard>=2.14",
        "tqdm>=4.66",
        "numpy>=1.24",
        "pillow>=10.0",
        "matplotlib>=3.7",  # reproduce's perception-distortion figure, the benchmark plots
    ],
    package_data={"colorization": ["demo_examples/*"]},
    entry_points={"console_scripts": ["colorize=colorization.cli:main", "colorize-demo=colorization.demo:main"]},
    extras_require={
        # the web demo (python -m colorization.demo)
        "demo": ["gradio>=5"],
        # ONNX export (python -m colorization.export_onnx) and colorize --backend onnx: the releases tested;
        # torch's ONNX exporter needs onnxscript
        "onnx": ["onnx>=1.23", "onnxruntime>=1.32", "onnxscript>=0.7"],
        # scikit-image and scipy: independent references the color conversion and the metrics are tested
        # against; gradio and playwright: the demo's browser test; onnx...: the ONNX backend's tests
        # accelerate 1.7: the tests launch two processes with --main_process_port 0 (a free port); ruff: CI's lint
        "dev": [
            "pytest>=7",
            "scikit-image>=0.21",
            "scipy>=1.10",
            "gradio>=5",
            "playwright>=1.40",
            "accelerate>=1.7",
            "onnx>=1.23",
            "onnxruntime>=1.32",
            "onnxscript>=0.7",
            "ruff",
        ],
    },
    license="MIT",
)
