"""Train the CNN with the real harness, with a loss that turns NaN on process 1 alone at --nan_at_step:
launched by test_training.py under `accelerate launch` with two CPU processes."""

import sys

import torch

from colorization.tasks.cnn import CNNTask
from colorization.training import main


class DivergingOnOneProcess(CNNTask):
    nan_at_step = 0

    def training_step(self, trainer, lightness, ab):
        if trainer.progress.global_step + 1 == self.nan_at_step and self.accelerator.process_index == 1:
            loss = self.models["model"](lightness).float().mean() * torch.tensor(float("nan"))
            trainer.optimize("model", loss)
            return {"loss": loss.detach()}
        return super().training_step(trainer, lightness, ab)


if __name__ == "__main__":
    position = sys.argv.index("--nan_at_step")
    DivergingOnOneProcess.nan_at_step = int(sys.argv[position + 1])
    main(DivergingOnOneProcess, sys.argv[1:position] + sys.argv[position + 2 :])
