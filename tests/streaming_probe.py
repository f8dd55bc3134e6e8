"""Train the CNN on a stream (the real harness) and write what this process streamed: launched by
test_streaming.py under `accelerate launch`, as two processes of one machine or one process on each of two
"machines". Writes rank_<i>.json (the training images' keys, by epoch, and a hash of the weights) into --probe_dir."""

import hashlib
import json
import os
import sys

import colorization.training as training
from colorization.streaming import StreamedImages
from colorization.tasks.cnn import CNNTask

streamed = []
_stream = StreamedImages._stream


def recording_stream(self, worker, num_workers, skip):
    for epoch, position, row in _stream(self, worker, num_workers, skip):
        streamed.append([epoch, row["key"]])  # with no loader workers, the stream runs in this process
        yield epoch, position, row


def main():
    probe_dir = sys.argv[sys.argv.index("--probe_dir") + 1]
    argv = [a for i, a in enumerate(sys.argv[1:]) if "--probe_dir" not in (a, sys.argv[i])]
    StreamedImages._stream = recording_stream
    train_config, data_config, model_config = training.parse_args(CNNTask, argv)
    trainer = training.Trainer(CNNTask(model_config, data_config.resolution), train_config, data_config)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.task.models["model"])
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(probe_dir, f"rank_{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "streamed": streamed, "weights_sha256": digest.hexdigest()}, handle)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
