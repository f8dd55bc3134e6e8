"""Models by Hugging Face Hub id: an export is loaded from the Hub's cache (``HF_HUB_OFFLINE`` honoured) wherever
a model folder is accepted, and pushed with a model card (``python -m colorization.push_to_hub``).

A local folder always wins over a Hub id of the same name. ``huggingface_hub`` is imported only when a Hub id
is used, so loading a local model needs no network and no Hub library at import.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from colorization.colorizer import CONFIG_NAME, MEAN_AB_NAME, TRAINING_IMAGES_NAME, WEIGHTS_NAME
from colorization.config import HUB_REPO_ID
from colorization.errors import ColorizationError
from colorization.files import read_json_if_present
from colorization.version import __version__

CARD_NAME = "README.md"
# the weights' license the card states unless told otherwise: AFHQ, the default data, is CC BY-NC 4.0
DEFAULT_LICENSE = "cc-by-nc-4.0"
# What an export holds, and all that a push uploads or a download by Hub id fetches: each family's top-level
# names are its TrainingTask.exported_files; these are the files inside its folders (a diffusion pipeline's, as
# diffusers' save_pretrained names them with safetensors; a refining model's regressor/ is a one-pass export).
ONE_PASS_FILES = (CONFIG_NAME, WEIGHTS_NAME, MEAN_AB_NAME, TRAINING_IMAGES_NAME)
FOLDER_FILES = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "scheduler": ("scheduler_config.json",),
    "regressor": ONE_PASS_FILES,
}


def export_paths(names) -> list[str]:
    """The files (paths relative to the export, "/"-separated) of an export's top-level ``names``."""
    paths = []
    for name in names:
        paths += [f"{name}/{file}" for file in FOLDER_FILES[name]] if name in FOLDER_FILES else [name]
    return paths


# before it knows the family, a download asks for every family's files (a test checks they are all here)
DOWNLOAD_FILES = tuple(export_paths((*ONE_PASS_FILES, "model_index.json", *FOLDER_FILES)))


def resolve(reference: str, revision: Optional[str] = None) -> tuple[str, Optional[dict]]:
    """A model folder or a Hub id -> (a local folder holding the export, where it came from: None for a local
    folder, else {"repo_id", "revision", "commit"})."""
    if os.path.exists(reference):
        return reference, None
    if not HUB_REPO_ID.match(reference):
        raise ColorizationError(f"model {reference!r} is neither a folder nor a Hugging Face Hub id (owner/name)")
    from huggingface_hub import errors, snapshot_download

    # a mistyped local path looks like a Hub id too: say both
    where = f"there is no folder {reference!r} here, and the Hub model {reference}" + (
        f" (revision {revision})" if revision else ""
    )
    try:
        path = snapshot_download(
            reference,
            revision=revision,
            allow_patterns=list(DOWNLOAD_FILES),  # the export alone: nothing else of the repository's
            library_name="colorization",
            library_version=__version__,
        )
    except errors.RevisionNotFoundError:
        raise ColorizationError(f"{where} does not exist (no such revision)") from None
    except errors.RepositoryNotFoundError:
        raise ColorizationError(f"{where} does not exist (or it is private: log in with `hf auth login`)") from None
    except errors.LocalEntryNotFoundError:
        raise ColorizationError(
            f"{where} is not in the local Hub cache and the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1): "
            "connect once to download it, or give a local model folder"
        ) from None
    except (errors.HfHubHTTPError, OSError, ValueError) as error:
        raise ColorizationError(f"{where} cannot be downloaded: {str(error).splitlines()[0]}") from None
    return path, {"repo_id": reference, "revision": revision or "main", "commit": os.path.basename(path)}


# ----- pushing -----


def upload_files(export_dir: str) -> list[str]:
    """The files of an export folder that an upload carries (paths relative to it, "/"-separated): the exported
    model's own files, by name, and nothing else: not the run around it (checkpoints hold optimizer state), nor
    any other file of the user's that happens to be in the folder."""
    from colorization.families import family
    from colorization.onnx_backend import is_onnx_export

    config = read_json_if_present(os.path.join(export_dir, CONFIG_NAME))
    if config is None:
        raise ColorizationError(f"{export_dir} is not an exported colorization model (no {CONFIG_NAME})")
    if is_onnx_export(export_dir):
        raise ColorizationError(
            f"{export_dir} is an ONNX export: push the model it was exported from (export_onnx takes a Hub id)"
        )
    names = family(config.get("model_type")).task_class().exported_files
    return [path for path in export_paths(names) if os.path.isfile(os.path.join(export_dir, *path.split("/")))]


def model_card(export_dir: str, repo_id: str, license_id: str):
    """The model card (a ``huggingface_hub.ModelCard``) of an export: metadata, metrics next to gray's, how it
    was trained, how to load it, and what it is not for."""
    from huggingface_hub import ModelCard, ModelCardData

    config = read_json_if_present(os.path.join(export_dir, CONFIG_NAME))
    training = config.get("training", {})
    model_type, resolution = config["model_type"], config["resolution"]
    identity = data_identity(export_dir, training)
    data = identity["description"]
    hub_data = identity["name"] if identity["kind"] == "hub" else None
    source = {
        "hub": f"the Hub data set [{hub_data}](https://huggingface.co/datasets/{hub_data}) ({data})",
        "folder": f"a local folder named `{identity['name']}`",
        "shards": f"shards in a local folder named `{identity['name']}`",
        "embedded": "the procedural data embedded in the repository",
        "unknown": "data that the export does not record",
    }[identity["kind"]]
    if identity["num_images"] is not None:
        source += (
            f": {identity['num_images']} training images, SHA-256 of their image hash list "
            f"`{identity['images_sha256'][:16]}`"
        )
    validation = training.get("validation") or {}
    metrics = ""
    if "psnr" in validation:
        metrics = (
            "| | PSNR (dB) | SSIM |\n|---|---|---|\n"
            f"| this model | {validation['psnr']:.2f} | {validation['ssim']:.4f} |\n"
            f"| gray (ab = 0) | {validation['psnr_gray']:.2f} | {validation['ssim_gray']:.4f} |\n\n"
            f"On {validation.get('num_images', '?')} held-out images at {resolution}x{resolution} (validation at the "
            "exported step; the gray row is the input itself, which a model that learned must beat)."
        )
    refines = config.get("refines")
    what = {"cnn": "a CNN", "gan": "a GAN", "diffusion": "a diffusion model"}[model_type]
    if refines:
        what += f" that refines a {refines['model_type'].upper()} (carried in `regressor/`)"
    command = training.get("command") or (read_json_if_present(os.path.join(export_dir, "run_config.json")) or {}).get(
        "command", "not recorded"
    )
    command = " ".join(_without_machine_path(word) for word in command.split(" "))
    minutes = training.get("wall_seconds", 0) / 60
    card_data = ModelCardData(
        license=license_id,
        library_name="colorization",
        tags=["image-colorization", model_type, "pytorch"],
        datasets=[hub_data] if hub_data else None,
        metrics=["psnr", "ssim"],
        model_name=repo_id.split("/")[-1],
    )
    text = f"""---
{card_data.to_yaml()}
---

# {repo_id.split("/")[-1]}

Automatic image colorization: {what}, trained with the `colorization` repository. It predicts the Lab `ab`
channels of a grayscale photo and keeps the photo's own lightness, at the photo's full resolution.

## How to load it

Install the `colorization-suite` package (the repository's distribution; `pip install -e .` in a clone of it,
imported as `colorization`; the package index's `colorization` is an unrelated project), then:

```python
from colorization import load_colorizer

colorizer = load_colorizer("{repo_id}")
color = colorizer.colorize(PIL.Image.open("photo.jpg"))
```

or `colorize --model {repo_id} photo.jpg`.

## Training

- Data: {source}; at {resolution}x{resolution}.
- Budget: step {training.get("global_step", "?")}, {training.get("images_seen", "?")} training images seen,
  {minutes:.1f} minutes on {training.get("hardware", "unknown hardware")}, mixed precision
  {training.get("mixed_precision", "?")}.
- Command: `{command}`

## Validation

{metrics or "No validation was recorded."}

## Intended use and limits

For colorizing grayscale photos like its training images ({data}, at {resolution}x{resolution}); on other
subjects it colors from what it learned there. The colors are plausible guesses, not a record of the scene:
do not use them as evidence of what the original colors were.
"""
    return ModelCard(text)


def data_identity(export_dir: str, training: dict) -> dict:
    """The export's record of its training data (``colorization.data.identify_source``); for an export written
    before that record, the same from its data settings and its list of training images."""
    if "data_source" in training:
        return training["data_source"]
    import dataclasses

    from colorization.colorizer import read_training_images
    from colorization.data import DataConfig, identify_source

    settings = training.get("data_config")
    if settings is None:
        return {"kind": "unknown", "name": None, "description": "unknown data", "num_images": None}
    known = {f.name for f in dataclasses.fields(DataConfig)}
    images = (read_training_images(export_dir) or {}).get("images")
    return identify_source(DataConfig(**{k: v for k, v in settings.items() if k in known}), images)


def _without_machine_path(word: str) -> str:
    """A word of a command line with an absolute path cut to its last part (``--flag=/a/b`` too)."""
    flag, equals, value = word.partition("=") if word.startswith("-") and "=" in word else ("", "", word)
    if not os.path.isabs(value):
        return word
    return f"{flag}{equals}.../{os.path.basename(os.path.normpath(value))}"


def write_upload_folder(export_dir: str, target: str, repo_id: str, license_id: str) -> list[str]:
    """Write exactly what an upload carries into ``target`` (a new or empty folder) -> the files, relative."""
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise ColorizationError(f"--output_dir {target} is not a new or empty folder; choose another")
    os.makedirs(target, exist_ok=True)
    for path in upload_files(export_dir):
        destination = os.path.join(target, *path.split("/"))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(export_dir, *path.split("/")), destination)
    try:  # the upload is the whole model: it loads without anything the allowlist left behind
        # through its family's inference half directly: colorization.inference imports this module (resolve)
        import torch

        from colorization.colorizer import read_export_config
        from colorization.families import family

        config = read_export_config(target)
        family(config.get("model_type")).inference_module().load_colorizer(target, config, torch.device("cpu"))
    except ColorizationError as error:
        raise ColorizationError(f"{export_dir} cannot be pushed: its exported files do not load ({error})") from None
    model_card(export_dir, repo_id, license_id).save(os.path.join(target, CARD_NAME))
    return sorted(os.path.relpath(os.path.join(root, f), target) for root, _, files in os.walk(target) for f in files)


def push(
    export_dir: str,
    repo_id: str,
    private: bool = False,
    revision: Optional[str] = None,
    license_id: str = DEFAULT_LICENSE,
) -> str:
    """Upload an export (never its checkpoints) with its model card to ``repo_id`` -> the commit's URL."""
    import tempfile

    from huggingface_hub import HfApi, errors

    if not HUB_REPO_ID.match(repo_id):
        raise ColorizationError(f"{repo_id!r} is not a Hub repository id (owner/name)")
    with tempfile.TemporaryDirectory(prefix="colorization-upload-") as staging:
        folder = os.path.join(staging, "upload")
        write_upload_folder(export_dir, folder, repo_id, license_id)
        api = HfApi()
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=f"Upload a colorization model ({__version__})",
            )
        except (errors.HfHubHTTPError, OSError, ValueError) as error:
            raise ColorizationError(
                f"cannot push to {repo_id}: {str(error).splitlines()[0]} (log in with `hf auth login`; the export "
                f"in {export_dir} is untouched)"
            ) from None
    return getattr(info, "commit_url", str(info))
