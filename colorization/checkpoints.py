"""Training checkpoints on disk: crash-safe saving, finding the one to resume, pruning, and run folders.

A checkpoint is ``<output_dir>/checkpoints/checkpoint_<step>/``, written by accelerate's ``save_state`` plus
the harness's own files, and it is complete only once :data:`COMPLETE_MARKER` exists in it, which is written
last, after every process has finished writing. Resuming takes the newest complete checkpoint; older ones are
pruned only after a newer one is complete, so a run killed at any moment keeps a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from safetensors.torch import load_file, save_file

from colorization.errors import ColorizationError
from colorization.files import read_json_if_present, write_json

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "checkpoint_complete.json"
RUN_CONFIG_NAME = "run_config.json"
PREFIX = "checkpoint_"
# the harness's own files in a checkpoint, next to accelerate's (never pickles)
PROGRESS_NAME = "training_progress.json"
TASK_STATE_NAME = "task_state.json"
TASK_TENSORS_NAME = "task_state.safetensors"
STATISTICS_NAME = "data_statistics.safetensors"

# Settings that cannot change the trained weights: a resumed run may change them freely.
# (Everything else in the run config must match, or resuming is refused.)
FREE_SETTINGS = {
    "train": {
        "output_dir",
        "logging_steps",
        "validation_steps",
        "initial_validation",
        "num_grid_images",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "report_to",
        "cpu_threads",
        "eval_batch_size",
        "validation_images",
        "overwrite_output_dir",
        "allow_changed_settings",
        # how the same arithmetic runs (other kernels, other rounding), not what it computes
        "torch_compile",
        "channels_last",
        "fused_optimizer",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
    },
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
# ... and for a streamed run (--streaming), where each loader worker reads shards of its own: the order of the
# images depends on how many there are.
STREAMING_SETTINGS = {"dataloader_num_workers"}
# What a run writes into its output folder (besides the exported model, which each family names).
RUN_FILES = (
    CHECKPOINTS_DIR,
    "logs",
    "samples",
    RUN_CONFIG_NAME,
    "validation_metrics.json",
    "selected_model",
    "selected_model" + PARTIAL_SUFFIX,
    "selected_model" + REPLACED_SUFFIX,
)


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS_DIR, f"{PREFIX}{step}")


def step_of(path: str) -> Optional[int]:
    name = os.path.basename(os.path.normpath(path))
    suffix = name[len(PREFIX) :]
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
    selecting = "best" in (
        saved.get("train", {}).get("model_selection"),
        current.get("train", {}).get("model_selection"),
    )
    for group in ("train", "data", "model"):
        before, now = saved.get(group, {}), current.get(group, {})
        free = FREE_SETTINGS.get(group, set()) - (SELECTION_SETTINGS.get(group, set()) if selecting else set())
        if group == "data" and (before.get("streaming") or now.get("streaming")):
            free = free - STREAMING_SETTINGS  # the loader workers share out a stream's shards
        for key in sorted(set(before) | set(now)):
            if key in free:
                continue
            if key not in before and now[key] is None:  # a setting newer than the checkpoint, left unset
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


@dataclass
class TrainingProgress:
    """Where the run is and what it has cost; saved as JSON with every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    images_skipped: int = 0
    images_seen: int = 0  # summed over resumed runs, like the times
    wall_seconds: float = 0.0  # training loop, validation and checkpoints (not start-up)
    overhead_seconds: float = 0.0  # validation and checkpoints within wall_seconds
    selection: Optional[dict] = None  # --model_selection best: the chosen step and why
    best_validation_psnr: Optional[float] = None  # --model_selection best: among the selectable steps


class Checkpointer:
    """The checkpoints of one run: where it starts (new, resumed, or refused), saving, and loading.

    Accelerate saves the models, optimizers, schedulers and every process's RNG states; the save and load hooks
    add the progress, the task's own state, the gradient scalers of the further optimizers, and the training
    data's statistics, as JSON and safetensors."""

    def __init__(
        self,
        accelerator,
        config,
        task,
        progress: TrainingProgress,
        run_config: Callable[[], dict],
        log: Callable[[str], None],
    ):
        self.accelerator, self.config, self.task, self.progress = accelerator, config, task, progress
        self.run_config, self.log = run_config, log
        self.statistics: dict = {}  # the training data's, measured once per run
        self.scalers: dict = {}  # fp16: each optimizer's gradient scaler
        self.max_steps = 0
        self.last_checkpoint: Optional[str] = None
        self.changed_settings: list[str] = []  # what --allow_changed_settings let through, recorded

    def register_hooks(self) -> None:
        self.accelerator.register_save_state_pre_hook(self._save_hook)
        self.accelerator.register_load_state_pre_hook(self._load_hook)

    # ----- where the run starts -----

    def start_or_resume(self) -> Optional[str]:
        """Check the output folder -> the checkpoint to resume from, or None to start a new run there."""
        config, exported = self.config, self.task.exported_files
        request = config.resume_from_checkpoint
        previous = run_files(config.output_dir, exported)
        if not request:
            if previous and not config.overwrite_output_dir:
                raise ColorizationError(
                    f"--output_dir {config.output_dir} holds an earlier run ({', '.join(previous)}). Continue it with "
                    "--resume_from_checkpoint latest, start over with --overwrite_output_dir (deletes that run), or "
                    "choose another --output_dir."
                )
            if previous:
                self._clear_previous_run(f"--overwrite_output_dir: deleted the earlier run in {config.output_dir}")
            return None
        if request == "latest":
            path, incomplete = latest_complete(config.output_dir)
            for skipped in incomplete:
                self.log(f"skipping {skipped}: incomplete (its save was interrupted)")
            if path is None:
                if any(os.path.exists(os.path.join(config.output_dir, name)) for name in exported):
                    raise ColorizationError(
                        f"--output_dir {config.output_dir} holds an exported model but no complete checkpoint to "
                        "resume; use --overwrite_output_dir to train anew, or another --output_dir."
                    )
                if previous:
                    self._clear_previous_run(
                        f"no complete checkpoint in {config.output_dir}: starting a new run "
                        "(the earlier attempt's logs were deleted)"
                    )
                else:
                    self.log(f"no checkpoint in {config.output_dir}: starting a new run")
                return None
            return path
        if not os.path.isdir(request):
            raise ColorizationError(f"--resume_from_checkpoint {request!r} is not a checkpoint folder")
        if not is_complete(request):
            raise ColorizationError(
                f"--resume_from_checkpoint {request!r} is incomplete (no "
                f"{COMPLETE_MARKER}: its save was interrupted); use an earlier one"
            )
        return request

    def _clear_previous_run(self, message: str) -> None:
        if self.accelerator.is_main_process:
            clear_run_files(self.config.output_dir, self.task.exported_files)
        self.accelerator.wait_for_everyone()
        self.log(message)

    def check_settings(self, path: str) -> None:
        """Refuse to resume with settings that would make a different run (unless --allow_changed_settings)."""
        saved = read_run_config(path)
        if saved is None:
            raise ColorizationError(f"cannot resume from {path!r}: it has no {RUN_CONFIG_NAME}")
        differences = changed_settings(saved, self.run_config())
        if differences and not self.config.allow_changed_settings:
            raise ColorizationError(
                f"cannot resume from {path}: these settings differ from the checkpoint's and would make a different "
                "run:\n  " + "\n  ".join(differences) + "\nResume with the same settings, or add "
                "--allow_changed_settings to go on anyway (recorded in run_config.json)."
            )
        self.changed_settings = saved.get("changed_settings", []) + (
            [f"at step {saved.get('global_step')}: {d}" for d in differences]
        )

    def saved_statistics(self, path: str) -> dict:
        """The training data's statistics as the run measured them (not measured again on resume)."""
        return load_file(os.path.join(path, STATISTICS_NAME))

    def resume(self, path: str) -> None:
        try:
            self.accelerator.load_state(path)
        except (FileNotFoundError, KeyError, RuntimeError, ValueError, TypeError) as error:
            raise ColorizationError(
                f"cannot resume from {path!r}: {str(error).splitlines()[0]} "
                "(was it written by a different model or configuration?)"
            ) from None
        self.last_checkpoint = path
        self.log(f"resumed from {path} at step {self.progress.global_step}")

    # ----- saving -----

    def save(self) -> None:
        """A checkpoint of this step, complete once its marker is written; then older ones are pruned."""
        accelerator, config = self.accelerator, self.config
        path = checkpoint_dir(config.output_dir, self.progress.global_step)
        if accelerator.is_main_process and os.path.exists(path):
            shutil.rmtree(path)  # the remains of an interrupted save, or this run's own, replaced
        accelerator.wait_for_everyone()
        accelerator.save_state(path)  # every process: each saves its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(os.path.join(path, RUN_CONFIG_NAME), self.run_config())
            mark_complete(path, {"global_step": self.progress.global_step})  # last: now it counts
            prune(config.output_dir, config.checkpoints_total_limit)
        self.last_checkpoint = path
        accelerator.wait_for_everyone()

    def _save_hook(self, models, weights, output_dir: str) -> None:
        """Our state next to accelerate's: JSON and safetensors, written by the main process."""
        if not self.accelerator.is_main_process:
            return
        write_json(os.path.join(output_dir, PROGRESS_NAME), {**asdict(self.progress), "max_steps": self.max_steps})
        state = self.task.state_dict()
        tensors = state.pop("tensors", {})
        state["scalers"] = {
            name: scaler.state_dict() for name, scaler in self.scalers.items() if scaler is not self.accelerator.scaler
        }
        write_json(os.path.join(output_dir, TASK_STATE_NAME), state)
        if tensors:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                os.path.join(output_dir, TASK_TENSORS_NAME),
            )
        save_file(
            {k: v.contiguous().cpu() for k, v in self.statistics.items()}, os.path.join(output_dir, STATISTICS_NAME)
        )

    def _load_hook(self, models, input_dir: str) -> None:
        with open(os.path.join(input_dir, PROGRESS_NAME)) as handle:
            progress = json.load(handle)
        progress.pop("max_steps", None)
        vars(self.progress).update(TrainingProgress(**progress).__dict__)  # in place: the loop holds this object
        with open(os.path.join(input_dir, TASK_STATE_NAME)) as handle:
            state = json.load(handle)
        for name, scaler_state in state.pop("scalers", {}).items():
            self.scalers[name].load_state_dict(scaler_state)
        tensors_file = os.path.join(input_dir, TASK_TENSORS_NAME)
        if os.path.isfile(tensors_file):
            state["tensors"] = load_file(tensors_file, device=str(self.accelerator.device))
        self.task.load_state_dict(state)
