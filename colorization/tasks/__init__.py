"""The training halves of the model families, on the harness of :mod:`colorization.training`."""

from colorization.families import FAMILIES

TRAINING_TASKS = {name: known.task_class() for name, known in FAMILIES.items()}
