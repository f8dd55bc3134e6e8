import time
import urllib.error

import pytest
import torch

from colorization.errors import ColorizationError
from colorization.models.cnn import ResNetColorizer, load_imagenet_resnet18
from colorization.tasks.cnn import CNNTask


@pytest.mark.parametrize("size", [32, 64, (48, 80)])
def test_output_is_ab_at_input_size(size):
    height, width = (size, size) if isinstance(size, int) else size
    model = ResNetColorizer().eval()
    assert model.trunk[0].in_channels == 1
    assert model(torch.randn(2, 1, height, width)).shape == (2, 2, height, width)


def test_first_convolution_is_the_rgb_filter_summed_over_channels(monkeypatch):
    import copy

    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    monkeypatch.setattr("colorization.models.cnn.load_imagenet_resnet18", lambda: copy.deepcopy(reference))
    model = ResNetColorizer(pretrained_backbone=True)
    assert torch.allclose(model.trunk[0].weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.trunk[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    gray = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.trunk[0](gray), reference.conv1(gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_offline_imagenet_weights_fail_fast_naming_the_flag(monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", unreachable)
    started = time.perf_counter()
    with pytest.raises(ColorizationError) as error:
        load_imagenet_resnet18()
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "--no-pretrained_backbone" in message and "resnet18-f37072fd.pth" in message


@pytest.mark.parametrize("resolution", [20, 36, 16])
def test_unusable_resolution_is_refused(resolution):
    with pytest.raises(ColorizationError, match="multiple of 8"):
        CNNTask(None, resolution).check_resolution(resolution)


def test_bf16_autocast_forward_and_backward_on_cpu():
    model = ResNetColorizer()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(2, 1, 32, 32))
    output.float().pow(2).mean().backward()
    assert output.dtype == torch.bfloat16  # autocast really ran (the losses cast to float32)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
