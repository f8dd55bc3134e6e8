"""Does the CNN learn? Short real training runs, judged on the validation split (the GAN's and the diffusion
model's learning tests are in their own files)."""

from conftest import TINY_CNN, TINY_DATA, train_in_process

from colorization.tasks.cnn import CNNTask


def _validation_losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs" / "cnn"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("validation/loss")}


def test_cnn_beats_the_gray_baseline_on_the_embedded_data(tmp_path):
    metrics = train_in_process(
        CNNTask,
        [
            *TINY_DATA,
            *TINY_CNN,
            "--train_batch_size",
            "16",
            "--max_train_steps",
            "150",
            "--validation_steps",
            "150",
            "--output_dir",
            tmp_path,
        ],
    )
    # seen: 19.1 dB against 14.1 dB for gray after 150 steps
    assert metrics["psnr"] > metrics["psnr_gray"] + 2.0, metrics
    losses = _validation_losses(tmp_path)
    assert losses[150] < 0.6 * losses[0], losses


def test_cnn_beats_the_gray_baseline_on_real_cats(tmp_path, afhq_dir):
    metrics = train_in_process(
        CNNTask,
        [
            "--train_data_dir",
            afhq_dir,
            "--resolution",
            "32",
            *TINY_CNN,
            "--train_batch_size",
            "32",
            "--max_train_steps",
            "100",
            "--validation_steps",
            "50",
            "--validation_images",
            "64",
            "--output_dir",
            tmp_path,
        ],
    )
    # seen: 26.25 dB against 25.43 for gray after 100 steps; validation loss 0.0127 (untrained) -> 0.0070
    assert metrics["psnr"] > metrics["psnr_gray"] + 0.4, metrics
    losses = _validation_losses(tmp_path)
    assert losses[100] < 0.8 * losses[0], losses
