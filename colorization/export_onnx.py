"""Write an exported model as an ONNX folder, for ONNX Runtime without training code.

    python -m colorization.export_onnx runs/cnn onnx/cnn          # or a Hub id: owner/name
    colorize --backend onnx --model onnx/cnn photo.jpg

The CNN and the GAN become one graph (normalized L in, normalized ab out, any batch size); the diffusion
model one UNet step (noisy ab, timestep, L, and for a refining model its regressor's ab), whose sampler loop
stays in Python on the same diffusers scheduler; a refining model's regressor is written as its own ONNX
folder inside (``regressor/``). Every graph is checked before the folder is written: ONNX Runtime against
torch on real photos (``--check_photos``; the demo's examples by default), max |delta ab| in normalized
units at most 1e-4, else nothing is written. The folder is new or empty, or an earlier ONNX export that
``--overwrite`` replaces; it is written beside its destination and moved into place when complete (the
earlier export is renamed aside first and deleted last, so that a kill loses neither; the next export puts
back one left aside).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from typing import Optional

import torch

from colorization.colorizer import CONFIG_NAME, _full_lightness, _split_alpha
from colorization.config import HelpFormatter, existing_path, model_reference, output_folder
from colorization.errors import ColorizationError, cli_entry_point
from colorization.files import recover_folder, swap_in_folder, write_json
from colorization.hub import resolve
from colorization.images import UNREADABLE_IMAGE_ERRORS, open_image
from colorization.inference import load_colorizer
from colorization.onnx_backend import (
    ONNX_FORMAT,
    ONNX_MODEL,
    ONNX_RECORD,
    REGRESSOR_DIR,
    SCHEDULER_DIR,
    inference_session,
    is_onnx_export,
)
from colorization.version import __version__

OPSET = 18
TOLERANCE = 1e-4  # max |delta ab| (normalized units) between ONNX Runtime and torch
DEMO_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_examples")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CHECK_TIMESTEPS = (999, 700, 400, 100, 1)  # the UNet step is compared at these noise levels
# what an ONNX folder holds: only a folder of nothing else is replaced (--overwrite), never a file of the user's
ONNX_FOLDER_FILES = {
    ONNX_MODEL,
    ONNX_RECORD,
    CONFIG_NAME,
    SCHEDULER_DIR,
    REGRESSOR_DIR,
}
SCHEDULER_FILES = {"scheduler_config.json"}  # what the copied training schedule holds
REPLACED_SUFFIX = ".replaced"  # an earlier export under --overwrite waits beside the folder under this name


def _foreign_entries(folder: str, prefix: str = "") -> list[str]:
    """The paths below ``folder`` that an ONNX export does not write, the regressor's folder checked alike."""
    foreign = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name not in ONNX_FOLDER_FILES or os.path.isdir(path) != (name in (SCHEDULER_DIR, REGRESSOR_DIR)):
            foreign.append(prefix + name)
        elif name == SCHEDULER_DIR:
            foreign += [f"{prefix}{name}/{entry}" for entry in sorted(os.listdir(path)) if entry not in SCHEDULER_FILES]
        elif name == REGRESSOR_DIR:
            foreign += _foreign_entries(path, f"{prefix}{name}/")
    return foreign


class _OnePass(torch.nn.Module):
    """The graph of a one-pass model: normalized L -> normalized ab."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.network.predict_ab(lightness)


def check_lightness(paths: list[str], resolution: int, limit: int = 8) -> torch.Tensor:
    """Normalized L (N, 1, R, R) of up to ``limit`` photos, resized as the colorizers resize them."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders.sort()
                files += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        else:
            files.append(path)
    lightness = []
    for file in files:
        if len(lightness) == limit:
            break
        try:
            rgb, _ = _split_alpha(open_image(file))
        except UNREADABLE_IMAGE_ERRORS:
            continue
        full = _full_lightness(rgb)
        lightness.append(
            torch.nn.functional.interpolate(
                full, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            )
        )
    if not lightness:
        raise ColorizationError(f"no readable photo to check the export on in {', '.join(paths)}")
    return torch.cat(lightness)


def _versions() -> dict:
    import onnx
    import onnxruntime

    found = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxscript

        found["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return found


def _to_onnx(module: torch.nn.Module, inputs: tuple, names: list[str], output: str, file: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    dynamic = {name: {0: batch} for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        try:
            torch.onnx.export(
                module,
                inputs,
                file,
                input_names=names,
                output_names=[output],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one file: every model here is far below ONNX's 2 GB limit
                verbose=False,
            )
        except ImportError as error:
            raise ColorizationError(f"exporting to ONNX needs {error.name}: pip install -e '.[onnx]'") from None


def _max_difference(onnx_values, torch_values) -> float:
    return float((torch.as_tensor(onnx_values) - torch_values).abs().max())


def write_onnx_folder(colorizer, source: str, folder: str, lightness: torch.Tensor) -> dict:
    """Write ``colorizer``'s network (and a refining model's regressor) as ONNX into ``folder``, check it
    against torch on ``lightness`` -> the record written to ``onnx.json``."""
    os.makedirs(folder, exist_ok=True)
    file = os.path.join(folder, ONNX_MODEL)
    shutil.copy2(os.path.join(source, CONFIG_NAME), os.path.join(folder, CONFIG_NAME))
    record = {
        "format": ONNX_FORMAT,
        "format_version": 1,
        "model_type": colorizer.model_type,
        "resolution": colorizer.resolution,
        "opset": OPSET,
        "versions": _versions(),
        "package_version": __version__,
    }
    torch.manual_seed(0)
    with torch.no_grad():
        if colorizer.model_type != "diffusion":
            module = _OnePass(colorizer.network.float().eval())
            _to_onnx(module, (lightness[:2],), ["lightness"], "ab", file)
            session = inference_session(file)
            (ab,) = session.run(["ab"], {"lightness": lightness.numpy()})
            difference = _max_difference(ab, module(lightness))
            record["graph"] = {"inputs": {"lightness": "(N, 1, R, R) normalized L"}, "outputs": {"ab": "(N, 2, R, R)"}}
            what = "the network's normalized ab"
        else:
            unet = colorizer.pipeline.unet.float().eval()
            regressor_ab = None
            if colorizer.regressor is not None:
                regressor_source, regressor_folder = (os.path.join(p, REGRESSOR_DIR) for p in (source, folder))
                # its own graph, at its own resolution
                regressor_lightness = colorizer.regressor._to_model_size(lightness)
                write_onnx_folder(colorizer.regressor, regressor_source, regressor_folder, regressor_lightness)
                regressor_ab = colorizer.regressor.colorize_lightness(lightness)
            names = ["noisy_ab", "timestep", "lightness"] + (["regressor_ab"] if regressor_ab is not None else [])
            count = len(lightness)
            example = [torch.randn(2, 2, *lightness.shape[-2:]), torch.full((2,), 500.0), lightness[:2]]
            _to_onnx(
                unet, (*example, *([regressor_ab[:2]] if regressor_ab is not None else [])), names, "prediction", file
            )
            session = inference_session(file)
            difference = 0.0
            for timestep in CHECK_TIMESTEPS:
                inputs = [
                    torch.randn(count, 2, *lightness.shape[-2:]),
                    torch.full((count,), float(timestep)),
                    lightness,
                ]
                inputs += [regressor_ab] if regressor_ab is not None else []
                (prediction,) = session.run(["prediction"], {n: v.numpy() for n, v in zip(names, inputs)})
                expected = unet(*inputs)
                difference = max(difference, _max_difference(prediction, expected) / unet.config.ab_scale)
            shutil.copytree(os.path.join(source, SCHEDULER_DIR), os.path.join(folder, SCHEDULER_DIR))
            record["unet"] = {
                "sample_size": unet.config.sample_size,
                "ab_scale": unet.config.ab_scale,
                "regressor_channels": unet.config.regressor_channels,
            }
            record["graph"] = {
                "inputs": {
                    "noisy_ab": "(N, 2, R, R) the sample, times ab_scale",
                    "timestep": "(N,) float",
                    "lightness": "(N, 1, R, R) normalized L",
                    **(
                        {"regressor_ab": "(N, 2, R, R) the regressor's normalized ab"}
                        if regressor_ab is not None
                        else {}
                    ),
                },
                "outputs": {"prediction": "(N, 2, R, R) the UNet's prediction"},
            }
            what = f"the UNet step's prediction / ab_scale, at timesteps {list(CHECK_TIMESTEPS)}"
    record["parity"] = {"images": len(lightness), "max_abs_difference": difference, "of": what, "tolerance": TOLERANCE}
    if not difference <= TOLERANCE:  # also catches NaN
        raise ColorizationError(
            f"the ONNX graph of the {colorizer.model_type} model does not reproduce torch: max |delta| "
            f"{difference:.3g} > {TOLERANCE:g} ({what}, on {len(lightness)} photos); nothing was written"
        )
    write_json(os.path.join(folder, ONNX_RECORD), record)
    return record


def export_onnx(
    model: str,
    output_dir: str,
    revision: Optional[str] = None,
    check_photos: Optional[list[str]] = None,
    overwrite: bool = False,
) -> dict:
    """Export ``model`` (a folder or Hub id) as an ONNX folder ``output_dir`` -> its record (``onnx.json``)."""
    aside = _recover(output_dir)
    _check_output_dir(output_dir, overwrite)
    source, _ = resolve(model, revision)
    colorizer = load_colorizer(model, "cpu", revision=revision)
    lightness = check_lightness(check_photos or [DEMO_EXAMPLES], colorizer.resolution)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".onnx-export-")
    try:
        record = write_onnx_folder(colorizer, source, staging, lightness)
        load_colorizer(staging, backend="onnx")  # the folder loads as the backend will load it
        _check_output_dir(output_dir, overwrite)  # again: the folder may have changed while we exported
        # the earlier export is renamed aside, not deleted, until the new one is in: a kill loses neither
        swap_in_folder(staging, output_dir, aside)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _aside(output_dir: str) -> str:
    """Where an earlier export waits while the new one is moved in: a hidden folder beside it."""
    path = os.path.abspath(output_dir)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{REPLACED_SUFFIX}")


def _recover(output_dir: str) -> str:
    """Put back the earlier export that an interrupted --overwrite left aside -> the aside path."""
    aside = _aside(output_dir)
    if os.path.lexists(aside):  # only ever a folder of an ONNX export's own files, whole where nothing replaced it
        whole = os.path.lexists(output_dir) or is_onnx_export(aside)
        if not os.path.isdir(aside) or _foreign_entries(aside) or not whole:
            raise ColorizationError(f"{aside} is in the way of replacing {output_dir}; move it elsewhere")
        if recover_folder(output_dir, aside):
            print(f"{output_dir}: put back the earlier ONNX export that an interrupted --overwrite left aside")
    return aside


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if not os.path.exists(output_dir) or (os.path.isdir(output_dir) and not os.listdir(output_dir)):
        return
    if not os.path.isdir(output_dir):
        raise ColorizationError(f"{output_dir} is a file, not a folder")
    foreign = _foreign_entries(output_dir)
    if not is_onnx_export(output_dir) or foreign:
        example = f" (e.g. {foreign[0]})" if foreign else ""
        raise ColorizationError(
            f"{output_dir} holds files that are not an ONNX export{example}; choose a new or empty folder"
        )
    if not overwrite:
        raise ColorizationError(f"{output_dir} holds an earlier ONNX export; add --overwrite to replace it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.export_onnx",
        description="Write an exported model as an ONNX folder for ONNX Runtime (colorize --backend onnx).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", type=model_reference, help="an exported model: a folder or a Hub id (owner/name)")
    parser.add_argument("output_dir", type=output_folder, help="the ONNX folder to write (new, empty, or --overwrite)")
    parser.add_argument("--revision", default=None, help="the Hub model's branch, tag or commit (default: main)")
    parser.add_argument(
        "--check_photos",
        nargs="+",
        type=existing_path,
        default=None,
        help="photos (files or folders) the graph is checked on against torch (default: the demo's examples)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier ONNX export in output_dir")
    return parser


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    record = export_onnx(args.model, args.output_dir, args.revision, args.check_photos, args.overwrite)
    parity = record["parity"]
    print(
        f"{args.output_dir}: {record['model_type']} as ONNX (opset {record['opset']}, torch "
        f"{record['versions']['torch']}); ONNX Runtime against torch on {parity['images']} photos: max |delta| "
        f"{parity['max_abs_difference']:.2e} ({parity['of']})"
    )
    return 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))


if __name__ == "__main__":
    main()
