"""The harness's parts on their own: the logged window's means, the validation cadence of model selection,
the schedules, and where a run starts."""

import math

import pytest
import torch

from colorization.optimization import make_schedules
from colorization.tracking import ScalarWindow
from colorization.validation import MIN_VALIDATIONS_FOR_SELECTION, selection_cadence


class _OneProcess:
    num_processes = 1

    @staticmethod
    def reduce(tensor, reduction):
        return tensor


def test_the_window_means_leave_out_what_was_absent_and_count_the_speed():
    window = ScalarWindow(torch.device("cpu"))
    window.add({"loss": torch.tensor(1.0), "loss_t0": torch.tensor(float("nan"))}, torch.tensor(0))
    window.add({"loss": torch.tensor(3.0), "loss_t0": torch.tensor(float("nan"))}, torch.tensor(2))
    values, skipped = window.values(_OneProcess(), batch_size=8, seconds=4.0)
    assert values == {"train/loss": 2.0, "train/images_per_second": 2 * 8 / 4.0}  # loss_t0 absent all window
    assert skipped == 2
    window.reset()
    assert window.micro_steps == 0 and window.means(_OneProcess()) == {}


@pytest.mark.parametrize("validation_steps, first, last, expected", [(500, 1, 100, 10), (5, 1, 100, 5), (7, 40, 45, 1)])
def test_model_selection_validates_often_enough_to_choose(validation_steps, first, last, expected):
    cadence = selection_cadence(validation_steps, first, last)
    assert cadence == expected
    assert (last - first + 1) // cadence >= min(MIN_VALIDATIONS_FOR_SELECTION, last - first + 1)


def test_schedules_follow_the_global_step_on_every_process_count():
    parameters = [torch.nn.Parameter(torch.zeros(1))]
    for processes in (1, 2):
        optimizer = torch.optim.SGD(parameters, lr=1.0)
        schedule = make_schedules({"model": optimizer}, "cosine", 2, 10, processes)["model"]
        rates = []
        for _ in range(10 * processes):  # a prepared schedule steps once per process per optimizer step
            rates.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        assert rates[0] == 0.0 and max(rates) == pytest.approx(1.0)
        assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (10 * processes - 1 - 2 * processes)
                                                               / (8 * processes))), abs=1e-6)  # fmt: skip
