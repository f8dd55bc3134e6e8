"""The pretrained defaults that users with internet run, run here for real: torchvision's download cache is
filled with randomly initialised weights under the exact file names the code downloads, and the commands run
with their default flags, offline, as subprocesses. The weights are checked to come from those files."""

import csv
import math
import os
import sys

import pytest
import torch
from conftest import TINY_DATA, run_command
from safetensors.torch import load_file

FILES = {"resnet18-f37072fd.pth": "resnet18", "vgg16-397923af.pth": "vgg16", "alexnet-owt-7be5be79.pth": "alexnet"}


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds the three ImageNet files, with random weights -> (folder, weights)."""
    import torchvision.models

    home = tmp_path_factory.mktemp("torch_home")
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    weights = {}
    torch.manual_seed(0)
    for name, build in FILES.items():
        weights[name] = getattr(torchvision.models, build)(weights=None).state_dict()
        torch.save(weights[name], cache / name)
    return home, weights


def _env(home):
    return {"TORCH_HOME": str(home)}


def test_the_imagenet_files_are_the_ones_the_code_downloads():
    from torchvision.models import AlexNet_Weights, ResNet18_Weights, VGG16_Weights

    urls = (ResNet18_Weights.IMAGENET1K_V1.url, VGG16_Weights.IMAGENET1K_V1.url, AlexNet_Weights.IMAGENET1K_V1.url)
    assert sorted(os.path.basename(url) for url in urls) == sorted(FILES)


def _train_offline(script, args, home, output_dir):
    """A training script with its default pretrained flags, the weights from ``home``'s hub cache only."""
    common = ["--train_batch_size", "8", "--validation_images", "8", "--report_to", "none", "--output_dir", output_dir]
    run_command([sys.executable, script, *TINY_DATA, *args, *common], env=_env(home))


def test_cnn_trains_from_the_imagenet_trunk_by_default(torch_home, tmp_path):
    home, weights = torch_home
    # a learning rate so small that the exported trunk is still the file's: proof that the file was loaded
    _train_offline("train_cnn.py", ["--max_train_steps", "2", "--learning_rate", "1e-12"], home, tmp_path)
    exported = load_file(tmp_path / "model.safetensors")
    resnet = weights["resnet18-f37072fd.pth"]
    torch.testing.assert_close(exported["trunk.4.0.conv1.weight"], resnet["layer1.0.conv1.weight"], rtol=0, atol=1e-9)
    torch.testing.assert_close(
        exported["trunk.0.weight"], resnet["conv1.weight"].sum(dim=1, keepdim=True), rtol=1e-6, atol=1e-9
    )


def test_gan_trains_with_the_vgg_perceptual_loss_by_default(torch_home, tmp_path, monkeypatch):
    home, weights = torch_home
    _train_offline("train_gan.py", ["--base_channels", "8", "--max_train_steps", "4"], home, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    run_config = (tmp_path / "run_config.json").read_text()
    assert '"lambda_perceptual": 0.5' in run_config  # the default: VGG-16 was in the loss
    from colorization.tasks.gan import load_imagenet_vgg16_features

    monkeypatch.setenv("TORCH_HOME", str(home))
    features = load_imagenet_vgg16_features()  # what that run's GANTask.build called
    vgg = weights["vgg16-397923af.pth"]
    for index in (0, 2, 14):
        torch.testing.assert_close(features[index].weight, vgg[f"features.{index}.weight"], rtol=0, atol=0)


def test_evaluate_measures_lpips_with_alexnet_by_default(torch_home, cnn_run, tmp_path, monkeypatch):
    home, weights = torch_home
    model, _ = cnn_run
    run_command(
        [
            sys.executable,
            "evaluate.py",
            "--checkpoints",
            model,
            *TINY_DATA,
            "--max_images",
            "6",
            "--output_dir",
            tmp_path / "evaluation",
        ],
        env=_env(home),
    )
    with open(tmp_path / "evaluation" / "per_image.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["model"] == model.name]
    assert len(rows) == 6 and all(math.isfinite(float(row["lpips"])) for row in rows)
    from colorization.evaluation import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(home))
    network = load_lpips(torch.device("cpu")).net  # what that evaluation's Evaluator loaded
    alexnet = weights["alexnet-owt-7be5be79.pth"]
    torch.testing.assert_close(network.slice1[0].weight, alexnet["features.0.weight"], rtol=0, atol=0)
