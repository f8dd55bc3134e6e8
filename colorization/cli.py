"""`colorize`: colorize photos with a trained model, at full resolution.

    colorize --model runs/diffusion old_photo.jpg scans/ --output_dir colorized/

Files and folders (searched recursively; hidden files are ignored) are colorized in batches; each output
is named after its input (same relative path under --output_dir, same format) and never overwrites an
input. A file that is not a readable image gets one line saying why; the others go on, and the exit
code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from colorization.colorizer import default_device
from colorization.errors import ColorizationError, cli_entry_point
from colorization.images import UNREADABLE_IMAGE_ERRORS, open_image
from colorization.inference import load_colorizer

_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
_FORMATS_WITHOUT_ALPHA = {"JPEG", "BMP"}


def collect_inputs(paths: list[str]) -> list[tuple[Path, Path]]:
    """-> (file, path relative to its named root) for every file named or found under a named folder."""
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if file.is_file() and not any(part.startswith(".") for part in relative.parts):
                    found.append((file, Path(path.name) / relative))
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise ColorizationError(f"input {name!r} does not exist")
    if not found:
        raise ColorizationError(f"no files found in {', '.join(paths)}")
    return found


def output_path(source: Path, relative: Path, output_dir: Path, image_format: str, has_alpha: bool) -> Path:
    target = output_dir / relative
    if has_alpha and image_format in _FORMATS_WITHOUT_ALPHA:
        target = target.with_suffix(".png")  # keep the alpha channel
    if target.resolve() == source.resolve():
        target = target.with_name(f"{target.stem}_colorized{target.suffix}")
    return target


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="colorize", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and folders")
    parser.add_argument("--model", required=True, help="an exported model folder (a training run's output_dir)")
    parser.add_argument("--output_dir", default="colorized", help="where the colorized images are written")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per model batch")
    parser.add_argument("--num_inference_steps", type=int, default=None,
                        help="diffusion: sampling steps (default: the model's, 20)")
    parser.add_argument("--scheduler", choices=("ddpm", "ddim", "dpm"), default=None,
                        help="diffusion: sampler (default: the model's, dpm)")
    parser.add_argument("--seed", type=int, default=0,
                        help="diffusion: seed of the noise (the same photo and seed give the same colors)")
    args = parser.parse_args(argv)

    inputs = collect_inputs(args.inputs)
    sampling = {k: v for k, v in (("scheduler", args.scheduler), ("num_inference_steps", args.num_inference_steps)) if v}
    colorizer = load_colorizer(args.model, args.device or default_device(), seed=args.seed, **sampling)
    output_dir = Path(args.output_dir)
    failures = 0
    bar = tqdm(total=len(inputs), desc="colorizing", unit="image")
    for start in range(0, len(inputs), args.batch_size):
        batch = []
        for source, relative in inputs[start:start + args.batch_size]:
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
            image_format = image.format or "PNG"
            target = output_path(source, relative, output_dir, image_format, result.mode == "RGBA")
            target.parent.mkdir(parents=True, exist_ok=True)
            save_format = "PNG" if target.suffix.lower() == ".png" else image_format
            result.save(target, format=save_format, **_SAVE_OPTIONS.get(save_format, {}))
            bar.update(1)
    bar.close()
    written = len(inputs) - failures
    print(f"{written} image(s) colorized into {output_dir}" + (f"; {failures} failed" if failures else ""),
          file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))
