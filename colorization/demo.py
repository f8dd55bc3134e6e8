"""A web demo: the trained models side by side on your own photo.

    python -m colorization.demo --models results/cpu-small/models/cnn results/cpu-small/models/gan \\
        results/cpu-small/models/diffusion --names CNN GAN Diffusion        # or: colorize-demo ...

Upload a photo (any format and size that ``colorize`` takes, color or gray) or pick an example: every model
colorizes it at the photo's own resolution through the same :meth:`Colorizer.colorize` call as ``colorize``
(so the same model, photo and seed give the same pixels), each result downloadable as a PNG, with the time
each model took. A diffusion model has its sampler, steps, seed and a "New sample" button. Every model is
loaded once, at start; a model folder that does not load stops the start with one message naming it.

Gradio is an optional extra: ``pip install -e ".[demo]"``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from typing import Optional

import numpy as np
from PIL import Image

from colorization.colorizer import Colorizer, default_device
from colorization.config import PRECISIONS, SAMPLER_NAMES, HelpFormatter, device_name, model_reference, port
from colorization.errors import ColorizationError, cli_entry_point
from colorization.images import UNREADABLE_IMAGE_ERRORS, open_image, to_rgb
from colorization.inference import load_colorizer

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_examples")
MAX_STEPS = 1000
MAX_GUIDANCE = 5.0


class Demo:
    """The models, loaded once, and what the page asks of them."""

    def __init__(
        self, paths: list[str], names: Optional[list[str]] = None, device=None, revision=None, precision="auto"
    ):
        names = names or [os.path.basename(os.path.normpath(p)) for p in paths]
        if len(names) != len(paths):
            raise ColorizationError(f"{len(names)} --names for {len(paths)} --models")
        self.device = device or default_device()
        self.colorizers: dict[str, Colorizer] = {}
        for name, path in zip(names, paths):
            try:
                self.colorizers[name] = load_colorizer(path, self.device, revision=revision, precision=precision)
            except ColorizationError as error:
                raise ColorizationError(f"model {name!r} ({path}) does not load: {error}") from None
        self.stochastic = any(c.stochastic for c in self.colorizers.values())

    def colorize(self, photo: Image.Image, sampler: str = "dpm", steps: int = 20, seed: int = 0, guidance: float = 1.0):
        """-> ({name: colorized PIL image}, {name: seconds}), every model on the same photo."""
        results, seconds = {}, {}
        for name, colorizer in self.colorizers.items():
            if colorizer.stochastic:  # the page's sampler and guidance (the network is shared, not loaded again)
                colorizer.use_sampler(sampler, steps)
                colorizer.use_guidance(guidance if colorizer.guidance_trained else 1.0)
            started = time.perf_counter()
            results[name] = colorizer.colorize(photo, seed=seed)
            seconds[name] = time.perf_counter() - started
        return results, seconds


def read_photo(path: Optional[str]) -> tuple[Image.Image, bool]:
    """An uploaded file -> (the photo, whether it has color); ColorizationError with a short reason if not a photo."""
    if not path:
        raise ColorizationError("Upload a photo or pick an example first.")
    try:
        photo = open_image(path)
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ColorizationError(
            f"This file is not a readable image ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'})."
        ) from None
    rgb = np.asarray(to_rgb(photo), dtype=np.int16)
    has_color = bool(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > 2)
    return photo, has_color


def download_name(photo_path: str, model: str) -> str:
    """The file name a result downloads as: the photo's and the model's names, so downloads never collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.splitext(os.path.basename(photo_path))[0]).strip("-.") or "photo"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9._-]+', '-', model).strip('-.') or 'model'}.png"


def build_page(demo: Demo):
    """The Gradio page (a ``gr.Blocks``)."""
    import gradio as gr

    def picture(label: str, elem_id: str, kind: str = "pil"):
        """An output image with its download and fullscreen buttons."""
        buttons = ["download", "fullscreen"]
        return gr.Image(label=label, type=kind, format="png", interactive=False, buttons=buttons, elem_id=elem_id)

    names = list(demo.colorizers)
    # Each result is written as <photo>_<model>.png into a folder of its own (Gradio serves files from the
    # system's temporary folder), so each download is named after the photo and the model, not "image.png".
    results_dir = tempfile.TemporaryDirectory(prefix="colorization-demo-")

    def save(result: Image.Image, path: str, name: str) -> str:
        folder = tempfile.mkdtemp(dir=results_dir.name)
        target = os.path.join(folder, download_name(path, name))
        result.save(target, format="PNG")
        return target

    def run(path, sampler, steps, seed, guidance):
        try:
            photo, has_color = read_photo(path)
        except ColorizationError as error:
            return [None, None, *[None] * len(names), f"**Could not colorize:** {error}"]
        results, seconds = demo.colorize(photo, sampler, int(steps), int(seed), float(guidance))
        results = {name: save(result, path, name) for name, result in results.items()}
        gray = to_rgb(photo).convert("L")
        times = " · ".join(f"{name}: {seconds[name] * 1000:.0f} ms" for name in names)
        sampling = (
            f" Diffusion sampling: {sampler.upper()}-{int(steps)}, seed {int(seed)}, guidance {float(guidance):g}."
            if demo.stochastic
            else ""
        )
        shown = " (a color photo: shown, then made gray)" if has_color else ""
        status = f"Colorized {photo.size[0]}x{photo.size[1]} px{shown}. Time per model: {times}.{sampling}"
        return [to_rgb(photo) if has_color else None, gray, *[results[n] for n in names], status]

    with gr.Blocks(title="Colorization: CNN, GAN and diffusion side by side") as page:
        gr.Markdown(
            "# Colorize a photo with each model\nUpload a photo (color photos are made gray first) or "
            "pick an example. Every model keeps the photo's own lightness and size; download any result "
            "as PNG."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Your photo", type="filepath", elem_id="upload")
                examples = sorted(os.path.join(EXAMPLES_DIR, f) for f in os.listdir(EXAMPLES_DIR) if f.endswith(".jpg"))
                gr.Examples(
                    examples=[[path] for path in examples], inputs=[upload], label="Examples (CC0 / public domain)"
                )
            with gr.Column(scale=1, visible=demo.stochastic):
                sampler = gr.Dropdown(list(SAMPLER_NAMES), value="dpm", label="Diffusion sampler", elem_id="sampler")
                steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Sampling steps", elem_id="steps")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                guidance = gr.Slider(
                    1,
                    MAX_GUIDANCE,
                    value=1,
                    step=0.5,
                    label="Guidance (vividness; models trained with condition dropout)",
                    elem_id="guidance",
                )
                new_sample = gr.Button("New sample", elem_id="new-sample")
        go = gr.Button("Colorize", variant="primary", elem_id="colorize")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            original, gray = picture("Original", "original"), picture("Gray input", "gray")
            # the results are files named <photo>_<model>.png, so that each downloads under its own name
            outputs = [picture(name, f"output-{index}", "filepath") for index, name in enumerate(names)]
        inputs, targets = [upload, sampler, steps, seed, guidance], [original, gray, *outputs, status]
        go.click(run, inputs, targets)
        upload.change(run, inputs, targets)
        new_sample.click(lambda value: int(value) + 1, seed, seed).then(run, inputs, targets)
    page.results_dir = results_dir  # removed with the page
    return page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorize-demo",
        description="A web page that colorizes your photo with each trained model, side by side.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--models", nargs="+", required=True, type=model_reference, help="exported models: folders or Hub ids"
    )
    parser.add_argument("--revision", default=None, help="the Hub models' branch, tag or commit (default: main)")
    parser.add_argument("--names", nargs="+", help="a name per model (default: folder names)")
    parser.add_argument("--port", type=port, default=7860, help="local port of the page")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--share", action="store_true", help="also a temporary public link (Gradio's share)")
    parser.add_argument(
        "--device", default=None, type=device_name, help="cpu, cuda, ... (default: a GPU when there is one)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="diffusion: what the UNet computes in (auto: bf16 autocast where the device computes bf16 fast)",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.models):
        parser.error(f"{len(args.names)} --names for {len(args.models)} --models")
    return args


def run(argv=None) -> None:
    args = parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ColorizationError('the demo needs Gradio, an optional extra: pip install -e ".[demo]"') from None
    demo = Demo(args.models, args.names, args.device, args.revision, args.precision)
    print(f"loaded {', '.join(demo.colorizers)}; open http://{args.host}:{args.port}", flush=True)
    build_page(demo).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=False, allowed_paths=[EXAMPLES_DIR]
    )


def main(argv=None) -> None:
    cli_entry_point(run)(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
