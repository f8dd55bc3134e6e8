"""python -m colorization.reproduce: the whole comparison from one command, resumable, failing loudly."""

import csv
import json
import os
import re
import shlex
import shutil
import sys

from conftest import run_command

from colorization.evaluation import GRAY, MEAN_AB, TRUTH
from colorization.reproduce import write_results_readme

# A few steps per model on a small slice of the embedded data, at 32 px.
# Every run validates on the first 4 held-out images, where the GAN chooses its step and each diffusion model its
# sampler (of two candidates) and guidance scale; the tables leave them out. No slow samplers' table (the preset
# has none): it would be one more evaluate.py launch of the kind the table's is. Its command is checked on the paper
# preset, and its README section is written from a copy of the table.
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
    "--data_args",
    "--embedded_num_images 128 --dataloader_num_workers 0",
    "--validation_images",
    "4",
    "--guidance_scales",
    "1,3",
    "--selection_num_samples",
    "2",
    "--gan_args",
    "--base_channels 8",
]


def model_rows(samplers: dict, guidance: dict) -> set:
    """The table's model rows, each diffusion model with the sampler and guidance scale chosen for it."""
    sampled = set()
    for model, sampler in samplers.items():
        name = sampler.replace(":", "-").upper()
        sampled.add(f"{model} ({name}" + (f", guidance {guidance[model]:g})" if guidance.get(model, 1) != 1 else ")"))
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
    state = json.loads((out / "reproduce.json").read_text())
    chosen, samplers = state["guidance"], state["samplers"]  # each diffusion model's scale and sampler
    table_rows = model_rows(samplers, chosen)
    assert set(summary) == table_rows | {MEAN_AB, GRAY, TRUTH, "samples"}  # every model, nothing missing
    assert settings["resolution"] == 32 and settings["split"] == "validation" and settings["num_images"] == 13 - 4
    assert any("The first 4 images are left out" in note for note in settings["notes"])
    first_diffusion_row = next(r for r in table_rows if r.startswith("Diffusion ("))
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
    # on the validation images only: the samplers, then the guidance scales with the chosen samplers; then the table
    evaluations = [shlex.split(c) for c in commands if "evaluate.py" in c]
    assert len(evaluations) == 3
    for selection in evaluations[:2]:
        assert selection[selection.index("--max_images") + 1] == "4" and "--skip_images" not in selection
        assert selection[selection.index("--num_samples") + 1] == "2"
    assert "selection/samplers" in evaluations[0] and "selection/guidance" in evaluations[1]
    candidates = json.loads((out / "selection" / "samplers" / "results.json").read_text())
    assert {about.get("sampler") for about in candidates["settings"]["rows"].values()} == {None, "dpm:2", "ddim:2"}
    record = json.loads((out / "selection" / "selection.json").read_text())
    by_what = {(c["model"], c["what"]): c for c in record["choices"]}
    for model in ("Diffusion", "Diffusion refining CNN"):
        choice = by_what[(model, "sampler")]
        assert choice["chosen"] == samplers[model] and choice["images"] == 4
        assert {c["name"] for c in choice["candidates"]} == {"dpm:2", "ddim:2"}
        assert {"spread_skill", "colorfulness_crps", "pooled_psnr_posterior"} <= set(choice["candidates"][0])
        scale = by_what[(model, "guidance scale")]
        assert scale["chosen"] == chosen[model] and [c["name"] for c in scale["candidates"]] == [1.0, 3.0]
    assert by_what[("GAN", "exported step")]["images"] == 4
    sweep = json.loads((out / "selection" / "guidance" / "results.json").read_text())
    assert {about["sampler"] for row, about in sweep["settings"]["rows"].items() if "sampler" in about} == set(
        samplers.values()
    )
    table_command = shlex.split(next(c for c in commands if "--output_dir evaluation " in c + " "))
    assert table_command[table_command.index("--skip_images") + 1] == "4"
    assert table_command[table_command.index("--samplers") + 1] == ",".join(f"{m}={s}" for m, s in samplers.items())
    assert table_command[table_command.index("--guidance_scale") + 1] == ",".join(
        f"{m}={w:g}" for m, w in chosen.items()
    )
    diffusion = next(c for c in commands if "train_diffusion.py" in c)
    assert "--validation_sampler dpm --validation_inference_steps 2" in diffusion  # the first candidate
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
    recorded += strings(json.loads((out / "evaluation" / "results.json").read_text())["settings"])
    assert not [word for word in recorded if os.path.isabs(word)]
    assert all(c.startswith("python -m accelerate.commands.launch") for c in commands)
    readme = (out / "README.md").read_text()
    assert (evaluation / "table.md").read_text().strip() in readme
    assert "python -m colorization.reproduce" in readme and "comparison.png" in readme
    assert "## Chosen on the validation images" in readme and "perception_distortion.png" in readme
    assert (out / "selection" / "guidance" / "perception_distortion.png").is_file()
    assert "selection/README.md" in readme and "## Diffusion: sampler" in (out / "selection" / "README.md").read_text()
    record = (out / "selection" / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", record)
    assert links and all((out / "selection" / link).is_file() for link in links), links  # relative to the README
    assert "CALIBRATED_BAND" not in record

    exported = {m: (out / "models" / m / "colorizer.json").stat().st_mtime_ns for m in ("cnn", "gan", "diffusion")}
    table = (evaluation / "table.md").read_text()
    second = reproduce(out)
    for step in ("cnn", "gan", "diffusion", "refine", "samplers", "guidance", "evaluation"):
        assert f"{step}: finished earlier, skipped" in second.stdout
    assert _commands(out) == commands  # nothing was run again
    assert {m: (out / "models" / m / "colorizer.json").stat().st_mtime_ns for m in exported} == exported
    assert (evaluation / "table.md").read_text() == table

    # other settings are never mixed into a finished run
    changed = reproduce(out, "--max_train_steps", "4", check=False)
    assert changed.returncode == 1
    assert "with other settings" in changed.stderr and "Traceback" not in changed.stderr

    # a slow samplers' table, where there is one, gets its own section of the README
    shutil.copytree(evaluation, out / "evaluation_slow")
    write_results_readme(str(out), "cpu-small", "a test", json.loads((out / "reproduce.json").read_text()), "ddpm:3")
    readme = (out / "README.md").read_text()
    assert "## Slow samplers (ddpm:3) on a subset of the images" in readme and readme.count(table.strip()) == 2


def test_the_paper_preset_chooses_its_sampler_on_the_validation_images_and_samples_ddpm_1000_on_a_subset():
    from colorization.reproduce import Reproduction, parse_args

    plan = Reproduction(parse_args(["--preset", "paper", "--num_processes", "1"]))
    selection, slow = plan.sampler_selection_command(), plan.evaluation_command(slow=True)
    assert selection[selection.index("--samplers") + 1] == ",".join(
        f"{model}={sampler}" for model in ("Diffusion", "Diffusion refining CNN") for sampler in ("dpm:20", "ddim:50")
    )
    assert selection[selection.index("--num_samples") + 1] == "8" and "--skip_images" not in selection
    assert selection[selection.index("--max_images") + 1] == "64"
    assert slow[slow.index("--samplers") + 1] == "ddpm:1000" and slow[slow.index("--max_images") + 1] == "64"
    assert slow[slow.index("--skip_images") + 1] == "64"
    diffusion = plan.training_command("diffusion")
    assert diffusion[diffusion.index("--resolution") + 1] == "256" and "base" in diffusion


def test_the_cpu_small_preset_chooses_each_models_sampler_among_its_candidates():
    from colorization.reproduce import Reproduction, parse_args

    plan = Reproduction(parse_args(["--preset", "cpu-small", "--num_processes", "1"]))
    candidates = plan.candidates()
    assert set(candidates) == {"Diffusion", "Diffusion refining CNN"}
    for found in candidates.values():
        assert found and all(int(sampler.split(":")[1]) <= 25 for sampler in found)  # at most 25 UNet passes
    # every diffusion model validates during training with the fast shared sampler
    shared = plan.samplers().split(",")[0].split(":")
    for model in ("diffusion", "refine"):
        command = plan.training_command(model)
        assert command[command.index("--validation_sampler") :][:4] == [
            "--validation_sampler",
            shared[0],
            "--validation_inference_steps",
            shared[1],
        ]
    # the table's evaluation compiles the UNets (over a thousand samples per model pay it back), the selection's not
    assert "--compile" in plan.evaluation_command() and "--compile" not in plan.sampler_selection_command()
    no_compile = Reproduction(parse_args(["--preset", "cpu-small", "--num_processes", "1", "--no-compile_table"]))
    assert "--compile" not in no_compile.evaluation_command()
    # a run without the refining model leaves its entries out
    plan = Reproduction(parse_args(["--models", "cnn,diffusion", "--samplers", "dpm:20,ddim:50,refine=ddpm:100"]))
    assert plan.candidates() == {"Diffusion": ["dpm:20", "ddim:50"]}
    plan = Reproduction(parse_args(["--samplers", "dpm:20,refine=ddpm:100"]))  # one candidate each: no selection
    assert plan.sampler_selection_command() is None
    assert plan.chosen_samplers() == {"Diffusion": "dpm:20", "Diffusion refining CNN": "ddpm:100"}


def test_choices_are_made_by_the_proper_scores_and_never_on_the_tables_images(tmp_path):
    import pytest

    from colorization.errors import ColorizationError
    from colorization.reproduce import check_validation_only, choose, choose_sampler

    def candidate(name, ratio, crps, psnr):
        numbers = {"spread_skill": ratio, "colorfulness_crps": crps, "pooled_psnr_posterior": psnr}
        return {"name": name, **{k: {"mean": v, "ci95": [v, v]} for k, v in numbers.items()}}

    # the calibrated candidate with the lowest CRPS: not the lowest CRPS overall (too little spread), nor the best
    # posterior mean
    found = choose([candidate("a", 0.80, 5.0, 27.0), candidate("b", 0.95, 7.0, 26.0), candidate("c", 1.08, 6.0, 25.5)])
    assert found["chosen"] == "c" and "calibrated" in found["rule"]
    assert choose([candidate("a", 0.7, 5, 27), candidate("b", 0.85, 9, 26)])["chosen"] == "b"  # none calibrated
    # guidance scales are numbers: the rule names them too (it once stopped the run here with a TypeError)
    scales = [candidate(1.0, 0.87, 6.0, 26.3), candidate(1.5, 1.05, 7.0, 25.8), candidate(2.0, 1.2, 9.0, 25.0)]
    found = choose(scales)
    assert found["chosen"] == 1.5 and "calibrated candidates" in found["rule"] and ": 1.5)" in found["rule"]
    # ... but a scale is chosen by the CRPS alone: guidance that overshoots the colors spreads the samples more
    # without forecasting better (the cpu-small run's refining model: ratio 0.87 -> 1.05, CRPS 6.0 -> 7.0)
    assert choose(scales, calibration_first=False) == {"chosen": 1.0, "rule": "the lowest colorfulness CRPS"}
    tied = [candidate(1.0, 0.8, 6.0, 26.0), candidate(1.5, 0.9, 6.0, 26.5)]  # ties: the better posterior mean
    assert choose(tied, calibration_first=False)["chosen"] == 1.5
    # an evaluation that measured more than the validation images is refused, whichever way it reached them
    settings = {"split": "validation", "evaluation": {"skip_images": 0, "max_images": 64}}
    check_validation_only(settings, 64)
    for wrong in ({"skip_images": 64, "max_images": 64}, {"skip_images": 0, "max_images": 128}, {"max_images": None}):
        with pytest.raises(ColorizationError, match="the table's images are for the table"):
            check_validation_only({**settings, "evaluation": wrong}, 64)
    with pytest.raises(ColorizationError, match="the table's images are for the table"):
        check_validation_only({**settings, "split": "all"}, 64)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"settings": {**settings, "evaluation": {"skip_images": 64}}, "summary": {}}))
    with pytest.raises(ColorizationError, match="refusing to choose"):
        choose_sampler(str(results), 64)


def test_a_results_folder_with_someone_elses_files_is_refused(tmp_path):
    import pytest

    from colorization.errors import ColorizationError
    from colorization.reproduce import Reproduction, parse_args

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ColorizationError, match="did not write"):
        Reproduction(parse_args(["--embedded", "--output_dir", str(tmp_path)]))
    assert os.listdir(tmp_path) == ["notes.txt"]
    Reproduction(parse_args(["--embedded", "--output_dir", str(tmp_path / "new")]))  # a new folder is fine
