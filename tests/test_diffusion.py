import json
import shutil

import numpy as np
import pytest
import torch
from conftest import (
    TINY_DATA,
    TINY_DIFFUSION,
    accelerate_launch,
    assert_same_weights,
    fp32_tolerance,
    train_in_process,
)
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from colorization import color, load_colorizer
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.models.diffusion import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    LabColorizationPipeline,
    LabConditionedUNet,
    colorizer_from_parts,
    load_onnx_colorizer,
    make_sampler,
    model_prediction_type,
    sampler_name,
)
from colorization.tasks.diffusion import DiffusionConfig, DiffusionTask
from colorization.training import TrainConfig, Trainer

# 16 px, two levels: a thousand DDPM steps take seconds
TINY_UNET = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, attention_levels=(1,))


def _unet(ab_scale=1.0):
    torch.manual_seed(0)
    return LabConditionedUNet(**TINY_UNET, ab_scale=ab_scale).eval()


def test_unet_output_shape_and_dtype_under_bf16_autocast():
    unet = _unet()
    noisy, lightness = torch.randn(2, 2, 32, 32), torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = unet(noisy, torch.tensor([3, 900]), lightness)
    assert output.shape == (2, 2, 32, 32) and output.dtype == torch.bfloat16
    assert unet(noisy, 10, lightness).dtype == torch.float32


def test_unet_save_and_load_round_trip_is_identical(tmp_path):
    unet = _unet()
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = LabConditionedUNet.from_pretrained(tmp_path).eval()
    inputs = (torch.randn(1, 2, 16, 16), torch.tensor([500]), torch.rand(1, 1, 16, 16))
    assert torch.equal(unet(*inputs), loaded(*inputs))


def test_a_resolution_the_unet_cannot_halve_is_refused():
    with pytest.raises(ColorizationError, match="multiple of 8"):
        DiffusionTask(DiffusionConfig(unet_preset="small"), 36).check_resolution(36)


class _RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: records its inputs and predicts zeros, so the loss is mean(weight * target ** 2)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.calls = []

    def forward(self, noisy_ab, timesteps, lightness, regressor_ab=None):
        self.calls.append((noisy_ab.detach().clone(), timesteps.clone(), lightness.clone()))
        return self.unet(noisy_ab, timesteps, lightness, regressor_ab) * 0.0


def _task(tmp_path, **config):
    task = DiffusionTask(
        DiffusionConfig(unet_preset="small", block_out_channels="16,32", attention_levels="", ab_scale=3.0, **config),
        32,
    )
    trainer = Trainer(task, TrainConfig(output_dir=str(tmp_path), report_to="none"), DataConfig(resolution=32))
    trainer._prepare_models(max_steps=4)
    return task, trainer


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_training_step_targets_exactly_the_noise_added_at_the_predicted_timesteps(tmp_path, prediction_type, snr_gamma):
    task, trainer = _task(tmp_path, prediction_type=prediction_type, snr_gamma=snr_gamma, condition_dropout=0.0)
    recorder = _RecordingUNet(task.models["unet"])
    task.models["unet"] = recorder
    added = []
    add_noise = task.noise_scheduler.add_noise

    def recording_add_noise(original, noise, timesteps):
        added.append((original.clone(), noise.clone(), timesteps.clone()))
        return add_noise(original, noise, timesteps)

    task.noise_scheduler.add_noise = recording_add_noise
    lightness, ab = color.rgb_to_normalized_lab(torch.rand(4, 3, 32, 32))
    logs = task.training_step(trainer, lightness, ab)
    ((original, noise, timesteps),) = added
    noisy, seen_timesteps, seen_lightness = recorder.calls[0]
    x0 = ab * 3.0  # the diffused variable is the scaled ab
    torch.testing.assert_close(original, x0)
    assert torch.equal(seen_timesteps, timesteps) and torch.equal(seen_lightness, lightness)
    alpha_bar = task.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    # independent of the scheduler's own helpers: epsilon -> the noise; v -> sqrt(a) * noise - sqrt(1 - a) * x0
    expected = {"epsilon": noise, "sample": x0, "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}[
        prediction_type
    ]
    per_image = expected.pow(2).mean(dim=(1, 2, 3))
    if snr_gamma is not None:  # min-SNR-5 (Hang et al. 2023), written out
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        weight = {
            "epsilon": snr.clamp(max=5) / snr,
            "v_prediction": snr.clamp(max=5) / (snr + 1),
            "sample": snr.clamp(max=5),
        }[prediction_type]
        per_image = per_image * weight
    torch.testing.assert_close(logs["loss"], per_image.mean(), rtol=1e-5, atol=1e-6)


def test_zero_terminal_snr_makes_the_last_timestep_pure_noise(tmp_path):
    task, _ = _task(tmp_path, prediction_type="v_prediction", zero_terminal_snr=True)
    assert float(task.noise_scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)


def test_ab_scale_is_measured_on_the_training_images_and_kept_in_the_checkpoint(diffusion_run):
    from colorization.data import build_datasets

    output, _ = diffusion_run
    train, _ = build_datasets(DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0), 0)
    rgb = (
        torch.stack([torch.from_numpy(np.asarray(train.images[i]["pixels"])) for i in range(len(train))]).float() / 255
    )
    expected = 1 / float(color.rgb_to_normalized_lab(rgb)[1].std())
    exported = json.loads((output / "unet" / "config.json").read_text())["ab_scale"]
    assert exported == pytest.approx(expected, rel=1e-2) and 2 < exported < 8  # embedded ab std is about 0.25
    statistics = load_file(output / "checkpoints" / "checkpoint_12" / "data_statistics.safetensors")
    assert round(1 / float(statistics["ab_std"]), 3) == exported  # resume reads it, not measures it again


def _pipeline(scheduler="ddim", prediction_type="epsilon", ab_scale=1.0):
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    pipeline = LabColorizationPipeline(_unet(ab_scale), make_sampler(scheduler, ddpm.config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_pipeline_same_seed_same_colors_other_seed_other_colors():
    pipeline = _pipeline()
    lightness = torch.rand(2, 1, 16, 16) * 2 - 1
    sample = lambda seed: pipeline.sample_ab(lightness, 4, [torch.Generator().manual_seed(seed)] * 2)  # noqa: E731
    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


@pytest.mark.parametrize("scheduler", STOCHASTIC_SAMPLERS)
def test_a_stochastic_sampler_draws_each_images_noise_from_its_own_generator(scheduler):
    # Every step adds noise: it must come from the image's own generator, so that an image's colors do not
    # depend on the batch it is sampled in, and differ from those of the deterministic sampler of the same start.
    pipeline = _pipeline(scheduler)
    lightness = torch.rand(3, 1, 16, 16) * 2 - 1
    generators = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = pipeline.sample_ab(lightness, 6, generators([1, 2, 3]))
    alone = pipeline.sample_ab(lightness[1:2], 6, generators([2]))
    # equal up to the rounding of 6 passes through the network in another batch (another seed: ~0.8 apart)
    tolerance = fp32_tolerance(pipeline.unet, passes=6, scale=float(alone.abs().max()))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=tolerance)
    if scheduler == "dpm-sde":
        deterministic = _pipeline("dpm").sample_ab(lightness, 6, generators([1, 2, 3]))
        assert float((batch - deterministic).abs().mean()) > 1e-3
    # and it does draw: every image's own generator moves on inside the scheduler's steps
    step, drawn = pipeline.scheduler.step, []
    images = generators([1, 2, 3])

    def recording_step(*args, **kwargs):
        before = [g.get_state() for g in images]
        output = step(*args, **kwargs)
        drawn.append([not torch.equal(b, g.get_state()) for b, g in zip(before, images)])
        return output

    pipeline.scheduler.step = recording_step
    pipeline.sample_ab(lightness, 6, images)
    assert len(drawn) == 6 and any(all(step) for step in drawn), drawn


@pytest.mark.parametrize(
    "scheduler, steps", [("ddpm", 100), ("ddim", 50), ("dpm", 20), ("dpm-sde", 20), ("euler-a", 20), ("edm", 20)]
)
def test_every_scheduler_samples_and_the_output_keeps_the_input_lightness(scheduler, steps):
    pipeline = _pipeline(scheduler)
    photo = Image.fromarray(np.random.default_rng(0).integers(70, 190, (23, 37, 3), dtype=np.uint8))
    result = pipeline([photo, photo.convert("L")], num_inference_steps=steps, seed=0)
    assert [im.size for im in result] == [(37, 23), (37, 23)]
    as_lab = lambda im: color.rgb_to_lab(torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)[None] / 255.0)  # noqa: E731
    assert (as_lab(result[0])[:, 0] - as_lab(photo)[:, 0]).abs().mean() < 0.5
    assert len(pipeline.scheduler.timesteps) == steps
    if scheduler != "ddpm":  # "trailing": the first step is the last training timestep
        assert int(pipeline.scheduler.timesteps[0]) == 999


def _oracle(sampler, prediction_type: str, clean: torch.Tensor, ab_scale: float = 2.0) -> LabColorizationPipeline:
    """A pipeline whose UNet knows the clean (scaled) ab: it predicts exactly what implies ``clean`` from the x_t it
    is given, in the terms of its prediction type."""

    class Oracle(LabConditionedUNet):
        def forward(self, noisy, timestep, lightness, regressor_ab=None):
            alpha = sampler.alphas_cumprod[timestep.long()]
            noise = (noisy - alpha.sqrt() * clean) / (1 - alpha).sqrt()
            return {
                "epsilon": noise,
                "sample": clean.expand_as(noisy),
                "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * clean,
            }[prediction_type]

    pipeline = LabColorizationPipeline(Oracle(**TINY_UNET, ab_scale=ab_scale), sampler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("scheduler", sorted(SAMPLERS))
def test_every_sampler_lands_on_the_clean_ab_that_an_exact_model_predicts(prediction_type, scheduler):
    # Whatever the model predicts and whatever prediction the scheduler takes (euler-a and edm may take another:
    # the pipeline converts), a model that knows the clean ab leads every sampler to it. fp32 rounding of x_t,
    # divided by sqrt(alpha_bar) >= 0.006 at the noisiest step, stays under 1e-4 of the last steps' estimate.
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    clean = torch.linspace(-1.5, 1.5, 2 * 16 * 16).view(1, 2, 16, 16)  # scaled ab inside [-2, 2]: no clipping
    pipeline = _oracle(make_sampler(scheduler, ddpm.config), prediction_type, clean)
    ab = pipeline.sample_ab(torch.zeros(2, 1, 16, 16), 8, [torch.Generator().manual_seed(s) for s in (0, 1)])
    expected = clean.expand(2, -1, -1, -1)
    if scheduler == "ddim":  # it ends a step short, at the first training timestep, with its start's noise left
        start = torch.cat([torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
        first, last = pipeline.scheduler.alphas_cumprod[0], pipeline.scheduler.alphas_cumprod[-1]
        noise = (start - last.sqrt() * clean) / (1 - last).sqrt()
        expected = first.sqrt() * clean + (1 - first).sqrt() * noise
    torch.testing.assert_close(ab, expected / 2.0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("scheduler", sorted(SAMPLERS))
def test_every_sampler_clips_the_clean_estimate_to_the_data_range(prediction_type, scheduler):
    # A UNet that predicts a huge clean ab (in the terms of its prediction type): every sampler must land on
    # the edge of the data range, not beyond it, and in the same place.
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    sampler = make_sampler(scheduler, ddpm.config)
    pipeline = _oracle(sampler, prediction_type, torch.full((1, 2, 16, 16), 50.0))
    seen = []
    step = pipeline.scheduler.step

    def recording_step(prediction, timestep, sample, **kwargs):
        output = step(prediction, timestep, sample, **kwargs)
        if getattr(output, "pred_original_sample", None) is not None:
            seen.append(output.pred_original_sample)
        return output

    pipeline.scheduler.step = recording_step
    ab = pipeline.sample_ab(torch.zeros(1, 1, 16, 16), 10, [torch.Generator().manual_seed(0)])
    assert float((ab - 1.0).abs().max()) < 0.02  # normalized ab at the edge of [-1, 1] (DDIM ends a step short)
    assert all(float(x0.max()) <= 2.0 + 1e-3 for x0 in seen)  # never beyond ab_scale


def test_samplers_that_cannot_take_the_models_prediction_get_one_they_take_and_remember_the_models():
    # diffusers' ancestral Euler has no clean-ab prediction; edm is handed only the clean ab (so that the estimate
    # it steps with after its churn is the clipped one). Switching samplers again starts from the model's own.
    sample = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample").config
    euler = make_sampler("euler-a", sample)
    assert euler.config.prediction_type == "epsilon" and model_prediction_type(euler.config) == "sample"
    assert make_sampler("ddpm", euler.config).config.prediction_type == "sample"
    edm = make_sampler("edm", DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction").config)
    assert edm.config.prediction_type == "sample" and model_prediction_type(edm.config) == "v_prediction"
    assert make_sampler("euler-a", edm.config).config.prediction_type == "v_prediction"
    assert sampler_name(edm) == "edm" and sampler_name(euler) == "euler-a"


def test_a_sampler_is_the_same_built_in_memory_and_after_loading(tmp_path):
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False)
    LabColorizationPipeline(_unet(), ddpm).save_pretrained(tmp_path)
    loaded = LabColorizationPipeline.from_pretrained(tmp_path).scheduler
    for name in SAMPLERS:
        in_memory, reloaded = make_sampler(name, ddpm.config), make_sampler(name, loaded.config)
        in_memory.set_timesteps(20)
        reloaded.set_timesteps(20)
        assert torch.equal(in_memory.timesteps, reloaded.timesteps), name
        assert {k: v for k, v in in_memory.config.items() if not k.startswith("_")} == {
            k: v for k, v in reloaded.config.items() if not k.startswith("_")
        }, name


def test_diffusion_run_writes_safetensors_ema_checkpoints_logs_and_a_pipeline(diffusion_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, _ = diffusion_run
    checkpoint = output / "checkpoints" / "checkpoint_12"
    assert not list(checkpoint.glob("custom_checkpoint_*")) and [p.name for p in checkpoint.glob("*.pkl")] == [
        "random_states_0.pkl"
    ]
    ema = load_file(checkpoint / "task_state.safetensors")
    state = json.loads((checkpoint / "task_state.json").read_text())
    assert state["ema"]["optimization_step"] == 12 and len(ema) > 0
    events = EventAccumulator(str(output / "logs" / "diffusion"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/ema_decay", "validation/psnr", "validation/ssim"} <= scalars
    assert any(tag.startswith("train/loss_t0-") for tag in scalars) and any("loss_t750" in t for t in scalars)
    pipeline = LabColorizationPipeline.from_pretrained(output)
    assert isinstance(pipeline.unet, LabConditionedUNet)
    # the export holds the EMA weights: the checkpoint's EMA, not its trained weights
    exported = load_file(output / "unet" / "diffusion_pytorch_model.safetensors")
    trained = load_file(checkpoint / "model.safetensors")
    parameters = [name for name, _ in pipeline.unet.named_parameters()]
    name = parameters[0]
    assert not torch.equal(exported[name], trained[name])
    torch.testing.assert_close(exported[name], ema["ema.0"])
    colorizer = load_colorizer(str(output), device="cpu", scheduler="dpm", num_inference_steps=5, seed=0)
    assert colorizer.model_type == "diffusion" and colorizer.colorize(Image.new("L", (19, 11), 128)).size == (19, 11)
    assert json.loads((output / "colorizer.json").read_text())["sampling"] == {
        "scheduler": "dpm",
        "num_inference_steps": 3,
    }


def test_diffusion_resume_is_exact(tmp_path):
    # noise and timesteps come from the random state, so this checks that it is restored, and the EMA too
    args = (
        TINY_DATA
        + TINY_DIFFUSION
        + [
            "--output_dir",
            tmp_path,
            "--max_train_steps",
            "6",
            "--checkpointing_steps",
            "3",
            "--validation_steps",
            "6",
            "--checkpoints_total_limit",
            "none",
            "--no-initial_validation",
        ]
    )
    train_in_process(DiffusionTask, args)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    uninterrupted = load_file(weights)
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint_6")
    weights.unlink()
    train_in_process(DiffusionTask, args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(uninterrupted, load_file(weights))


def test_diffusion_beats_the_gray_baseline_on_the_embedded_data(tmp_path):
    # Predicting the clean ab (sample) learns in a CPU-sized budget; seen: 16.2 dB against 14.1 dB for gray
    # after 200 steps, sampled with DPM-Solver (20 steps, EMA weights).
    metrics = train_in_process(
        DiffusionTask,
        [
            *TINY_DATA,
            "--unet_preset",
            "small",
            "--prediction_type",
            "sample",
            "--train_batch_size",
            "16",
            "--learning_rate",
            "1e-3",
            "--lr_warmup_steps",
            "20",
            "--max_train_steps",
            "200",
            "--validation_steps",
            "200",
            "--output_dir",
            tmp_path,
            "--report_to",
            "none",
            "--no-initial_validation",
        ],
    )
    assert metrics["psnr"] > metrics["psnr_gray"] + 1.0, metrics


def test_two_processes_with_one_image_each_log_the_quartiles_without_hanging(tmp_path):
    # With one image per process, a timestep quartile is often present on one process and not the other:
    # the logger must still reduce the same values everywhere (it once could wait forever here).
    accelerate_launch(
        "train_diffusion.py",
        TINY_DATA
        + TINY_DIFFUSION
        + [
            "--train_batch_size",
            "1",
            "--max_train_steps",
            "6",
            "--logging_steps",
            "3",
            "--validation_steps",
            "6",
            "--no-initial_validation",
            "--output_dir",
            tmp_path,
        ],
        num_processes=2,
        timeout=300,
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "diffusion"))
    events.Reload()
    quartiles = [t for t in events.Tags()["scalars"] if t.startswith("train/loss_t")]
    assert quartiles and all(e.value > 0 for t in quartiles for e in events.Scalars(t))  # absent ones are not 0


def test_colorizer_from_parts_is_what_loading_an_export_gives(diffusion_run):
    output, _ = diffusion_run
    loaded = load_colorizer(str(output), device="cpu", scheduler="dpm", num_inference_steps=4)
    pipeline = LabColorizationPipeline.from_pretrained(output)
    built = colorizer_from_parts(pipeline.unet, pipeline.scheduler.config, 32, "dpm", 4)
    lightness = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.equal(loaded.predict_ab(lightness, [1, 2, 3]), built.predict_ab(lightness, [1, 2, 3]))
    # each image's colors depend on its own seed only, not on its batch (up to the rounding of 4 passes through
    # the network, which depends on the batch size)
    alone = loaded.predict_ab(lightness[1:2], [2])
    tolerance = fp32_tolerance(loaded.network, passes=4, scale=float(alone.abs().max()))
    torch.testing.assert_close(alone, loaded.predict_ab(lightness, [1, 2, 3])[1:2], rtol=0, atol=tolerance)


# ----- the refining model and classifier-free guidance -----


def _regressor(tmp_path, resolution=16):
    """A one-pass export (a CNN with random weights) and its colorizer."""
    from colorization.colorizer import save_export_config, save_module_weights
    from colorization.models.cnn import ResNetColorizer

    torch.manual_seed(1)
    save_module_weights(str(tmp_path / "cnn"), ResNetColorizer(), "cnn")
    save_export_config(str(tmp_path / "cnn"), "cnn", {}, resolution)
    return load_colorizer(str(tmp_path / "cnn"), "cpu")


def _refining(tmp_path, guidance_trained=True, **sampling):
    torch.manual_seed(0)
    unet = LabConditionedUNet(**TINY_UNET, ab_scale=2.0, regressor_channels=2).eval()
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False)
    return colorizer_from_parts(
        unet, ddpm.config, 16, "dpm", 3, 0, _regressor(tmp_path), guidance_trained=guidance_trained, **sampling
    )


def test_a_zero_residual_reproduces_the_regressor_exactly(tmp_path):
    from types import SimpleNamespace

    colorizer = _refining(tmp_path)
    colorizer.pipeline.scheduler.step = lambda prediction, t, sample, **kwargs: SimpleNamespace(
        prev_sample=torch.zeros_like(sample)
    )
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(colorizer.colorize(photo)), np.asarray(colorizer.regressor.colorize(photo)))


def test_guidance_1_is_the_unguided_sampler_and_w_runs_the_unconditional_model(tmp_path):
    lightness = torch.rand(2, 1, 16, 16) * 2 - 1
    outputs, calls = {}, {}
    for scale in (1.0, 2.0):
        colorizer = _refining(tmp_path, guidance_scale=scale)
        forward, seen = colorizer.pipeline.unet.forward, []

        def counting(noisy, t, lightness, regressor_ab=None, forward=forward, seen=seen):
            seen.append(float(lightness.abs().sum()))
            return forward(noisy, t, lightness, regressor_ab)

        colorizer.pipeline.unet.forward = counting
        outputs[scale], calls[scale] = colorizer.predict_ab(lightness, [5, 6]), seen
    plain = _refining(tmp_path).predict_ab(lightness, [5, 6])  # constructed without any guidance argument
    assert torch.equal(outputs[1.0], plain) and len(calls[1.0]) == 3  # bit for bit; one UNet pass per step
    assert len(calls[2.0]) == 6 and calls[2.0][1] == 0.0  # each step also the unconditional pass (zeros)
    assert not torch.equal(outputs[2.0], plain)
    with pytest.raises(ColorizationError, match="--condition_dropout"):
        _refining(tmp_path, guidance_trained=False, guidance_scale=2.0)


def test_condition_dropout_zeroes_both_conditions_of_the_same_images_at_its_rate():
    task = DiffusionTask(DiffusionConfig(condition_dropout=0.25), 32)
    torch.manual_seed(0)
    lightness, regressor_ab = torch.ones(4000, 1, 2, 2), torch.ones(4000, 2, 2, 2)
    kept_lightness, kept_regressor = task.drop_conditions(lightness, regressor_ab)
    dropped = kept_lightness.flatten(1).sum(1) == 0
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.equal(dropped, kept_regressor.flatten(1).sum(1) == 0)
    assert torch.equal(
        DiffusionTask(DiffusionConfig(condition_dropout=0.0), 32).drop_conditions(lightness, None)[0], lightness
    )


def test_a_refining_model_of_a_gan_trains_and_its_export_stands_alone(refine_run):
    # refine_run trained on a copy of the GAN's export and deleted the copy
    exported = json.loads((refine_run / "colorizer.json").read_text())
    assert exported["refines"]["model_type"] == "gan" and exported["condition_dropout"] == 0.1
    colorizer = load_colorizer(str(refine_run), "cpu", num_inference_steps=2, guidance_scale=1.5)
    assert colorizer.regressor.model_type == "gan" and colorizer.describe_sampling().endswith("guidance 1.5")
    assert colorizer.colorize(Image.new("RGB", (20, 12), (90, 120, 150))).size == (20, 12)


# ----- inference precision and torch.compile -----


@pytest.mark.parametrize("scheduler", ["ddpm", "edm"])
def test_bf16_runs_only_the_unets_forward_in_bf16_and_the_sampler_in_fp32(scheduler):
    # precision "bf16" must be exactly the fp32 sampler around a UNet whose forward alone runs in bf16 autocast:
    # the step, its noise, the clipping and the guidance combination all see fp32, outside autocast.
    pipeline = _pipeline(scheduler, prediction_type="sample", ab_scale=2.0)
    lightness = torch.rand(2, 1, 16, 16) * 2 - 1
    generators = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    step, seen = pipeline.scheduler.step, []

    def recording_step(prediction, timestep, sample, **kwargs):
        seen.append((prediction.dtype, sample.dtype, torch.is_autocast_enabled("cpu")))
        return step(prediction, timestep, sample, **kwargs)

    pipeline.scheduler.step = recording_step
    bf16 = pipeline.sample_ab(lightness, 4, generators(), guidance_scale=2.0, precision="bf16")
    assert seen and set(seen) == {(torch.float32, torch.float32, False)}

    def unet_in_bf16(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = pipeline.unet(*args)
        assert output.dtype == torch.bfloat16  # the forward did run in bf16
        return output.float()

    by_hand = pipeline.sample_ab(lightness, 4, generators(), guidance_scale=2.0, network=unet_in_bf16)
    assert torch.equal(bf16, by_hand)
    assert not torch.equal(bf16, pipeline.sample_ab(lightness, 4, generators(), guidance_scale=2.0))  # fp32 differs


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_fast(monkeypatch):
    from colorization import colorizer

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for flags, fast in (({"avx512f", "amx_bf16", "amx_tile"}, True), ({"avx512f", "avx512_bf16"}, True)):
        monkeypatch.setattr(colorizer, "_cpu_flags", lambda flags=flags: flags)
        assert colorizer.fast_bf16("cpu") is fast and colorizer.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(colorizer, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN told to stay below its bf16 kernels
    assert colorizer.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert colorizer.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(colorizer, "_cpu_flags", lambda: {"avx2", "avx512f"})  # AVX-512 without bf16
    assert colorizer.resolve_precision("auto", "cpu") == "fp32"
    assert colorizer.resolve_precision("bf16", "cpu") == "bf16" and colorizer.resolve_precision("fp32", "cpu") == "fp32"
    assert colorizer.resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(ColorizationError, match="unknown precision"):
        colorizer.resolve_precision("fp16", "cpu")


def test_a_compiled_unet_sees_one_batch_shape_and_each_image_keeps_its_colors(monkeypatch):
    # torch.compile with dynamo's eager backend (inductor takes half a minute here; benchmark_sampling.py measures
    # it). Its shapes are static: after the first batch, every batch must be cut into chunks of that size, the
    # last one padded, or dynamo would compile a second graph.
    from torch._dynamo.utils import counters

    compile_, requested = torch.compile, []

    def eager_compile(module, **options):
        requested.append(options)
        return compile_(module, backend="eager", dynamic=options["dynamic"])

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    counters.clear()
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False)
    build = lambda compile: colorizer_from_parts(_unet(2.0), ddpm.config, 16, "ddpm", 4, compile=compile)  # noqa: E731
    fast, plain = build(True), build(False)
    lightness = torch.rand(5, 1, 16, 16) * 2 - 1
    first = fast.predict_ab(lightness[:3], [1, 2, 3])
    rest = fast.predict_ab(lightness, [1, 2, 3, 4, 5])  # 3 + 2 images (padded to 3)
    assert requested == [{"dynamic": False, "options": {"freezing": True}}]
    assert counters["stats"]["unique_graphs"] == 1
    assert fast.describe_precision().endswith("torch.compile")
    torch.testing.assert_close(rest[:3], first, rtol=0, atol=0)
    # the same colors as without compile, up to the fp32 rounding that a batch's size changes (as above)
    torch.testing.assert_close(rest, plain.predict_ab(lightness, [1, 2, 3, 4, 5]), rtol=0, atol=2e-4)
    torch._dynamo.reset()


def test_the_onnx_backend_refuses_bf16_and_compile_in_one_line(tmp_path):
    for options, message in (({"precision": "bf16"}, "use --precision fp32"), ({"compile": True}, "drop --compile")):
        with pytest.raises(ColorizationError, match=message):
            load_onnx_colorizer(str(tmp_path), {}, **options)


def test_precision_flags_give_a_row_each_and_the_note_says_what_ran(diffusion_run, tmp_path):
    from colorization.config import parse_precisions
    from colorization.evaluation import EvaluationConfig, evaluate

    assert parse_precisions("fp32,Refiner=bf16", ["Plain", "Refiner"]) == {"Plain": ["fp32"], "Refiner": ["bf16"]}
    assert parse_precisions("auto", ["A"]) == {"A": ["auto"]}
    options = dict(metrics="psnr,colorfulness", batch_size=4, max_images=4, grid_images=2, num_inference_steps=2)
    options.update(keep_selection_images=True, output_dir=str(tmp_path / "both"), precision="fp32,bf16")
    data = DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)
    both = evaluate([str(diffusion_run[0])], ["D"], EvaluationConfig(**options), data)
    assert list(both["summary"])[:2] == ["D (DPM-2, fp32)", "D (DPM-2, bf16)"]
    assert both["settings"]["rows"]["D (DPM-2, bf16)"]["precision"] == "bf16"
    assert both["settings"]["sampling"]["D (DPM-2, bf16)"] == "DPM-2, UNet in bf16 autocast, seed per image"
    assert both["settings"]["sampling"]["D (DPM-2, fp32)"] == "DPM-2, fp32, seed per image"
    options.update(output_dir=str(tmp_path / "fp32"), precision="D=fp32")
    alone = evaluate([str(diffusion_run[0])], ["D"], EvaluationConfig(**options), data)
    assert list(alone["summary"])[0] == "D"  # one precision: the model's plain name
    np.testing.assert_array_equal(alone["values"]["D"]["psnr"], both["values"]["D (DPM-2, fp32)"]["psnr"])
