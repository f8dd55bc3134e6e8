"""The training halves of the model families, on the harness of :mod:`colorization.training`."""

from colorization.tasks.cnn import CNNTask
from colorization.tasks.diffusion import DiffusionTask
from colorization.tasks.gan import GANTask

TRAINING_TASKS = {task.model_type: task for task in (CNNTask, GANTask, DiffusionTask)}
