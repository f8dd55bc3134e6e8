"""`colorize`: colorize photos with a trained model, at full resolution.

    colorize --model runs/diffusion old_photo.jpg scans/ --output_dir colorized/

Files and folders (searched recursively; hidden files are ignored) are colorized in batches. Each output
keeps its input's path below the inputs' common parent folder (so ``a/x.jpg`` and ``b/x.jpg`` become
``colorized/a/x.jpg`` and ``colorized/b/x.jpg``) and its format (PNG where that format cannot be written, or
cannot keep an alpha channel). Nothing is overwritten: never an input (an output whose name is an input's
gets a distinct one, ``NAME_colorized.EXT``), and not an existing output unless ``--overwrite``. A file that
is not a readable image, or cannot be written, gets one line saying why; the others go on, and the exit
code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image
from tqdm.auto import tqdm

from colorization.colorizer import default_device
from colorization.config import (
    PRECISIONS,
    SAMPLER_NAMES,
    HelpFormatter,
    device_name,
    existing_path,
    model_reference,
    output_folder,
    positive_float,
    positive_int,
)
from colorization.errors import ColorizationError, cli_entry_point
from colorization.images import UNREADABLE_IMAGE_ERRORS, open_image
from colorization.inference import load_colorizer
from colorization.onnx_backend import BACKENDS

_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
_FORMATS_WITHOUT_ALPHA = {"JPEG", "BMP"}


def collect_inputs(paths: list[str]) -> list[tuple[Path, Path]]:
    """-> (file, its output path relative to --output_dir) for every file named or found under a named folder.

    The relative path is the file's path below the common parent of the named inputs' folders (a named
    folder keeps its own name), so two different inputs never get the same output path."""
    found: list[Path] = []
    anchors: list[str] = []  # where each named input's relative paths start
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if file.is_file() and not any(part.startswith(".") for part in relative.parts):
                    found.append(file)
        elif path.is_file():
            found.append(path)
        else:
            raise ColorizationError(f"input {name!r} does not exist")
        # absolute without resolving links: a linked photo's output sits where the link was named
        anchors.append(os.path.dirname(os.path.abspath(path)))
    if not found:
        raise ColorizationError(f"no files found in {', '.join(paths)}")
    root = os.path.commonpath(anchors)
    inputs, seen = [], set()
    for file in found:
        absolute = os.path.abspath(file)
        if absolute not in seen:  # the same file named twice is colorized once
            seen.add(absolute)
            inputs.append((file, Path(os.path.relpath(absolute, root))))
    return inputs


def _savable_format(image_format: str) -> str:
    Image.init()
    return image_format if image_format in Image.SAVE else "PNG"


def _guessed_format(path: Path) -> Optional[str]:
    """The format Pillow reads a file as, from its extension (before it is opened); None if unknown."""
    Image.init()
    return Image.registered_extensions().get(path.suffix.lower())


class OutputPlan:
    """Where each output goes: never onto an input (any of them, not just its own: ``a.psd`` is written as PNG,
    and ``a.png`` may be another input), never onto another output of this run, and never onto an existing
    file unless ``overwrite``. An output whose name is taken gets a distinct one (``NAME_colorized.EXT``, then
    ``NAME_colorized_2.EXT``, ...) rather than an error: the photos are still colorized, and every name says
    which input it came from."""

    def __init__(self, output_dir: Path, overwrite: bool, inputs: list[tuple[Path, Path]]):
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.inputs = {source.resolve() for source, _ in inputs}
        self.claimed: set[Path] = set()

    def target(
        self, source: Path, relative: Path, image_format: Optional[str], has_alpha: bool
    ) -> tuple[Path, Optional[str]]:
        """-> (the output path, the format to save it in); an unknown ``image_format`` (None) keeps the name."""
        save_format = _savable_format(image_format) if image_format else None
        target = self.output_dir / relative
        changed = image_format and (
            save_format != image_format or (has_alpha and save_format in _FORMATS_WITHOUT_ALPHA)
        )
        if changed:
            save_format = "PNG"  # keep the alpha channel, or a format Pillow reads but cannot write (PSD)
            target = target.with_suffix(".png")
        if target.resolve() in self.inputs:
            target = target.with_name(f"{target.stem}_colorized{target.suffix}")
        candidate, number = target, 1
        # e.g. x.jpg with alpha and x.png, both as x.png; or x_colorized.png, an input from an earlier run
        while candidate.resolve() in self.claimed or candidate.resolve() in self.inputs:
            number += 1
            candidate = target.with_name(f"{target.stem}_{number}{target.suffix}")
        self.claimed.add(candidate.resolve())
        return candidate, save_format

    @classmethod
    def existing(cls, output_dir: Path, inputs: list[tuple[Path, Path]]) -> list[Path]:
        """The outputs that already exist, before anything is opened or written (named as :meth:`target` will
        name them, the format guessed from each input's extension)."""
        plan = cls(output_dir, False, inputs)
        targets = [plan.target(source, relative, _guessed_format(source), False)[0] for source, relative in inputs]
        return [target for target in targets if target.exists()]


def save_output(image: Image.Image, target: Path, save_format: str, overwrite: bool) -> None:
    """Write through a temporary file beside ``target``, so a failed save leaves no half-written image."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (add --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".colorize-", suffix=target.suffix)
    os.close(handle)  # a new name of our own: nothing the user has is overwritten or removed
    try:
        image.save(temporary, format=save_format, **_SAVE_OPTIONS.get(save_format, {}))
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorize", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", type=existing_path, help="image files and folders")
    parser.add_argument(
        "--model",
        required=True,
        type=model_reference,
        help="an exported model: a folder (a training run's output_dir) or a Hugging Face Hub id (owner/name)",
    )
    parser.add_argument("--revision", default=None, help="the Hub model's branch, tag or commit (default: main)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="onnx: --model is an ONNX folder (python -m colorization.export_onnx), run by ONNX Runtime on the CPU",
    )
    parser.add_argument(
        "--output_dir", default="colorized", type=output_folder, help="where the colorized images are written"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (never an input)")
    parser.add_argument(
        "--device", default=None, type=device_name, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)"
    )
    parser.add_argument("--batch_size", type=positive_int, default=8, help="images per model batch")
    parser.add_argument(
        "--num_inference_steps",
        type=positive_int,
        default=None,
        help="diffusion: sampling steps (default: the model's, 20)",
    )
    parser.add_argument(
        "--scheduler", choices=SAMPLER_NAMES, default=None, help="diffusion: sampler (default: the model's, dpm)"
    )
    parser.add_argument(
        "--guidance_scale",
        type=positive_float,
        default=1.0,
        help="diffusion: classifier-free guidance w (1: none; more: more vivid, for models trained with "
        "--condition_dropout)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="diffusion: seed of the noise (the same photo and seed give the same colors)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="diffusion: what the UNet computes in (auto: bf16 autocast where the device computes bf16 fast, e.g. a "
        "CPU with AVX512-BF16 or AMX, else fp32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="diffusion: torch.compile the UNet (about half a minute first on a 2-core CPU; pays back on many photos)",
    )
    return parser


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    inputs = collect_inputs(args.inputs)
    output_dir = Path(args.output_dir)
    plan = OutputPlan(output_dir, args.overwrite, inputs)
    existing = OutputPlan.existing(output_dir, inputs)
    if existing and not args.overwrite:
        raise ColorizationError(
            f"{len(existing)} of the {len(inputs)} outputs already exist in {output_dir} (e.g. "
            f"{existing[0]}); add --overwrite to replace them, or choose another --output_dir"
        )
    sampling = {
        k: v for k, v in (("scheduler", args.scheduler), ("num_inference_steps", args.num_inference_steps)) if v
    }
    sampling.update(guidance_scale=args.guidance_scale, precision=args.precision, compile=args.compile)
    if args.backend == "onnx" and args.device not in (None, "cpu"):
        raise ColorizationError(f"--backend onnx runs on the CPU; drop --device {args.device}")
    device = "cpu" if args.backend == "onnx" else args.device or default_device()
    colorizer = load_colorizer(
        args.model, device, revision=args.revision, backend=args.backend, seed=args.seed, **sampling
    )
    failures = written = 0
    bar = tqdm(total=len(inputs), desc="colorizing", unit="image")
    for start in range(0, len(inputs), args.batch_size):
        batch = []
        for source, relative in inputs[start : start + args.batch_size]:
            try:
                batch.append((source, relative, open_image(source)))
            except UNREADABLE_IMAGE_ERRORS as error:
                failures += 1
                tqdm.write(f"error: {source}: not a readable image ({error})", file=sys.stderr)
                bar.update(1)
        if not batch:
            continue
        colored = colorizer.colorize([image for _, _, image in batch], batch_size=args.batch_size)
        for (source, relative, image), result in zip(batch, colored):
            target, save_format = plan.target(source, relative, image.format or "PNG", result.mode == "RGBA")
            try:
                save_output(result, target, save_format, args.overwrite)
                written += 1
            except (OSError, ValueError, KeyError) as error:
                failures += 1
                tqdm.write(f"error: {source}: cannot write {target} ({error})", file=sys.stderr)
            bar.update(1)
    bar.close()
    print(
        f"{written} image(s) colorized into {output_dir}" + (f"; {failures} failed" if failures else ""),
        file=sys.stderr if failures else sys.stdout,
    )
    return 1 if failures else 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))
