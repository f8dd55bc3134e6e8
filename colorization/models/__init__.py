"""The model families: their training tasks, and the network builders of their exported models."""

from colorization.models import cnn, gan

TRAINING_TASKS = {
    cnn.CNNTask.model_type: cnn.CNNTask,
    gan.GANTask.model_type: gan.GANTask,
}

EXPORTED_MODEL_BUILDERS = {
    cnn.CNNTask.model_type: cnn.build_exported,
    gan.GANTask.model_type: gan.build_exported,
}
