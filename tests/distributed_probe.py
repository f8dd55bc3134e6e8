"""Run the real training harness and write what this process saw: launched by test_training.py under
`accelerate launch` with two CPU processes, as `distributed_probe.py MODEL --probe_dir DIR <training flags>`.
Writes rank_<i>.json into DIR."""

import hashlib
import json
import os
import sys

import colorization.training as training
from colorization.data import ColorizationImages
from colorization.tasks import TRAINING_TASKS
from colorization.tasks.cnn import CNNTask

seen_indices = []
_get_items = ColorizationImages.__getitems__


def recording_get_items(self, keys):
    # training samples come as (epoch, index); validation ones (and the data statistics) as plain indices
    seen_indices.extend(list(key) for key in keys if isinstance(key, tuple))
    return _get_items(self, keys)


def probe_arguments() -> tuple[list[str], str]:
    """-> (the training flags, --probe_dir) of this script's command line."""
    probe_dir = sys.argv[sys.argv.index("--probe_dir") + 1]
    return [a for i, a in enumerate(sys.argv[1:]) if "--probe_dir" not in (a, sys.argv[i])], probe_dir


def train_and_write(argv: list[str], probe_dir: str, seen: dict, task_class=CNNTask) -> None:
    """Train with ``argv``; write rank_<i>.json: ``seen`` (filled while training) and a hash of every network's
    weights."""
    train_config, data_config, model_config = training.parse_args(task_class, argv)
    trainer = training.Trainer(task_class(model_config, data_config.resolution), train_config, data_config)
    trainer.train()
    digest = hashlib.sha256()
    for key, network in sorted(trainer.task.models.items()):
        for name, tensor in sorted(trainer.accelerator.unwrap_model(network).state_dict().items()):
            digest.update(f"{key}.{name}".encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(probe_dir, f"rank_{rank}.json"), "w") as handle:
        json.dump(
            {
                "rank": rank,
                "num_processes": trainer.accelerator.num_processes,
                **seen,
                "weights_sha256": digest.hexdigest(),
            },
            handle,
        )
    trainer.accelerator.end_training()


def main():
    argv, probe_dir = probe_arguments()
    model = argv.pop(0)
    ColorizationImages.__getitems__ = recording_get_items  # with no data workers, batches load in this process
    train_and_write(argv, probe_dir, {"epoch_and_index": seen_indices}, TRAINING_TASKS[model])


if __name__ == "__main__":
    main()
