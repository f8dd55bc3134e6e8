"""The model families. ``EXPORTED_MODEL_BUILDERS`` maps an exported model's type to its network builder."""

from colorization.models import cnn

EXPORTED_MODEL_BUILDERS = {
    cnn.CNNTask.model_type: cnn.build_exported,
}
