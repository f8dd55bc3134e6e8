"""Models by Hub id and pushing with a model card, offline: a real Hub cache layout in a temporary HF_HOME, and
HfApi replaced by a recorder of what would be uploaded."""

import shutil
import sys

import pytest
from conftest import TINY_CNN, TINY_DATA, run_command, run_in_process, train_in_process
from PIL import Image

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _export_only(run, target):
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "logs", "samples", "selected_model*"))
    return target


@pytest.fixture
def hub_home(tmp_path, cnn_run):
    """HF_HOME whose Hub cache holds the CNN export as the model you/cats-cnn at COMMIT (refs/main)."""
    home = tmp_path / "hf_home"
    repo = home / "hub" / "models--you--cats-cnn"
    _export_only(cnn_run[0], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def test_a_model_in_the_hub_cache_loads_by_id_offline(hub_home, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from colorization import load_colorizer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    colorizer = load_colorizer("you/cats-cnn", "cpu")
    assert colorizer.model_type == "cnn" and colorizer.origin == {
        "repo_id": "you/cats-cnn",
        "revision": "main",
        "commit": COMMIT,
    }
    assert colorizer.colorize(Image.new("RGB", (9, 7), (120, 90, 60))).size == (9, 7)
    (tmp_path / "you" / "cats-cnn").mkdir(parents=True)  # a local folder of that name wins (here: no model)
    monkeypatch.chdir(tmp_path)
    from colorization.errors import ColorizationError

    with pytest.raises(ColorizationError, match="not an exported colorization model"):
        load_colorizer("you/cats-cnn", "cpu")


def test_the_commands_take_a_hub_id_and_say_in_one_line_what_is_missing(hub_home, tmp_path, monkeypatch, capsys):
    import json

    import huggingface_hub.constants

    from colorization.cli import main as colorize
    from colorization.evaluation import main as evaluate

    photo = tmp_path / "photo.png"
    Image.new("RGB", (12, 8), (100, 150, 200)).save(photo)
    env = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    # the real command once, finding the cache through HF_HOME as a user's shell gives it
    run_command([sys.executable, "-m", "colorization", "--model", "you/cats-cnn", photo, "--output_dir",
                 tmp_path / "out", "--device", "cpu"], env=env)  # fmt: skip
    assert Image.open(tmp_path / "out" / "photo.png").size == (12, 8)
    # the rest in this process, the Hub cache where HF_HOME put it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    argv = ["--model", "you/other", photo, "--output_dir", tmp_path / "out2"]
    code, _, error = run_in_process(colorize, argv, capsys)
    assert code == 1 and "Traceback" not in error
    assert error.strip().splitlines()[-1].startswith("error: there is no folder 'you/other'")
    assert "not in the local Hub cache" in error
    argv = ["--checkpoints", "you/cats-cnn", *TINY_DATA, "--metrics", "psnr", "--max_images", "4", "--output_dir"]
    code, _, error = run_in_process(evaluate, [*argv, tmp_path / "eval"], capsys)
    assert code == 0, error
    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    assert settings["hub_models"]["cats-cnn"]["commit"] == COMMIT
    assert settings["checkpoints"]["cats-cnn"] == "you/cats-cnn"


class _Recorder:
    """Stands in for huggingface_hub.HfApi: records what would be created and uploaded."""

    calls: list = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        import os

        files = {}
        for root, _, names in os.walk(folder_path):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, folder_path)] = handle.read()
        self.calls.append(("upload_folder", repo_id, revision, files))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_push_uploads_the_export_and_its_card_never_the_checkpoints(cnn_run, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard

    from colorization.push_to_hub import main

    _Recorder.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _Recorder)
    run = cnn_run[0]
    main([str(run), "you/cats-cnn", "--private", "--revision", "v1"])
    (_, repo, private), (_, _, branch), (_, _, revision, uploaded) = _Recorder.calls
    assert repo == "you/cats-cnn" and private and branch == revision == "v1"
    assert {"colorizer.json", "model.safetensors", "README.md"} <= set(uploaded)
    assert not any(name.startswith(("checkpoints", "logs", "samples")) or name.endswith((".pkl", ".bin"))
                   for name in uploaded)  # fmt: skip
    main([str(run), "you/cats-cnn", "--dry_run", "--output_dir", str(tmp_path / "dry")])
    dry = {
        p.relative_to(tmp_path / "dry").as_posix(): p.read_bytes() for p in (tmp_path / "dry").rglob("*") if p.is_file()
    }
    assert dry == uploaded  # the dry run is file for file what the upload carries
    card = ModelCard.load(tmp_path / "dry" / "README.md", ignore_metadata_errors=False)
    assert card.data.license == "cc-by-nc-4.0" and card.data.library_name == "colorization"
    assert {"image-colorization", "cnn"} <= set(card.data.tags)
    assert 'load_colorizer("you/cats-cnn")' in card.text and "gray (ab = 0)" in card.text
    assert "`colorization-suite`" in card.text  # the distribution to install, not the index's `colorization`


def test_training_pushes_its_export_at_the_end(tmp_path, monkeypatch):
    import huggingface_hub

    from colorization.tasks.cnn import CNNTask

    _Recorder.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _Recorder)
    args = [*TINY_DATA, *TINY_CNN, "--max_train_steps", "2", "--validation_images", "8", "--report_to", "none",
            "--output_dir", tmp_path, "--push_to_hub", "--hub_model_id", "you/pushed"]  # fmt: skip
    train_in_process(CNNTask, args)
    uploads = [call for call in _Recorder.calls if call[0] == "upload_folder"]
    assert len(uploads) == 1 and uploads[0][1] == "you/pushed" and "model.safetensors" in uploads[0][3]
    assert not any(name.startswith("checkpoints") for name in uploads[0][3])


def _refining_export(folder):
    """A tiny diffusion export that refines a GAN (random weights; the files, not the colors, are under test),
    written by the real writers: diffusers' save_pretrained (safetensors) and the export config."""
    import torch
    from diffusers import DDPMScheduler

    from colorization.colorizer import save_export_config, save_module_weights
    from colorization.models.diffusion import LabColorizationPipeline, LabConditionedUNet
    from colorization.models.gan import UNetGenerator

    torch.manual_seed(0)
    regressor = folder / "regressor"
    save_module_weights(str(regressor), UNetGenerator(32, "ab", 8), "gan")
    save_export_config(str(regressor), "gan", {"resolution": 32, "output_space": "ab", "base_channels": 8}, 32)
    unet = LabConditionedUNet(32, (16, 16), 1, (), regressor_channels=2)
    LabColorizationPipeline(unet, DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    extra = {"sampling": {"scheduler": "ddim", "num_inference_steps": 2}, "refines": {"model_type": "gan"}}
    save_export_config(str(folder), "diffusion", {}, 32, extra)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# files of the user's that happen to be in a run folder, and pickles: none of them is the export's
STRAYS = ("notes.txt", "secrets.env", "photos/cat.jpg", "unet/notes.txt", "regressor/mine.txt", "pytorch_model.bin",
          "unet/diffusion_pytorch_model.bin", "logs/events.out")  # fmt: skip


def test_push_uploads_the_exports_own_files_and_nothing_else_of_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from colorization.push_to_hub import main

    run = tmp_path / "run"
    exported = _refining_export(run)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "regressor/model.safetensors"} <= set(
        exported
    )
    for stray in STRAYS:
        (run / stray).parent.mkdir(parents=True, exist_ok=True)
        (run / stray).write_text("not for the Hub")
    _Recorder.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _Recorder)
    main([str(run), "you/refiner"])
    uploaded = _Recorder.calls[-1][3]
    assert sorted(uploaded) == sorted([*exported, "README.md"]), sorted(uploaded)
    assert b"not for the Hub" not in b"".join(uploaded.values())


def test_an_onnx_folder_or_a_broken_export_is_not_pushed(tmp_path, capsys):
    from conftest import run_in_process

    from colorization.push_to_hub import main

    run = tmp_path / "run"
    _refining_export(run)
    (run / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # only a pickle left: never uploaded
    (run / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    code, _, error = run_in_process(main, [run, "you/refiner", "--dry_run", "--output_dir", tmp_path / "dry"], capsys)
    assert code == 1 and "do not load" in error and "Traceback" not in error
    (run / "onnx.json").write_text("{}")
    code, _, error = run_in_process(main, [run, "you/refiner", "--dry_run", "--output_dir", tmp_path / "dry2"], capsys)
    assert code == 1 and "is an ONNX export" in error


def _fake_hub(monkeypatch, tmp_path, repositories):
    """snapshot_download over local folders (repo id -> folder), honouring allow_patterns as the Hub does."""
    import shutil as shell

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **_):
        remote = repositories[repo_id]
        files = [p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()]
        snapshot = tmp_path / "cache" / repo_id.replace("/", "--") / COMMIT
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shell.copy(remote / name, snapshot / name)
        asked.append(allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


def test_a_hub_model_downloads_its_export_alone_and_never_loads_a_pickle(tmp_path, monkeypatch):
    from colorization import load_colorizer
    from colorization.errors import ColorizationError

    remote = tmp_path / "remote"
    exported = _refining_export(remote)
    for stray in STRAYS:  # a repository may hold anything: only the export's own files are fetched
        (remote / stray).parent.mkdir(parents=True, exist_ok=True)
        (remote / stray).write_text("not fetched")
    pickled = tmp_path / "pickled"
    _refining_export(pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle runs code when it is loaded")
    asked = _fake_hub(monkeypatch, tmp_path, {"you/refiner": remote, "you/pickled": pickled})

    colorizer = load_colorizer("you/refiner", "cpu", num_inference_steps=2)
    assert colorizer.regressor is not None and asked[-1]
    snapshot = tmp_path / "cache" / "you--refiner" / COMMIT
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == exported
    assert colorizer.colorize(Image.new("RGB", (9, 7), (120, 90, 60))).size == (9, 7)
    with pytest.raises(ColorizationError, match="only safetensors weights are loaded"):
        load_colorizer("you/pickled", "cpu")  # its pickle is not even downloaded
    with pytest.raises(ColorizationError, match="never a pickle such as unet/diffusion_pytorch_model.bin"):
        load_colorizer(str(pickled), "cpu")  # nor loaded from a folder


def test_every_familys_export_is_within_what_a_download_fetches():
    from colorization.families import FAMILIES
    from colorization.hub import DOWNLOAD_FILES, export_paths

    for family in FAMILIES.values():
        files = export_paths(family.task_class().exported_files)
        assert "colorizer.json" in files and set(files) <= set(DOWNLOAD_FILES), family.name


def test_an_export_its_card_and_evaluate_name_the_data_never_this_machines_paths(tmp_path, monkeypatch, capsys):
    import hashlib
    import json

    import numpy as np
    from conftest import run_in_process

    from colorization.evaluation import main as evaluate
    from colorization.push_to_hub import main as push_command
    from colorization.tasks.cnn import CNNTask

    photos = tmp_path / "home" / "someone" / "cats"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / f"{index:02d}.png")
    run = tmp_path / "run"
    data = ["--train_data_dir", photos, "--resolution", "32", "--dataloader_num_workers", "0"]
    monkeypatch.setattr(sys, "argv", ["train_cnn.py", "--train_data_dir", str(photos), "--output_dir", str(run)])
    train_in_process(CNNTask, [*data, *TINY_CNN, "--max_train_steps", "2", "--validation_images", "2",
                               "--report_to", "none", "--output_dir", run])  # fmt: skip

    images = json.loads((run / "training_images.json").read_text())["images"]
    training = json.loads((run / "colorizer.json").read_text())["training"]
    assert training["data"] == "folder cats" and len(images) == 18  # 2 of the 20 held out for validation
    assert training["data_source"] == {
        "kind": "folder",
        "name": "cats",
        "description": "folder cats",
        "num_images": 18,
        "images_sha256": hashlib.sha256("\n".join(images).encode()).hexdigest(),
    }
    push_command([str(run), "you/cats", "--dry_run", "--output_dir", str(tmp_path / "dry")])
    card = (tmp_path / "dry" / "README.md").read_text()
    assert f"a local folder named `cats`: 18 training images, SHA-256 of their image hash list " \
           f"`{training['data_source']['images_sha256'][:16]}`" in card  # fmt: skip
    assert "--train_data_dir .../cats --output_dir .../run" in card  # the command, without the paths
    for file in (tmp_path / "dry").rglob("*"):  # nothing that goes to the Hub names this machine's folders
        assert not file.is_file() or str(tmp_path).encode() not in file.read_bytes(), file

    code, _, _ = run_in_process(evaluate, ["--checkpoints", run, *data, "--metrics", "psnr",
                                           "--output_dir", tmp_path / "eval"], capsys)  # fmt: skip
    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    assert code == 0 and settings["data"] == training["data"] == "folder cats"
