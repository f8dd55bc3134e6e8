from setuptools import find_packages, setup

setup(
    name="colorization",
    version="0.1.0",
    description="Train, compare and serve CNN, GAN and diffusion models for automatic image colorization.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["colorization", "colorization.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "accelerate>=1.0",
        "diffusers>=0.30",
        "safetensors>=0.4",
        "datasets>=3.0",
        "lpips>=0.1.4",
        "torchmetrics>=1.3",
        "tensorboard>=2.14",
        "tqdm>=4.66",
        "numpy>=1.24",
        "pillow>=10.0",
    ],
    package_data={"colorization": ["demo_examples/*"]},
    entry_points={"console_scripts": ["colorize=colorization.cli:main", "colorize-demo=colorization.demo:main"]},
    extras_require={
        # the web demo (python -m colorization.demo)
        "demo": ["gradio>=5"],
        # scikit-image and scipy: independent references the color conversion and the metrics are tested
        # against; gradio and playwright: the demo's browser test; matplotlib: the benchmark plots
        "dev": ["pytest>=7", "scikit-image>=0.21", "scipy>=1.10", "gradio>=5", "playwright>=1.40", "matplotlib>=3.7"],
    },
    license="MIT",
)
