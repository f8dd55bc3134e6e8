"""Run the real training harness (CNN) and write what this process saw: launched by test_training.py
under `accelerate launch` with two CPU processes. Writes rank_<i>.json into --probe_dir."""

import hashlib
import json
import os
import sys

import colorization.training as training
from colorization.data import ColorizationImages
from colorization.tasks.cnn import CNNTask

seen_indices = []
_get_item = ColorizationImages.__getitem__


def recording_get_item(self, key):
    if isinstance(key, tuple):  # training samples come as (epoch, index); validation ones as plain indices
        seen_indices.append(key[1])
    return _get_item(self, key)


def main():
    probe_dir = sys.argv[sys.argv.index("--probe_dir") + 1]
    argv = [a for i, a in enumerate(sys.argv[1:]) if "--probe_dir" not in (a, sys.argv[i])]
    ColorizationImages.__getitem__ = recording_get_item  # with no data workers, samples load in this process
    train_config, data_config, model_config = training.parse_args(CNNTask, argv)
    trainer = training.Trainer(CNNTask(model_config, data_config.resolution), train_config, data_config)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.task.models["model"])
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(probe_dir, f"rank_{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "num_processes": trainer.accelerator.num_processes,
                   "indices": seen_indices, "weights_sha256": digest.hexdigest()}, handle)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
