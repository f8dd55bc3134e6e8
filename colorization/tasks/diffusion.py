"""The diffusion model's training half: the denoising loss on diffusers' DDPM schedule, EMA, and export.

The diffused variable is the normalized ab times ``ab_scale``: normalized ab is far from the unit variance
the noise has (its standard deviation is about 0.25 on the embedded scenes and 0.09 on AFHQ cats), so by
default the scale is 1 / that standard deviation over the training images (like latent diffusion's scaling
factor), measured once per run, kept in the checkpoints and stored in the model's config.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch.utils.data import DataLoader, Subset

from colorization import color
from colorization.colorizer import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Colorizer,
    read_export_config,
    save_export_config,
)
from colorization.config import (
    decay,
    existing_folder,
    field,
    fraction,
    index_list,
    parse_ints,
    positive_float,
    positive_int,
    positive_int_list,
)
from colorization.data import batch_to_rgb, collate
from colorization.errors import ColorizationError
from colorization.models.diffusion import (
    DEFAULT_SAMPLER,
    NUM_TRAIN_TIMESTEPS,
    PRESETS,
    REGRESSOR_DIR,
    SAMPLERS,
    LabColorizationPipeline,
    LabConditionedUNet,
    build_unet,
    colorizer_from_parts,
)
from colorization.training import TrainConfig, TrainingTask, make_optimizer

REGRESSOR_TYPES = ("cnn", "gan")  # what a diffusion model can refine: the one-pass families
REFINE_STATISTICS_IMAGES = 512  # training images the residual's scale is measured on


@dataclass
class DiffusionConfig:
    unet_preset: str = field(
        "base",
        "UNet size: small (~3M parameters, for 64x64 CPU runs) or base (~71M, for 256x256).",
        choices=tuple(PRESETS),
    )
    block_out_channels: Optional[str] = field(
        None, "Override the preset's widths, e.g. 32,64,64,128.", type=positive_int_list
    )
    layers_per_block: Optional[int] = field(None, "Override the preset's ResNet layers per level.", type=positive_int)
    attention_levels: Optional[str] = field(
        None, "Override the preset's attention levels (indices, e.g. 2,3; empty string: none).", type=index_list
    )
    prediction_type: str = field(
        "epsilon",
        "What the UNet predicts: the noise, v, or the clean ab (sample).",
        choices=("epsilon", "v_prediction", "sample"),
    )
    beta_schedule: str = field(
        "linear",
        "Noise schedule of DDPMScheduler (1000 steps).",
        choices=("linear", "scaled_linear", "squaredcos_cap_v2"),
    )
    zero_terminal_snr: bool = field(
        False,
        "Rescale the betas so that the last timestep is pure noise (Lin et al. "
        "2024), as samplers starting from pure noise assume; needs v or sample "
        "prediction.",
    )
    snr_gamma: Optional[float] = field(
        None,
        "Min-SNR loss weighting (Hang et al. 2023) with this gamma, e.g. 5; none: uniform weights.",
        type=positive_float,
    )
    use_ema: bool = field(True, "Keep an EMA of the weights (diffusers' EMAModel) for validation and export.")
    ema_max_decay: float = field(0.9999, "Largest EMA decay.", type=decay)
    ema_power: float = field(
        2 / 3,
        "EMA warm-up: the decay at step t is 1 - (1 + t) ** -power (smaller: a shorter memory early in training).",
        type=positive_float,
    )
    ab_scale: Optional[float] = field(
        None,
        "The UNet diffuses ab x this factor, so the data has about unit "
        "variance like the noise; none: 1 / std of the training images' "
        "normalized ab (measured once per run, stored in the model).",
        type=positive_float,
    )
    refine_model: Optional[str] = field(
        None,
        "Refine this one-pass model (an exported CNN or GAN folder): the UNet also sees its ab and diffuses the "
        "residual; the export carries the regressor, so nothing else is needed to load it. none: plain diffusion.",
        type=existing_folder,
    )
    condition_dropout: float = field(
        0.1,
        "Probability that a training image's conditioning (L, and the regressor's ab) is replaced by zeros: it "
        "trains the unconditional model that classifier-free guidance (--guidance_scale at sampling) needs.",
        type=fraction,
    )
    validation_sampler: str = field(
        DEFAULT_SAMPLER[0], "Sampler of validation (and evaluate.py's default for this model).", choices=tuple(SAMPLERS)
    )
    validation_inference_steps: int = field(
        DEFAULT_SAMPLER[1],
        "Sampling steps of validation (and evaluate.py's default for this model).",
        type=positive_int,
    )


class DiffusionTask(TrainingTask):
    model_type = "diffusion"
    config_class = DiffusionConfig
    flag_defaults = {"learning_rate": 1e-4, "lr_warmup_steps": 500}
    exported_model_name = "unet"
    exported_files = TrainingTask.exported_files + ("unet", "scheduler", "model_index.json", REGRESSOR_DIR)

    @classmethod
    def check_flags(cls, config: DiffusionConfig):
        if config.zero_terminal_snr and config.prediction_type == "epsilon":
            # at the last timestep alpha_bar is 0: the clean ab cannot be recovered from a noise prediction
            return (
                "--zero_terminal_snr needs --prediction_type v_prediction or sample (with epsilon prediction the "
                "last timestep is pure noise and sampling divides by zero)"
            )
        if config.refine_model is not None:
            try:
                refined = read_export_config(config.refine_model)
            except ColorizationError as error:
                return f"--refine_model: {error}"
            if refined.get("model_type") not in REGRESSOR_TYPES:
                return (
                    f"--refine_model {config.refine_model} is a {refined.get('model_type')} model; a diffusion "
                    f"model refines a one-pass model ({' or '.join(REGRESSOR_TYPES)})"
                )
        return None

    def __init__(self, config: DiffusionConfig, resolution: int):
        super().__init__(config, resolution)
        self.ema: Optional[EMAModel] = None
        self._regressor: Optional[Colorizer] = None

    @property
    def regressor(self) -> Optional[Colorizer]:
        """The frozen one-pass model a refining model samples the residual of (loaded once), or None."""
        if self.config.refine_model is not None and self._regressor is None:
            from colorization.inference import load_colorizer

            self._regressor = load_colorizer(self.config.refine_model, self.accelerator.device)
            self._regressor.network.requires_grad_(False)
        return self._regressor

    def measure_data(self, train_set, num_workers: int) -> dict:
        """A refining model: the standard deviation of the normalized residual ab (truth - regressor) over up to
        REFINE_STATISTICS_IMAGES training images, for the residual's scale (measured once per run, stored)."""
        if self.regressor is None:
            return {}
        loader = DataLoader(
            Subset(train_set, range(min(REFINE_STATISTICS_IMAGES, len(train_set)))), batch_size=64, collate_fn=collate
        )
        total = total_sq = count = 0.0
        for batch in loader:
            lightness, ab = color.rgb_to_normalized_lab(batch_to_rgb(batch, self.accelerator.device))
            residual = (ab - self.regressor.colorize_lightness(lightness)).double()
            total, total_sq, count = total + residual.sum(), total_sq + residual.pow(2).sum(), count + residual.numel()
        mean = total / count
        return {"residual_std": (total_sq / count - mean**2).clamp_min(0).sqrt().float().cpu()}

    def _unet(self, ab_scale: float = 1.0, regressor_channels: int = 0) -> LabConditionedUNet:
        config = self.config
        return build_unet(
            self.resolution,
            config.unet_preset,
            parse_ints(config.block_out_channels),
            config.layers_per_block,
            parse_ints(config.attention_levels),
            ab_scale,
            regressor_channels,
        )

    def check_resolution(self, resolution: int) -> None:
        self._unet()  # raises for a resolution the UNet cannot halve enough

    def build(self, train_config: TrainConfig, statistics: dict) -> None:
        config = self.config
        spread = float(statistics["residual_std"] if self.regressor is not None else statistics["ab_std"])
        self.ab_scale = (
            config.ab_scale if config.ab_scale is not None else round(1.0 / max(spread, 0.02), 3)
        )  # gray data: <= x50
        unet = self._unet(self.ab_scale, 2 if self.regressor is not None else 0)
        self.models = {"unet": unet}
        self.optimizers = {"unet": make_optimizer(unet.parameters(), train_config)}
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            clip_sample=False,
            rescale_betas_zero_snr=config.zero_terminal_snr,
        )
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(
                unet.parameters(),
                decay=config.ema_max_decay,
                use_ema_warmup=True,
                power=config.ema_power,
                foreach=True,
                model_cls=LabConditionedUNet,
                model_config=unet.config,
            )
            self.ema.to(self.accelerator.device)

    def state_dict(self) -> dict:
        if self.ema is None:
            return {}
        state = self.ema.state_dict()
        shadow = state.pop("shadow_params")
        return {"ema": state, "tensors": {f"ema.{i}": tensor for i, tensor in enumerate(shadow)}}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is None:
            return
        tensors = state["tensors"]
        shadow = [tensors[f"ema.{i}"] for i in range(len(tensors))]
        self.ema.load_state_dict({**state["ema"], "shadow_params": shadow})

    def drop_conditions(self, lightness: torch.Tensor, regressor_ab: Optional[torch.Tensor]):
        """Each image's conditioning replaced by zeros with probability --condition_dropout (the unconditional
        model of classifier-free guidance) -> (lightness, regressor_ab) as the UNet sees them."""
        if self.config.condition_dropout <= 0:
            return lightness, regressor_ab
        keep = torch.rand(lightness.shape[0], device=lightness.device) >= self.config.condition_dropout
        keep = keep.to(lightness.dtype).view(-1, 1, 1, 1)
        return lightness * keep, None if regressor_ab is None else regressor_ab * keep

    def training_target(self, ab: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "sample":
            return ab
        return self.noise_scheduler.get_velocity(ab, noise, timesteps)

    def loss_weights(self, timesteps: torch.Tensor) -> Optional[torch.Tensor]:
        """Min-SNR-gamma weights per image (as in diffusers' training examples), or None for uniform."""
        gamma = self.config.snr_gamma
        if gamma is None:
            return None
        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=gamma)
        kind = self.config.prediction_type
        if kind == "epsilon":
            weights = weights / snr
        elif kind == "v_prediction":
            weights = weights / (snr + 1)
        return torch.where(snr == 0, torch.ones_like(weights), weights)  # zero terminal SNR: weight 1 there

    def training_step(self, trainer, lightness, ab):
        regressor_ab = None
        if self.regressor is not None:  # frozen, at its own resolution, in fp32
            regressor_ab = self.regressor.colorize_lightness(lightness).to(ab.dtype)
            ab = ab - regressor_ab  # a refining model diffuses the residual
        ab = ab * self.ab_scale  # the diffused variable (unit variance, like the noise)
        noise = torch.randn_like(ab)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (ab.shape[0],), device=ab.device)
        noisy_ab = self.noise_scheduler.add_noise(ab, noise, timesteps)
        lightness, regressor_ab = self.drop_conditions(lightness, regressor_ab)
        prediction = self.models["unet"](noisy_ab, timesteps, lightness, regressor_ab)
        per_image = F.mse_loss(
            prediction.float(), self.training_target(ab, noise, timesteps).float(), reduction="none"
        ).mean(dim=(1, 2, 3))
        weights = self.loss_weights(timesteps)
        loss = per_image.mean() if weights is None else (per_image * weights).mean()
        trainer.optimize("unet", loss)
        logs = {"loss": loss.detach()}
        quartile = timesteps * 4 // NUM_TRAIN_TIMESTEPS
        for q in range(4):
            # A masked mean, not per_image[quartile == q] (whose size depends on the data: a host sync on a GPU at
            # every step); over no image it is 0 / 0 = NaN: "absent this step" for the logger.
            in_quartile = (quartile == q).to(per_image.dtype)
            logs[f"loss_t{q * 250}-{q * 250 + 249}"] = ((per_image * in_quartile).sum() / in_quartile.sum()).detach()
        if self.ema is not None:
            logs["ema_decay"] = torch.tensor(self.ema.cur_decay_value or 0.0)
        return logs

    def after_optimizer_step(self, name: str) -> None:
        if self.ema is not None:
            self.ema.step(self.unwrapped("unet").parameters())

    @contextlib.contextmanager
    def evaluation_weights(self):
        """Validate and export with the EMA weights, then put the trained weights back."""
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

    def colorizer(self) -> Colorizer:
        config = self.config
        return colorizer_from_parts(
            self.unwrapped("unet"),
            self.noise_scheduler.config,
            self.resolution,
            config.validation_sampler,
            config.validation_inference_steps,
            regressor=self.regressor,
            guidance_trained=config.condition_dropout > 0,
            precision="auto",  # as evaluate.py samples by default
        )

    def validation_losses(self, lightness, ab, predicted_ab):
        return {"ab_mse": F.mse_loss(predicted_ab.float(), ab, reduction="none").mean(dim=(1, 2, 3))}

    def export(self, output_dir: str, extra: dict) -> None:
        """A diffusers pipeline folder (the UNet, as evaluation_weights gives it, and the training schedule)."""
        LabColorizationPipeline(self.unwrapped("unet"), self.noise_scheduler).save_pretrained(
            output_dir, safe_serialization=True
        )
        sampling = {
            "scheduler": self.config.validation_sampler,
            "num_inference_steps": self.config.validation_inference_steps,
        }
        extra = {**extra, "sampling": sampling, "condition_dropout": self.config.condition_dropout}
        if self.regressor is not None:  # self-contained: the regressor's export travels inside this one
            extra["refines"] = copy_regressor(self.config.refine_model, os.path.join(output_dir, REGRESSOR_DIR))
            extra["training"] = with_regressor_costs(extra["training"], os.path.join(output_dir, REGRESSOR_DIR))
        save_export_config(output_dir, self.model_type, {}, self.resolution, extra)


def with_regressor_costs(training: dict, regressor: str) -> dict:
    """A refining model's training record with its regressor's training counted in (images seen and time; the
    refining run's own numbers are kept under "own"): the model is not had without both."""
    before = read_export_config(regressor).get("training", {})
    summed = {
        key: training[key] + before[key]
        for key in ("images_seen", "train_seconds", "wall_seconds")
        if isinstance(training.get(key), (int, float)) and isinstance(before.get(key), (int, float))
    }
    own = {key: training[key] for key in summed}
    return {**training, **summed, "own": own, "regressor_step": before.get("global_step")}


def copy_regressor(source: str, target: str) -> dict:
    """Copy a one-pass model's export files (not its checkpoints or logs) -> what was refined (type, folder name,
    SHA-256 of its config and weights)."""
    os.makedirs(target, exist_ok=True)
    digest = hashlib.sha256()
    for name in TrainingTask.exported_files:  # what a one-pass export writes
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
            if name in (CONFIG_NAME, WEIGHTS_NAME):
                with open(os.path.join(source, name), "rb") as handle:
                    digest.update(handle.read())
    config = read_export_config(target)
    return {
        "model_type": config["model_type"],
        "source": os.path.basename(os.path.normpath(source)),
        "sha256": digest.hexdigest(),
    }
