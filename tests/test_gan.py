import json
import urllib.error

import pytest
import torch
from conftest import TINY_DATA, TINY_GAN, fp32_tolerance, train_in_process
from safetensors.torch import load_file

from colorization import color, load_colorizer
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.models.gan import UNetGenerator
from colorization.tasks.gan import GANConfig, GANTask, PatchDiscriminator, load_imagenet_vgg16_features
from colorization.training import TrainConfig, Trainer


@pytest.mark.parametrize("resolution, patches", [(64, 6), (128, 14), (256, 30)])
@pytest.mark.parametrize("output_space, channels, upsampling", [("ab", 2, "resize"), ("rgb", 3, "transposed")])
def test_generator_and_discriminator_shapes(resolution, patches, output_space, channels, upsampling):
    generator = UNetGenerator(resolution, output_space, base_channels=8, upsampling=upsampling).eval()
    lightness = torch.rand(2, 1, resolution, resolution) * 2 - 1
    output = generator(lightness)
    assert output.shape == (2, channels, resolution, resolution) and output.abs().max() <= 1
    assert generator.predict_ab(lightness).shape == (2, 2, resolution, resolution)
    assert len(generator.down) == {64: 6, 128: 7, 256: 8}[resolution]  # down to 1x1
    discriminator = PatchDiscriminator(channels, base_channels=8)
    assert discriminator(lightness, output).shape == (2, 1, patches, patches)  # 30x30 patches of 70x70 at 256


def test_the_generator_has_no_randomness_and_the_discriminator_no_batch_statistics():
    generator = UNetGenerator(32, base_channels=8)
    assert not any(isinstance(m, torch.nn.Dropout) for m in generator.modules())
    generator.eval()
    lightness = torch.rand(4, 1, 32, 32) * 2 - 1
    # eval mode: an image's colors do not depend on the other images of its batch (up to the rounding of its sums)
    alone = generator(lightness[:1])
    tolerance = fp32_tolerance(generator, scale=float(alone.detach().abs().max()))
    torch.testing.assert_close(generator(lightness)[:1], alone, rtol=0, atol=tolerance)
    discriminator = PatchDiscriminator(2, base_channels=8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules())
    assert sum("parametrizations" in name for name, _ in discriminator.named_parameters()) >= 5  # spectral norm
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in PatchDiscriminator(2, 8, spectral_norm=False).modules())


@pytest.mark.parametrize("resolution", [16, 48, 100, 0])
def test_resolution_that_cannot_work_is_refused_at_start(resolution):
    with pytest.raises(ColorizationError, match="power of two"):
        GANTask(GANConfig(), resolution).check_resolution(resolution)


def _prepared_task(tmp_path, **config):
    options = {
        "base_channels": 8,
        "lambda_perceptual": 0.0,
        "content_fraction": 0.0,
        "discriminator_warmup_fraction": 0.0,
        **config,
    }
    task = GANTask(GANConfig(**options), 32)
    trainer = Trainer(
        task,
        TrainConfig(output_dir=str(tmp_path), report_to="none", learning_rate=2e-4, adam_beta1=0.5, max_grad_norm=None),
        DataConfig(resolution=32),
    )
    trainer._prepare_models(max_steps=10)
    return task, trainer


def _parameters(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _step(task, trainer, **inputs):
    lightness, ab = color.rgb_to_normalized_lab(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    with trainer.accelerator.accumulate(*task.models.values()):
        return task.training_step(trainer, lightness, ab)


def test_one_adversarial_step_updates_both_networks(tmp_path):
    task, trainer = _prepared_task(tmp_path)
    before = {name: _parameters(model) for name, model in task.models.items()}
    logs = _step(task, trainer)
    assert {"d_loss_real", "d_loss_fake", "d_real", "d_fake", "g_adversarial", "g_content", "loss", "phase"} <= set(
        logs
    )
    for name, model in task.models.items():  # parameters only: batch-norm statistics move on any forward
        after = dict(model.named_parameters())
        assert any(not torch.equal(before[name][k], after[k]) for k in after), name


@pytest.mark.parametrize(
    "step, phase, trained", [(0, 0, {"generator"}), (4, 1, {"discriminator"}), (6, 2, {"generator", "discriminator"})]
)
def test_warm_start_phases_train_the_right_networks(tmp_path, step, phase, trained):
    # 10 steps: content-only for 4 (40%), the discriminator alone for 1, then both
    task, trainer = _prepared_task(tmp_path, content_fraction=0.4, discriminator_warmup_fraction=0.1)
    trainer.progress.global_step = step
    before = {name: _parameters(model) for name, model in task.models.items()}
    logs = _step(task, trainer)
    assert int(logs["phase"]) == phase
    changed = {
        name
        for name, model in task.models.items()
        if any(not torch.equal(before[name][k], v) for k, v in model.named_parameters())
    }
    assert changed == trained
    assert torch.isnan(logs["g_adversarial"]) == (phase != 2) and torch.isnan(logs["d_real"]) == (phase == 0)


def test_generator_step_leaves_the_discriminator_without_gradient(tmp_path):
    task, trainer = _prepared_task(tmp_path)
    lightness, ab = color.rgb_to_normalized_lab(torch.rand(4, 3, 32, 32))
    discriminator = task.models["discriminator"]
    discriminator.zero_grad(set_to_none=True)
    target = task._target(lightness, ab)
    fake = task.models["generator"](lightness)
    with trainer.accelerator.accumulate(*task.models.values()):
        logs = task.generator_step(trainer, lightness, ab, target, fake)
    assert torch.isfinite(logs["g_adversarial"])  # the discriminator did judge the fake
    assert all(p.grad is None for p in discriminator.parameters())  # but collected no gradient
    assert all(p.requires_grad for p in discriminator.parameters())  # and is unfrozen again afterwards


def test_real_labels_are_smoothed_one_sidedly_by_default(tmp_path):
    task, _ = _prepared_task(tmp_path)
    logits = torch.zeros(2, 1, 4, 4)
    # BCE with logit 0 is log 2 for any target; the gradient tells the target: sigmoid(0) - target
    logits.requires_grad_(True)
    task._adversarial(logits, True, task.config.label_smoothing).backward()
    assert GANConfig().label_smoothing == 0.1
    torch.testing.assert_close(logits.grad, torch.full_like(logits, (0.5 - 0.9) / logits.numel()))


def test_perceptual_loss_plumbing_with_a_random_vgg(tmp_path, monkeypatch):
    # A randomly initialised VGG only checks the wiring; the real loss needs the ImageNet weights.
    from torchvision.models import vgg16

    monkeypatch.setattr(
        "colorization.tasks.gan.load_imagenet_vgg16_features",
        lambda: vgg16(weights=None).features[:16].eval().requires_grad_(False),
    )
    task, trainer = _prepared_task(tmp_path, lambda_perceptual=0.5, output_space="rgb")
    logs = _step(task, trainer)
    assert logs["g_perceptual"] > 0 and torch.isfinite(logs["loss"])


def test_offline_vgg_weights_fail_fast_naming_the_flag(monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", unreachable)
    with pytest.raises(ColorizationError, match="--lambda_perceptual 0"):
        load_imagenet_vgg16_features()


def test_gan_run_logs_every_term_and_exports_its_chosen_step(gan_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, result = gan_run
    checkpoint = output / "checkpoints" / "checkpoint_12"
    names = {p.name for p in checkpoint.iterdir()}
    assert {
        "model.safetensors",
        "model_1.safetensors",
        "optimizer.bin",
        "optimizer_1.bin",
        "scheduler.bin",
        "scheduler_1.bin",
    } <= names
    events = EventAccumulator(str(output / "logs" / "gan"))
    events.Reload()
    assert {
        "train/g_adversarial",
        "train/g_content",
        "train/d_loss_real",
        "train/d_loss_fake",
        "train/d_real",
        "train/d_fake",
        "train/phase",
        "train/lr_generator",
        "train/lr_discriminator",
        "train/grad_norm_generator",
        "train/grad_norm_discriminator",
        "validation/psnr",
        "validation/ssim",
        "validation/colorfulness",
        "validation/selected_step",
    } <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("train/phase")][0] == 0 and events.Scalars("train/phase")[-1].value == 2
    lrs = [e.value for e in events.Scalars("train/lr_generator")]
    assert lrs[0] == pytest.approx(2e-4) and lrs[-1] < 1e-4  # constant, then linear decay
    # at least 10 validations to choose from (12 steps: every step), and the export names its step and why
    assert len(events.Scalars("validation/psnr")) >= 11
    exported = json.loads((output / "colorizer.json").read_text())
    selection = exported["selection"]
    assert exported["architecture"] == {
        "resolution": 32,
        "output_space": "ab",
        "base_channels": 16,
        "upsampling": GANConfig().upsampling,
        "norm": GANConfig().generator_norm,
    }
    assert 1 <= selection["step"] <= 12 and "colorfulness" in selection["rule"] and len(selection["images"]) == 26
    psnr = {e.step: e.value for e in events.Scalars("validation/psnr")}
    assert selection["psnr"] == pytest.approx(psnr[selection["step"]], abs=1e-4)
    assert f"Exported the model of step {selection['step']}" in result.stdout
    assert exported["training"]["final_step"] == 12 and exported["training"]["images_seen"] == 12 * 8
    generator_weights = load_file(output / "model.safetensors")
    assert not any(k.startswith("net.") for k in generator_weights)  # the discriminator stays in checkpoints
    assert load_colorizer(str(output), device="cpu").model_type == "gan"


def test_gan_resume_is_exact(tmp_path):
    args = (
        TINY_DATA
        + TINY_GAN
        + [
            "--output_dir",
            tmp_path,
            "--max_train_steps",
            "8",
            "--checkpointing_steps",
            "4",
            "--validation_steps",
            "8",
            "--checkpoints_total_limit",
            "none",
            "--model_selection",
            "last",
            "--no-initial_validation",
        ]
    )
    train_in_process(GANTask, args)
    uninterrupted = load_file(tmp_path / "model.safetensors")
    for name in ("checkpoint_8",):
        import shutil

        shutil.rmtree(tmp_path / "checkpoints" / name)
    (tmp_path / "model.safetensors").unlink()
    train_in_process(GANTask, args + ["--resume_from_checkpoint", "latest"])
    resumed = load_file(tmp_path / "model.safetensors")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)


def test_rgb_output_space_end_to_end_in_bf16_with_accumulation(tmp_path):
    # also: both optimizers under bf16 autocast and gradient accumulation (2 batches per step); in this process:
    # the session's gan_run runs train_gan.py through accelerate launch
    train_in_process(
        GANTask,
        TINY_DATA
        + TINY_GAN
        + [
            "--output_space",
            "rgb",
            "--output_dir",
            tmp_path,
            "--max_train_steps",
            "3",
            "--validation_steps",
            "3",
            "--mixed_precision",
            "bf16",
            "--gradient_accumulation_steps",
            "2",
            "--model_selection",
            "last",
        ],
    )
    assert json.loads((tmp_path / "run_config.json").read_text())["mixed_precision"] == "bf16"
    weights = load_file(tmp_path / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    colorizer = load_colorizer(str(tmp_path), device="cpu")
    from PIL import Image

    assert colorizer.colorize(Image.new("RGB", (40, 24), (90, 120, 150))).size == (40, 24)
    assert json.loads((tmp_path / "colorizer.json").read_text())["architecture"]["output_space"] == "rgb"


def test_gan_beats_the_gray_baseline_on_the_embedded_data(tmp_path):
    metrics = train_in_process(
        GANTask,
        [
            *TINY_DATA,
            "--lambda_perceptual",
            "0",
            "--base_channels",
            "32",
            "--train_batch_size",
            "16",
            "--max_train_steps",
            "150",
            "--output_dir",
            tmp_path,
            "--report_to",
            "none",
            "--no-initial_validation",
        ],
    )
    # the exported (chosen) step must beat gray by a margin
    assert metrics["psnr"] > metrics["psnr_gray"] + 1.0, metrics


def test_gan_beats_the_gray_baseline_on_real_cats(tmp_path, afhq_dir):
    metrics = train_in_process(
        GANTask,
        [
            "--train_data_dir",
            afhq_dir,
            "--resolution",
            "32",
            "--dataloader_num_workers",
            "2",
            "--lambda_perceptual",
            "0",
            "--base_channels",
            "32",
            "--train_batch_size",
            "32",
            "--max_train_steps",
            "150",
            "--learning_rate",
            "5e-4",
            "--output_dir",
            tmp_path,
            "--report_to",
            "none",
            "--no-initial_validation",
        ],
    )
    assert metrics["psnr"] > metrics["psnr_gray"] + 0.3, metrics


def test_the_selection_rule_takes_the_last_faithful_step_that_does_not_over_paint():
    from colorization.validation import selection_step

    def run(history):
        chosen, best = None, None
        for step, (psnr, colorfulness) in enumerate(history, start=1):
            metrics = {"psnr": psnr, "colorfulness": colorfulness, "colorfulness_truth": 30.0}
            best, qualified, take = selection_step(chosen, best, metrics)
            if take:
                chosen = {**metrics, "step": step, "qualified": qualified}
        return chosen["step"]

    # the best PSNR early (a regressor-like step), later steps within 0.3 dB and more colorful: the last of those
    assert run([(26.8, 15.0), (26.1, 22.0), (26.6, 20.0), (26.7, 19.0), (26.0, 24.0)]) == 4
    # a later step that paints more color than the photos is never taken, however good its PSNR
    assert run([(26.0, 20.0), (26.5, 35.0)]) == 1
    # nothing qualifies (everything over-painted): the best PSNR
    assert run([(25.0, 40.0), (25.5, 41.0), (25.2, 42.0)]) == 2
