"""Train like train_<model>.py, but SIGKILL this process in the middle of the checkpoint save at step
--kill_at_step: after accelerate has written the model, optimizer and RNG files, before the harness marks the
checkpoint complete. Launched by test_training.py: `python tests/kill_during_save.py MODEL --kill_at_step K ...`."""

import os
import signal
import sys

import accelerate.accelerator

from colorization.tasks import TRAINING_TASKS
from colorization.training import main

_save = accelerate.accelerator.save_accelerator_state


def save_then_die(output_dir, *args, **kwargs):
    location = _save(output_dir, *args, **kwargs)
    if os.path.basename(os.path.normpath(output_dir)) == f"checkpoint_{KILL_AT_STEP}":
        os.kill(os.getpid(), signal.SIGKILL)
    return location


if __name__ == "__main__":
    model = sys.argv.pop(1)
    position = sys.argv.index("--kill_at_step")
    KILL_AT_STEP = int(sys.argv[position + 1])
    del sys.argv[position : position + 2]
    accelerate.accelerator.save_accelerator_state = save_then_die
    main(TRAINING_TASKS[model])
