"""Train the CNN on a stream (the real harness) and write what this process streamed: launched by
test_streaming.py under `accelerate launch`, as two processes of one machine or one process on each of two
"machines". Writes rank_<i>.json (the training images' keys, by epoch, and a hash of the weights) into --probe_dir."""

from distributed_probe import probe_arguments, train_and_write

from colorization.streaming import StreamedImages

streamed = []
_stream = StreamedImages._stream


def recording_stream(self, worker, num_workers, skip):
    for epoch, position, row in _stream(self, worker, num_workers, skip):
        streamed.append([epoch, row["key"]])  # with no loader workers, the stream runs in this process
        yield epoch, position, row


def main():
    argv, probe_dir = probe_arguments()
    StreamedImages._stream = recording_stream
    train_and_write(argv, probe_dir, {"streamed": streamed})


if __name__ == "__main__":
    main()
