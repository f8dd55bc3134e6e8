"""The model families: their training tasks, and the network builders of their exported models."""

from colorization.models import cnn

TRAINING_TASKS = {
    cnn.CNNTask.model_type: cnn.CNNTask,
}

EXPORTED_MODEL_BUILDERS = {
    cnn.CNNTask.model_type: cnn.build_exported,
}
