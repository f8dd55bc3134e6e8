"""The real entry point, `accelerate launch train_cnn.py`, on tiny settings: what it writes and how it resumes."""

import json
import sys
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from colorization import load_colorizer
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.models.cnn import CNNTask
from colorization.training import NonFiniteLossError, Trainer, TrainConfig
from conftest import TINY_CNN, TINY_DATA, accelerate_launch, run_command


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("cnn_run")
    result = accelerate_launch("train_cnn.py", TINY_DATA + TINY_CNN + [
        "--output_dir", output, "--max_train_steps", "12", "--checkpointing_steps", "4", "--validation_steps", "6",
        "--logging_steps", "2", "--checkpoints_total_limit", "2"])
    return output, result


def test_writes_pruned_resumable_checkpoints(short_run):
    output, _ = short_run
    checkpoints = sorted((output / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["checkpoint_1", "checkpoint_2"]  # steps 8 and 12; step 4 pruned
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "run_config.json"} <= names
    assert json.loads((checkpoints[-1] / "run_config.json").read_text())["global_step"] == 12
    config = json.loads((output / "run_config.json").read_text())
    assert config["model_type"] == "cnn" and config["data"]["resolution"] == 32


def test_tensorboard_has_training_and_validation_tags(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, _ = short_run
    events = EventAccumulator(str(output / "logs" / "cnn"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_second", "validation/loss",
            "validation/psnr", "validation/ssim", "validation/psnr_gray", "validation/ssim_gray"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in events.Scalars("validation/psnr")] == [0, 6, 12]
    assert "validation/gray_prediction_truth" in events.Tags()["images"]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] > lrs[-1]  # cosine schedule decays


def test_exported_model_loads_and_keeps_input_size_and_lightness(short_run):
    output, result = short_run
    assert "gray (ab = 0)" in result.stdout and "PSNR" in result.stdout
    colorizer = load_colorizer(str(output), device="cpu")
    assert colorizer.model_type == "cnn" and colorizer.resolution == 32
    # mid-tones: near black or white, chroma can fall outside sRGB and clipping then moves L (gamut limit)
    photo = Image.fromarray(np.random.default_rng(0).integers(70, 190, (31, 45, 3), dtype=np.uint8))
    colored = colorizer.colorize(photo)
    assert isinstance(colored, Image.Image) and colored.size == (45, 31)
    from colorization.color import rgb_to_lab
    from torchvision.transforms.functional import pil_to_tensor

    lightness = lambda im: rgb_to_lab(pil_to_tensor(im)[None].float() / 255)[:, 0]  # noqa: E731
    assert (lightness(colored) - lightness(photo)).abs().max() < 1.0  # L kept up to 8-bit rounding
    several = colorizer.colorize([photo, photo.resize((20, 64))], batch_size=2)
    assert [im.size for im in several] == [(45, 31), (20, 64)]
    metrics = json.loads((output / "validation_metrics.json").read_text())
    assert metrics["step"] == 12 and metrics["num_images"] == 26


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # 230 training images, batches of 8, 2 accumulation steps: 14 optimizer steps per epoch. The run is
    # cut at step 4 (mid-epoch) and resumed to step 18 (across an epoch boundary), with 2 data workers.
    args = ["--resolution", "32", "--embedded_num_images", "256", "--dataloader_num_workers", "2", *TINY_CNN,
            "--output_dir", tmp_path, "--max_train_steps", "18", "--gradient_accumulation_steps", "2",
            "--checkpointing_steps", "4", "--validation_steps", "6", "--checkpoints_total_limit", "none"]
    accelerate_launch("train_cnn.py", args)
    uninterrupted = load_file(tmp_path / "model.safetensors")
    for checkpoint in (tmp_path / "checkpoints").iterdir():
        if checkpoint.name != "checkpoint_0":
            shutil.rmtree(checkpoint)
    (tmp_path / "model.safetensors").unlink()
    result = accelerate_launch("train_cnn.py", args + ["--resume_from_checkpoint", "latest"])
    assert "resumed from" in result.stdout + result.stderr
    resumed = load_file(tmp_path / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "checkpoint_4"  # numbering goes on


def test_two_cpu_processes_shard_the_data_and_keep_identical_weights(tmp_path):
    args = TINY_DATA + TINY_CNN + ["--output_dir", tmp_path / "run", "--max_train_steps", "6",
                                   "--validation_steps", "6", "--checkpointing_steps", "6", "--probe_dir", tmp_path]
    accelerate_launch("tests/distributed_probe.py", args, num_processes=2)
    ranks = [json.loads((tmp_path / f"rank_{i}.json").read_text()) for i in range(2)]
    assert all(r["num_processes"] == 2 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    first, second = (set(r["indices"]) for r in ranks)
    # 6 steps of 8 images each, plus the one batch accelerate's loader fetches ahead to detect the end
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 7 * 8
    assert not first & second  # each process saw different images


def test_two_unconnected_processes_are_refused():
    result = accelerate_launch("train_cnn.py", TINY_DATA + TINY_CNN + ["--max_train_steps", "1"],
                               num_processes=2, env={"ACCELERATE_USE_CPU": None}, check=False)
    assert result.returncode != 0
    assert "not connected" in result.stderr and "ACCELERATE_USE_CPU=1" in result.stderr
    assert "Traceback" not in result.stderr.split("not connected")[0].splitlines()[-1]


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    accelerate_launch("train_cnn.py", TINY_DATA + TINY_CNN + [
        "--output_dir", tmp_path, "--max_train_steps", "4", "--mixed_precision", "bf16", "--validation_steps", "4"])
    assert json.loads((tmp_path / "run_config.json").read_text())["mixed_precision"] == "bf16"
    weights = load_file(tmp_path / "model.safetensors")
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)


class _DivergingCNN(CNNTask):
    """The CNN whose loss turns to NaN at step 3."""

    def training_step(self, trainer, lightness, ab):
        if trainer.progress.global_step == 2:
            loss = self.models["model"](lightness).float().mean() * float("nan")
            trainer.optimize("model", loss)
        return super().training_step(trainer, lightness, ab)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    from colorization.models.cnn import CNNConfig

    train = TrainConfig(output_dir=str(tmp_path), max_train_steps=10, checkpointing_steps=2, train_batch_size=8,
                        validation_steps=100, initial_validation=False, report_to="none")
    data = DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)
    trainer = Trainer(_DivergingCNN(CNNConfig(pretrained_backbone=False), 32), train, data)
    with pytest.raises(NonFiniteLossError, match="step 3") as error:
        trainer.train()
    assert "checkpoint_0" in str(error.value)
    kept = load_file(tmp_path / "checkpoints" / "checkpoint_0" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert not (tmp_path / "model.safetensors").exists()  # nothing half-trained was exported


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    result = run_command([sys.executable, "train_cnn.py", *TINY_DATA, *TINY_CNN, "--output_dir", tmp_path,
                          "--resume_from_checkpoint", tmp_path / "nowhere"], check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --resume_from_checkpoint")
    result = run_command([sys.executable, "train_cnn.py", "--train_data_dir", tmp_path / "missing"], check=False)
    assert result.returncode == 1 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_load_colorizer_rejects_what_is_not_a_model(tmp_path, short_run):
    with pytest.raises(ColorizationError, match="does not exist"):
        load_colorizer(str(tmp_path / "missing"))
    with pytest.raises(ColorizationError, match="not an exported colorization model"):
        load_colorizer(str(tmp_path))
    output, _ = short_run
    with pytest.raises(ColorizationError, match="training checkpoint"):
        load_colorizer(str(output / "checkpoints" / "checkpoint_2"))
    newer = tmp_path / "newer"
    shutil.copytree(output, newer, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    config = json.loads((newer / "colorizer.json").read_text())
    (newer / "colorizer.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ColorizationError, match="Upgrade"):
        load_colorizer(str(newer))
