"""The diffusion model: a Lab-conditioned UNet driven by diffusers' schedulers.

The denoiser sees the noisy normalized ab (2 channels) concatenated with the clean normalized L (1
channel) and the timestep, and predicts the noise (or v). diffusers does the schedule, the forward
process (``add_noise``), the sampling steps and the EMA of the weights; nothing here re-derives them.
Sampling starts from noise ab and denoises conditioned on L at every step; the result is joined with L.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers import (ConfigMixin, DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       ModelMixin, UNet2DModel)
from diffusers.configuration_utils import register_to_config
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import randn_tensor

from colorization import color
from colorization.config import field
from colorization.errors import ColorizationError
from colorization.inference import Colorizer, save_export_config
from colorization.models.cnn import make_adam
from colorization.training import TrainConfig, TrainingTask

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
# widths, layers per block, indices of the levels with self-attention
PRESETS = {
    "small": ((32, 64, 64, 128), 1, ()),                  # ~3M parameters: 64x64 on a CPU
    "base": ((64, 128, 256, 256, 512), 2, (4,)),          # ~71M: 256x256 on a GPU, attention at 16x16
}


def _parse_ints(text: Optional[str]) -> Optional[tuple]:
    if text is None:
        return None
    return tuple(int(part) for part in text.split(",") if part.strip() != "")


@dataclass
class DiffusionConfig:
    unet_preset: str = field("base", "UNet size: small (~3M parameters, for 64x64 CPU runs) or base (~71M, for "
                                     "256x256).", choices=tuple(PRESETS))
    block_out_channels: Optional[str] = field(None, "Override the preset's widths, e.g. 32,64,64,128.")
    layers_per_block: Optional[int] = field(None, "Override the preset's ResNet layers per level.")
    attention_levels: Optional[str] = field(None, "Override the preset's attention levels (indices, e.g. 2,3; "
                                                  "empty string: none).")
    prediction_type: str = field("epsilon", "What the UNet predicts: the noise, v, or the clean ab (sample).",
                                 choices=("epsilon", "v_prediction", "sample"))
    beta_schedule: str = field("linear", "Noise schedule of DDPMScheduler (1000 steps).",
                               choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    use_ema: bool = field(True, "Keep an EMA of the weights (diffusers' EMAModel) for validation and export.")
    ema_max_decay: float = field(0.9999, "Largest EMA decay (EMA warm-up ramps up to it).")
    ab_scale: Optional[float] = field(None, "The UNet diffuses ab x this factor, so the data has about unit "
                                            "variance like the noise; none: 1 / std of ab over the first 256 "
                                            "training images (stored in the model).")
    validation_scheduler: str = field("ddim", "Sampler for validation images.", choices=tuple(SCHEDULERS))
    validation_inference_steps: int = field(20, "Sampling steps for validation images.")


class LabConditionedUNet(ModelMixin, ConfigMixin):
    """(noisy normalized ab (N, 2, H, W), timestep, normalized L (N, 1, H, W)) -> noise or v (N, 2, H, W)."""

    @register_to_config
    def __init__(self, sample_size: int = 256, block_out_channels: Sequence[int] = PRESETS["base"][0],
                 layers_per_block: int = PRESETS["base"][1], attention_levels: Sequence[int] = PRESETS["base"][2],
                 ab_scale: float = 1.0):
        # ab_scale: the model works on x = normalized ab * ab_scale (see DiffusionConfig.ab_scale)
        super().__init__()
        levels = len(block_out_channels)
        if any(not 0 <= level < levels for level in attention_levels):
            raise ColorizationError(f"attention levels {tuple(attention_levels)} are outside 0..{levels - 1}")
        down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(levels)))
        self.unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=2,
                                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                down_block_types=down, up_block_types=up,
                                # 32 groups as usual, fewer where a width is not a multiple of 32
                                norm_num_groups=math.gcd(32, *block_out_channels))

    def forward(self, noisy_ab: torch.Tensor, timestep, lightness: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat((noisy_ab, lightness), dim=1), timestep).sample


def make_unet(config: DiffusionConfig, resolution: int, ab_scale: float = 1.0) -> LabConditionedUNet:
    widths, layers, attention = PRESETS[config.unet_preset]
    widths = _parse_ints(config.block_out_channels) or widths
    attention = _parse_ints(config.attention_levels) if config.attention_levels is not None else attention
    layers = config.layers_per_block or layers
    if resolution % 2 ** (len(widths) - 1):
        raise ColorizationError(f"--resolution {resolution} cannot be halved {len(widths) - 1} times by a UNet with "
                                f"{len(widths)} levels; use a multiple of {2 ** (len(widths) - 1)}")
    return LabConditionedUNet(resolution, widths, layers, attention, ab_scale)


def _step_kwargs(scheduler, generator) -> dict:
    """Pass the generator to schedulers whose step draws noise (DDPM, DDIM with eta > 0, SDE solvers)."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


class LabColorizationPipeline(DiffusionPipeline):
    """Colorize grayscale images: start from noise ab, denoise conditioned on L, join with L.

    Any compatible diffusers scheduler can be swapped in, e.g.
    ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``.
    """

    def __init__(self, unet: LabConditionedUNet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def sample_ab(self, lightness: torch.Tensor, num_inference_steps: int = 50,
                  generator: Union[torch.Generator, list, None] = None) -> torch.Tensor:
        """Normalized L (N, 1, H, W) at the UNet's resolution -> sampled normalized ab (N, 2, H, W).

        ``generator`` may be a list with one generator per image: each image's colors then depend on its
        own seed only, not on the batch it is sampled in."""
        unet = self.unet
        lightness = lightness.to(device=unet.device, dtype=unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=unet.device)
        sample = randn_tensor((lightness.shape[0], 2, *lightness.shape[-2:]), generator=generator,
                              device=unet.device, dtype=unet.dtype) * self.scheduler.init_noise_sigma
        extra = _step_kwargs(self.scheduler, generator)
        for timestep in self.progress_bar(self.scheduler.timesteps):
            prediction = unet(self.scheduler.scale_model_input(sample, timestep), timestep, lightness)
            sample = self.scheduler.step(prediction, timestep, sample, **extra).prev_sample
        return (sample.float() / unet.config.ab_scale).clamp(-1.0, 1.0)

    def __call__(self, images, num_inference_steps: int = 50, generator=None, batch_size: int = 8):
        """PIL image(s) -> colorized PIL image(s) of the same size (the input's own L, sampled ab)."""
        colorizer = DiffusionColorizer(self, self.unet.config.sample_size, num_inference_steps, generator)
        return colorizer.colorize(images, batch_size=batch_size)


class DiffusionColorizer(Colorizer):
    """The :class:`Colorizer` interface over a :class:`LabColorizationPipeline`."""

    def __init__(self, pipeline: LabColorizationPipeline, resolution: int, num_inference_steps: int = 50,
                 generator=None, seed: Optional[int] = None):
        super().__init__("diffusion", resolution, pipeline.unet.device)
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.generator = generator
        self.seed = seed

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.unet

    def describe_sampling(self) -> str:
        name = next((k for k, v in SCHEDULERS.items() if type(self.pipeline.scheduler) is v),
                    type(self.pipeline.scheduler).__name__)
        return f"{name.upper()}-{self.num_inference_steps}"

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        generator = self.generator
        if generator is None and self.seed is not None:
            generator = torch.Generator(self.device).manual_seed(self.seed)
        return self.pipeline.sample_ab(lightness, self.num_inference_steps, generator)


def load_diffusion_colorizer(path: str, config: dict, device: torch.device, scheduler: Optional[str] = None,
                             num_inference_steps: Optional[int] = None, seed: Optional[int] = 0) -> Colorizer:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in command-line tools
    try:
        pipeline = LabColorizationPipeline.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ColorizationError(f"cannot load the diffusion pipeline in {path!r}: {str(error).splitlines()[0]}") from None
    finally:
        diffusers_logging.enable_progress_bar()
    pipeline.set_progress_bar_config(disable=True)
    scheduler = scheduler or config.get("sampling", {}).get("scheduler", "ddim")
    if scheduler not in SCHEDULERS:
        raise ColorizationError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
    pipeline.scheduler = SCHEDULERS[scheduler].from_config(pipeline.scheduler.config)
    pipeline.to(device)
    steps = num_inference_steps or config.get("sampling", {}).get("num_inference_steps", 50)
    return DiffusionColorizer(pipeline, int(config["resolution"]), steps, seed=seed)


class DiffusionTask(TrainingTask):
    model_type = "diffusion"
    config_class = DiffusionConfig
    flag_defaults = {"learning_rate": 1e-4, "lr_warmup_steps": 500, "max_validation_samples": 16}

    def check_resolution(self, resolution: int) -> None:
        make_unet(self.config, resolution)  # raises for a resolution the UNet cannot halve enough

    def __init__(self, config: DiffusionConfig, resolution: int):
        super().__init__(config, resolution)
        self.ab_scale = config.ab_scale if config is not None and config.ab_scale is not None else 1.0

    def inspect_data(self, train_set) -> None:
        """Measure the ab scale on the training images (deterministic: the first 256, unflipped)."""
        if self.config.ab_scale is not None:
            self.ab_scale = self.config.ab_scale
            return
        rgb = torch.stack([train_set[i]["rgb"] for i in range(min(256, len(train_set)))])
        spread = float(color.rgb_to_normalized_lab(rgb)[1].std())
        self.ab_scale = round(1.0 / max(spread, 0.02), 3)  # gray data sets: at most x50

    def build(self, train_config: TrainConfig) -> None:
        config = self.config
        unet = make_unet(config, self.resolution, self.ab_scale)
        self.models = {"unet": unet}
        self.optimizers = {"unet": make_adam(unet.parameters(), train_config)}
        # Samplers clip their x0 estimate to the range of the scaled ab (normalized ab is within [-1, 1]).
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=config.beta_schedule,
                                             prediction_type=config.prediction_type, clip_sample=True,
                                             clip_sample_range=self.ab_scale)
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=True,
                                model_cls=LabConditionedUNet, model_config=unet.config)
            self.ema.to(self.accelerator.device)

    def checkpoint_objects(self) -> list:
        return [self.ema] if self.ema is not None else []

    def training_target(self, ab: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "sample":
            return ab
        return self.noise_scheduler.get_velocity(ab, noise, timesteps)

    def training_step(self, trainer, lightness, ab):
        ab = ab * self.ab_scale  # the diffused variable (unit variance, like the noise)
        noise = torch.randn_like(ab)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (ab.shape[0],), device=ab.device)
        noisy_ab = self.noise_scheduler.add_noise(ab, noise, timesteps)
        prediction = self.models["unet"](noisy_ab, timesteps, lightness)
        per_image = F.mse_loss(prediction.float(), self.training_target(ab, noise, timesteps).float(),
                               reduction="none").mean(dim=(1, 2, 3))
        loss = per_image.mean()
        trainer.optimize("unet", loss)
        if self.ema is not None and trainer.accelerator.sync_gradients:
            self.ema.step(self.unwrapped("unet").parameters())
        logs = {"loss": loss.detach()}
        quartile = timesteps * 4 // NUM_TRAIN_TIMESTEPS
        for q in range(4):  # the mean of no image is NaN: "absent this step" for the logger
            logs[f"loss_t{q * 250}-{q * 250 + 249}"] = per_image[quartile == q].mean().detach()
        if self.ema is not None:
            logs["ema_decay"] = torch.tensor(self.ema.cur_decay_value or 0.0)
        return logs

    @contextlib.contextmanager
    def evaluation_weights(self):
        """Validate with the EMA weights, then put the trained weights back."""
        if self.ema is None:
            yield
            return
        parameters = list(self.unwrapped("unet").parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)

    def _pipeline(self, scheduler_name: str) -> LabColorizationPipeline:
        scheduler = SCHEDULERS[scheduler_name].from_config(self.noise_scheduler.config)
        pipeline = LabColorizationPipeline(self.unwrapped("unet"), scheduler)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def predict_ab(self, lightness, generator):
        return self._pipeline(self.config.validation_scheduler).sample_ab(
            lightness, self.config.validation_inference_steps, generator)

    def validation_losses(self, lightness, ab, predicted_ab):
        return {"ab_mse": F.mse_loss(predicted_ab.float(), ab, reduction="none").mean(dim=(1, 2, 3))}

    def export(self, accelerator, output_dir: str, extra: dict) -> None:
        with self.evaluation_weights():
            self._pipeline("ddpm").save_pretrained(output_dir, safe_serialization=True)
        sampling = {"scheduler": self.config.validation_scheduler, "num_inference_steps": 50}
        save_export_config(output_dir, self.model_type, {}, self.resolution, {**extra, "sampling": sampling})
