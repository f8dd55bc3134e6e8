"""The pretrained defaults that users with internet run, run here for real: torchvision's download cache is
filled with random weights under the exact file names the code downloads, and the commands' entry points run
with their default flags, offline, in this process with TORCH_HOME pointing at that cache (torch reads it at
every download, so this is what a fresh process sees). The weights are checked to come from those files."""

import csv
import math
import os

import pytest
import torch
from conftest import TINY_DATA, run_in_process, train_in_process
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
    generator = torch.Generator().manual_seed(0)

    def random_like(key, shape):
        """torchvision's initialisation (Kaiming-normal weights, unit norm layers), with zeros for the classifier
        matrices of VGG-16 and AlexNet that no test reads (drawing their 177M values would take seconds)."""
        if len(shape) >= 2 and shape.numel() <= 2**22:
            return torch.randn(shape, generator=generator) * (2 / (shape.numel() // shape[0])) ** 0.5
        if key.endswith("num_batches_tracked"):
            return torch.zeros(shape, dtype=torch.long)
        return torch.ones(shape) if len(shape) == 1 and key.endswith(("running_var", "weight")) else torch.zeros(shape)

    for name, build in FILES.items():
        with torch.device("meta"):  # the names and shapes only
            shapes = getattr(torchvision.models, build)(weights=None).state_dict()
        weights[name] = {key: random_like(key, t.shape) for key, t in shapes.items()}
        torch.save(weights[name], cache / name)
    return home, weights


def test_the_imagenet_files_are_the_ones_the_code_downloads():
    from torchvision.models import AlexNet_Weights, ResNet18_Weights, VGG16_Weights

    urls = (ResNet18_Weights.IMAGENET1K_V1.url, VGG16_Weights.IMAGENET1K_V1.url, AlexNet_Weights.IMAGENET1K_V1.url)
    assert sorted(os.path.basename(url) for url in urls) == sorted(FILES)


def _train_offline(model, args, home, output_dir, monkeypatch):
    """A model's training entry point with its default pretrained flags, the weights from ``home``'s hub cache only."""
    from colorization.tasks import TRAINING_TASKS

    monkeypatch.setenv("TORCH_HOME", str(home))
    common = ["--train_batch_size", "8", "--validation_images", "8", "--report_to", "none", "--output_dir", output_dir]
    train_in_process(TRAINING_TASKS[model], [*TINY_DATA, *args, *common])


def test_cnn_trains_from_the_imagenet_trunk_by_default(torch_home, tmp_path, monkeypatch):
    home, weights = torch_home
    # a learning rate so small that the exported trunk is still the file's: proof that the file was loaded
    _train_offline("cnn", ["--max_train_steps", "2", "--learning_rate", "1e-12"], home, tmp_path, monkeypatch)
    exported = load_file(tmp_path / "model.safetensors")
    resnet = weights["resnet18-f37072fd.pth"]
    torch.testing.assert_close(exported["trunk.4.0.conv1.weight"], resnet["layer1.0.conv1.weight"], rtol=0, atol=1e-9)
    torch.testing.assert_close(
        exported["trunk.0.weight"], resnet["conv1.weight"].sum(dim=1, keepdim=True), rtol=1e-6, atol=1e-9
    )


def test_gan_trains_with_the_vgg_perceptual_loss_by_default(torch_home, tmp_path, monkeypatch):
    home, weights = torch_home
    _train_offline("gan", ["--base_channels", "8", "--max_train_steps", "4"], home, tmp_path, monkeypatch)
    assert (tmp_path / "model.safetensors").is_file()
    run_config = (tmp_path / "run_config.json").read_text()
    assert '"lambda_perceptual": 0.5' in run_config  # the default: VGG-16 was in the loss
    from colorization.tasks.gan import load_imagenet_vgg16_features

    features = load_imagenet_vgg16_features()  # what that run's GANTask.build called
    vgg = weights["vgg16-397923af.pth"]
    for index in (0, 2, 14):
        torch.testing.assert_close(features[index].weight, vgg[f"features.{index}.weight"], rtol=0, atol=0)


def test_evaluate_measures_lpips_with_alexnet_by_default(torch_home, cnn_run, tmp_path, monkeypatch, capsys):
    from colorization.evaluation import load_lpips, main

    home, weights = torch_home
    model, _ = cnn_run
    monkeypatch.setenv("TORCH_HOME", str(home))
    argv = ["--checkpoints", model, *TINY_DATA, "--max_images", "6", "--output_dir", tmp_path / "evaluation"]
    code, _, error = run_in_process(main, argv, capsys)
    assert code == 0, error
    with open(tmp_path / "evaluation" / "per_image.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["model"] == model.name]
    assert len(rows) == 6 and all(math.isfinite(float(row["lpips"])) for row in rows)
    network = load_lpips(torch.device("cpu")).net  # what that evaluation's Evaluator loaded
    alexnet = weights["alexnet-owt-7be5be79.pth"]
    torch.testing.assert_close(network.slice1[0].weight, alexnet["features.0.weight"], rtol=0, atol=0)
