"""Train the diffusion colorizer: `accelerate launch --config_file accelerate_config.yaml train_diffusion.py --help`."""

from colorization.tasks.diffusion import DiffusionTask
from colorization.training import main

if __name__ == "__main__":
    main(DiffusionTask)
