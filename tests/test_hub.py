"""Models by Hub id and pushing with a model card, offline: a real Hub cache layout in a temporary HF_HOME, and
HfApi replaced by a recorder of what would be uploaded."""

import shutil
import sys

import pytest
from conftest import TINY_CNN, TINY_DATA, run_command, train_in_process
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


def test_the_commands_take_a_hub_id_and_say_in_one_line_what_is_missing(hub_home, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (12, 8), (100, 150, 200)).save(photo)
    env = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}
    run_command([sys.executable, "-m", "colorization", "--model", "you/cats-cnn", photo, "--output_dir",
                 tmp_path / "out", "--device", "cpu"], env=env)  # fmt: skip
    assert Image.open(tmp_path / "out" / "photo.png").size == (12, 8)
    result = run_command([sys.executable, "-m", "colorization", "--model", "you/other", photo, "--output_dir",
                          tmp_path / "out2"], env=env, check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: there is no folder 'you/other'")
    assert "not in the local Hub cache" in result.stderr
    evaluation = run_command([sys.executable, "evaluate.py", "--checkpoints", "you/cats-cnn", *TINY_DATA, "--metrics",
                              "psnr", "--max_images", "4", "--output_dir", tmp_path / "eval"], env=env)  # fmt: skip
    import json

    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    assert settings["hub_models"]["cats-cnn"]["commit"] == COMMIT and evaluation.returncode == 0
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
