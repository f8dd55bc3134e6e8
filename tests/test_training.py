"""The training harness through the real entry points: what a run writes, exact resume on one and two
processes, checkpoints that survive a kill, refused mix-ups of runs, precision bookkeeping, user errors."""

import json
import math
import shutil
import sys
import types

import pytest
import torch
from conftest import (
    ROOT,
    TINY_CNN,
    TINY_DATA,
    TINY_DIFFUSION,
    TINY_GAN,
    accelerate_launch,
    assert_same_weights,
    fp32_tolerance,
    run_command,
    run_in_process,
    train_in_process,
)
from PIL import Image
from safetensors.torch import load_file

from colorization import color, load_colorizer
from colorization.data import DataConfig
from colorization.errors import ColorizationError
from colorization.optimization import NonFiniteLossError, constant_then_linear
from colorization.tasks.cnn import CNNConfig, CNNTask
from colorization.tasks.diffusion import DiffusionTask
from colorization.tasks.gan import GANConfig, GANTask
from colorization.training import TrainConfig, Trainer, main


def test_writes_complete_pruned_checkpoints_without_pickled_state(cnn_run):
    output, _ = cnn_run
    checkpoints = sorted((output / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    assert [c.name for c in checkpoints] == ["checkpoint_8", "checkpoint_12"]  # named by step; step 4 pruned
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert {
            "model.safetensors",
            "optimizer.bin",
            "scheduler.bin",
            "random_states_0.pkl",
            "run_config.json",
            "training_progress.json",
            "data_statistics.safetensors",
            "checkpoint_complete.json",
        } <= names
        assert [n for n in names if n.endswith(".pkl")] == ["random_states_0.pkl"]  # accelerate's RNG states only
    progress = json.loads((checkpoints[-1] / "training_progress.json").read_text())
    assert progress["global_step"] == 12 and progress["images_seen"] == 12 * 8
    config = json.loads((output / "run_config.json").read_text())
    assert config["model_type"] == "cnn" and config["data"]["resolution"] == 32


def test_tensorboard_has_training_and_validation_tags(cnn_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, _ = cnn_run
    events = EventAccumulator(str(output / "logs" / "cnn"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/images_per_second",
        "validation/loss",
        "validation/psnr",
        "validation/ssim",
        "validation/colorfulness",
        "validation/psnr_gray",
        "validation/ssim_gray",
        "validation/colorfulness_truth",
    } <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in events.Scalars("validation/psnr")] == [0, 6, 12]
    assert "validation/gray_prediction_truth" in events.Tags()["images"]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] > lrs[-1]  # cosine schedule decays


def test_exported_model_loads_and_keeps_input_size_and_lightness(cnn_run):
    output, result = cnn_run
    assert "gray (ab = 0)" in result.stdout and "PSNR" in result.stdout
    colorizer = load_colorizer(str(output), device="cpu")
    assert colorizer.model_type == "cnn" and colorizer.resolution == 32
    # mid-tones: near black or white, chroma can fall outside sRGB and clipping then moves L (gamut limit)
    import numpy as np

    photo = Image.fromarray(np.random.default_rng(0).integers(70, 190, (31, 45, 3), dtype=np.uint8))
    colored = colorizer.colorize(photo)
    assert isinstance(colored, Image.Image) and colored.size == (45, 31)
    from torchvision.transforms.functional import pil_to_tensor

    lightness = lambda im: color.rgb_to_lab(pil_to_tensor(im)[None].float() / 255)[:, 0]  # noqa: E731
    assert (lightness(colored) - lightness(photo)).abs().max() < 1.0  # L kept up to 8-bit rounding
    several = colorizer.colorize([photo, photo.resize((20, 64))], batch_size=2)
    assert [im.size for im in several] == [(45, 31), (20, 64)]
    metrics = json.loads((output / "validation_metrics.json").read_text())
    assert metrics["step"] == 12 and metrics["num_images"] == 26
    assert (output / "mean_ab.safetensors").is_file() and (output / "training_images.json").is_file()
    assert len(json.loads((output / "training_images.json").read_text())["images"]) == 230


def test_two_process_resume_is_exact(tmp_path):
    # Two processes of 8 images: 14 steps per epoch. Resumed from step 18 (mid-epoch, after the epoch boundary
    # at 14), the data order and flips must be epoch 1's, not epoch 0's (accelerate's set_epoch misses the
    # sampler after skip_first_batches on several processes). The GAN, so that both networks and both optimizers
    # are checked. The uninterrupted run goes through a probe that also records what each process saw; the
    # resumed one is train_gan.py itself.
    args = (
        TINY_DATA
        + TINY_GAN
        + [
            "--output_dir",
            tmp_path / "run",
            "--max_train_steps",
            "22",
            "--checkpointing_steps",
            "6",
            "--validation_steps",
            "22",
            "--no-initial_validation",
            "--checkpoints_total_limit",
            "none",
            "--model_selection",
            "last",
        ]
    )
    accelerate_launch("tests/distributed_probe.py", ["gan", *args, "--probe_dir", tmp_path], num_processes=2)
    ranks = [json.loads((tmp_path / f"rank_{i}.json").read_text()) for i in range(2)]
    assert all(r["num_processes"] == 2 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # in step, the same weights (both networks)
    seen = [[tuple(key) for key in r["epoch_and_index"]] for r in ranks]
    # 22 steps of 8 images each, plus the batch accelerate's loader fetches ahead at each epoch's end
    assert len(seen[0]) == len(seen[1]) == (22 + 1) * 8
    assert not set(seen[0]) & set(seen[1])  # within an epoch, each process saw different images
    assert len({epoch for epoch, _ in seen[0]}) == 2  # and step 22 is in the second epoch
    run = tmp_path / "run"
    files = ["model.safetensors", "checkpoints/checkpoint_22/model_1.safetensors"]  # the generator, the discriminator
    uninterrupted = [load_file(run / f) for f in files]
    shutil.rmtree(run / "checkpoints" / "checkpoint_22")
    (run / "model.safetensors").unlink()
    accelerate_launch("train_gan.py", args + ["--resume_from_checkpoint", "latest"], num_processes=2)
    for before, name in zip(uninterrupted, files):
        assert_same_weights(before, load_file(run / name))


def test_a_kill_during_a_save_keeps_a_complete_checkpoint_and_resume_is_exact(tmp_path, capsys):
    # 230 training images, batches of 8, 2 accumulation steps, 2 data workers: 14 optimizer steps per epoch.
    # Killed while saving step 8 (the limit of 1 checkpoint keeps step 4, complete), resumed from step 4
    # (mid-epoch) to step 18 (across the epoch boundary): the same weights as a run that never stopped.
    args = [
        "--resolution",
        "32",
        "--embedded_num_images",
        "256",
        "--dataloader_num_workers",
        "2",
        *TINY_CNN,
        "--max_train_steps",
        "18",
        "--gradient_accumulation_steps",
        "2",
        "--checkpointing_steps",
        "4",
        "--validation_steps",
        "18",
        "--no-initial_validation",
        "--checkpoints_total_limit",
        "1",
    ]
    train_in_process(CNNTask, args + ["--output_dir", tmp_path / "reference"])
    killed = run_command(
        [
            sys.executable,
            "tests/kill_during_save.py",
            "cnn",
            "--kill_at_step",
            "8",
            *args,
            "--output_dir",
            tmp_path / "run",
        ],
        check=False,
    )
    assert killed.returncode == -9  # SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_4", "checkpoint_8"]  # the complete one survives the limit of 1
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_4" / "checkpoint_complete.json").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint_8" / "checkpoint_complete.json").exists()
    capsys.readouterr()
    train_in_process(CNNTask, args + ["--output_dir", tmp_path / "run", "--resume_from_checkpoint", "latest"])
    said = capsys.readouterr().out
    assert "skipping" in said and "checkpoint_8: incomplete" in said
    assert "resumed from" in said and "checkpoint_4 at step 4" in said
    assert_same_weights(
        load_file(tmp_path / "reference" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    )
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint_18"]


def test_a_new_run_into_a_used_folder_is_refused_and_overwrite_starts_over(tmp_path, capsys):
    args = [
        *TINY_DATA,
        *TINY_CNN,
        "--output_dir",
        tmp_path,
        "--max_train_steps",
        "2",
        "--validation_steps",
        "2",
        "--checkpointing_steps",
        "1",
    ]
    train_in_process(CNNTask, args)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    event_files = len(list((tmp_path / "logs").rglob("events.out.tfevents*")))  # a run's curves and settings
    code, _, error = run_in_process(lambda argv: main(CNNTask, argv), args, capsys)
    assert code == 1 and "Traceback" not in error
    assert "holds an earlier run" in error and "--overwrite_output_dir" in error
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing deleted or added
    train_in_process(CNNTask, args + ["--overwrite_output_dir", "--max_train_steps", "3", "--checkpointing_steps", "3"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_3"]
    assert len(list((tmp_path / "logs").rglob("events.out.tfevents*"))) == event_files  # the old run's are gone


def test_resume_with_a_changed_batch_size_is_refused_unless_allowed(tmp_path):
    args = [
        *TINY_DATA,
        *TINY_CNN,
        "--output_dir",
        tmp_path,
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "4",
        "--no-initial_validation",
        "--resume_from_checkpoint",
        "latest",
    ]
    train_in_process(CNNTask, args + ["--max_train_steps", "2"])
    with pytest.raises(ColorizationError, match="--max_train_steps: 2 -> 4") as error:
        train_in_process(CNNTask, args + ["--train_batch_size", "4"])
    assert "--train_batch_size: 8 -> 4" in str(error.value) and "--allow_changed_settings" in str(error.value)
    # settings that cannot change the weights may change; others only with the override, which is recorded
    train_in_process(CNNTask, args + ["--logging_steps", "1", "--allow_changed_settings"])
    recorded = json.loads((tmp_path / "run_config.json").read_text())["changed_settings"]
    assert recorded == ["at step 2: --max_train_steps: 2 -> 4"]


def test_fp16_bookkeeping_unscales_each_optimizer_once(tmp_path):
    # The GAN's two optimizers with gradient accumulation: with a (power-of-two) loss scale, scaling and
    # unscaling are exact, so the weights must equal an unscaled run's. Unscaling the generator's half-accumulated
    # gradients in the discriminator's step (one shared scaler, accelerate's clip_grad_norm_) breaks this.
    def two_steps(scaled: bool):
        torch.manual_seed(0)
        task = GANTask(
            GANConfig(base_channels=8, lambda_perceptual=0.0, content_fraction=0.0, discriminator_warmup_fraction=0.0),
            32,
        )
        trainer = Trainer(
            task,
            TrainConfig(output_dir=str(tmp_path), report_to="none", gradient_accumulation_steps=2, max_grad_norm=1.0),
            DataConfig(resolution=32),
        )
        if scaled:
            trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        trainer._prepare_models(max_steps=4)
        assert len(trainer.optimization.scalers) == (2 if scaled else 0)
        rgb = torch.rand(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        for batch in rgb:
            lightness, ab = color.rgb_to_normalized_lab(batch)
            with trainer.accelerator.accumulate(*task.models.values()):
                task.training_step(trainer, lightness, ab)
        weights = {n: {k: v.clone() for k, v in task.unwrapped(n).state_dict().items()} for n in task.models}
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return weights

    plain, scaled = two_steps(False), two_steps(True)
    for name in plain:
        assert_same_weights(plain[name], scaled[name])


def test_pix2pix_schedule_is_constant_then_linear_to_zero():
    factor = constant_then_linear(0, 100)
    assert [factor(s) for s in (0, 49, 50, 75, 100)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    assert constant_then_linear(10, 100)(4) == pytest.approx(0.5)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    train_in_process(
        CNNTask,
        [
            *TINY_DATA,
            *TINY_CNN,
            "--output_dir",
            tmp_path,
            "--max_train_steps",
            "4",
            "--mixed_precision",
            "bf16",
            "--validation_steps",
            "4",
            "--no-initial_validation",
        ],
    )
    assert json.loads((tmp_path / "run_config.json").read_text())["mixed_precision"] == "bf16"
    weights = load_file(tmp_path / "model.safetensors")
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)


class _AutocastSpy(DiffusionTask):
    """The diffusion task, noting whether autocast is on in each part of a training step (its EMA included)."""

    seen: list = []

    def build(self, train_config, statistics):
        super().build(train_config, statistics)
        note = lambda part: self.seen.append((part, torch.is_autocast_enabled("cpu")))  # noqa: E731
        unet = self.models["unet"]
        unet.register_forward_pre_hook(lambda module, inputs: note("forward") if module.training else None)
        next(unet.parameters()).register_hook(lambda grad: note("backward"))
        self.optimizers["unet"].register_step_pre_hook(lambda *args: note("optimizer step"))
        ema_step = self.ema.step

        def noted_ema_step(parameters):
            note("EMA step")
            ema_step(parameters)

        self.ema.step = noted_ema_step


def test_autocast_covers_the_forward_and_loss_only(tmp_path, monkeypatch):
    # PyTorch advises against backward under autocast: its backward ops would be autocast again (the gradients of
    # an op that ran in fp32 would be computed in bf16). Clipping and the optimizer and EMA steps need no autocast.
    clip = torch.nn.utils.clip_grad_norm_

    def noted_clip(*args, **kwargs):
        _AutocastSpy.seen.append(("clipping", torch.is_autocast_enabled("cpu")))
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", noted_clip)
    _AutocastSpy.seen = []
    run = ["--max_train_steps", "2", "--mixed_precision", "bf16", "--no-initial_validation", "--report_to", "none"]
    train_in_process(_AutocastSpy, [*TINY_DATA, *TINY_DIFFUSION, *run, "--output_dir", tmp_path])
    parts = {part: [on for seen, on in _AutocastSpy.seen if seen == part] for part, _ in _AutocastSpy.seen}
    assert set(parts) == {"forward", "backward", "clipping", "optimizer step", "EMA step"}
    assert all(len(calls) == 2 for calls in parts.values())  # once per step
    assert parts.pop("forward") == [True, True]  # bf16 autocast really ran
    assert all(on is False for calls in parts.values() for on in calls), parts


def test_tf32_is_off_unless_allowed_and_validation_computes_in_full_fp32(tmp_path):
    # On GPUs since Ampere, PyTorch uses TF32 for cuDNN convolutions by default and accelerate turns it on for
    # matrix products under torch.compile: the harness sets both itself, and validates in full fp32 always.
    # (The flags can be set and read without a GPU.)
    from accelerate import Accelerator

    from colorization.hardware import fp32_precision, set_tf32

    accelerator = Accelerator(cpu=True)
    data, task = DataConfig(resolution=32), CNNTask(CNNConfig(pretrained_backbone=False), 32)
    full, tf32 = {"matmul": "ieee", "convolution": "ieee"}, {"matmul": "tf32", "convolution": "tf32"}
    try:
        set_tf32(True)
        Trainer(task, TrainConfig(output_dir=str(tmp_path), report_to="none"), data, accelerator)
        assert fp32_precision("cuda") == full
        trainer = Trainer(
            task, TrainConfig(output_dir=str(tmp_path), report_to="none", allow_tf32=True), data, accelerator
        )
        assert fp32_precision("cuda") == tf32 and trainer.fp32_precision == fp32_precision("cpu")
        trainer.validator = types.SimpleNamespace(validate=lambda: fp32_precision("cuda"))
        assert trainer.validate() == full and fp32_precision("cuda") == tf32  # and back after
        assert trainer.training_costs()["fp32_precision"] == trainer.fp32_precision
    finally:  # PyTorch's defaults
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True


def test_channels_last_computes_the_same_step_and_trains(tmp_path):
    from colorization.models.cnn import ResNetColorizer

    torch.manual_seed(0)
    plain = ResNetColorizer()
    fast = ResNetColorizer().to(memory_format=torch.channels_last)
    fast.load_state_dict(plain.state_dict())
    lightness = torch.rand(4, 1, 32, 32) * 2 - 1
    outputs = [
        model(x) for model, x in ((plain, lightness), (fast, lightness.contiguous(memory_format=torch.channels_last)))
    ]
    # the same sums in another order: equal up to their rounding
    tolerance = fp32_tolerance(plain, scale=float(outputs[0].detach().abs().max()))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=tolerance)
    for output in outputs:
        output.pow(2).mean().backward()
    for (name, first), second in zip(plain.named_parameters(), fast.parameters()):
        # backward: through the network again; a weight's gradient sums over the batch's pixels
        tolerance = fp32_tolerance(plain, passes=2, terms=lightness.numel(), scale=float(first.grad.abs().max()))
        torch.testing.assert_close(second.grad, first.grad, rtol=0, atol=tolerance, msg=name)
    metrics = train_in_process(
        CNNTask,
        [
            *TINY_DATA,
            *TINY_CNN,
            "--max_train_steps",
            "3",
            "--validation_steps",
            "3",
            "--no-initial_validation",
            "--output_dir",
            tmp_path,
            "--channels_last",
        ],
    )
    assert math.isfinite(metrics["psnr"])


def test_two_unconnected_processes_are_refused():
    result = accelerate_launch(
        "train_cnn.py",
        TINY_DATA + TINY_CNN + ["--max_train_steps", "1"],
        num_processes=2,
        env={"ACCELERATE_USE_CPU": None},
        check=False,
    )
    assert result.returncode != 0
    assert "not connected" in result.stderr and "ACCELERATE_USE_CPU=1" in result.stderr
    assert "Traceback" not in result.stderr.split("not connected")[0].splitlines()[-1]


class _DivergingCNN(CNNTask):
    """The CNN whose loss turns to NaN at step 3."""

    def training_step(self, trainer, lightness, ab):
        if trainer.progress.global_step == 2:
            loss = self.models["model"](lightness).float().mean() * float("nan")
            trainer.optimize("model", loss)
        return super().training_step(trainer, lightness, ab)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    train = TrainConfig(
        output_dir=str(tmp_path),
        max_train_steps=10,
        checkpointing_steps=2,
        train_batch_size=8,
        validation_steps=100,
        initial_validation=False,
        report_to="none",
    )
    data = DataConfig(resolution=32, embedded_num_images=256, dataloader_num_workers=0)
    trainer = Trainer(_DivergingCNN(CNNConfig(pretrained_backbone=False), 32), train, data)
    with pytest.raises(NonFiniteLossError, match="step 3") as error:
        trainer.train()
    assert "checkpoint_2" in str(error.value)
    kept = load_file(tmp_path / "checkpoints" / "checkpoint_2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert not (tmp_path / "checkpoints" / "checkpoint_4").exists()  # no NaN weights saved
    assert not (tmp_path / "model.safetensors").exists()  # nothing half-trained was exported


def test_two_processes_stop_together_when_one_loss_turns_nan(tmp_path):
    result = accelerate_launch(
        "tests/diverging_probe.py",
        [
            *TINY_DATA,
            *TINY_CNN,
            "--max_train_steps",
            "8",
            "--checkpointing_steps",
            "2",
            "--logging_steps",
            "1",
            "--validation_steps",
            "100",
            "--no-initial_validation",
            "--report_to",
            "none",
            "--output_dir",
            tmp_path,
            "--nan_at_step",
            "3",
        ],
        num_processes=2,
        check=False,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]  # said once, for both processes
    assert "at step 3" in errors[0] and "checkpoint_2" in errors[0]
    # no traceback of ours (the launcher reports that a process exited non-zero, in its own words)
    assert (
        'File "' + str(ROOT / "colorization") not in result.stderr and 'diverging_probe.py", line' not in result.stderr
    )
    kept = tmp_path / "checkpoints" / "checkpoint_2"
    assert (kept / "checkpoint_complete.json").is_file()
    assert all(torch.isfinite(t).all() for t in load_file(kept / "model.safetensors").values())
    assert not (tmp_path / "checkpoints" / "checkpoint_4").exists() and not (tmp_path / "model.safetensors").exists()


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    result = run_command(
        [
            sys.executable,
            "train_cnn.py",
            *TINY_DATA,
            *TINY_CNN,
            "--output_dir",
            tmp_path,
            "--resume_from_checkpoint",
            tmp_path / "nowhere",
        ],
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("train_cnn.py: error: argument --resume_from_checkpoint")
    code, _, error = run_in_process(
        lambda argv: main(CNNTask, argv), ["--train_data_dir", tmp_path / "missing"], capsys
    )
    assert code == 2 and "does not exist" in error and "Traceback" not in error
    (tmp_path / "no_images").mkdir()
    code, _, error = run_in_process(
        lambda argv: main(CNNTask, argv),
        ["--train_data_dir", tmp_path / "no_images", "--output_dir", tmp_path / "run"],
        capsys,
    )
    assert code == 1 and "no images" in error and "Traceback" not in error


_SELECTING_CNN = [
    *TINY_DATA,
    *TINY_CNN,
    "--max_train_steps",
    "6",
    "--checkpointing_steps",
    "3",
    "--model_selection",
    "best",
    "--no-initial_validation",
    "--report_to",
    "none",
]


def test_an_export_carries_the_label_of_the_weights_it_holds(tmp_path, monkeypatch):
    # A crash between deleting the chosen step's export and writing the new one leaves no selected_model/:
    # the export is then the last step's weights, labelled as the last step, never under the chosen step's label.
    finish = Trainer._finish

    def finish_after_losing_the_chosen_export(self, metrics):
        shutil.rmtree(tmp_path / "selected_model")
        return finish(self, metrics)

    monkeypatch.setattr(Trainer, "_finish", finish_after_losing_the_chosen_export)
    metrics = train_in_process(CNNTask, _SELECTING_CNN + ["--output_dir", tmp_path])
    exported = json.loads((tmp_path / "colorizer.json").read_text())
    recorded = json.loads((tmp_path / "validation_metrics.json").read_text())
    assert "selection" not in exported and exported["training"]["global_step"] == 6
    assert recorded["step"] == 6 and "validation_at_last_step" not in recorded and "rule" not in metrics
    assert_same_weights(
        load_file(tmp_path / "checkpoints" / "checkpoint_6" / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert exported["training"]["validation"]["psnr"] == pytest.approx(recorded["psnr"])


def test_a_stale_chosen_export_is_not_exported_under_the_choice(tmp_path, monkeypatch):
    finish = Trainer._finish

    def finish_with_a_stale_choice(self, metrics):  # selected_model/ written for another step than the chosen one
        record = json.loads((tmp_path / "selected_model" / "colorizer.json").read_text())
        record["selection"]["step"] += 1
        (tmp_path / "selected_model" / "colorizer.json").write_text(json.dumps(record))
        return finish(self, metrics)

    monkeypatch.setattr(Trainer, "_finish", finish_with_a_stale_choice)
    train_in_process(CNNTask, _SELECTING_CNN + ["--output_dir", tmp_path])
    assert "selection" not in json.loads((tmp_path / "colorizer.json").read_text())
    assert not (tmp_path / "selected_model").exists()


@pytest.mark.parametrize("change", [["--validation_images", "8"], ["--max_validation_samples", "10"]])
def test_settings_that_choose_the_exported_step_cannot_change_on_resume(tmp_path, change, capsys):
    for selection in ("best", "last"):
        args = [a if a != "best" else selection for a in _SELECTING_CNN] + ["--output_dir", tmp_path / selection]
        train_in_process(CNNTask, args)
        resumed = args + ["--resume_from_checkpoint", tmp_path / selection / "checkpoints" / "checkpoint_3", *change]
        code, _, error = run_in_process(lambda argv: main(CNNTask, argv), resumed, capsys)
        if selection == "best":  # they chose the exported step: refused, with the list
            assert code == 1 and f"{change[0]}:" in error and "--allow_changed_settings" in error, error
            assert "Traceback" not in error and "--max_train_steps" not in error
        else:  # under --model_selection last they change no weights and no choice: free
            assert code == 0, error


def test_the_selection_settings_are_free_only_without_selection():
    from colorization.checkpoints import changed_settings

    def run(selection, **changes):
        return {
            "train": {"model_selection": selection, "validation_steps": 10, "validation_images": 64, **changes},
            "model": {"validation_sampler": "dpm", "validation_inference_steps": 20},
        }

    assert changed_settings(run("last"), run("last", validation_steps=5)) == []
    assert changed_settings(run("best"), run("best", validation_steps=5)) == ["--validation_steps: 10 -> 5"]
    changed = run("best")
    changed["model"]["validation_sampler"] = "ddim"
    assert changed_settings(run("best"), changed) == ["--validation_sampler: 'dpm' -> 'ddim'"]
    # a checkpoint older than a setting resumes when that setting is left unset; set, it is a change
    newer = run("last")
    newer["data"] = {"dataset_revision": None}
    assert changed_settings(run("last"), newer) == []
    newer["data"]["dataset_revision"] = "0123abc"
    assert changed_settings(run("last"), newer) == ["--dataset_revision: '(absent)' -> '0123abc'"]


def test_the_optimizer_is_fused_where_torch_has_the_kernel():
    from colorization.training import fused_adam_available, make_optimizer

    parameters = [torch.nn.Parameter(torch.zeros(3))]
    fused = make_optimizer(parameters, TrainConfig()).defaults["fused"]
    assert fused is (True if fused_adam_available() else None)
    assert make_optimizer(parameters, TrainConfig(fused_optimizer=False)).defaults["fused"] is None
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4):  # the CPU kernel's first release
        assert fused_adam_available()


def test_channels_last_and_the_fused_optimizer_resume_exactly_and_save_plain_weights(tmp_path):
    # The cpu-small CNN's flags (--channels_last, the fused optimizer by default): resumed from step 2, the weights
    # equal an uninterrupted run's; checkpoint and export hold plain weights a plain network loads. The two
    # settings say how the arithmetic runs, not what it computes: a run may be resumed with them changed.
    from colorization.models.cnn import ResNetColorizer

    args = [
        *TINY_DATA,
        *TINY_CNN,
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "4",
        "--no-initial_validation",
        "--checkpoints_total_limit",
        "none",
    ]
    fast = args + ["--channels_last"]
    run = tmp_path / "run"
    train_in_process(CNNTask, fast + ["--output_dir", run])
    whole = load_file(run / "model.safetensors")
    checkpoint = load_file(run / "checkpoints" / "checkpoint_4" / "model.safetensors")
    for weights in (whole, checkpoint):
        ResNetColorizer().load_state_dict(weights)  # strict: the plain network's names, no wrapper's prefix
    assert all(t.is_contiguous() for t in whole.values())
    shutil.rmtree(run / "checkpoints" / "checkpoint_4")
    (run / "model.safetensors").unlink()
    train_in_process(CNNTask, fast + ["--output_dir", run, "--resume_from_checkpoint", "latest"])
    assert_same_weights(whole, load_file(run / "model.safetensors"))

    changed = tmp_path / "changed"
    train_in_process(CNNTask, args + ["--no-fused_optimizer", "--output_dir", changed])
    shutil.rmtree(changed / "checkpoints" / "checkpoint_4")
    train_in_process(CNNTask, fast + ["--output_dir", changed, "--resume_from_checkpoint", "latest"])
    config = json.loads((changed / "run_config.json").read_text())
    assert config["train"]["channels_last"] and "changed_settings" not in config


def _first_logged_loss(output_dir) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output_dir / "logs" / "diffusion"))
    events.Reload()
    return events.Scalars("train/loss")[0].value


def test_channels_last_changes_no_value_of_the_diffusion_step(tmp_path):
    # --channels_last puts the networks' weights, and so their activations, in channels-last format; the batch and
    # the task's own tensors stay as they are, so the noise drawn with randn_like(ab) is the same numbers. (Had the
    # batch been made channels-last, randn_like would lay the same draws out differently: other noise per pixel,
    # a first loss some percent away.) In fp32 the two first losses differ by rounding only (~1e-6 relative over
    # a dozen layers; 1e-4 leaves room and is far below a different draw's difference).
    from colorization.tasks.diffusion import DiffusionTask

    args = [*TINY_DATA, *TINY_DIFFUSION, "--max_train_steps", "1", "--logging_steps", "1", "--no-initial_validation"]
    losses = []
    for name, extra in (("plain", []), ("channels_last", ["--channels_last"])):
        train_in_process(DiffusionTask, args + ["--mixed_precision", "no", "--output_dir", tmp_path / name, *extra])
        losses.append(_first_logged_loss(tmp_path / name))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_the_diffusion_step_needs_no_host_sync(tmp_path):
    # On a GPU an operation whose output size depends on the data (boolean indexing: a nonzero) waits for the device
    # at every step. The step's per-quartile loss means are masked sums instead.
    from torch.utils._python_dispatch import TorchDispatchMode

    from colorization.tasks.diffusion import DiffusionConfig, DiffusionTask

    data_dependent = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            indices = args[1] if name == "index" else ()
            boolean_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
            if name in ("nonzero", "masked_select", "_local_scalar_dense") or boolean_index:
                data_dependent.append(name)
            return func(*args, **(kwargs or {}))

    task = DiffusionTask(
        DiffusionConfig(unet_preset="small", block_out_channels="16,32", attention_levels="1", use_ema=False), 32
    )
    trainer = Trainer(task, TrainConfig(output_dir=str(tmp_path), report_to="none"), DataConfig(resolution=32))
    trainer._prepare_models(max_steps=2)
    lightness, ab = color.rgb_to_normalized_lab(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    try:
        with Watch():
            logs = task.training_step(trainer, lightness, ab)
    finally:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert data_dependent == []
    quartiles = [logs[f"loss_t{q * 250}-{q * 250 + 249}"] for q in range(4)]
    assert all(torch.isfinite(value) or torch.isnan(value) for value in quartiles)
