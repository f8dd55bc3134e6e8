"""Training checkpoints on disk: crash-safe saving, finding the one to resume, pruning, and run folders.

A checkpoint is ``<output_dir>/checkpoints/checkpoint_<step>/``, written by accelerate's ``save_state`` plus
the harness's own files, and it is complete only once :data:`COMPLETE_MARKER` exists in it, which is written
last, after every process has finished writing. Resuming takes the newest complete checkpoint; older ones are
pruned only after a newer one is complete, so a run killed at any moment keeps a complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from colorization.colorizer import read_json_if_present, write_json

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "checkpoint_complete.json"
RUN_CONFIG_NAME = "run_config.json"
PREFIX = "checkpoint_"

# Settings that cannot change the trained weights: a resumed run may change them freely.
# (Everything else in the run config must match, or resuming is refused.)
FREE_SETTINGS = {
    "train": {"output_dir", "logging_steps", "validation_steps", "initial_validation", "num_grid_images",
              "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "report_to", "cpu_threads",
              "eval_batch_size", "validation_images", "overwrite_output_dir", "allow_changed_settings",
              "torch_compile"},
    "data": {"dataloader_num_workers", "cache_dir", "max_validation_samples", "preprocess"},
    "model": {"validation_sampler", "validation_inference_steps"},
}
# The chosen step's export (--model_selection best) is written beside the previous one and swapped in.
PARTIAL_SUFFIX, REPLACED_SUFFIX = ".partial", ".replaced"
# ... except under --model_selection best, where these choose the exported step: changed mid-run, they would
# compare "the best PSNR so far" across different images, cadences or samplers.
SELECTION_SETTINGS = {
    "train": {"validation_images", "validation_steps"},
    "data": {"max_validation_samples"},
    "model": {"validation_sampler", "validation_inference_steps"},
}
# What a run writes into its output folder (besides the exported model, which each family names).
RUN_FILES = (CHECKPOINTS_DIR, "logs", "samples", RUN_CONFIG_NAME, "validation_metrics.json", "selected_model",
             "selected_model" + PARTIAL_SUFFIX, "selected_model" + REPLACED_SUFFIX)


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS_DIR, f"{PREFIX}{step}")


def step_of(path: str) -> Optional[int]:
    name = os.path.basename(os.path.normpath(path))
    suffix = name[len(PREFIX):]
    return int(suffix) if name.startswith(PREFIX) and suffix.isdigit() else None


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def list_checkpoints(output_dir: str) -> list[tuple[int, str, bool]]:
    """(step, path, complete) of every checkpoint folder, oldest first."""
    folder = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(folder):
        return []
    found = [(step_of(name), os.path.join(folder, name)) for name in os.listdir(folder)]
    return sorted((step, path, is_complete(path)) for step, path in found if step is not None)


def latest_complete(output_dir: str) -> tuple[Optional[str], list[str]]:
    """-> (the newest complete checkpoint or None, the newer incomplete ones that were skipped)."""
    skipped = []
    for _, path, complete in reversed(list_checkpoints(output_dir)):
        if complete:
            return path, skipped
        skipped.append(path)
    return None, skipped


def mark_complete(path: str, info: dict) -> None:
    write_json(os.path.join(path, COMPLETE_MARKER), info)


def prune(output_dir: str, keep: Optional[int]) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``keep`` (and incomplete ones older than the newest
    complete one: the remains of interrupted saves) -> what was deleted."""
    checkpoints = list_checkpoints(output_dir)
    complete = [path for _, path, done in checkpoints if done]
    doomed = complete[:-keep] if keep is not None and keep > 0 and len(complete) > keep else []
    if complete:
        newest = step_of(complete[-1])
        doomed += [path for step, path, done in checkpoints if not done and step < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_run_config(path: str) -> Optional[dict]:
    return read_json_if_present(os.path.join(path, RUN_CONFIG_NAME))


def changed_settings(saved: dict, current: dict) -> list[str]:
    """The settings that differ between a checkpoint's run config and this run's, and could change the
    trained weights -> 'group.name: before -> now' lines."""
    differences = []
    selecting = "best" in (saved.get("train", {}).get("model_selection"), current.get("train", {}).get("model_selection"))
    for group in ("train", "data", "model"):
        before, now = saved.get(group, {}), current.get(group, {})
        free = FREE_SETTINGS.get(group, set()) - (SELECTION_SETTINGS.get(group, set()) if selecting else set())
        for key in sorted(set(before) | set(now)):
            if key in free:
                continue
            if before.get(key, "(absent)") != now.get(key, "(absent)"):
                differences.append(f"--{key}: {before.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}")
    for key in ("num_processes", "mixed_precision", "model_type"):
        if saved.get(key) != current.get(key):
            differences.append(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}")
    return differences


def run_files(output_dir: str, exported: tuple[str, ...]) -> list[str]:
    """What a previous run left in ``output_dir`` (its checkpoints, logs, config, exported model)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if name in RUN_FILES or name in exported)


def clear_run_files(output_dir: str, exported: tuple[str, ...]) -> None:
    for name in run_files(output_dir, exported):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
