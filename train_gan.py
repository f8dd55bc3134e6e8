"""Train the GAN colorizer: `accelerate launch --config_file accelerate_config.yaml train_gan.py --help`."""

from colorization.tasks.gan import GANTask
from colorization.training import main

if __name__ == "__main__":
    main(GANTask)
