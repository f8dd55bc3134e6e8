"""python -m colorization.reproduce: the whole comparison from one command, resumable, failing loudly."""

import csv
import json
import os
import shlex
import sys

from conftest import run_command

from colorization.evaluation import GRAY, MEAN_AB, TRUTH

# A few steps per model on a small slice of the embedded data, at 32 px.
# Every run validates on the first 4 held-out images, where the GAN chooses its step and each diffusion model its
# guidance scale; the tables leave them out.
TINY = [
    "--embedded",
    "--no-pretrained",
    "--resolution",
    "32",
    "--max_train_steps",
    "3",
    "--train_batch_size",
    "8",
    "--samplers",
    "dpm:2,ddim:2",
    "--num_samples",
    "2",
    "--slow_samplers",
    "ddpm:3",
    "--slow_sampler_images",
    "6",
    "--data_args",
    "--embedded_num_images 128 --dataloader_num_workers 0",
    "--validation_images",
    "4",
    "--guidance_scales",
    "1,3",
    "--gan_args",
    "--base_channels 8",
]


def model_rows(guidance: dict) -> set:
    """The table's model rows, each diffusion model at the guidance scale chosen for it."""
    sampled = {
        f"{model} ({sampler}" + (f", guidance {guidance[model]:g})" if guidance[model] != 1 else ")")
        for model in ("Diffusion", "Diffusion refining CNN")
        for sampler in ("DPM-2", "DDIM-2")
    }
    return {"CNN", "GAN"} | sampled


def reproduce(output_dir, *extra, check=True):
    return run_command(
        [sys.executable, "-m", "colorization.reproduce", *TINY, "--output_dir", str(output_dir), *extra], check=check
    )


def _commands(output_dir):
    with open(output_dir / "commands.sh") as handle:
        return [line for line in handle if line.strip() and not line.startswith("#")]


def test_reproduce_writes_one_consistent_comparison_fails_loudly_and_skips_finished_models(tmp_path):
    out = tmp_path / "results"
    # a learning rate of 1e30 makes the GAN's loss NaN at once: the training run stops with its one-line error,
    # and the whole command with it
    broken = reproduce(out, "--gan_args", "--base_channels 8 --learning_rate 1e30", check=False)
    assert broken.returncode == 1
    assert "error: the gan run failed (exit 1)" in broken.stderr
    assert "loss became nan" in broken.stderr  # the training run's own one-line reason
    assert "No table was written" in broken.stderr and "Traceback" not in broken.stderr
    assert not (out / "evaluation").exists() and not (out / "README.md").exists()
    steps = json.loads((out / "reproduce.json").read_text())["steps"]
    assert steps["cnn"]["status"] == "finished" and steps["gan"]["status"] == "failed (exit 1)"
    assert "diffusion" not in steps and "evaluation" not in steps

    # fixed (the GAN failed before its first checkpoint, so nothing of it is kept): the CNN is not trained again
    fixed = reproduce(out)
    assert "cnn: finished earlier, skipped" in fixed.stdout
    assert "gan: the earlier attempt failed before its first checkpoint" in fixed.stdout
    steps = json.loads((out / "reproduce.json").read_text())["steps"]
    assert steps["gan"]["status"] == "finished" and steps["gan"]["attempts"] == 1

    evaluation = out / "evaluation"
    for name in ("table.md", "table.csv", "results.json", "per_image.csv", "comparison.png"):
        assert (evaluation / name).is_file(), name
    with open(evaluation / "results.json") as handle:
        results = json.load(handle)
    summary, settings = results["summary"], results["settings"]
    chosen = json.loads((out / "reproduce.json").read_text())["guidance"]  # each diffusion model's scale
    table_rows = model_rows(chosen)
    assert set(summary) == table_rows | {MEAN_AB, GRAY, TRUTH, "samples"}  # every model, nothing missing
    assert settings["resolution"] == 32 and settings["split"] == "validation" and settings["num_images"] == 13 - 4
    assert any("The first 4 images are left out" in note for note in settings["notes"])
    first_diffusion_row = sorted(r for r in table_rows if r.startswith("Diffusion (DPM-2"))[0]
    assert "samples" in summary and "psnr_mean" in summary["samples"][first_diffusion_row]

    # the same budget for every model, and its costs recorded next to the quality
    for row in table_rows:
        cost = settings["costs"][row]
        assert cost["parameters"] > 0 and cost["ms_per_image"] > 0
        training = cost["training"]
        # the refining model's cost counts the CNN it refines (trained on the same budget) too
        assert training["images_seen"] == 3 * 8 * (2 if row.startswith("Diffusion refining") else 1)
        assert 0 < training["train_seconds"] <= training["wall_seconds"]
        assert training["images_per_second"] > 0 and training["hardware"]
        assert training["resolution"] == 32 and training["data"] == settings["data"]
    with open(evaluation / "per_image.csv") as handle:
        header = next(csv.reader(handle))
        assert len(header) == len(set(header)) and {"psnr_mean", "ssim_mean", "diversity"} <= set(header)
        handle.seek(0)
        rows = list(csv.DictReader(handle))
    images = {r["image_index"] for r in rows}
    for row in table_rows | {MEAN_AB, GRAY}:  # every row measured on the same held-out images
        assert {r["image_index"] for r in rows if r["model"] == row} == images

    # what was run, and the TensorBoard logs of each model
    commands = _commands(out)
    assert len(commands) == 8  # the GAN twice: its failed attempt, then the fixed one
    for script, count in (("train_cnn.py", 1), ("train_gan.py", 2), ("train_diffusion.py", 2)):
        assert sum(script in c for c in commands) == count
    assert sum("--learning_rate 1e30" in c for c in commands) == 1
    refining = [c for c in commands if "--refine_model" in c]
    assert len(refining) == 1 and "--refine_model models/cnn" in refining[0]
    # the guidance scales on the validation images, the table, and the slow samplers' on 6 images
    assert sum("evaluate.py" in c for c in commands) == 3
    sweep = json.loads((out / "evaluation_guidance" / "results.json").read_text())
    assert sweep["settings"]["num_images"] == 4 and set(sweep["summary"]) >= {
        "CNN",
        "Diffusion (DPM-2)",
        "Diffusion (DPM-2, guidance 3)",
        "Diffusion refining CNN (DPM-2, guidance 3)",
    }
    assert set(chosen) == {"Diffusion", "Diffusion refining CNN"} and set(chosen.values()) <= {1.0, 3.0}
    for model, w in chosen.items():  # the smallest ab distance of the model's rows on the validation images
        rows = [r for r, about in sweep["settings"]["rows"].items() if about["model"] == model]
        best = min(
            rows,
            key=lambda r: (sweep["summary"][r]["ab_distance"]["mean"], sweep["settings"]["rows"][r]["guidance_scale"]),
        )
        assert sweep["settings"]["rows"][best]["guidance_scale"] == w
    table_command = shlex.split(next(c for c in commands if "--output_dir evaluation " in c + " "))
    assert table_command[table_command.index("--skip_images") + 1] == "4"
    assert table_command[table_command.index("--guidance_scale") + 1] == ",".join(
        f"{m}={w:g}" for m, w in chosen.items()
    )
    diffusion = next(c for c in commands if "train_diffusion.py" in c)
    assert "--validation_sampler dpm --validation_inference_steps 2" in diffusion  # the table's first sampler
    slow = json.loads((out / "evaluation_slow" / "results.json").read_text())["settings"]
    assert "DDPM-3" in str(slow["sampling"]) and slow["evaluation"]["max_images"] == 6
    for model in ("cnn", "gan", "diffusion", "refine"):
        logs = out / "models" / model / "logs"
        assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(logs) for name in files), model
        assert (out / "logs" / f"{model}.log").stat().st_size > 0

    # what is recorded holds no absolute path of this machine: the commands run in the results folder, with
    # paths relative to it (reproduce.json's argv is the command as typed, here with an absolute --output_dir)
    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    recorded = [word for c in commands for word in shlex.split(c)]
    recorded += strings(json.loads((out / "reproduce.json").read_text())["steps"])
    for name in ("evaluation/results.json", "evaluation_slow/results.json"):
        recorded += strings(json.loads((out / name).read_text())["settings"])
    assert not [word for word in recorded if os.path.isabs(word)]
    assert all(c.startswith("python -m accelerate.commands.launch") for c in commands)
    readme = (out / "README.md").read_text()
    assert (evaluation / "table.md").read_text().strip() in readme
    assert "python -m colorization.reproduce" in readme and "comparison.png" in readme
    assert "## Guidance scale, chosen on the validation images" in readme and "perception_distortion.png" in readme
    assert (out / "evaluation_guidance" / "perception_distortion.png").is_file()

    exported = {m: (out / "models" / m / "colorizer.json").stat().st_mtime_ns for m in ("cnn", "gan", "diffusion")}
    table = (evaluation / "table.md").read_text()
    second = reproduce(out)
    for step in ("cnn", "gan", "diffusion", "guidance", "evaluation", "evaluation_slow"):
        assert f"{step}: finished earlier, skipped" in second.stdout
    assert _commands(out) == commands  # nothing was run again
    assert {m: (out / "models" / m / "colorizer.json").stat().st_mtime_ns for m in exported} == exported
    assert (evaluation / "table.md").read_text() == table

    # other settings are never mixed into a finished run
    changed = reproduce(out, "--max_train_steps", "4", check=False)
    assert changed.returncode == 1
    assert "with other settings" in changed.stderr and "Traceback" not in changed.stderr


def test_the_paper_preset_samples_ddpm_1000_on_a_subset_and_the_mean_of_8():
    from colorization.reproduce import Reproduction, parse_args

    plan = Reproduction(parse_args(["--preset", "paper", "--num_processes", "1"]))
    table, slow = plan.evaluation_command(), plan.evaluation_command(slow=True)
    assert table[table.index("--samplers") + 1] == "dpm:20,ddim:50"
    assert table[table.index("--num_samples") + 1] == "8" and "--max_images" not in table
    assert slow[slow.index("--samplers") + 1] == "ddpm:1000" and slow[slow.index("--max_images") + 1] == "64"
    diffusion = plan.training_command("diffusion")
    assert diffusion[diffusion.index("--resolution") + 1] == "256" and "base" in diffusion


def test_the_cpu_small_preset_samples_the_refining_model_with_its_own_sampler():
    from colorization.reproduce import Reproduction, parse_args

    plan = Reproduction(parse_args(["--preset", "cpu-small", "--num_processes", "1"]))
    table = plan.evaluation_command()
    assert table[table.index("--samplers") + 1] == "dpm:20,Diffusion refining CNN=ddpm:75"
    # every diffusion model validates during training with the fast shared sampler
    for model in ("diffusion", "refine"):
        command = plan.training_command(model)
        assert command[command.index("--validation_sampler") :][:4] == [
            "--validation_sampler",
            "dpm",
            "--validation_inference_steps",
            "20",
        ]
    # a run without the refining model leaves its entry out; each model's first sampler chooses its guidance
    plan = Reproduction(parse_args(["--models", "cnn,diffusion", "--samplers", "dpm:20,ddim:50,refine=ddpm:100"]))
    assert plan._for_evaluation(plan.samplers()) == "dpm:20,ddim:50"
    plan = Reproduction(parse_args(["--samplers", "dpm:20,ddim:50,refine=ddpm:100,refine=dpm:10"]))
    assert plan._for_evaluation(plan.samplers(), first_only=True) == "dpm:20,Diffusion refining CNN=ddpm:100"


def test_a_results_folder_with_someone_elses_files_is_refused(tmp_path):
    import pytest

    from colorization.errors import ColorizationError
    from colorization.reproduce import Reproduction, parse_args

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ColorizationError, match="did not write"):
        Reproduction(parse_args(["--embedded", "--output_dir", str(tmp_path)]))
    assert os.listdir(tmp_path) == ["notes.txt"]
    Reproduction(parse_args(["--embedded", "--output_dir", str(tmp_path / "new")]))  # a new folder is fine
