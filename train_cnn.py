"""Train the CNN colorizer: `accelerate launch --config_file accelerate_config.yaml train_cnn.py --help`."""

from colorization.tasks.cnn import CNNTask
from colorization.training import main

if __name__ == "__main__":
    main(CNNTask)
