"""The model families: their training tasks, and how each exported model type is loaded."""

from colorization.inference import load_feed_forward_colorizer
from colorization.models import cnn, diffusion, gan

TRAINING_TASKS = {task.model_type: task for task in (cnn.CNNTask, gan.GANTask, diffusion.DiffusionTask)}

def _one_pass(build):
    def load(path, config, device, **sampling):  # sampling options do not apply to one-pass models
        return load_feed_forward_colorizer(path, config, device, build)
    return load

COLORIZER_LOADERS = {
    cnn.CNNTask.model_type: _one_pass(cnn.build_exported),
    gan.GANTask.model_type: _one_pass(gan.build_exported),
    diffusion.DiffusionTask.model_type: diffusion.load_diffusion_colorizer,
}
