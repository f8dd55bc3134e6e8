"""The diffusion model's inference half: a Lab-conditioned UNet, its pipeline, and its colorizer.

The denoiser sees the noisy ab (2 channels, normalized ab times ``ab_scale``) concatenated with the clean
normalized L (1 channel) and the timestep, and predicts the noise, v or the clean ab (its config's
``prediction_type`` lives in the scheduler). diffusers does the schedule and the sampling steps; sampling
starts from noise ab and denoises conditioned on L at every step; the result is joined with the input's L.

Every sampler is built by :func:`make_sampler` from the training schedule's config, with the same explicit
settings wherever it is built (validation in memory, or after loading an export), and every sampler clips
its estimate of the clean ab the same way (:meth:`LabColorizationPipeline.sample_ab`).

Precision: the UNet may run in bf16 autocast (``precision="bf16"``); the sampler's arithmetic (the step, the
noise, the clipping and the guidance combination) stays in fp32.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Sequence

import torch
from diffusers import (
    ConfigMixin,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    ModelMixin,
    UNet2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from colorization.colorizer import Colorizer, resolve_precision
from colorization.config import SAMPLER_NAMES
from colorization.errors import ColorizationError

NUM_TRAIN_TIMESTEPS = 1000
REGRESSOR_DIR = "regressor"  # a refining model's export holds its regressor's export here
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights that are never loaded
# dpm-sde is DPM-Solver++ (2M) on the SDE: the same multistep solver as dpm, plus fresh noise at every step. (On the
# cpu-small refining model it spread no more than dpm at 20 steps: docs/reproducing.md.)
# euler-a is ancestral Euler (k-diffusion's sample_euler_ancestral): an Euler step down to below the next noise level,
# then fresh noise back up to it. edm is Euler with the "churn" of Karras et al. 2022 (EDM, Algorithm 2): before each
# step the sample is noised up from sigma to sigma_hat = (1 + gamma) sigma, gamma = min(S_churn / N, sqrt(2) - 1)
# for sigma in [S_tmin, S_tmax] (EDM_CHURN: the paper's ImageNet-64 values; with N <= 25 steps gamma is the cap),
# then stepped from sigma_hat with the clean estimate made at sigma (diffusers' EulerDiscreteScheduler.step: the
# model is not run again at sigma_hat, so each step costs one UNet pass).
SAMPLERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "dpm-sde": DPMSolverMultistepScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "edm": EulerDiscreteScheduler,
}
assert set(SAMPLERS) == set(SAMPLER_NAMES), "the flags check sampler names against config.SAMPLER_NAMES"
# they draw noise at every step, from each image's own generator
STOCHASTIC_SAMPLERS = ("ddpm", "dpm-sde", "euler-a", "edm")
EDM_CHURN = {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 50.0}
# The prediction each scheduler is handed, where it cannot take the model's own (the pipeline converts the clipped
# clean estimate into it): diffusers' ancestral Euler has no clean-ab ("sample") prediction, and edm takes only the
# clean ab, so that the estimate it steps with after the churn is the clipped one, whatever the model predicts.
SCHEDULER_PREDICTIONS = {"euler-a": ("epsilon", "v_prediction"), "edm": ("sample",)}
MODEL_PREDICTION = "_model_prediction_type"  # a sampler's config: what the UNet predicts, when the sampler differs
DEFAULT_SAMPLER = ("dpm", 20)  # validation, evaluate.py and colorize, unless told otherwise
# DDIM and DPM-Solver start at the last training timestep ("trailing", Lin et al. 2024): with "leading" a
# 20-step sampler starts at t = 950 from pure noise, a noisier input than any the model saw at that step.
TIMESTEP_SPACING = "trailing"
# widths, layers per block, indices of the levels with self-attention
PRESETS = {
    "small": ((32, 64, 64, 128), 1, ()),  # ~3M parameters: 64x64 on a CPU
    "base": ((64, 128, 256, 256, 512), 2, (4,)),  # ~71M: 256x256 on a GPU, attention at 16x16
}


class LabConditionedUNet(ModelMixin, ConfigMixin):
    """(noisy ab (N, 2, H, W), timestep, normalized L (N, 1, H, W)[, a regressor's normalized ab (N, 2, H, W)])
    -> the prediction (N, 2, H, W).

    A refining model (``regressor_channels`` 2) diffuses the residual of a one-pass model's colors and sees them
    next to L. The conditioning channels all zero is the unconditional model (classifier-free guidance)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        block_out_channels: Sequence[int] = PRESETS["base"][0],
        layers_per_block: int = PRESETS["base"][1],
        attention_levels: Sequence[int] = PRESETS["base"][2],
        ab_scale: float = 1.0,
        regressor_channels: int = 0,
    ):
        # ab_scale: the model works on x = (normalized ab or its residual) * ab_scale, about unit variance like the
        # noise; regressor_channels: 2 for a refining model
        super().__init__()
        levels = len(block_out_channels)
        if any(not 0 <= level < levels for level in attention_levels):
            raise ColorizationError(f"attention levels {tuple(attention_levels)} are outside 0..{levels - 1}")
        down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(levels)))
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=3 + regressor_channels,
            out_channels=2,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            # 32 groups as usual, fewer where a width is not a multiple of 32
            norm_num_groups=math.gcd(32, *block_out_channels),
        )

    def forward(
        self, noisy_ab: torch.Tensor, timestep, lightness: torch.Tensor, regressor_ab: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        conditions = (lightness,) if regressor_ab is None else (lightness, regressor_ab)
        inputs = torch.cat((noisy_ab, *(c.to(noisy_ab.dtype) for c in conditions)), dim=1)
        return self.unet(inputs, timestep).sample


def build_unet(
    resolution: int,
    preset: str = "base",
    block_out_channels: Optional[Sequence[int]] = None,
    layers_per_block: Optional[int] = None,
    attention_levels: Optional[Sequence[int]] = None,
    ab_scale: float = 1.0,
    regressor_channels: int = 0,
) -> LabConditionedUNet:
    """A UNet of ``preset`` (or overridden widths, depth, attention) for ``resolution``; refuses what cannot work."""
    widths, layers, attention = PRESETS[preset]
    widths = tuple(block_out_channels or widths)
    attention = tuple(attention_levels) if attention_levels is not None else attention
    layers = layers_per_block or layers
    if resolution % 2 ** (len(widths) - 1):
        raise ColorizationError(
            f"--resolution {resolution} cannot be halved {len(widths) - 1} times by a UNet with "
            f"{len(widths)} levels; use a multiple of {2 ** (len(widths) - 1)}"
        )
    return LabConditionedUNet(resolution, widths, layers, attention, ab_scale, regressor_channels)


def make_sampler(name: str, training_config) -> object:
    """A sampling scheduler from the training schedule's config, with explicit settings, so that it is the same
    sampler whether built in memory (validation) or from a saved pipeline (evaluation, colorize).

    Clipping is off in the scheduler itself: :meth:`LabColorizationPipeline.sample_ab` clips the clean-ab
    estimate for every sampler alike (DPM-Solver has no clipping of its own)."""
    if name not in SAMPLERS:
        raise ColorizationError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    config = {k: v for k, v in dict(training_config).items() if not k.startswith("_")}
    overrides = {"timestep_spacing": TIMESTEP_SPACING, "steps_offset": 0}
    if name in ("ddpm", "ddim"):
        overrides["clip_sample"] = False
    if name == "ddim":
        overrides["set_alpha_to_one"] = False  # the last step lands on the training schedule's first timestep
    if name in ("dpm", "dpm-sde"):
        algorithm = "sde-dpmsolver++" if name == "dpm-sde" else "dpmsolver++"
        overrides.update(algorithm_type=algorithm, solver_order=2, thresholding=False, lower_order_final=True)
    model_prediction = model_prediction_type(training_config)
    accepted = SCHEDULER_PREDICTIONS.get(name, (model_prediction,))
    overrides["prediction_type"] = model_prediction if model_prediction in accepted else accepted[0]
    sampler = SAMPLERS[name].from_config(config, **overrides)
    if overrides["prediction_type"] != model_prediction:
        sampler.register_to_config(**{MODEL_PREDICTION: model_prediction})
    return sampler


def model_prediction_type(scheduler_config) -> str:
    """What the UNet predicts, from its training schedule's config or a sampler's made from it."""
    return scheduler_config.get(MODEL_PREDICTION) or scheduler_config["prediction_type"]


def sampler_name(scheduler) -> str:
    if type(scheduler) is DPMSolverMultistepScheduler:  # one class, two samplers
        return "dpm-sde" if str(scheduler.config.algorithm_type).startswith("sde-") else "dpm"
    return next((k for k, v in SAMPLERS.items() if type(scheduler) is v), type(scheduler).__name__)


class LabColorizationPipeline(DiffusionPipeline):
    """Colorize grayscale images: start from noise ab, denoise conditioned on L, join with L.

    The saved scheduler is the training schedule (DDPM); pick a sampler with :func:`make_sampler`, e.g.
    ``pipe.scheduler = make_sampler("dpm", pipe.scheduler.config)``.
    """

    def __init__(self, unet: LabConditionedUNet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _scheduler_prediction(
        self, prediction: torch.Tensor, model_input: torch.Tensor, timestep, regressor_ab: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The UNet's prediction -> the clean estimate it implies, clipped to the range of the data (normalized ab
        in [-1, 1]; for a refining model, the residual that keeps the regressor's ab plus it in [-1, 1]; times
        ab_scale) -> the prediction of the scheduler's kind that implies the clipped estimate, in fp32, so that
        every sampler denoises toward an in-range clean ab (as DDPM's and DDIM's clip_sample do).

        The arithmetic is on ``model_input``, the variance-preserving x_t the UNet saw (the Euler samplers keep
        x_t / sqrt(alpha_bar) as their sample); the samplers here step on whole training timesteps."""
        scale = self.unet.config.ab_scale
        if regressor_ab is None:
            low, high = -scale, scale
        else:
            low, high = (-1.0 - regressor_ab.float()) * scale, (1.0 - regressor_ab.float()) * scale
        kind, wanted = model_prediction_type(self.scheduler.config), self.scheduler.config.prediction_type
        if kind == wanted == "sample":
            return torch.clamp(prediction.float(), low, high)
        alpha = self.scheduler.alphas_cumprod.to(model_input.device)[torch.as_tensor(timestep).long()].float()
        signal, noise = alpha.sqrt(), (1.0 - alpha).sqrt()
        prediction, sample = prediction.float(), model_input.float()
        if kind == "sample":
            clean = prediction
        elif kind == "epsilon":
            clean = (sample - noise * prediction) / signal.clamp_min(1e-6)
        else:  # v_prediction
            clean = signal * sample - noise * prediction
        clean = torch.clamp(clean, low, high)
        if wanted == "sample":
            return clean
        if wanted == "epsilon":
            return (sample - signal * clean) / noise
        return (signal * sample - clean) / noise

    @torch.no_grad()
    def sample_ab(
        self,
        lightness: torch.Tensor,
        num_inference_steps: int = 20,
        generator: torch.Generator | list | None = None,
        regressor_ab: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        precision: str = "fp32",
        network=None,
    ) -> torch.Tensor:
        """Normalized L (N, 1, H, W) at the UNet's resolution -> sampled normalized ab (N, 2, H, W).

        ``generator`` may be a list with one generator per image: each image's colors then depend on its
        own generator only, not on the batch it is sampled in. A refining model samples the residual of
        ``regressor_ab`` (the one-pass model's normalized ab) and adds it back. ``guidance_scale`` w != 1:
        classifier-free guidance, unconditional + w (conditional - unconditional); w = 1 is the plain sampler.
        ``precision`` "bf16": the UNet's forward runs in bf16 autocast, the rest in fp32. ``network``: what to call
        in place of ``self.unet`` (e.g. its ``torch.compile``), with the same arguments."""
        unet = self.unet
        network = unet if network is None else network
        # the conditioning, once per image: cast once, and its blank (the unconditional model's) made once
        lightness = lightness.to(device=unet.device, dtype=unet.dtype)
        if regressor_ab is not None:
            regressor_ab = regressor_ab.to(device=unet.device, dtype=unet.dtype)
        if guidance_scale != 1.0:  # the unconditional model: every conditioning channel zero, as in training
            blank = (torch.zeros_like(lightness), None if regressor_ab is None else torch.zeros_like(regressor_ab))
        self.scheduler.set_timesteps(num_inference_steps, device=unet.device)
        sample = (
            randn_tensor(
                (lightness.shape[0], 2, *lightness.shape[-2:]),
                generator=generator,
                device=unet.device,
                dtype=torch.float32,
            )
            * self.scheduler.init_noise_sigma
        )
        name = sampler_name(self.scheduler)
        extra = {"generator": generator} if name in STOCHASTIC_SAMPLERS else {}
        if name == "edm":
            extra.update(EDM_CHURN)
        autocast = (
            torch.autocast(unet.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        )
        for timestep in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, timestep)
            with autocast:  # only the UNet's forward
                prediction = network(model_input, timestep, lightness, regressor_ab)
                if guidance_scale != 1.0:
                    unconditional = network(model_input, timestep, *blank)
            prediction = prediction.float()
            if guidance_scale != 1.0:
                unconditional = unconditional.float()
                prediction = unconditional + guidance_scale * (prediction - unconditional)
            prediction = self._scheduler_prediction(prediction, model_input, timestep, regressor_ab)
            sample = self.scheduler.step(prediction, timestep, sample, **extra).prev_sample
        sampled = sample.float() / unet.config.ab_scale
        return (sampled if regressor_ab is None else regressor_ab.float() + sampled).clamp(-1.0, 1.0)

    def __call__(self, images, num_inference_steps: int = DEFAULT_SAMPLER[1], seed: int = 0, batch_size: int = 8):
        """PIL image(s) -> colorized PIL image(s) of the same size (the input's own L, sampled ab)."""
        colorizer = DiffusionColorizer(self, self.unet.config.sample_size, num_inference_steps, seed)
        return colorizer.colorize(images, batch_size=batch_size)


class DiffusionColorizer(Colorizer):
    """The :class:`Colorizer` interface over a :class:`LabColorizationPipeline` (with its sampler set)."""

    stochastic = True

    def __init__(
        self,
        pipeline: LabColorizationPipeline,
        resolution: int,
        num_inference_steps: int = 20,
        seed: int = 0,
        regressor: Optional[Colorizer] = None,
        guidance_scale: float = 1.0,
        guidance_trained: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ):
        super().__init__("diffusion", resolution, pipeline.unet.device, seed)
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.regressor = regressor  # a refining model's one-pass model (the mean it samples the residual of)
        if (regressor is None) != (pipeline.unet.config.regressor_channels == 0):
            raise ColorizationError("a refining diffusion model needs its regressor, and only a refining one has one")
        self.guidance_trained = guidance_trained
        self.use_guidance(guidance_scale)
        self.precision = resolve_precision(precision, self.device)  # the UNet's: "fp32" or "bf16" (autocast)
        # torch.compile of the UNet, built at the first batch; it then samples in chunks of that batch's size (the
        # last one padded), so that one compiled shape serves every batch. Its weights are frozen into the
        # compiled code: only for a network that does not change (an export), never the one being trained.
        self.compile = compile
        self._compiled, self._chunk = None, None

    def use_guidance(self, guidance_scale: float) -> None:
        """Classifier-free guidance w for the next samples (1: none); refused for a model without its
        unconditional half (trained without --condition_dropout)."""
        if guidance_scale != 1.0 and not self.guidance_trained:
            raise ColorizationError(
                f"guidance scale {guidance_scale:g} needs a model trained with --condition_dropout (this one was "
                "not: it has no unconditional model); use guidance 1"
            )
        self.guidance_scale = float(guidance_scale)

    @property
    def network(self) -> torch.nn.Module:
        """The UNet, and a refining model's regressor with it (both run at inference)."""
        if self.regressor is None:
            return self.pipeline.unet
        return torch.nn.ModuleList([self.pipeline.unet, self.regressor.network])

    def describe_sampling(self) -> str:
        guidance = f", guidance {self.guidance_scale:g}" if self.guidance_scale != 1.0 else ""
        return f"{sampler_name(self.pipeline.scheduler).upper()}-{self.num_inference_steps}{guidance}"

    @property
    def sampler(self) -> str:
        """The sampler as ``--samplers`` names it, e.g. ``dpm:20``."""
        return f"{sampler_name(self.pipeline.scheduler)}:{self.num_inference_steps}"

    def describe_precision(self) -> str:
        """E.g. 'UNet in bf16 autocast, torch.compile' or 'fp32'."""
        kind = "UNet in bf16 autocast" if self.precision == "bf16" else "fp32"
        return kind + (", torch.compile" if self.compile else "")

    def use_sampler(self, name: str, num_inference_steps: int) -> None:
        """Sample with another sampler of the same training schedule, or another step count (same network)."""
        if sampler_name(self.pipeline.scheduler) != name:
            self.pipeline.scheduler = make_sampler(name, self.pipeline.scheduler.config)
        self.num_inference_steps = int(num_inference_steps)

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        seeds = [self.seed] * lightness.shape[0] if seeds is None else list(seeds)
        # CPU generators: the same noise on any device
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        # the regressor sees the L at its own resolution (colorize_lightness resizes there and back), once per image
        regressor_ab = None if self.regressor is None else self.regressor.colorize_lightness(lightness)
        if not self.compile:
            return self._sample(lightness, generators, regressor_ab)
        if self._compiled is None:
            self._compiled = torch.compile(self.pipeline.unet, dynamic=False, options={"freezing": True})
            self._chunk = lightness.shape[0]
        chunks = []
        for start in range(0, lightness.shape[0], self._chunk):
            part = slice(start, start + self._chunk)
            count = len(generators[part])
            padding = self._chunk - count  # the last chunk is padded with copies of its last image, then dropped

            def padded(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if x is None else torch.cat([x[part], x[part][-1:].expand(padding, *x.shape[1:])])

            spare = [torch.Generator().manual_seed(0) for _ in range(padding)]
            chunks.append(self._sample(padded(lightness), generators[part] + spare, padded(regressor_ab))[:count])
        return torch.cat(chunks)

    def _sample(self, lightness: torch.Tensor, generators: list, regressor_ab: Optional[torch.Tensor]) -> torch.Tensor:
        return self.pipeline.sample_ab(
            lightness,
            self.num_inference_steps,
            generators,
            regressor_ab,
            self.guidance_scale,
            self.precision,
            self._compiled,
        )


def colorizer_from_parts(
    unet: LabConditionedUNet,
    training_scheduler_config,
    resolution: int,
    sampler: str,
    num_inference_steps: int,
    seed: int = 0,
    regressor: Optional[Colorizer] = None,
    guidance_scale: float = 1.0,
    guidance_trained: bool = False,
    precision: str = "fp32",
    compile: bool = False,
) -> DiffusionColorizer:
    """The one way a diffusion colorizer is assembled, for a loaded export and for validation alike."""
    pipeline = LabColorizationPipeline(unet, make_sampler(sampler, training_scheduler_config))
    pipeline.set_progress_bar_config(disable=True)
    return DiffusionColorizer(
        pipeline, resolution, num_inference_steps, seed, regressor, guidance_scale, guidance_trained, precision, compile
    )


def load_colorizer(
    path: str,
    config: dict,
    device: torch.device,
    scheduler: Optional[str] = None,
    num_inference_steps: Optional[int] = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
    precision: str = "fp32",
    compile: bool = False,
) -> Colorizer:
    """An exported diffusion pipeline -> its colorizer, sampling with ``scheduler`` (a name of SAMPLERS) for
    ``num_inference_steps`` (default: the sampler recorded in the export, else DPM-Solver with 20 steps), with
    classifier-free ``guidance_scale`` (1: none), the UNet in ``precision`` (auto, fp32 or bf16; see
    :func:`~colorization.colorizer.resolve_precision`), compiled with ``compile``. A refining model carries its
    regressor in ``regressor/`` (it runs in fp32)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in command-line tools
    verbosity = diffusers_logging.get_verbosity()
    # a failure is our one line, not the errors diffusers logs before it raises
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        # safetensors only: a pickled .bin runs code when it is loaded, and a Hub model is anyone's file
        pipeline = LabColorizationPipeline.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0]
        if "safetensors" in reason:  # no safetensors weights: say why a pickle beside them (if any) is not used
            pickled = sorted(
                os.path.relpath(os.path.join(folder, name), path)
                for folder, _, names in os.walk(path)
                for name in names
                if name.endswith(PICKLE_SUFFIXES)
            )
            example = pickled[0] if pickled else ".bin"
            reason += f" (only safetensors weights are loaded, never a pickle such as {example}: it can run any code)"
        raise ColorizationError(f"cannot load the diffusion pipeline in {path!r}: {reason}") from None
    finally:
        diffusers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(verbosity)
    recorded = config.get("sampling", {})
    sampler = scheduler or recorded.get("scheduler", DEFAULT_SAMPLER[0])
    steps = num_inference_steps or recorded.get("num_inference_steps", DEFAULT_SAMPLER[1])
    regressor = None
    if config.get("refines"):
        from colorization.inference import load_colorizer as load_any

        regressor = load_any(os.path.join(path, REGRESSOR_DIR), device)
    # Not channels-last, though oneDNN's bf16 convolutions run faster on it (benchmarks/README.md): validation
    # samples the live network in its own layout, and evaluate.py must compute what validation computed.
    return colorizer_from_parts(
        pipeline.unet.to(device).eval(),
        pipeline.scheduler.config,
        int(config["resolution"]),
        sampler,
        int(steps),
        seed,
        regressor,
        guidance_scale,
        guidance_trained=float(config.get("condition_dropout", 0.0)) > 0,
        precision=precision,
        compile=compile,
    )


def load_onnx_colorizer(
    path: str,
    config: dict,
    scheduler: Optional[str] = None,
    num_inference_steps: Optional[int] = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
    precision: str = "auto",
    compile: bool = False,
) -> Colorizer:
    """An ONNX folder of a diffusion model (``python -m colorization.export_onnx``) -> its colorizer: the UNet
    step in ONNX Runtime, this module's own sampler loop and scheduler around it (the options as in
    :func:`load_colorizer`; the graph computes in fp32, so ``precision`` auto means fp32 and bf16 or ``compile``
    are refused); a refining model's regressor from its own ONNX folder inside."""
    import json

    from colorization.onnx_backend import ONNX_MODEL, SCHEDULER_DIR, OnnxUNet, inference_session, read_onnx_record

    if precision not in ("auto", "fp32") or compile:
        raise ColorizationError(
            "the ONNX backend runs its fp32 graph as exported: "
            + ("drop --compile" if compile else "use --precision fp32")
        )
    record = read_onnx_record(path)
    session = inference_session(os.path.join(path, ONNX_MODEL))

    class OnnxPipeline:
        """The pipeline's own sampling loop (its methods, not a copy) over the ONNX UNet."""

        sample_ab = LabColorizationPipeline.sample_ab
        _scheduler_prediction = LabColorizationPipeline._scheduler_prediction

        def __init__(self, unet: OnnxUNet, sampler):
            self.unet, self.scheduler = unet, sampler

        def progress_bar(self, iterable):
            return iterable

    with open(os.path.join(path, SCHEDULER_DIR, "scheduler_config.json")) as handle:
        training_schedule = json.load(handle)
    recorded = config.get("sampling", {})
    sampler = make_sampler(scheduler or recorded.get("scheduler", DEFAULT_SAMPLER[0]), training_schedule)
    steps = int(num_inference_steps or recorded.get("num_inference_steps", DEFAULT_SAMPLER[1]))
    regressor = None
    if config.get("refines"):
        from colorization.inference import load_colorizer as load_any

        regressor = load_any(os.path.join(path, REGRESSOR_DIR), backend="onnx")
    colorizer = DiffusionColorizer(
        OnnxPipeline(OnnxUNet(session, record["unet"]), sampler),
        int(config["resolution"]),
        steps,
        seed,
        regressor,
        guidance_scale,
        guidance_trained=float(config.get("condition_dropout", 0.0)) > 0,
    )
    colorizer.backend = "onnx"
    return colorizer
